"""A real ``tickertape serve`` that always starts again, and a data directory read
defensively.

- A session directory left empty (a roll killed between making the directory and its
  log, or one that failed for lack of space) does not stop the next start, and the start
  does not end the session before it knows it can go on.
- A roll that fails (no room on the disk, the day's last session) is refused, whoever asks
  for it (the admin API, a plug-in source): the server serves on.
- A symlink named like a session, and stray directories, are skipped with a warning:
  ``sessions list`` and ``GET /sessions`` answer, and nothing outside the data directory
  is written to.
- ``serve`` on a port that is taken leaves no session behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import ENDED_MARKER, LOG_FILE
from tickertape.store.log import SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.wire.soupbintcp import LoginAccepted, SequencedData, encode_sequenced_many

from support import ServerProcess, SoupClient, free_port

EXAMPLES = Path(__file__).parents[1] / "sources" / "example_sources.py"
TOKEN = "restart-admin-token"


def spec(function: str) -> str:
    return f"python:{EXAMPLES}:{function}"


def today() -> dt.date:
    return dt.date.today()  # the server's default schedule: midnight, local time


def session_name(day: dt.date, counter: int) -> str:
    return str(SessionId(day, counter))


def make_session(root: Path, name: str, messages: int = 3, *, ended: bool = False) -> Path:
    path = root / name
    with SessionLog.open(path, create=True) as session_log:
        payloads = [f"{name} {n}".encode() for n in range(1, messages + 1)]
        if payloads:
            session_log.append(encode_sequenced_many(payloads), len(payloads))
    if ended:
        Catalogue(root).mark_ended(SessionId.parse(name))
    return path


def tickertape(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin(port: int, method: str, path: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def login(port: int, session: str = "") -> tuple[LoginAccepted, SoupClient]:
    client = await SoupClient.login(port, session)
    accepted = await client.packet()
    assert isinstance(accepted, LoginAccepted), accepted
    return accepted, client


def active_session(port: int) -> str:
    """The session a blank login is given: the server answers on its event loop."""

    async def ask() -> str:
        accepted, client = await login(port)
        client.close()
        return accepted.session.strip()

    return asyncio.run(ask())


# ---------------------------------------------------------------------------- empty directories


@pytest.mark.parametrize(
    "case", ["killed admin roll", "killed opening of a new day", "killed start-up repair"]
)
def test_a_server_starts_with_an_empty_session_directory_a_killed_roll_left(
    tmp_path: Path, case: str
) -> None:
    """What a roll killed between making the directory and its log leaves."""
    data = tmp_path / "data"
    data.mkdir()
    day = today()
    if case == "killed admin roll":
        make_session(data, session_name(day, 1))
        empty = session_name(day, 2)
        expected, ended = session_name(day, 1), []  # continued: it was never ended
    elif case == "killed opening of a new day":
        make_session(data, session_name(day - dt.timedelta(days=1), 1))
        empty = session_name(day, 1)
        expected, ended = session_name(day, 1), [session_name(day - dt.timedelta(days=1), 1)]
    else:  # the repair ended today's 01 (it had lost published messages), then was killed
        make_session(data, session_name(day, 1), ended=True)
        empty = session_name(day, 2)
        expected, ended = session_name(day, 2), [session_name(day, 1)]
    (data / empty).mkdir()

    with ServerProcess(data) as server:
        server.wait_for_log(f"session {expected} open")
        assert active_session(server.port) == expected
        assert server.logged(str(data / empty))  # said what it did with it
        assert server.stop() == 0
    for info in Catalogue(data).sessions():
        assert info.ended == (str(info.id) in ended), info
    assert (data / expected / LOG_FILE).is_file()


KILLER = """
import os, signal
_pattern = os.environ.get("TICKERTAPE_TEST_KILL_AT_OPEN")
if _pattern:
    _open = os.open

    def _killing_open(path, flags, *args, **kwargs):
        if _pattern in os.fspath(path) and flags & os.O_CREAT:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, exactly here
        return _open(path, flags, *args, **kwargs)

    os.open = _killing_open
