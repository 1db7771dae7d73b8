"""Hostile clients against a real server, over real sockets on 127.0.0.1.

Each hostile client gets its documented treatment: a Debug packet saying why, then the
close (a bad length field, an unknown packet type, garbage or the wrong packet before a
login, a login not done in time, one connection too many); or bounded memory (a
subscriber that reads a byte at a time); or held-back input (a client that pipelines
megabytes after its Login Request). Meanwhile a well-behaved subscriber, in a process of
its own, logged in from sequence 1, receives the server's demo stream: every message in
order, byte for byte what the server's log holds. Its rate and lag are printed for a
window before the attack and for the attack itself (printed, not asserted: timing varies
from machine to machine; correctness is asserted).

The server runs as ``tickertape serve`` in a subprocess with the demo source, a users file
and ``--allow-anonymous`` (anonymous logins may subscribe but not publish, so that the
packet limit of a logged-in subscriber applies), except for the login timeout, which is
tested on an in-process server whose event loop's clock jumps (see test_timers.py).

The well-behaved subscriber is this file run as a script (see the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import hashlib
import itertools
import json
import os
import queue
import random
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import psutil
import pytest

from tickertape.auth.users import Users
from tickertape.protocol.server import MAX_LOGIN_PACKET_LENGTH, MAX_PENDING_BYTES
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import DEFAULT_MAX_CLIENT_PACKET, DEFAULT_WRITE_BUFFER_HIGH
from tickertape.sources.demo import demo_payload
from tickertape.store.layout import LOG_FILE
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    SequencedData,
    ServerHeartbeat,
    ServerPacket,
    UnsequencedData,
    decode_server_packet,
)

from support import JumpingLoop, ServerProcess, running_server

MiB: Final = 1 << 20
TIMEOUT: Final = 10.0
"""Seconds any one wait for the server may take."""
CHILD_LIMIT: Final = 100.0
"""Seconds the well-behaved subscriber's process lives at most."""

RATE: Final = 20_000
"""Demo messages a second the server publishes while it is attacked."""
SIZE: Final = 100
"""Bytes per demo message."""
BASELINE: Final = 0.5
"""Seconds of the well-behaved subscriber's stream measured before the attack."""
ATTACK: Final = 0.5
"""Hostile exchanges are repeated, round after round, for at least this many seconds..."""
MAX_ROUNDS: Final = 200
"""...and at most this many rounds."""

SUBSCRIBER: Final = "sub"
"""A user of the users file with the subscriber role only."""
PASSWORD: Final = "secret"

LOGIN: Final = LoginRequest("", "", "", 0)
"""An anonymous subscriber's login, from the next message published."""

HEARTBEAT: Final = ClientHeartbeat().encode()
DEMO: Final = re.compile(rb"(\d+) \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z demo *")
"""A demo message (tickertape.sources.demo): its own number, the time it was made, 'demo'."""


# ------------------------------------------------------------------------------------- the stream


class StreamError(AssertionError):
    pass


