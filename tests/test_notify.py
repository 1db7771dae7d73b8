"""``serve`` under a service manager: the sd_notify datagrams a fake ``NOTIFY_SOCKET``
(a unix datagram socket the test binds) receives from a real server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tickertape.notify import Notifier

from support import free_port

TIMEOUT = 30.0


def receive(sock: socket.socket, process: subprocess.Popen[bytes]) -> list[str]:
    """The lines of the next datagram; fails if none comes or the server exits first."""
    deadline = time.monotonic() + TIMEOUT
    sock.settimeout(0.2)
    while True:
        try:
            return sock.recv(4096).decode().split("\n")
        except TimeoutError:
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "no datagram"


def start(tmp_path: Path, port: int, address: str, **env: str) -> subprocess.Popen[bytes]:
    command = [
        *[sys.executable, "-m", "tickertape", "serve", "--host", "127.0.0.1"],
        *["--port", str(port), "--data", str(tmp_path / "data"), "--demo", "100"],
    ]
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ, NOTIFY_SOCKET=address, **env),
    )


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_once_the_port_accepts_then_status_watchdog_and_stopping(
    tmp_path: Path, abstract: bool
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"@tickertape-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind(b"\0" + name[1:].encode())
    else:
        name = str(tmp_path / "notify")
        sock.bind(name)
    port = free_port()
    process = start(tmp_path, port, name, WATCHDOG_USEC="400000")
    try:
        lines = receive(sock, process)
        assert lines[0] == "READY=1", lines
        # READY=1 says the server takes connections: it does, at once.
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        status = next(line for line in lines if line.startswith("STATUS="))
        session = status.split("session ")[1].split(",")[0]
        assert len(session) == 10 and session.isdigit(), status
        # Then STATUS= and WATCHDOG=1 lines, at half the watchdog interval.
        later = receive(sock, process)
        assert "WATCHDOG=1" in later, later
        assert any(line.startswith(f"STATUS=session {session}, ") for line in later), later
        rated = receive(sock, process)
        assert any("messages/s" in line for line in rated), rated
        process.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in (lines := receive(sock, process)):
            assert "READY=1" not in lines
    finally:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=TIMEOUT)
        sock.close()
    assert process.returncode == 0


def test_no_notify_socket_no_datagram_and_no_failure() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.send("READY=1")  # nowhere to send: nothing happens


def test_a_socket_that_is_gone_is_logged_once_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert notifier.enabled
    notifier.send("READY=1")
    notifier.send("STATUS=x")
    notifier.close()
    said = [r for r in caplog.records if "cannot notify" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"


def test_the_watchdog_is_someone_elses_when_its_pid_is_not_ours() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000"}
    assert Notifier(env).watchdog == 1.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog == 1.0
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog is None