"""


@pytest.fixture
def killer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers started meanwhile are SIGKILLed as they create a file whose path holds
    ``$TICKERTAPE_TEST_KILL_AT_OPEN`` (a ``sitecustomize`` that wraps ``os.open``)."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILLER)
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{hooks}{os.pathsep}{path}" if path else str(hooks))


@pytest.mark.usefixtures("killer")
def test_a_server_killed_as_an_admin_roll_creates_the_next_session_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    day = today()
    first, second = session_name(day, 1), session_name(day, 2)
    admin_port = free_port()
    server = ServerProcess(data, "--admin-port", str(admin_port), "--admin-token", TOKEN)
    monkeypatch.setenv("TICKERTAPE_TEST_KILL_AT_OPEN", f"{second}/{LOG_FILE}")
    with server:
        server.wait_for_log("admin API listening")
        with pytest.raises((ConnectionError, urllib.error.URLError)):
            admin(admin_port, "POST", "/roll")  # the server dies making the next session
        assert server.stop() == -9
    monkeypatch.delenv("TICKERTAPE_TEST_KILL_AT_OPEN")
    with server:
        server.wait_for_log(f"session {first} open")  # continued: it never ended
        server.wait_for_log("admin API listening")
        status, answer = admin(admin_port, "POST", "/roll")
        assert (status, answer["session"]) == (200, second)
        assert server.stop() == 0
    assert [(str(i.id), i.ended) for i in Catalogue(data).sessions()] == [
        (first, True),
        (second, False),
    ]


@pytest.mark.usefixtures("killer")
def test_a_server_killed_as_it_opens_a_new_days_session_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    yesterday = session_name(today() - dt.timedelta(days=1), 1)
    make_session(data, yesterday)  # never ended: its day is over
    first = session_name(today(), 1)
    monkeypatch.setenv("TICKERTAPE_TEST_KILL_AT_OPEN", f"{first}/{LOG_FILE}")
    server = ServerProcess(data)
    with pytest.raises(AssertionError, match=r"server exited \(-9\)"):
        server.start()
    server.stop()
    assert not (data / yesterday / ENDED_MARKER).exists()  # not before it could go on
    monkeypatch.delenv("TICKERTAPE_TEST_KILL_AT_OPEN")
    with server:
        server.wait_for_log(f"session {first} open")
        assert active_session(server.port) == first
        assert server.stop() == 0
    assert [(str(i.id), i.ended) for i in Catalogue(data).sessions()] == [
        (yesterday, True),
        (first, False),
    ]


class InodeDisk:
    """A tmpfs with few inodes mounted on ``path``: :meth:`fill` leaves exactly one free
    (a roll can make its directory, not its log), :meth:`free` makes room again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fillers = path / "fillers"

    @classmethod
    @contextlib.contextmanager
    def mounted(cls, path: Path) -> Iterator[InodeDisk]:
        path.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64", "tmpfs", str(path)],
            check=True,
        )
        try:
            yield cls(path)
        finally:
            if subprocess.run(["umount", str(path)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=True)

    def fill(self) -> None:
        self.fillers.mkdir()
        made = []
        for n in range(1000):
            try:
                (self.fillers / str(n)).touch()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            made.append(self.fillers / str(n))
        made[-1].unlink()
        assert os.statvfs(self.path).f_ffree == 1

    def free(self) -> None:
        for filler in self.fillers.iterdir():
            filler.unlink()


def test_a_roll_that_fails_for_lack_of_space_is_refused_and_the_server_starts_again(
    tmp_path: Path,
) -> None:
    day = today()
    with InodeDisk.mounted(tmp_path / "disk") as disk:
        data = disk.path / "data"
        admin_port = free_port()
        server = ServerProcess(data, "--admin-port", str(admin_port), "--admin-token", TOKEN)
        with server:
            server.wait_for_log("admin API listening")
            first = session_name(day, 1)
            assert active_session(server.port) == first
            disk.fill()
            status, answer = admin(admin_port, "POST", "/roll")
            assert status == 409, answer
            assert "No space left on device" in str(answer["error"]), answer
            # It serves on, in the same session, and says so.
            assert active_session(server.port) == first
            assert admin(admin_port, "GET", "/sessions")[0] == 200
            server.wait_for_log(f"rolling session {first} failed")
            disk.free()
            assert server.stop() == 0
        assert [str(i.id) for i in Catalogue(data).sessions()] == [first]
        assert not (data / first / ENDED_MARKER).exists()
        # After space is freed, the restart works, and so does the next roll.
        with server:
            server.wait_for_log(f"session {first} open")
            server.wait_for_log("admin API listening")
            status, answer = admin(admin_port, "POST", "/roll")
            assert status == 200, answer
            assert answer["session"] == session_name(day, 2)
            assert active_session(server.port) == session_name(day, 2)
            assert server.stop() == 0


# ---------------------------------------------------------------------------- sources


def test_a_source_that_ends_sessions_past_the_days_last_leaves_the_server_serving(
    tmp_path: Path,
) -> None:
    last = session_name(today(), 99)
    with ServerProcess(tmp_path, "--source", spec("end_in_a_loop")) as server:
        line = server.wait_for_log("is stopped (the server keeps serving)", timeout=120)
        assert f"rolling session {last} failed" in line, line
        assert active_session(server.port) == last
        assert server.stop() == 0


def test_a_source_whose_roll_fails_for_lack_of_space_is_told_and_the_server_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = tmp_path / "trigger"  # outside the small disk
    monkeypatch.setenv("EXAMPLE_TRIGGER", str(trigger))
    day = today()
    first, second = session_name(day, 1), session_name(day, 2)
    with InodeDisk.mounted(tmp_path / "disk") as disk:
        data = disk.path / "data"
        with ServerProcess(data, "--source", spec("end_when_triggered")) as server:
            assert active_session(server.port) == first
            disk.fill()
            trigger.touch()
            line = server.wait_for_log(f"rolling session {first} failed")
            assert "No space left on device" in line

            async def told() -> bytes:
                _, client = await login(server.port, first)
                packet = await client.packet()
                client.close()
                assert isinstance(packet, SequencedData), packet
                return packet.payload

            # The source was told (its message says so), in the session that goes on.
            payload = asyncio.run(told())
            assert payload.startswith(b"not ended: rolling session " + first.encode()), payload
            assert b"No space left on device" in payload
            disk.free()
            trigger.touch()
            server.wait_for_log(f"session {second} open")
            assert active_session(server.port) == second
            assert server.stop() == 0
        with server:
            server.wait_for_log(f"session {second} open")
            server.wait_for_log("publishing as it yields")  # then SIGTERM is handled
            assert server.stop() == 0


def test_a_source_function_that_blocks_does_not_freeze_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = tmp_path / "trigger"
    monkeypatch.setenv("EXAMPLE_TRIGGER", str(trigger))
    data = tmp_path / "data"
    with ServerProcess(
        data, "--source", spec("stuck_first_call"), "--source-rate", "100"
    ) as server:
        blocked = trigger.with_suffix(".blocked")

        async def while_blocked() -> None:
            async with asyncio.timeout(30):
                while not blocked.exists():
                    await asyncio.sleep(0.01)
            # The function is blocked now: the server still logs clients in.
            accepted, client = await login(server.port)
            client.close()
            assert accepted.sequence == 1  # nothing published while it blocks
            trigger.touch()
            _, client = await login(server.port, accepted.session.strip())
            packet = await client.packet()
            client.close()
            assert packet == SequencedData(b"call 1")

        asyncio.run(while_blocked())
        assert server.stop() == 0


# ---------------------------------------------------------------------------- stray entries


def seed_strays(data: Path, outside: Path) -> dict[str, str]:
    """A session, a symlink named like a session pointing outside, and stray directories;
    what ``outside`` holds, to check that nothing there changed."""
    day = today()
    make_session(data, session_name(day - dt.timedelta(days=3), 1), ended=True)
    make_session(data, session_name(day, 1))
    outside.mkdir()
    make_session(outside, "target", messages=2)  # looks like a session not yet ended
    (data / session_name(day - dt.timedelta(days=2), 1)).symlink_to(outside / "target")
    (data / session_name(day - dt.timedelta(days=5), 1)).mkdir()  # empty
    only_index = data / session_name(day - dt.timedelta(days=5), 2)
    only_index.mkdir()
    (only_index / "index").write_bytes(b"\0" * 32)
    log_a_directory = data / session_name(day - dt.timedelta(days=5), 3)
    (log_a_directory / LOG_FILE).mkdir(parents=True)
    return {str(p.relative_to(outside)): _content(p) for p in sorted(outside.rglob("*"))}


def _content(path: Path) -> str:
    return "dir" if path.is_dir() else path.read_bytes().hex()


def test_a_data_directory_with_a_symlink_and_stray_directories_lists_cleanly(
    tmp_path: Path,
) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    before = seed_strays(data, outside)
    day = today()
    sessions = [session_name(day - dt.timedelta(days=3), 1), session_name(day, 1)]

    done = tickertape("sessions", "list", "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    assert [row["id"] for row in json.loads(done.stdout)] == sessions
    symlink = data / session_name(day - dt.timedelta(days=2), 1)
    assert str(symlink) in done.stderr  # one warning naming it
    assert done.stderr.count(str(symlink)) == 1
    done = tickertape("sessions", "list", "--data", str(data))
    assert done.returncode == 0, done.stderr

    admin_port = free_port()
    with ServerProcess(data, "--admin-port", str(admin_port), "--admin-token", TOKEN) as server:
        server.wait_for_log("admin API listening")
        status, answer = admin(admin_port, "GET", "/sessions")
        assert status == 200, answer
        listed = answer["sessions"]
        assert isinstance(listed, list)
        assert [row["id"] for row in listed] == sessions
        assert admin(admin_port, "POST", "/roll")[0] == 200
        assert server.logged(str(symlink))
        assert server.stop() == 0
    after = {str(p.relative_to(outside)): _content(p) for p in sorted(outside.rglob("*"))}
    assert after == before  # nothing outside was written to
    assert symlink.is_symlink()


# ---------------------------------------------------------------------------- busy port


@pytest.mark.parametrize("taken", ["SoupBinTCP", "admin API"])
def test_serve_on_a_busy_port_leaves_no_session_directory(tmp_path: Path, taken: str) -> None:
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = ["--port", str(port)] if taken == "SoupBinTCP" else ["--admin-port", str(port)]
        done = tickertape("serve", "--host", "127.0.0.1", *ports, "--data", str(data))
    assert done.returncode == 1
    what = "" if taken == "SoupBinTCP" else " for the admin API"
    assert f"cannot listen{what} on 127.0.0.1:{port}" in done.stderr, done.stderr
    left = [p.name for p in data.iterdir()] if data.exists() else []
    assert not [name for name in left if SessionId.is_valid(name)], left
