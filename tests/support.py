"""Helpers shared by the tests: a tickertape server in a real subprocess, or in-process;
event loops whose clock jumps (when told, or by itself when everything waits), a wall
clock that moves with them, a fake transport, and the one way to wait for something
(:func:`until`, :func:`until_sync`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import inspect
import mmap
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, overload

import psutil
import pytest

from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import ServerConfig, SoupBinTCPServer
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability, SessionLog
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRequest,
    SequencedData,
    ServerHeartbeat,
    ServerPacket,
    decode_server_packet,
)

_LISTENING = re.compile(rb"SoupBinTCP listening on ([\d.:a-f]+):(\d+)")


class ServerProcess:
    """``tickertape serve`` on 127.0.0.1 and a free port, in a subprocess.

    Its log (stderr) is collected in :attr:`lines`; ``wait_for_log`` waits for a line.
    With ``follow``, it serves ``data`` with ``--follow`` (read-only) instead of ``--data``.
    """

    def __init__(self, data: Path, *args: str, follow: bool = False) -> None:
        self.data = data
        self.args = args
        self.follow = follow
        self.lines: list[str] = []
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._seen = threading.Condition()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.lines = []
        self.port = 0
        command = [
            sys.executable,
            "-m",
            "tickertape",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--follow" if self.follow else "--data",
            str(self.data),
            *self.args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for_log("SoupBinTCP listening on", timeout)
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            match = _LISTENING.search(raw)
            with self._seen:
                if match:
                    self.port = int(match.group(2))
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        """The first log line containing ``text``; fails if the server exits first."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                assert self._process is not None
                if self._process.poll() is not None and not (
                    self._reader is not None and self._reader.is_alive()
                ):
                    raise AssertionError(
                        f"server exited ({self._process.returncode}) before logging {text!r}:\n"
                        + "\n".join(self.lines)
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"server did not log {text!r} in {timeout} s:\n" + "\n".join(self.lines)
                    )
                self._seen.wait(min(left, 0.2))

    def logged(self, text: str) -> bool:
        """Whether a log line containing ``text`` has arrived (does not wait)."""
        with self._seen:
            return any(text in line for line in self.lines)

    def running(self) -> bool:
        """Whether the server process has not exited."""
        return self._process is not None and self._process.poll() is None

    def rss(self) -> int:
        """The server's resident memory, bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self._process is not None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        return self._process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _thread_states(pid: int) -> list[str]:
    """The scheduler state letter of every thread of process ``pid`` (``T``: stopped)."""
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
        except FileNotFoundError:
            continue  # the thread ended
        states.append(stat.rpartition(b")")[2].split()[0].decode())
    return states


def pause(server: ServerProcess | subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGSTOP the server and wait until every one of its threads has stopped.

    A system call in progress (a write, an ``fdatasync``) completes before its thread
    stops, so the server's files are then at rest: what is on disk cannot change until
    :func:`resume`.
    """
    os.kill(server.pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not all(state in "Tt" for state in _thread_states(server.pid)):
        if time.monotonic() > deadline:
            raise AssertionError(f"server {server.pid} did not stop in {timeout} s")
        time.sleep(0.001)


def resume(server: ServerProcess | subprocess.Popen[bytes]) -> None:
    """SIGCONT: undo :func:`pause`."""
    os.kill(server.pid, signal.SIGCONT)


@contextlib.contextmanager
def paused(server: ServerProcess, timeout: float = 10.0) -> Iterator[None]:
    """The server stopped (see :func:`pause`) for the duration of the block."""
    pause(server, timeout)
    try:
        yield
    finally:
        resume(server)


@contextlib.asynccontextmanager
async def running_server(
    data: Path,
    config: ServerConfig | None = None,
    durability: Durability = Durability.NONE,
    engine: Engine | None = None,
) -> AsyncIterator[tuple[Engine, SoupBinTCPServer]]:
    """An engine (by default on ``data``) and a SoupBinTCP server in this event loop, on
    127.0.0.1 and a free port unless ``config`` says otherwise."""
    engine = engine or Engine(Catalogue(data, durability))
    await engine.start()
    server = SoupBinTCPServer(engine, config or ServerConfig(port=0))
    try:
        await server.start()
        yield engine, server
    finally:
        await server.close()
        await engine.close()


class _JumpingSelector(selectors.DefaultSelector):
    """The selector of an :class:`AutojumpLoop`: a select that would wait for a timer
    first looks (for ``autojump_threshold`` seconds of real time) whether any file
    descriptor is ready, and if none is, moves the loop's clock to the timer instead of
    waiting for it."""

    loop: AutojumpLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        if loop is None or timeout is None or timeout <= 0:
            # Something is ready to run (0), or nothing is scheduled (None: only I/O or
            # another thread can wake the loop, so there is nothing to jump to).
            return super().select(timeout)
        due = loop.time() + timeout
        events = super().select(min(timeout, loop.autojump_threshold))
        if not events:
            loop.offset += max(0.0, due - loop.time())
            loop.jumps += 1
        return events


class JumpingLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs with real time plus jumps made by :meth:`advance`:
    every timer due within the jump fires at once, in milliseconds of real time."""

    def __init__(self, selector: selectors.BaseSelector | None = None) -> None:
        super().__init__(selector)
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class AutojumpLoop(JumpingLoop):
    """A :class:`JumpingLoop` that jumps by itself, as trio's
    ``MockClock(autojump_threshold=0)``: whenever nothing is ready to run, no file
    descriptor is ready (real sockets included: the selector is asked, without waiting)
    and a timer is scheduled, the clock moves to that timer at once. So ``sleep(3600)``,
    timeouts, heartbeats and retry delays take no real time, and happen in the order
    their times say.

    Everything the test waits on must then be in this loop: a reply from another process
    or thread is not waited for, unless it comes within ``autojump_threshold`` seconds of
    real time (a ``wait_for`` on it would time out at once). :attr:`jumps` counts jumps."""

    def __init__(self, autojump_threshold: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        self.autojump_threshold = autojump_threshold
        self.jumps = 0
        selector.loop = self


class LoopClock:
    """A :class:`tickertape.clock.Clock` whose wall time starts at ``start`` and moves
    with the running event loop's clock (so a :class:`JumpingLoop` moves it too)."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self._origin: float | None = None

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def now(self) -> dt.datetime:
        loop_time = asyncio.get_running_loop().time()
        if self._origin is None:
            self._origin = loop_time
        return self.start + dt.timedelta(seconds=loop_time - self._origin)


@contextlib.contextmanager
def network_namespace(tag: str) -> Iterator[str]:
    """A network namespace of the test's own (needs root and iproute2), with multicast
    routed over its loopback; deleted afterwards. Yields its name."""
    name = f"tickertape-{tag}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", "lo", "multicast", "on"],
            ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *command], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