class StreamCheck:
    """Checks a subscriber's stream: Login Accepted for sequence 1, then the demo
    messages 1, 2, 3... of ``size`` bytes, each numbered with its own sequence number
    (heartbeats skipped). Keeps a digest of the Sequenced Data packets as sent: from
    sequence 1 they must equal the start of the session's log file."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.next_seq = 1
        self.logged_in = False
        self.bytes = 0
        self.digest = hashlib.sha256()
        self.last: bytes | None = None
        self._framer = Framer()

    def feed(self, data: bytes) -> None:
        self._framer.feed(data)
        for frame in self._framer:
            if frame[0] == 0x53 and self.logged_in:  # S
                payload = frame[1:]
                match = DEMO.fullmatch(payload)
                if match is None or len(payload) != self.size or int(match[1]) != self.next_seq:
                    raise StreamError(
                        f"{self.name}: expected message {self.next_seq}, got {payload[:40]!r}"
                    )
                self.digest.update(len(frame).to_bytes(2, "big"))
                self.digest.update(frame)
                self.bytes += 2 + len(frame)
                self.next_seq += 1
                self.last = payload
                continue
            packet = decode_server_packet(frame)
            if not self.logged_in and isinstance(packet, LoginAccepted) and packet.sequence == 1:
                self.logged_in = True
            elif not (self.logged_in and isinstance(packet, ServerHeartbeat)):
                raise StreamError(f"{self.name}: at {self.next_seq}: unexpected {packet!r}")

    def lag(self) -> float:
        """Seconds since the last message received was made (0 before any)."""
        if self.last is None:
            return 0.0
        stamp = self.last.split(b" ", 2)[1].decode()
        made = dt.datetime.fromisoformat(stamp)
        return (dt.datetime.now(dt.UTC) - made).total_seconds()


def session_log(data: Path) -> Path:
    (found,) = data.glob(f"*/{LOG_FILE}")
    return found


def assert_identical(data: Path, digest: str, length: int, who: str) -> None:
    """What ``who`` received from sequence 1 is, byte for byte, the start of the log."""
    with session_log(data).open("rb") as log_file:
        prefix = log_file.read(length)
    assert len(prefix) == length, f"{who} received {length} bytes; the log has {len(prefix)}"
    assert hashlib.sha256(prefix).hexdigest() == digest, f"{who}: bytes differ from the log"


# -------------------------------------------------------------------- the well-behaved subscriber


@dataclass(frozen=True)
class Report:
    received: int
    """Messages received, 1 to this, in order."""
    bytes: int
    sha256: str
    windows: dict[str, tuple[float, float]]
    """Per window between marks: messages a second, and the largest lag seen (seconds)."""

    def describe(self, window: str) -> str:
        rate, lag = self.windows[window]
        return f"{rate:,.0f} msg/s (max lag {lag * 1000:.0f} ms)"


class GoodSubscriber:
    """The well-behaved subscriber: this file run as a script, in a process of its own.

    It logs in anonymously from sequence 1, checks every message (:class:`StreamCheck`),
    sends a heartbeat every second, and says ``live`` once it receives messages made
    less than 0.1 s ago. :meth:`mark` starts a measurement window; :meth:`finish` returns
    the :class:`Report`. It gives up after CHILD_LIMIT seconds whatever happens.
    """

    def __init__(self, port: int, *, size: int = SIZE, timeout_ms: int | None = None) -> None:
        tests = str(Path(__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=tests if not path else tests + os.pathsep + path)
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(port), str(size), str(timeout_ms or 0)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            self._lines.put(raw.decode().rstrip())
        self._lines.put("")

    def expect(self, word: str, timeout: float = TIMEOUT) -> str:
        """Wait for the line ``word`` (or a JSON line, for ``{``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"the good subscriber did not say {word!r} in {timeout} s"
                ) from None
            if line.startswith('{"error"'):
                raise AssertionError(f"the good subscriber failed: {json.loads(line)['error']}")
            if not line:
                raise AssertionError(f"the good subscriber exited before saying {word!r}")
            if line == word or (word == "{" and line.startswith("{")):
                return line

    def mark(self, name: str) -> None:
        self._command(f"mark {name}")

    def _command(self, text: str) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(f"{text}\n".encode())
        stdin.flush()

    def finish(self) -> Report:
        self._command("stop")
        result = json.loads(self.expect("{"))
        self._process.wait(TIMEOUT)
        marks: list[tuple[str, float, int, float]] = [tuple(m) for m in result["marks"]]
        windows = {}
        for (name, start, count, _), (_, end, end_count, lag) in itertools.pairwise(marks):
            windows[name] = ((end_count - count) / max(end - start, 1e-9), lag)
        return Report(result["received"], result["bytes"], result["sha256"], windows)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(TIMEOUT)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()


def subscribe(port: int, size: int, timeout_ms: int, out: IO[str]) -> int:
    """The well-behaved subscriber's process (see :class:`GoodSubscriber`). Commands on
    stdin: ``mark NAME``, ``stop``. On ``stop`` it writes its result as one JSON line."""

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    check = StreamCheck("the good subscriber", size)
    marks: list[tuple[str, float, int, float]] = []
    lag = 0.0
    live = False
    commands = b""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(LoginRequest("", "", "", 1, timeout_ms or None).encode())
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        selector.register(sys.stdin, selectors.EVENT_READ)
        next_heartbeat = time.monotonic() + 1.0
        give_up = time.monotonic() + CHILD_LIMIT
        while time.monotonic() < give_up:
            for key, _ in selector.select(0.1):
                if key.fileobj is sock:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise StreamError(f"the server closed the connection at {check.next_seq}")
                    check.feed(data)
                    lag = max(lag, check.lag())
                    if check.last is not None and check.lag() < 0.1 and not live:
                        live = True
                        say("live")
                    continue
                chunk = os.read(sys.stdin.fileno(), 4096)
                commands += chunk or b"stop\n"
                while b"\n" in commands:
                    line, _, commands = commands.partition(b"\n")
                    word, _, name = line.decode().partition(" ")
                    marks.append((name or word, time.monotonic(), check.next_seq - 1, lag))
                    lag = 0.0
                    if word == "stop":
                        say(
                            json.dumps(
                                {
                                    "received": check.next_seq - 1,
                                    "bytes": check.bytes,
                                    "sha256": check.digest.hexdigest(),
                                    "marks": marks,
                                }
                            )
                        )
                        sock.close()
                        return 0
            if time.monotonic() >= next_heartbeat:
                next_heartbeat += 1.0
                sock.send(HEARTBEAT)
        raise StreamError(f"no stop command in {CHILD_LIMIT} s")
    except (OSError, AssertionError, ValueError) as exc:
        say(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1


# ------------------------------------------------------------------------------------- the server


@contextlib.contextmanager
def demo_server(
    tmp_path: Path, *args: str, rate: int = RATE, size: int = SIZE
) -> Iterator[ServerProcess]:
    """``tickertape serve`` publishing demo messages, with a users file holding one
    subscriber (:data:`SUBSCRIBER`) and anonymous logins allowed to subscribe."""
    users_file = tmp_path / "users.toml"
    users = Users()
    users.add(SUBSCRIBER, PASSWORD, ["subscriber"])
    users.save(users_file)
    with ServerProcess(
        tmp_path / "data",
        "--durability",
        "none",
        "--users",
        str(users_file),
        "--allow-anonymous",
        "--demo",
        str(rate),
        "--demo-size",
        str(size),
        *args,
    ) as server:
        yield server


def assert_serving(server: ServerProcess) -> None:
    """The server process is alive, and a new subscriber is served: Login Accepted, then
    message 1."""
    status = psutil.Process(server.pid).status()
    assert status not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD), status
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(LoginRequest("", "", "", 1).encode())
        packets = read_packets(sock, until=SequencedData)
    assert isinstance(packets[0], LoginAccepted), packets[0]
    assert isinstance(packets[-1], SequencedData) and packets[-1].payload.startswith(b"1 ")


def read_packets(
    sock: socket.socket, until: type, framer: Framer | None = None
) -> list[ServerPacket]:
    """Packets (heartbeats left out) up to the first of type ``until``; what follows it
    stays in ``framer``."""
    framer = framer or Framer()
    packets: list[ServerPacket] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for frame in framer:
            packet = decode_server_packet(frame)
            if not isinstance(packet, ServerHeartbeat):
                packets.append(packet)
            if isinstance(packet, until):
                return packets
        data = sock.recv(65536)
        assert data, f"closed while waiting for {until.__name__}: {packets}"
        framer.feed(data)
    raise AssertionError(f"no {until.__name__} in {TIMEOUT} s: {packets}")


def under_attack(
    tmp_path: Path,
    server: ServerProcess,
    case: str,
    attack: Callable[[], str],
    *,
    size: int = SIZE,
) -> Report:
    """Run ``attack`` while the well-behaved subscriber receives the demo stream: a
    window of its stream before the attack, one during it. Afterwards the server must
    still serve, and what the subscriber received must be the log, byte for byte."""
    good = GoodSubscriber(server.port, size=size)
    try:
        good.expect("live")
        good.mark("baseline")
        time.sleep(BASELINE)  # the measurement window itself
        good.mark("attack")
        started = time.monotonic()
        what = attack()
        elapsed = time.monotonic() - started
        good.mark("after")
        assert_serving(server)
        report = good.finish()
    finally:
        good.close()
    assert_identical(tmp_path / "data", report.sha256, report.bytes, "the good subscriber")
    print(
        f"\n{case}: {what} in {elapsed:.2f} s; the good subscriber received "
        f"{report.received} messages, all in order and identical to the log: "
        f"baseline {report.describe('baseline')}, under attack {report.describe('attack')}"
    )
    return report


# --------------------------------------------------------------------------- one hostile exchange


@dataclass(frozen=True)
class Hostile:
    """A client that sends ``data`` (once logged in, if ``logged_in``) and must get a
    Debug packet whose text holds each of ``words``, then the close."""

    what: str
    data: bytes
    words: tuple[str, ...]
    logged_in: bool = False


@dataclass
class Answer:
    packets: list[ServerPacket]
    """What the server sent, heartbeats and Sequenced Data left out."""
    ending: str
    """How it ended: ``EOF`` (the server closed) or ``reset``."""


def read_to_close(sock: socket.socket, framer: Framer | None = None) -> Answer:
    """What the server sends until it closes the connection (within TIMEOUT)."""
    framer = framer or Framer()
    packets: list[ServerPacket] = []
    deadline = time.monotonic() + TIMEOUT
    ending = ""
    while not ending:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"not closed in {TIMEOUT} s; sent {packets}") from None
        except ConnectionResetError:
            ending = "reset"
            data = b""
        if not data:
            ending = ending or "EOF"
        framer.feed(data)
        for frame in framer:
            packet = decode_server_packet(frame)
            if not isinstance(packet, ServerHeartbeat | SequencedData):
                packets.append(packet)
    return Answer(packets, ending)


