"""``tickertape cluster demo`` as a user runs it: three nats-servers and three tickertape
nodes that each accept a SoupBinTCP login (a raw client written from the spec), a
sequencer named, and, on Ctrl-C (SIGINT), every process it started gone and exit 0; a
node that cannot start stops the demo with its log, leaving nothing behind either."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from support import free_port

READY = 150.0
"""Seconds for the whole cluster to start on a busy 2-core machine."""
STOPPED = 60.0
NODE_LINE = re.compile(r"^(node\d)  SoupBinTCP 127\.0\.0\.1:(\d+)  .*pid (\d+)$")
NATS_LINE = re.compile(r"^nats-server (n\d)  nats://127\.0\.0\.1:(\d+)  pid (\d+)$")
SEQUENCER_LINE = re.compile(r"^sequencer: (node\d) \(publishers connect to 127\.0\.0\.1:(\d+)\)$")


class Demo:
    """``tickertape cluster demo`` in a subprocess, its stdout collected line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tickertape", "cluster", "demo", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._seen:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, start: str, timeout: float = READY) -> str:
        """The first line that starts with ``start``; fails if the demo exits first."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if line.startswith(start):
                        return line
                if not self._reader.is_alive():
                    raise AssertionError(f"the demo exited before {start!r}:\n{self.output()}")
                left = deadline - time.monotonic()
                assert left > 0, f"no {start!r} in {timeout} s:\n{self.output()}"
                self._seen.wait(min(left, 0.5))

    def output(self) -> str:
        stderr = ""
        if self.process.poll() is not None and self.process.stderr is not None:
            stderr = self.process.stderr.read().decode(errors="replace")
        return "\n".join(self.lines) + "\n" + stderr

    def finish(self) -> int:
        """Wait for the demo to exit by itself (bounded); its exit status."""
        try:
            return self.process.wait(STOPPED)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def descendants(pid: int) -> list[psutil.Process]:
    return list(psutil.Process(pid).children(recursive=True))


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def raw_login(port: int) -> tuple[bytes, str, int]:
    """A subscriber login (SoupBinTCP 4.00 2.3.1: blank user, password and session, from
    the next message) on 127.0.0.1:``port``: the answer's type, session and sequence."""
    request = b"L" + b" " * 6 + b" " * 10 + b" " * 10 + b"0".rjust(20)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(struct.pack(">H", len(request)) + request)
        while True:
            (length,) = struct.unpack(">H", receive(sock, 2))
            packet = receive(sock, length)
            if packet[:1] in (b"A", b"J"):
                break  # a Debug or a heartbeat before it is skipped
        sock.sendall(struct.pack(">H", 1) + b"O")  # Logout Request
    if packet[:1] == b"J":
        return b"J", packet[1:].decode(), 0
    assert len(packet) == 31, packet
    return b"A", packet[1:11].decode().strip(), int(packet[11:31])


def receive(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the server closed the connection before its login answer"
        data += chunk
    return data


def test_the_demo_serves_logins_on_three_nodes_and_leaves_nothing_behind_on_ctrl_c(
    tmp_path: Path,
) -> None:
    base = free_port()
    demo = Demo("--dir", str(tmp_path / "demo"), "--base-port", str(base))
    try:
        demo.wait_for("Ctrl-C stops everything.")  # the last of the ready lines
        nats = [m for line in demo.lines if (m := NATS_LINE.match(line))]
        nodes = [m for line in demo.lines if (m := NODE_LINE.match(line))]
        sequencer = next(m for line in demo.lines if (m := SEQUENCER_LINE.match(line)))
        assert [m[1] for m in nats] == ["n1", "n2", "n3"]
        assert [(m[1], int(m[2])) for m in nodes] == [
            ("node1", base),
            ("node2", base + 1),
            ("node3", base + 2),
        ]
        assert sequencer[1] in ("node1", "node2", "node3")
        assert int(sequencer[2]) in (base, base + 1, base + 2)
        servers = ",".join(f"127.0.0.1:{port}" for port in (base, base + 1, base + 2))
        assert f"tail --server {servers}" in demo.output()
        assert f"publish --server {servers}" in demo.output()

        children = descendants(demo.process.pid)
        pids = {int(m[3]) for m in nats + nodes}
        assert pids <= {child.pid for child in children}
        assert (
            sorted(c.name() for c in children if c.pid in {int(m[3]) for m in nats})
            == ["nats-server"] * 3
        )
        for match in nodes:
            answer, session, _ = raw_login(int(match[2]))
            assert (answer, len(session)) == (b"A", 10), (match[1], answer, session)

        demo.process.send_signal(signal.SIGINT)
        assert demo.finish() == 0, demo.output()
        assert [child.pid for child in children if not gone(child.pid)] == []
        assert "stopping the nodes, then the nats-servers" in demo.lines
        assert (tmp_path / "demo" / "node1" / "data").is_dir()  # --dir is kept
    finally:
        demo.kill()


def test_a_node_that_cannot_start_stops_the_demo_with_its_log_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = Demo("--dir", str(tmp_path / "demo"), "--base-port", str(port))
        try:
            demo.wait_for("JetStream ready")
            children = descendants(demo.process.pid)
            nats = [int(m[3]) for line in demo.lines if (m := NATS_LINE.match(line))]
            assert len(nats) == 3
            assert demo.finish() == 1
        finally:
            demo.kill()
    output = demo.output()
    assert "node1 exited" in output, output
    assert str(tmp_path / "demo" / "node1" / "node.log") in output
    assert "ready." not in demo.lines
    assert [pid for pid in nats if not gone(pid)] == []
    assert [child.pid for child in children if not gone(child.pid)] == []