class SoupClient:
    """A raw SoupBinTCP client for tests: every packet but heartbeats, None once the
    server has closed the connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer()

    @classmethod
    async def login(
        cls, port: int, session: str = "", seq: int = 1, user: str = "", password: str = ""
    ) -> SoupClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(LoginRequest(user, password, session, seq).encode())
        return cls(reader, writer)

    TIMEOUT = 10.0
    """Seconds to wait for the server to send something."""

    async def packet(self) -> ServerPacket | None:
        while True:
            for frame in self.framer:
                packet = decode_server_packet(frame)
                if not isinstance(packet, ServerHeartbeat):
                    return packet
            data = await asyncio.wait_for(self.reader.read(65536), self.TIMEOUT)
            if not data:
                return None
            self.framer.feed(data)

    async def answer(self) -> ServerPacket | None:
        """The answer to the login: Login Accepted, or Login Rejected (the Debug packet
        that says why comes first: its text is kept in ``reason``)."""
        packet = await self.packet()
        if isinstance(packet, Debug):
            self.reason = packet.text.decode()
            packet = await self.packet()
        return packet

    reason = ""
    """The text of the Debug packet that came before a Login Rejected."""

    async def messages(self, count: int) -> list[bytes]:
        """Login Accepted, then the payloads of the next ``count`` messages."""
        accepted = await self.packet()
        assert isinstance(accepted, LoginAccepted), accepted
        got: list[bytes] = []
        while len(got) < count:
            packet = await self.packet()
            assert isinstance(packet, SequencedData), packet
            got.append(packet.payload)
        return got

    async def until_end(self) -> list[bytes]:
        """Every message up to End of Session, which must come, then the close."""
        messages = []
        while isinstance(packet := await self.packet(), SequencedData):
            messages.append(packet.payload)
        assert packet == EndOfSession(), packet
        assert await self.packet() is None  # closed after End of Session
        self.close()
        return messages

    async def session(self) -> tuple[LoginAccepted, list[bytes]]:
        """Login Accepted, then every message up to End of Session, then the close."""
        accepted = await self.packet()
        assert isinstance(accepted, LoginAccepted), accepted
        return accepted, await self.until_end()

    def close(self) -> None:
        self.writer.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FullDisk:
    """``os.write`` failing with ENOSPC, while ``full``, for the writes that hold
    ``marker`` (pick one that only the log's batches under test contain)."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, marker: bytes = b"Sfail", full: bool = True
    ) -> None:
        self.full = full
        self.marker = marker
        self.failures = 0
        self._write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data: bytes) -> int:
        if self.full and self.marker in data:
            self.failures += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._write(fd, data)