def converse(port: int, hostile: Hostile) -> Answer:
    """Connect, log in if the hostile client does, send its bytes; what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        framer = Framer()
        before: list[ServerPacket] = []
        if hostile.logged_in:
            sock.sendall(LOGIN.encode())
            before = read_packets(sock, LoginAccepted, framer)
        sock.sendall(hostile.data)
        answer = read_to_close(sock, framer)
    return Answer(before + answer.packets, answer.ending)


def assert_treated(hostile: Hostile, answer: Answer) -> str:
    """A Debug packet saying why (after Login Accepted, if logged in), then the close.
    Returns the Debug text."""
    head = [LoginAccepted] if hostile.logged_in else []
    kinds = [type(packet) for packet in answer.packets]
    assert kinds == [*head, Debug], f"{hostile.what}: got {answer.packets}"
    debug = answer.packets[-1]
    assert isinstance(debug, Debug)
    text = debug.text.decode()
    for word in hostile.words:
        assert word in text, f"{hostile.what}: Debug {text!r} does not say {word!r}"
    assert answer.ending == "EOF", f"{hostile.what}: the connection ended by {answer.ending}"
    return text


def hammer(port: int, hostiles: list[Hostile]) -> tuple[str, dict[str, str]]:
    """Each hostile exchange in turn, round after round, for at least ATTACK seconds
    (at most MAX_ROUNDS rounds); each must be treated as documented. Returns what was
    done and the Debug text each got."""
    started = time.monotonic()
    texts: dict[str, str] = {}
    rounds = 0
    while rounds < MAX_ROUNDS and (rounds == 0 or time.monotonic() - started < ATTACK):
        for hostile in hostiles:
            texts[hostile.what] = assert_treated(hostile, converse(port, hostile))
        rounds += 1
    return f"{rounds} rounds of {len(hostiles)} hostile connections", texts


def run_hostiles(tmp_path: Path, case: str, hostiles: list[Hostile]) -> dict[str, str]:
    texts: dict[str, str] = {}

    def attack() -> str:
        what, found = hammer(server.port, hostiles)
        texts.update(found)
        return what

    with demo_server(tmp_path) as server:
        under_attack(tmp_path, server, case, attack)
    for what, text in texts.items():
        print(f"  {what}: Debug {text!r}")
    return texts


# ------------------------------------------------------------------------ (1)-(4) malformed input


def length(n: int) -> bytes:
    return n.to_bytes(2, "big")


LIMIT: Final = DEFAULT_MAX_CLIENT_PACKET


def test_oversized_length_fields(tmp_path: Path) -> None:
    """Before a login a client may send at most a Login Request (52 bytes); a logged-in
    subscriber that may not publish, at most --max-client-packet (1024). A longer length
    field closes the connection before the packet's bytes are taken in. (A publisher's
    limit is the longest message the engine takes, 65534 bytes: the largest a length
    field holds, so a publisher's length field cannot be too long.)"""
    login_limit = f"at most {MAX_LOGIN_PACKET_LENGTH}"
    run_hostiles(
        tmp_path,
        "oversized length",
        [
            Hostile("length 0xFFFF before login", b"\xff\xffL" + bytes(64), ("65535", login_limit)),
            Hostile(
                "length 53, one over a 4.10 Login Request",
                length(53) + b"L" + b" " * 52,
                ("packet length 53", login_limit),
            ),
            Hostile(
                "Unsequenced Data of 5000 bytes from a subscriber",
                UnsequencedData(b"x" * 5000).encode(),
                ("packet length 5001", f"at most {LIMIT}"),
                logged_in=True,
            ),
            Hostile(
                "length 1025 from a subscriber",
                length(LIMIT + 1) + b"U" + bytes(LIMIT),
                (f"packet length {LIMIT + 1}", f"at most {LIMIT}"),
                logged_in=True,
            ),
            Hostile(
                "length 0xFFFF from a subscriber",
                b"\xff\xffU" + bytes(64),
                ("packet length 65535", f"at most {LIMIT}"),
                logged_in=True,
            ),
            # At the limit the length passes; the packet is then refused for what it is.
            Hostile(
                "Unsequenced Data of 1024 bytes (the limit) from a subscriber",
                UnsequencedData(bytes(LIMIT - 1)).encode(),
                ("may not publish", "publisher role"),
                logged_in=True,
            ),
        ],
    )


