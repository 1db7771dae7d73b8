"""``tickertape tail`` and ``publish`` when the server refuses them or cannot be reached,
run as a user would: real subprocesses and sockets on 127.0.0.1.

* a refused login prints the reason the server gave (in a Debug packet before Login
  Rejected), not a guess from the reject code;
* a first connection that fails is an error at once, unless ``--wait``; once connected,
  a lost connection is retried and its return is said;
* given several servers (``--server``), a dead one is skipped, and a tail moves to the
  next when its server is lost.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickertape.auth.user import User
from tickertape.auth.users import Users
from tickertape.client.publisher import Publisher

from support import ServerProcess, SoupClient, free_port

TIMEOUT = 30.0
"""Seconds any one wait may take before the test fails."""


def tickertape(
    *args: str, stdin: str = "", timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("users") / "users.toml"
    Users(
        [
            User.create("sub", "subpass", ["subscriber"]),
            User.create("pub", "pubpass", ["publisher"]),
            User.create("old", "oldpass", ["subscriber"], sessions=["1999*"]),
        ]
    ).save(path)
    return path


@pytest.fixture
def server(tmp_path: Path, users_file: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", "--users", str(users_file)) as server:
        yield server


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command prints."""
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# ---------------------------------------------------------------------------- refusals


def test_publish_as_a_subscriber_prints_the_servers_reason(server: ServerProcess) -> None:
    done = tickertape(
        "publish", "--port", str(server.port), "--user", "sub", "--password", "subpass",
        stdin="hello\n",
    )  # fmt: skip
    line = _refused(done)
    assert "user 'sub' may not publish (the publisher role is needed)" in line, line
    assert "no session is open" not in line, line


def test_tail_as_a_publisher_prints_the_servers_reason(server: ServerProcess) -> None:
    done = tickertape("tail", "--port", str(server.port), "--user", "pub", "--password", "pubpass")
    line = _refused(done)
    assert "user 'pub' may not read sessions (the subscriber role is needed)" in line, line
    assert "not available" not in line, line


def test_tail_as_a_user_restricted_to_other_sessions_prints_the_servers_reason(
    server: ServerProcess,
) -> None:
    done = tickertape("tail", "--port", str(server.port), "--user", "old", "--password", "oldpass")
    line = _refused(done)
    assert "user 'old' may not read session " in line, line
    assert "(only the sessions matching 1999*)" in line, line


def test_tail_with_no_user_says_the_server_needs_one(server: ServerProcess) -> None:
    line = _refused(tickertape("tail", "--port", str(server.port)))
    assert "this server needs a username and password" in line, line
    assert "--user" in line, line


def test_a_wrong_password_names_the_user(server: ServerProcess) -> None:
    done = tickertape("tail", "--port", str(server.port), "--user", "sub", "--password", "nope")
    line = _refused(done)
    assert "wrong username or password for user 'sub'" in line, line
    assert "give --user" not in line, line  # a user was given


# ---------------------------------------------------------------------------- connecting


def test_tail_against_a_closed_port_fails_at_once_saying_why(tmp_path: Path) -> None:
    port = free_port()
    done = tickertape("tail", "--port", str(port), timeout=15)  # no retry loop: it returns
    line = _refused(done)
    assert f"cannot log in to 127.0.0.1:{port}" in line, line
    assert "connection refused" in line, line
    assert "--wait" in line, line