class CuttingProxy:
    """Forwards TCP (whatever it carries, TLS included) to a server on 127.0.0.1;
    :meth:`cut` aborts every connection passing through."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0
        self.cuts = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._pairs.append((writer, up_writer))

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        self.cuts += 1
        for down, up in self._pairs:
            for writer in (down, up):
                writer.transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class SmallDisk:
    """A tmpfs of 8 MiB mounted on ``path``; :meth:`fill` fills it, :meth:`free` makes
    room again."""

    reason = "no space left on device"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    @classmethod
    @contextlib.contextmanager
    def mounted(cls, path: Path) -> Iterator[SmallDisk | None]:
        """The disk, mounted (and unmounted afterwards, whatever happens); None if this
        machine does not let the test mount one."""
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"cannot mount a tmpfs ({done.stderr.strip()}): RLIMIT_FSIZE instead")
            yield None
            return
        try:
            yield cls(path)
        finally:
            if subprocess.run(["umount", str(path)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], check=True)

    def fill(self, pid: int, log_path: Path) -> None:
        with open(self._filler, "wb", buffering=0) as filler:
            chunk = 1 << 20
            while chunk:
                try:
                    filler.write(b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    chunk //= 2
        assert os.statvfs(self.path).f_bavail == 0
        # No room in the log's last page either:
        assert log_path.stat().st_size % mmap.PAGESIZE == 0

    def free(self, pid: int) -> None:
        self._filler.unlink()


class FileSizeLimit:
    """The server process's file-size limit, lowered to the log's size by :meth:`fill`
    and raised again by :meth:`free`."""

    reason = "file too large (over the file-size limit)"

    def __init__(self) -> None:
        self._limits: tuple[int, int] | None = None

    def fill(self, pid: int, log_path: Path) -> None:
        self._limits = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (log_path.stat().st_size, self._limits[1]))

    def free(self, pid: int) -> None:
        assert self._limits is not None
        resource.prlimit(pid, resource.RLIMIT_FSIZE, self._limits)


def session_payloads(session: Path) -> list[bytes]:
    """The payloads of every message a session's log holds (what its index vouches for)."""
    log = SessionLog.open(session, writable=False)
    try:
        data = log.read_range(0, log.offset_of(log.next_seq))
    finally:
        log.close()
    payloads, position = [], 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 2], "big")
        payloads.append(data[position + 3 : position + 2 + length])
        position += 2 + length
    return payloads


# ---------------------------------------------------------------------- waiting

TIMEOUT = 30.0
"""Seconds of real time :func:`until` waits by default before failing."""