def test_zero_length(tmp_path: Path) -> None:
    words = ("packet length 0", "at least its 1-byte type")
    run_hostiles(
        tmp_path,
        "zero length",
        [
            Hostile("length 0 before login", b"\x00\x00", words),
            Hostile("length 0 after a Debug packet", Debug(b"hello").encode() + b"\x00\x00", words),
            Hostile("length 0 from a subscriber", b"\x00\x00", words, logged_in=True),
        ],
    )


def test_unknown_packet_types_and_packets_out_of_place(tmp_path: Path) -> None:
    """An unknown type, or any packet but a Login Request or a Debug before the login,
    closes the connection with a Debug saying why."""
    first = "expected a Login Request first"
    run_hostiles(
        tmp_path,
        "unknown types",
        [
            Hostile("type Q before login", b"\x00\x01Q", ("unknown packet type b'Q'",)),
            Hostile(
                "a server's type (S) before login",
                b"\x00\x05Sabcd",
                ("unknown packet type b'S'",),
            ),
            Hostile("type Q from a subscriber", b"\x00\x01Q", ("unknown packet type b'Q'",), True),
            Hostile(
                "type 0x00 from a subscriber",
                b"\x00\x02\x00\x00",
                ("unknown packet type b'\\x00'",),
                logged_in=True,
            ),
            Hostile("Client Heartbeat before login", HEARTBEAT, (first, "Client Heartbeat")),
            Hostile(
                "Unsequenced Data before login",
                UnsequencedData(b"hi").encode(),
                (first, "Unsequenced Data"),
            ),
            Hostile(
                "a Login Request of 30 bytes",
                length(30) + b"L" + b" " * 29,
                ("Login Request packet of 30 bytes", "47", "52"),
            ),
            Hostile(
                "a second Login Request",
                LoginRequest("", "", "", 1).encode(),
                ("second Login Request",),
                logged_in=True,
            ),
        ],
    )


def test_a_debug_packet_before_login_is_ignored_and_a_logout_before_login_just_closes(
    tmp_path: Path,
) -> None:
    """The two packets before a login that do not close with a Debug: a Debug packet is
    ignored (spec 4.1, 2.1), and a Logout Request closes the connection, as asked."""

    def attack() -> str:
        started = time.monotonic()
        for _ in range(MAX_ROUNDS):
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                sock.sendall(Debug(b"hello").encode() + LoginRequest("", "", "", 1).encode())
                packets = read_packets(sock, until=SequencedData)
                assert isinstance(packets[0], LoginAccepted), packets
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                sock.sendall(LogoutRequest().encode())
                answer = read_to_close(sock)
                assert answer.packets == [] and answer.ending == "EOF", answer
            if time.monotonic() - started >= ATTACK:
                break
        return "Debug-then-login and Logout-before-login connections"

    with demo_server(tmp_path) as server:
        under_attack(tmp_path, server, "Debug / Logout before login", attack)