class Tail:
    """``tickertape tail`` in a subprocess, its stdout and stderr lines collected."""

    def __init__(self, *args: str) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self._seen = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tickertape", "tail", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._threads = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: object, lines: list[str]) -> None:
        assert hasattr(stream, "readline")
        for line in iter(stream.readline, ""):
            with self._seen:
                lines.append(line.rstrip("\n"))
                self._seen.notify_all()

    def wait_for(self, lines: list[str], text: str, timeout: float = TIMEOUT) -> str:
        """The first line of ``lines`` (``out`` or ``err``) containing ``text``."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and left < timeout - 5):
                    raise AssertionError(f"tail did not print {text!r}: {self.out} {self.err}")
                self._seen.wait(min(left, 0.2))

    def finish(self, timeout: float = TIMEOUT) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(5)
            for thread in self._threads:
                thread.join(5)
        return code


async def _publish(port: int, payloads: list[bytes]) -> None:
    async with asyncio.timeout(TIMEOUT):
        publisher = await Publisher.connect("127.0.0.1", port)
        try:
            await publisher.send_many(payloads)
            await publisher.flush()
        finally:
            await publisher.close()


def test_a_reconnect_after_a_server_restart_is_said(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    with ServerProcess(data, "--port", str(port)) as first:
        asyncio.run(_publish(first.port, [b"one", b"two"]))
        tail = Tail("--port", str(port), "--count", "4")
        try:
            tail.wait_for(tail.out, "2 two")
            first.stop()
            tail.wait_for(tail.err, f"connection to 127.0.0.1:{port} lost")
            with ServerProcess(data, "--port", str(port)) as second:
                line = tail.wait_for(tail.err, f"logged in to 127.0.0.1:{port} again")
                assert " from 3" in line, line
                asyncio.run(_publish(second.port, [b"three", b"four"]))
                assert tail.finish() == 0, tail.err
        finally:
            tail.finish()
    assert tail.out == ["1 one", "2 two", "3 three", "4 four"]
    # The last word on stderr is that it is back, not a retry.
    assert "again" in [line for line in tail.err if "127.0.0.1" in line][-1], tail.err


def test_tail_wait_keeps_trying_until_the_server_is_there(tmp_path: Path) -> None:
    port = free_port()
    tail = Tail("--port", str(port), "--count", "1", "--wait")
    try:
        line = tail.wait_for(tail.err, f"cannot log in to 127.0.0.1:{port}")
        assert "trying again" in line, line
        assert tail.process.poll() is None  # still trying
        with ServerProcess(tmp_path / "data", "--port", str(port)) as server:
            tail.wait_for(tail.err, f"logged in to 127.0.0.1:{port}: session")
            asyncio.run(_publish(server.port, [b"at last"]))
            assert tail.finish() == 0, tail.err
    finally:
        tail.finish()
    assert tail.out == ["1 at last"]


# ---------------------------------------------------------------------------- several servers


def test_publish_to_several_servers_skips_a_dead_one(tmp_path: Path) -> None:
    dead = free_port()
    with ServerProcess(tmp_path / "data") as server:
        servers = f"127.0.0.1:{dead},127.0.0.1:{server.port}"
        done = tickertape("publish", "--server", servers, stdin="one\ntwo\nthree\n")
        assert done.returncode == 0, done.stderr
        assert "published 3 messages" in done.stderr, done.stderr
        session = done.stderr.split("into session ")[1].split(",")[0]
        assert asyncio.run(_read(server.port, session, 3)) == [b"one", b"two", b"three"]


def test_publish_to_servers_none_of_which_answers_says_what_each_did() -> None:
    ports = [free_port(), free_port()]
    done = tickertape(
        "publish", *(arg for port in ports for arg in ("--server", f"127.0.0.1:{port}")),
        stdin="x\n",
    )  # fmt: skip
    line = _refused(done)
    assert "cannot log in as a publisher to any of 2 servers" in line, line
    for port in ports:
        assert f"127.0.0.1:{port}: connection refused" in line, line


def test_tail_of_several_servers_skips_a_dead_one(tmp_path: Path) -> None:
    dead = free_port()
    with ServerProcess(tmp_path / "data") as server:
        asyncio.run(_publish(server.port, [b"one", b"two"]))
        done = tickertape(
            "tail", "--server", f"127.0.0.1:{dead}", "--server", f"127.0.0.1:{server.port}",
            "--count", "2",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["1 one", "2 two"]
    ports = [free_port(), free_port()]
    line = _refused(tickertape("tail", "--server", ",".join(f"127.0.0.1:{p}" for p in ports)))
    assert "cannot log in to any of 2 servers" in line and "--wait" in line, line


def test_tail_moves_to_the_next_server_when_one_is_lost(tmp_path: Path) -> None:
    """Server A writes the data directory, B follows it (the same sessions, read-only):
    a tail of both reads from A, and when A stops, from B at the next number. A writer
    started again on the directory (at another port) publishes the rest, which B serves."""
    data = tmp_path / "data"
    with ServerProcess(data) as first, ServerProcess(data, follow=True) as follower:
        asyncio.run(_publish(first.port, [b"one", b"two"]))
        servers = f"127.0.0.1:{first.port},127.0.0.1:{follower.port}"
        tail = Tail("--server", servers, "--count", "4")
        try:
            tail.wait_for(tail.out, "2 two")
            first.stop()
            line = tail.wait_for(tail.err, f"connection to 127.0.0.1:{first.port} lost")
            assert f"logging in again at 3 to 127.0.0.1:{follower.port}" in line, line
            tail.wait_for(tail.err, f"logged in to 127.0.0.1:{follower.port} again")
            with ServerProcess(data) as second:
                asyncio.run(_publish(second.port, [b"three", b"four"]))
                assert tail.finish() == 0, tail.err
        finally:
            tail.finish()
    assert tail.out == ["1 one", "2 two", "3 three", "4 four"]


async def _read(port: int, session: str, count: int) -> list[bytes]:
    async with asyncio.timeout(TIMEOUT):
        client = await SoupClient.login(port, session=session, seq=1)
        try:
            return await client.messages(count)
        finally:
            client.close()