T = TypeVar("T")


@overload
async def until(
    check: Callable[[], Awaitable[T | None]],
    what: str = ...,
    within: float = ...,
    interval: float = ...,
) -> T: ...
@overload
async def until(
    check: Callable[[], T | None], what: str = ..., within: float = ..., interval: float = ...
) -> T: ...
async def until(
    check: Callable[[], Any],
    what: str = "the condition",
    within: float = TIMEOUT,
    interval: float = 0.005,
) -> Any:
    """``check()``'s first true answer (awaited if it is awaitable), asked every
    ``interval`` seconds of the loop's clock; fails saying ``what`` after ``within``
    seconds of real time (so on an :class:`AutojumpLoop` too).

    This is the one way the tests wait for something they cannot await directly."""
    deadline = time.monotonic() + within
    while True:
        answer = check()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come true in {within} s (last: {answer!r})")
        await asyncio.sleep(interval)


def until_sync(
    check: Callable[[], T | None],
    what: str = "the condition",
    within: float = TIMEOUT,
    interval: float = 0.005,
) -> T:
    """:func:`until` for a test that is not in an event loop (it blocks the thread)."""
    deadline = time.monotonic() + within
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come true in {within} s (last: {answer!r})")
        time.sleep(interval)


# ---------------------------------------------------------------- fake transport


class FakeTransport(asyncio.Transport):
    """A transport that records what its protocol does to it, for tests of an asyncio
    protocol without a socket: every write (:attr:`writes`, :attr:`data`), ``write_eof``,
    ``pause_reading``/``resume_reading``, ``close`` and ``abort``.

    :meth:`fill` and :meth:`drain` play the kernel's side of flow control: they call the
    protocol's ``pause_writing``/``resume_writing`` as a real transport does when its
    buffer passes the high-water mark and goes back under the low one. ``close`` calls
    ``connection_lost(None)`` soon (as a real transport does: from the event loop, not from
    within ``close``); ``abort`` calls it too, and both discard later writes, which are
    counted in :attr:`writes_after_close`."""

    def __init__(
        self,
        protocol: asyncio.BaseProtocol | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(dict(extra or {}))
        self.protocol = protocol
        self.writes: list[bytes] = []
        self.eof_written = False
        self.reading = True
        self.closing = False
        self.aborted = False
        self.lost = False
        self.writing_paused = False
        self.writes_after_close = 0
        self.buffer_size = 0

    @property
    def data(self) -> bytes:
        """Every byte written, in order."""
        return b"".join(self.writes)

    def take(self) -> bytes:
        """The bytes written since the last take (and forget them)."""
        data = self.data
        self.writes.clear()
        return data

    # -- asyncio.Transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            self.writes_after_close += 1
            return
        if self.eof_written:
            raise RuntimeError("write after write_eof")
        if data:
            self.writes.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self.closing:
            return
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 65536 if high is None else high
        self._low = self._high // 4 if low is None else low

    _high = 65536
    _low = 16384

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading and not self.closing

    def is_closing(self) -> bool:
        return self.closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._lose_soon()

    def abort(self) -> None:
        self.aborted = True
        self.close()

    # -- the kernel's side

    def fill(self, size: int | None = None) -> None:
        """The peer stops reading: the buffer passes the high-water mark."""
        self.buffer_size = self._high + 1 if size is None else size
        if not self.writing_paused and self.protocol is not None:
            self.writing_paused = True
            self.protocol.pause_writing()

    def drain(self) -> None:
        """The peer reads everything: the buffer empties."""
        self.buffer_size = 0
        if self.writing_paused and self.protocol is not None:
            self.writing_paused = False
            self.protocol.resume_writing()

    def _lose_soon(self) -> None:
        def lose() -> None:
            if not self.lost:
                self.lost = True
                if self.protocol is not None:
                    self.protocol.connection_lost(None)

        try:
            asyncio.get_running_loop().call_soon(lose)
        except RuntimeError:  # no running loop: at once
            lose()