def garbage() -> list[Hostile]:
    """Bytes from other protocols and random bytes: whatever the first two bytes say as a
    length field decides the treatment."""
    blobs = [
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        ("a TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32)),
        ("an SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n"),
    ]
    for seed in range(6):
        blobs.append((f"4 KiB of random bytes (seed {seed})", random.Random(seed).randbytes(4096)))
    hostiles = []
    for what, blob in blobs:
        n = int.from_bytes(blob[:2], "big")
        if n > MAX_LOGIN_PACKET_LENGTH:
            words: tuple[str, ...] = (f"packet length {n}", f"at most {MAX_LOGIN_PACKET_LENGTH}")
        elif n == 0:
            words = ("packet length 0",)
        else:
            continue  # a plausible length: see the typed cases
        if blob.startswith(b"\x16\x03"):  # recognised as TLS, and said so
            words = ("not TLS", "connect without TLS")
        hostiles.append(Hostile(what, blob, words))
    hostiles.append(
        Hostile(
            "a plausible length, then a byte that is no packet type",
            b"\x00\x05\xfe\x01\x02\x03\x04" + random.Random(9).randbytes(200),
            ("unknown packet type b'\\xfe'",),
        )
    )
    return hostiles


def test_garbage_before_login(tmp_path: Path) -> None:
    hostiles = garbage()
    assert len(hostiles) >= 8
    run_hostiles(tmp_path, "garbage before login", hostiles)


# ------------------------------------------------------------- (5) login timeout, on a fake clock


DRIBBLERS: Final = 40
"""Connections that each send half a login then nothing, and as many that send a login a
byte a (fake) second: with the well-behaved subscriber, within 100 from one address."""
PUBLISH_EVERY: Final = 0.005
PUBLISH_BATCH: Final = RATE * 5 // 1000
"""Messages published every PUBLISH_EVERY seconds: RATE a second."""


async def publish_demo(engine: Engine, stop: asyncio.Event) -> None:
    """Demo messages, a fixed batch per tick (not by the clock, which jumps)."""
    while not stop.is_set():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        first = engine.next_assigned
        batch = [demo_payload(seq, stamp, SIZE) for seq in range(first, first + PUBLISH_BATCH)]
        await engine.publish_many(batch)
        await asyncio.sleep(PUBLISH_EVERY)


async def connect(port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    return sock


async def until_accepted(sock: socket.socket) -> None:
    """Wait for Login Accepted (within TIMEOUT)."""
    loop = asyncio.get_running_loop()
    framer = Framer()
    deadline = loop.time() + TIMEOUT  # the clock jumps only forward: at most TIMEOUT
    while not any(isinstance(decode_server_packet(f), LoginAccepted) for f in framer):
        assert loop.time() < deadline, f"no Login Accepted in {TIMEOUT} s"
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert data, "closed before Login Accepted"
        framer.feed(data)


async def round_trip(port: int) -> None:
    """A new client logs in and is accepted: the server has run what was due before."""
    sock = await connect(port)
    with sock:
        await asyncio.get_running_loop().sock_sendall(sock, LOGIN.encode())
        await until_accepted(sock)


def assert_silent(socks: list[socket.socket]) -> None:
    """Nothing has arrived on these connections and they are open."""
    for sock in socks:
        with pytest.raises(BlockingIOError):
            sock.recv(1, socket.MSG_DONTWAIT)


async def closed_with(sock: socket.socket) -> Answer:
    """What the server sends until it closes the connection (within TIMEOUT)."""
    loop = asyncio.get_running_loop()
    framer = Framer()
    deadline = loop.time() + TIMEOUT
    while loop.time() < deadline:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        if not data:
            return Answer([decode_server_packet(frame) for frame in framer], "EOF")
        framer.feed(data)
    raise AssertionError(f"not closed in {TIMEOUT} s")


def test_half_a_login_then_silence_and_a_login_a_byte_a_second_end_at_the_login_timeout(
    tmp_path: Path,
) -> None:
    """Half a Login Request, then nothing; a Login Request sent one byte a second (47
    seconds' worth): at 30 s from the connection (the login timeout), each gets a Debug
    "no Login Request within 30.0 s" and is closed; not a moment before. A login sent a
    byte every half second is done in 23.5 s: accepted."""
    login = LoginRequest("", "", "", 0).encode()
    texts: set[str] = set()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        async with running_server(tmp_path / "data") as (engine, server):
            stop = asyncio.Event()
            publisher = asyncio.create_task(publish_demo(engine, stop))
            # Its 4.10 heartbeat timeout (99.999 s) outlasts the clock's jumps.
            good = GoodSubscriber(server.port, timeout_ms=99_999)
            try:
                await asyncio.to_thread(good.expect, "live")
                good.mark("baseline")
                await asyncio.sleep(BASELINE)
                good.mark("attack")
                started = time.monotonic()
                halves = [await connect(server.port) for _ in range(DRIBBLERS)]
                dribblers = [await connect(server.port) for _ in range(DRIBBLERS)]
                for sock in halves:
                    await loop.sock_sendall(sock, login[:20])
                for second in range(28):
                    for sock in dribblers:
                        await loop.sock_sendall(sock, login[second : second + 1])
                    loop.advance(1.0)
                    await asyncio.sleep(0.005)  # real time: the server reads each byte
                await round_trip(server.port)
                assert_silent(halves + dribblers)  # 28 s: all still waiting
                loop.advance(2.0)  # 30 s
                for sock in halves + dribblers:
                    answer = await closed_with(sock)
                    (debug,) = answer.packets
                    assert isinstance(debug, Debug), answer
                    texts.add(debug.text.decode())
                    sock.close()
                # A byte every half (fake) second: the whole login in 23.5 s, in time.
                sock = await connect(server.port)
                with sock:
                    for index in range(len(login)):
                        await loop.sock_sendall(sock, login[index : index + 1])
                        loop.advance(0.5)
                        await asyncio.sleep(0.005)
                    await until_accepted(sock)
                elapsed = time.monotonic() - started
                good.mark("after")
                await round_trip(server.port)
                report = await asyncio.to_thread(good.finish)
            finally:
                stop.set()
                await publisher
                good.close()
        assert_identical(tmp_path / "data", report.sha256, report.bytes, "the good subscriber")
        print(
            f"\nlogin timeout (fake clock): {DRIBBLERS} half logins and {DRIBBLERS} logins "
            f"a byte a second dropped at 30 s, one login a byte every 0.5 s accepted, in "
            f"{elapsed:.2f} s of real time; the good subscriber received {report.received} "
            f"messages, all in order and identical to the log: baseline "
            f"{report.describe('baseline')}, under attack {report.describe('attack')}"
        )

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(main())
    assert texts == {"no Login Request within 30.0 s"}


# ------------------------------------------------------------------- (6) thousands of connections


FLOOD: Final = 3000
"""Connections opened from 127.0.0.1."""
FLOOD_WINDOW: Final = 64
"""Connections opened but not yet answered, beyond those the server keeps: fewer than
the server's listen backlog (100), so that no SYN is dropped."""
FLOOD_DEADLINE: Final = 30.0
FD_SLACK: Final = 256
"""Descriptors the server may hold beyond its baseline and the connections it keeps:
sockets it accepted and is closing (asyncio accepts up to 100 per wake-up)."""
RSS_SLACK: Final = 16 * MiB


@dataclass
class Flood:
    kept: list[socket.socket]
    refused: int
    texts: set[str]
    peak_fds: int
    peak_rss: int


def flood(server: ServerProcess, count: int, keep: int) -> Flood:
    """Open ``count`` connections, at most FLOOD_WINDOW unanswered beyond ``keep`` at a
    time, and read what each gets. The refused ones are closed as they end; those never
    answered are returned."""
    process = psutil.Process(server.pid)
    selector = selectors.DefaultSelector()
    received: dict[socket.socket, bytearray] = {}
    received_by_fd: dict[int, socket.socket] = {}
    texts: set[str] = set()
    refused = launched = 0
    peak_fds = process.num_fds()
    peak_rss = process.memory_info().rss
    deadline = time.monotonic() + FLOOD_DEADLINE
    try:
        while refused < count - keep:
            assert time.monotonic() < deadline, (
                f"in {FLOOD_DEADLINE} s: {launched} connections opened, {refused} refused, "
                f"{len(received)} open"
            )
            while launched < count and len(received) < keep + FLOOD_WINDOW:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                code = sock.connect_ex(("127.0.0.1", server.port))
                assert code in (0, errno.EINPROGRESS), os.strerror(code)
                selector.register(sock, selectors.EVENT_READ)
                received[sock] = bytearray()
                received_by_fd[sock.fileno()] = sock
                launched += 1
                if launched % 100 == 0:
                    peak_fds = max(peak_fds, process.num_fds())
                    peak_rss = max(peak_rss, process.memory_info().rss)
            for key, _ in selector.select(1.0):
                sock = received_by_fd[key.fd]
                data = sock.recv(4096)
                if data:
                    received[sock] += data
                    continue
                framer = Framer()
                framer.feed(bytes(received.pop(sock)))
                packets = [decode_server_packet(frame) for frame in framer]
                assert len(packets) == 1 and isinstance(packets[0], Debug), packets
                texts.add(packets[0].text.decode())
                selector.unregister(sock)
                del received_by_fd[sock.fileno()]
                sock.close()
                refused += 1
        peak_fds = max(peak_fds, process.num_fds())
        peak_rss = max(peak_rss, process.memory_info().rss)
    except BaseException:
        for sock in received:
            sock.close()
        raise
    finally:
        selector.close()
    kept = list(received)
    return Flood(kept, refused, texts, peak_fds, peak_rss)


def login_again(port: int, attempts: int = 100) -> socket.socket:
    """A new subscriber, logged in; retried while the server has not yet seen the
    connections closed just before (it is refused as one too many meanwhile)."""
    for _ in range(attempts):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sock.sendall(LOGIN.encode())
        framer = Framer()
        while True:
            data = sock.recv(65536)
            framer.feed(data)
            packets = [decode_server_packet(frame) for frame in framer]
            if any(isinstance(p, LoginAccepted) for p in packets):
                return sock
            if not data:
                assert len(packets) == 1 and isinstance(packets[0], Debug), packets
                assert b"too many connections" in packets[0].text
                break
        sock.close()
        time.sleep(0.01)
    raise AssertionError(f"refused {attempts} times after the flood ended")


@pytest.mark.parametrize(
    ("option", "limit", "words"),
    [
        pytest.param(
            "--max-connections-per-source",
            100,
            ("too many connections from 127.0.0.1", "at most 100 from one address"),
            id="per-source",
        ),
        pytest.param(
            "--max-connections",
            50,
            ("too many connections", "this server takes at most 50"),
            id="in-all",
        ),
    ],
)
def test_thousands_of_connections_from_one_address(
    tmp_path: Path, option: str, limit: int, words: tuple[str, ...]
) -> None:
    """3000 connections from 127.0.0.1: as many as the limit stay open (the
    well-behaved subscriber is one of them), every other one gets a Debug saying why and
    is closed at once; the server's descriptors and memory stay bounded; once those kept
    are closed, new connections are accepted again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 256
    if soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(
            resource.RLIMIT_NOFILE,
            (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard),
        )
    result: list[Flood] = []

    def attack() -> str:
        process = psutil.Process(server.pid)
        base_fds, base_rss = process.num_fds(), process.memory_info().rss
        done = flood(server, FLOOD, limit - 1)
        result.append(done)
        try:
            assert done.refused == FLOOD - (limit - 1)
            assert len(done.kept) == limit - 1
            assert_silent(done.kept)  # kept, waiting for their logins
            for text in done.texts:
                for word in words:
                    assert word in text, text
            assert len(done.texts) == 1
            # Still full: one more is refused.
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                answer = read_to_close(sock)
            assert [p.text.decode() for p in answer.packets if isinstance(p, Debug)] == list(
                done.texts
            )
            assert done.peak_fds <= base_fds + limit + FD_SLACK, (done.peak_fds, base_fds)
            assert done.peak_rss <= base_rss + RSS_SLACK, (done.peak_rss, base_rss)
        finally:
            for sock in done.kept:
                sock.close()
        # Room again: new subscribers log in (one place stays free for the check after).
        again = [login_again(server.port) for _ in range(limit - 2)]
        for sock in again:
            sock.close()
        return (
            f"{FLOOD} connections ({done.refused} refused, {len(done.kept)} kept; server fds "
            f"{base_fds} -> peak {done.peak_fds}, RSS {base_rss / MiB:.1f} -> peak "
            f"{done.peak_rss / MiB:.1f} MiB), then {limit - 2} logins accepted again"
        )

    with demo_server(tmp_path, option, str(limit)) as server:
        under_attack(tmp_path, server, f"connection flood ({option} {limit})", attack)
        refusals = f"({(FLOOD - limit + 1) // 1000 * 1000} connections refused so far)"
        server.wait_for_log(refusals)
    print(f"  Debug: {result[0].texts}")


# ---------------------------------------------------------------------- (7) slow-loris subscriber


SLOW_RATE: Final = 20_000
SLOW_SIZE: Final = 1000
"""20 MB a second of demo messages."""
SLOW_RCVBUF: Final = 64 << 10
SLOW_DELAY: Final = 0.01
"""Seconds between the slow subscriber's one-byte reads."""
SLOW_MIN: Final = 2.0
SLOW_MAX: Final = 5.0
OWED: Final = 32 * MiB
"""The slow phase lasts until the slow subscriber is owed this much (at least SLOW_MIN
seconds, at most SLOW_MAX)."""
SLOW_RSS_BOUND: Final = DEFAULT_WRITE_BUFFER_HIGH + 1 * MiB + 10 * MiB
"""The server's RSS may grow this much over its baseline while one subscriber reads a
byte at a time: its write buffer (4 MiB), one batch (1 MiB) beyond it, and room for the
allocator and the good subscriber's buffers."""


class SlowReader:
    """A subscriber with a 64 KiB receive buffer, logged in from 1, that sends a
    heartbeat every second whatever it reads (slow, not dead)."""

    def __init__(self, port: int) -> None:
        self.stream = StreamCheck("the slow subscriber", SLOW_SIZE)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(LoginRequest("", "", "", 1).encode())
        self._next_heartbeat = time.monotonic() + 1.0

    def read(self, size: int) -> None:
        data = self.sock.recv(size)
        assert data, f"the slow subscriber was closed at {self.stream.next_seq}"
        self.stream.feed(data)
        if time.monotonic() >= self._next_heartbeat:
            self._next_heartbeat += 1.0
            self.sock.sendall(HEARTBEAT)


@pytest.mark.parametrize(
    "when",
    [
        pytest.param("catch-up", id="stalls-its-catch-up"),
        pytest.param("live", id="stalls-when-live"),
    ],
)
def test_slow_loris_subscriber(tmp_path: Path, when: str) -> None:
    """A subscriber with a 64 KiB receive buffer logs in from 1 and reads one byte at a
    time while far more than its write buffer is published: at once (``catch-up``: its
    replay from the log stalls) or once it has caught up (``live``: the batches handed
    to it fill its write buffer past the high-water mark, and it falls back to the log).
    The server's memory stays within its bound, the good subscriber gets everything,
    and the slow one, reading at full speed at last, gets every message in order, up to
    the last published before it did."""
    slow: list[SlowReader] = []

    def attack() -> str:
        process = psutil.Process(server.pid)
        log_path = session_log(tmp_path / "data")
        reader = SlowReader(server.port)
        slow.append(reader)
        stream = reader.stream
        with reader.sock:
            if when == "live":
                # Read at full speed past where the server handed it over to live.
                caught_up = f"127.0.0.1:{reader.sock.getsockname()[1]} caught up"
                deadline = time.monotonic() + TIMEOUT
                while not server.logged(caught_up):
                    assert time.monotonic() < deadline, f"not caught up in {TIMEOUT} s"
                    reader.read(1 << 20)
                live_from = int(server.wait_for_log(caught_up).rpartition(" ")[2])
                while stream.next_seq <= live_from:
                    assert time.monotonic() < deadline, f"not live in {TIMEOUT} s"
                    reader.read(1 << 20)
            baseline = peak = process.memory_info().rss
            started = time.monotonic()
            owed = reads = 0
            while reads < SLOW_MAX / SLOW_DELAY:
                reader.read(1)
                reads += 1
                time.sleep(SLOW_DELAY)  # the slowness is the attack
                if reads % 5 == 0:
                    rss = process.memory_info().rss
                    peak = max(peak, rss)
                    assert rss <= baseline + SLOW_RSS_BOUND, (
                        f"server RSS {rss / MiB:.1f} MiB, {baseline / MiB:.1f} at the start, "
                        f"with the slow subscriber owed {owed / MiB:.0f} MiB"
                    )
                    owed = log_path.stat().st_size - stream.bytes
                    if owed >= OWED and time.monotonic() - started >= SLOW_MIN:
                        break
            slow_for = time.monotonic() - started
            assert owed >= OWED, f"owed only {owed / MiB:.0f} MiB after {slow_for:.1f} s"
            # Now at full speed: every message published so far, and more.
            published = log_path.stat().st_size
            resumed = time.monotonic()
            deadline = resumed + 3 * TIMEOUT
            while stream.bytes < published:
                assert time.monotonic() < deadline, f"slow subscriber at {stream.next_seq}"
                reader.read(4 * MiB)
                peak = max(peak, process.memory_info().rss)
        return (
            f"a subscriber read {reads} bytes one at a time for {slow_for:.1f} s while "
            f"owed {owed / MiB:.0f} MiB (server RSS {baseline / MiB:.1f} -> peak "
            f"{peak / MiB:.1f} MiB, bound +{SLOW_RSS_BOUND / MiB:.0f}), then messages "
            f"1-{stream.next_seq - 1} ({stream.bytes / MiB:.0f} MiB) at full speed in "
            f"{time.monotonic() - resumed:.1f} s"
        )

    with demo_server(tmp_path, rate=SLOW_RATE, size=SLOW_SIZE) as server:
        under_attack(tmp_path, server, f"slow-loris subscriber ({when})", attack, size=SLOW_SIZE)
    (reader,) = slow
    assert_identical(
        tmp_path / "data", reader.stream.digest.hexdigest(), reader.stream.bytes, "the slow one"
    )


# --------------------------------------------------------------------------------- (8) pipelining


PIPELINE_OFFER: Final = 32 * MiB
"""Bytes a client tries to send right after its Login Request: Debug packets of 1000
bytes, which a server ignores (spec 4.1, 2.1) and which a subscriber may send."""


def tcp_queues(local: tuple[str, int], remote: tuple[str, int]) -> tuple[int, int]:
    """(bytes not yet acknowledged by the peer, bytes received but not read) of this
    machine's TCP socket from ``local`` to ``remote`` (/proc/net/tcp)."""

    def hexed(address: tuple[str, int]) -> str:
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    wanted = (hexed(local), hexed(remote))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no TCP socket {local} -> {remote}")


def push(sock: socket.socket, data: bytes) -> int:
    """Send what the socket takes without blocking, until it takes no more for 0.1 s or
    the server answers; returns the bytes sent."""
    sent = 0
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    try:
        while sent < len(data):
            events = selector.select(0.1)
            if not events or any(mask & selectors.EVENT_READ for _, mask in events):
                break
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(data[sent : sent + MiB])
    finally:
        selector.close()
    return sent


def exchange(sock: socket.socket, data: bytes, stream: StreamCheck) -> None:
    """Send all of ``data`` while reading what the server sends into ``stream`` (as a
    client must: a server catching it up does not read from it while the client does
    not read)."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while sent < len(data):
            assert time.monotonic() < deadline, f"sent {sent} of {len(data)} bytes"
            for _, mask in selector.select(1.0):
                if mask & selectors.EVENT_READ:
                    received = sock.recv(1 << 20)
                    assert received, f"closed after {sent} bytes sent"
                    stream.feed(received)
                if mask & selectors.EVENT_WRITE:
                    with contextlib.suppress(BlockingIOError):
                        sent += sock.send(data[sent : sent + MiB])
    sock.settimeout(TIMEOUT)


def test_pipelining_after_a_login_request(tmp_path: Path) -> None:
    """A client sends its Login Request and, at once, megabytes more. While the login is
    being decided (a password checked off the event loop; a failed one answered after
    a delay) the server holds back what follows and stops reading from the client: the
    bytes stay in the kernel and the client's sends block; the server never takes in
    more than MAX_PENDING_BYTES, so that limit never closes the connection. Then:
    rejected, the client gets Login Rejected and the close, and what it sent is never
    read; accepted, what it sent is read in order (heartbeats: fine; Unsequenced Data
    from a subscriber: a Debug and the close)."""
    findings: list[str] = []
    wrong_password = Debug(b"wrong username or password for user 'sub'")
    debug = Debug(b"d" * 997).encode()
    filler = debug * (PIPELINE_OFFER // len(debug))

    def attack() -> str:
        port = server.port
        # A failed login first: the next one from this address is answered after 0.5 s.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(LoginRequest(SUBSCRIBER, "wrong", "", 1).encode())
            assert read_to_close(sock) == Answer([wrong_password, LoginRejected("A")], "EOF")

        # Rejected: megabytes pipelined after a wrong password.
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        with sock:
            sock.sendall(LoginRequest(SUBSCRIBER, "wrong", "", 1).encode())
            sock.setblocking(False)
            pushed = push(sock, filler)
            client_tx, _ = tcp_queues(sock.getsockname(), sock.getpeername())
            _, server_rx = tcp_queues(sock.getpeername(), sock.getsockname())
            with pytest.raises(BlockingIOError):  # measured while the login was pending
                sock.recv(1, socket.MSG_DONTWAIT)
            taken = pushed - client_tx - server_rx
            assert pushed > MAX_PENDING_BYTES, f"only {pushed} bytes could be sent"
            assert taken <= MAX_PENDING_BYTES, f"the server took in {taken} bytes"
            sock.setblocking(True)
            answer = read_to_close(sock)
            # The unread bytes make the close a reset, after Login Rejected.
            assert answer.packets == [wrong_password, LoginRejected("A")], answer
            findings.append(
                f"rejected: {pushed / MiB:.1f} MiB sent after the login before the client's "
                f"sends blocked ({client_tx / MiB:.1f} MiB still in the client's kernel, "
                f"{server_rx / MiB:.2f} MiB unread in the server's), the server took in "
                f"{taken / 1024:.0f} KiB; then Login Rejected 'A' and {answer.ending}"
            )

        # Accepted: 32 MiB pipelined (reading the stream meanwhile), then the stream.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            stream = StreamCheck("the pipelining subscriber", SIZE)
            exchange(sock, LoginRequest(SUBSCRIBER, PASSWORD, "", 1).encode() + filler, stream)
            while stream.next_seq <= 1000:
                data = sock.recv(65536)
                assert data, f"closed at {stream.next_seq}"
                stream.feed(data)
            sock.sendall(LogoutRequest().encode())
            findings.append(
                f"accepted: {len(filler) / MiB:.0f} MiB of Debug packets pipelined after "
                f"the login, all read; then messages 1-{stream.next_seq - 1} in order"
            )

        # Accepted, then Unsequenced Data from a user who may not publish.
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(LoginRequest(SUBSCRIBER, PASSWORD, "", 0).encode())
            sock.setblocking(False)
            pushed = push(sock, UnsequencedData(b"x" * 1000).encode() * 4000)
            sock.setblocking(True)
            answer = read_to_close(sock)
            kinds = [type(p) for p in answer.packets]
            assert kinds == [LoginAccepted, Debug], answer
            text = answer.packets[1].text.decode()  # type: ignore[union-attr]
            assert "user 'sub' may not publish" in text and "publisher role" in text, text
            findings.append(
                f"accepted, then {pushed / MiB:.1f} MiB of Unsequenced Data: Login Accepted, "
                f"Debug {text!r}, {answer.ending}"
            )
        return "three pipelining clients"

    with demo_server(tmp_path) as server:
        under_attack(tmp_path, server, "pipelining", attack)
    for finding in findings:
        print(f"  {finding}")


# ----------------------------------------------------------------------- the subscriber's process


if __name__ == "__main__":
    port, size, timeout_ms = map(int, sys.argv[1:4])
    sys.exit(subscribe(port, size, timeout_ms, sys.stdout))


# ------------------------------------------------------------------- clients that stop reading


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["live", "catching up"])
def test_a_client_that_stops_reading_and_sending_is_cut_off(tmp_path: Path, when: str) -> None:
    """A subscriber that reads nothing and sends nothing, with a small receive buffer:
    live, its idle timeout (15 s) drops it and, as it does not read the Debug packet
    either, it is cut off 5 s later; catching up, its sendfile stops moving and it is cut
    off once that has lasted the idle timeout. Either way the server forgets it: no
    slot, no buffer. Fake clock, in-process server."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        async with running_server(tmp_path / "data") as (engine, server):
            big = [b"x" * 1000] * 1000
            if when == "catching up":
                for _ in range(64):  # 64 MB to replay: far more than the socket holds
                    await engine.publish_many(big)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            with sock:
                await loop.sock_sendall(sock, LoginRequest("", "", "", 1).encode())
                while not server.subscribers():
                    await asyncio.sleep(0.01)
                if when == "live":
                    for _ in range(16):  # 16 MB published: its buffer fills up
                        await engine.publish_many(big)
                await asyncio.sleep(0.2)
                assert server.connections == 1
                for _ in range(4):
                    loop.advance(5.0)  # 20 s: past the idle timeout, and the grace after
                    await asyncio.sleep(0.2)
                for _ in range(100):
                    if server.connections == 0:
                        break
                    loop.advance(1.0)
                    await asyncio.sleep(0.05)
                assert server.connections == 0, f"{when}: still held"
                assert server.subscribers() == []

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(main())  # bounded by pytest-timeout: the clock jumps
