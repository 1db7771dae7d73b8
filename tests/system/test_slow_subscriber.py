"""A subscriber that stops reading: the server's memory stays bounded, the others are not
slowed, and the stalled one gets everything once it reads again (design decision 2).

The server runs as ``tickertape serve`` in a subprocess, publishing demo messages fast.
Nine subscribers read as fast as they can; a tenth logs in at sequence 1 with a small
receive buffer and then reads nothing for several seconds, while far more than its
memory bound is published. Afterwards it must receive messages 1 to the last, in order.

It stops reading either once it is live (its write buffer fills: the high-water mark
path) or before it has read any of its replay (the catch-up from the log stalls).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Final

import pytest

from tickertape.wire.soupbintcp import LoginRequest

from support import ServerProcess

MiB: Final = 1 << 20

DEMO_RATE: Final = 200_000
"""Messages a second the server's demo source publishes."""
DEMO_SIZE: Final = 100
PACKET: Final = 2 + 1 + DEMO_SIZE
"""Bytes of one demo Sequenced Data packet on the wire: u16 length, 'S', payload."""
DEMO_COUNT: Final = 2_000_000
"""The demo stops after this many: about 200 MiB of packets, 10 s at DEMO_RATE."""

FAST_READERS: Final = 9
STALLED_RCVBUF: Final = 64 << 10

RSS_HEADROOM: Final = 40 * MiB
"""The server may grow this much over its RSS after start-up while one subscriber is
stalled: its bound is a 4 MiB write buffer plus one batch of at most 1 MiB; the rest is
room for the other subscribers' buffers and the allocator."""
OWED_FACTOR: Final = 3
"""The stall lasts until the stalled subscriber is owed this many times RSS_HEADROOM."""
MIN_STALL: Final = 3.0
MAX_STALL: Final = 40.0
CATCH_UP_GRACE: Final = 2.0
"""Seconds the fast readers may take to reach what any of them had at the stall's end."""
DEADLINE: Final = 90.0
"""Everything, start to finish, within this many seconds."""

HEARTBEAT: Final = b"\x00\x01R"
HEARTBEAT_EVERY: Final = 1.0
LOGIN_ACCEPTED_LENGTH: Final = 2 + 1 + 10 + 20


class StreamError(AssertionError):
    pass


class SoupStream:
    """Checks a server's byte stream: Login Accepted, then the demo's Sequenced Data
    packets numbered from ``first``, each payload starting with its own number and a
    space; heartbeats are skipped. ``next_seq`` is the number of the next one expected.

    ``full``: check every payload's number. Otherwise (cheap enough for nine readers at
    full speed) runs of whole packets are checked at C speed: every header by strided
    slices, the number of the first and last payload of the run.
    """

    def __init__(self, name: str, first: int = 1, *, full: bool) -> None:
        self.name = name
        self.next_seq = first
        self.full = full
        self.logged_in = False
        self.received = 0
        self._buffer = bytearray()
        self._pos = 0
        length = (1 + DEMO_SIZE).to_bytes(2, "big")
        self._header = (length[:1], length[1:], b"S")
        self._expected: tuple[int, bytes, bytes, bytes] = (0, b"", b"", b"")

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        buffer = self._buffer
        if self._pos and self._pos >= len(buffer) >> 1:
            del buffer[: self._pos]
            self._pos = 0
        buffer += data
        while self._run() or self._one():
            pass

    def _fail(self, what: str) -> StreamError:
        return StreamError(f"{self.name}: at sequence {self.next_seq}: {what}")

    def _run(self) -> bool:
        """Check the run of whole demo packets at the front; False if there is none."""
        if not self.logged_in:
            return False
        pos = self._pos
        n = (len(self._buffer) - pos) // PACKET
        if n == 0:
            return False
        if not self._headers_match(n):
            # Something else (a heartbeat) among them: the run is what comes before it.
            good, bad = 0, n
            while bad - good > 1:
                middle = (good + bad) // 2
                if self._headers_match(middle):
                    good = middle
                else:
                    bad = middle
            if good == 0:
                return self._one()
            n = good
        buffer, end, seq = self._buffer, pos + n * PACKET, self.next_seq
        if self.full:
            for offset in range(pos + 3, end, PACKET):
                prefix = b"%d " % seq
                if buffer[offset : offset + len(prefix)] != prefix:
                    raise StreamError(
                        f"{self.name}: packet {seq} has payload "
                        f"{bytes(buffer[offset : offset + 24])!r}"
                    )
                seq += 1
        else:
            for k, offset in ((0, pos + 3), (n - 1, end - PACKET + 3)):
                prefix = b"%d " % (seq + k)
                if buffer[offset : offset + len(prefix)] != prefix:
                    raise StreamError(
                        f"{self.name}: packet {seq + k} has payload "
                        f"{bytes(buffer[offset : offset + 24])!r}"
                    )
            seq += n
        self.next_seq = seq
        self._pos = end
        return True

    def _headers_match(self, n: int) -> bool:
        """Whether the next ``n`` packets all have a demo packet's header (strided
        slices: C speed)."""
        if self._expected[0] != n:
            high, low, kind = self._header
            self._expected = (n, high * n, low * n, kind * n)
        _, high, low, kind = self._expected
        buffer, pos = self._buffer, self._pos
        end = pos + n * PACKET
        return (
            buffer[pos:end:PACKET] == high
            and buffer[pos + 1 : end : PACKET] == low
            and buffer[pos + 2 : end : PACKET] == kind
        )

    def _one(self) -> bool:
        """Take one packet of any type from the front; False if none is complete."""
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < 2:
            return False
        length = int.from_bytes(buffer[pos : pos + 2], "big")
        if length == 0:
            raise self._fail("a packet of length 0")
        end = pos + 2 + length
        if end > len(buffer):
            return False
        kind = bytes(buffer[pos + 2 : pos + 3])
        body = bytes(buffer[pos + 3 : end])
        if not self.logged_in:
            if kind != b"A" or end - pos != LOGIN_ACCEPTED_LENGTH:
                raise self._fail(f"expected Login Accepted, got {kind!r} {body!r}")
            if int(body[10:]) != self.next_seq:
                raise self._fail(f"Login Accepted names sequence {body[10:]!r}")
            self.logged_in = True
        elif kind == b"S":
            if length != 1 + DEMO_SIZE or not body.startswith(b"%d " % self.next_seq):
                raise self._fail(f"payload of {length - 1} bytes: {body[:24]!r}")
            self.next_seq += 1
        elif kind != b"H":
            raise self._fail(f"unexpected packet {kind!r} {body!r}")
        self._pos = end
        return True

    def only_heartbeats_left(self) -> bool:
        while self._one():
            pass
        return self._pos == len(self._buffer)


def login(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(LoginRequest("reader", "", "", 1).encode())
    return sock


class FastReaders:
    """Subscribers that read everything as soon as it arrives, on one thread."""

    def __init__(self, port: int, count: int, last: int) -> None:
        self.last = last
        self.socks = [login(port) for _ in range(count)]
        self.streams = [SoupStream(f"fast reader {i}", full=False) for i in range(count)]
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fast-readers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def positions(self) -> list[int]:
        """The last sequence number each has received."""
        return [stream.next_seq - 1 for stream in self.streams]

    def done(self) -> bool:
        return all(stream.next_seq > self.last for stream in self.streams)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            for sock, checker in zip(self.socks, self.streams, strict=True):
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, (sock, checker))
            next_heartbeat = time.monotonic() + HEARTBEAT_EVERY
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    ready: socket.socket
                    stream: SoupStream
                    ready, stream = key.data
                    data = ready.recv(4 * MiB)
                    if not data:
                        raise StreamError(f"{stream.name}: the server closed the connection")
                    stream.feed(data)
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat += HEARTBEAT_EVERY
                    for sock in self.socks:
                        sock.send(HEARTBEAT)
        except BaseException as exc:
            self.error = exc
        finally:
            selector.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


class Stalled:
    """The subscriber that stops reading: a small receive buffer, heartbeats sent on
    time whether it reads or not (a client that is slow, not dead)."""

    def __init__(self, port: int) -> None:
        self.sock = login(port, rcvbuf=STALLED_RCVBUF)
        self.port = self.sock.getsockname()[1]
        self.stream = SoupStream("stalled reader", full=True)
        self._next_heartbeat = time.monotonic() + HEARTBEAT_EVERY

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_EVERY
            self.sock.send(HEARTBEAT)

    def read(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` seconds, at most one large chunk."""
        self.heartbeat()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4 * MiB)
        except TimeoutError:
            return
        if not data:
            raise StreamError(
                f"the server closed the stalled reader's connection at {self.stream.next_seq}"
            )
        self.stream.feed(data)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "when",
    [
        pytest.param("live", id="stops-reading-when-live"),
        pytest.param("replay", id="never-reads-its-replay"),
    ],
)
def test_stalled_subscriber_bounded_memory_others_unaffected_then_catches_up(
    tmp_path: Path, when: str
) -> None:
    """``live``: the stalled subscriber logs in at 1, reads until it is at the tail
    (the server hands it live batches), then stops reading: its write buffer passes the
    high-water mark and it must fall back to the log. ``replay``: it logs in at 1 when
    far behind the tail and reads nothing: its catch-up from the log stalls."""
    started = time.monotonic()

    def left() -> float:
        remaining = started + DEADLINE - time.monotonic()
        assert remaining > 0, f"the test did not finish in {DEADLINE} s"
        return remaining

    with ServerProcess(
        tmp_path / "data",
        "--durability",
        "none",
        "--demo",
        str(DEMO_RATE),
        "--demo-size",
        str(DEMO_SIZE),
        "--demo-count",
        str(DEMO_COUNT),
    ) as server:
        baseline = server.rss()
        fast = FastReaders(server.port, FAST_READERS, DEMO_COUNT)
        fast.start()
        stalled: Stalled | None = None
        try:
            # Let the fast readers catch up with what was published since start-up.
            time.sleep(1.0)
            assert fast.error is None, fast.error

            stalled = Stalled(server.port)
            if when == "live":
                # Read until at the tail, and the server says it handed over to live.
                target = max(fast.positions())
                live = f"127.0.0.1:{stalled.port} caught up"
                while stalled.stream.next_seq <= target or not server.logged(live):
                    left()
                    stalled.read(0.05)
                stalled.read(0.05)
            stall_from = max(*fast.positions(), stalled.stream.next_seq - 1)
            stall_started = time.monotonic()
            peak = baseline
            samples = 0
            # Stall: read nothing (but send heartbeats) until the stalled subscriber is
            # owed far more than its memory bound, and for a few seconds at least.
            while True:
                time.sleep(0.02)
                rss = server.rss()
                peak = max(peak, rss)
                samples += 1
                assert rss <= baseline + RSS_HEADROOM, (
                    f"server RSS {rss / MiB:.1f} MiB, started at {baseline / MiB:.1f} MiB, "
                    f"with one subscriber stalled for {time.monotonic() - stall_started:.1f} s "
                    f"and owed {(max(fast.positions()) - stall_from) * PACKET / MiB:.0f} MiB"
                )
                assert fast.error is None, fast.error
                stalled.heartbeat()
                owed = (min(fast.positions()) - stall_from) * PACKET
                stalled_for = time.monotonic() - stall_started
                if stalled_for >= MIN_STALL and owed >= OWED_FACTOR * RSS_HEADROOM:
                    break
                assert stalled_for < MAX_STALL, (
                    f"in {MAX_STALL} s the slowest fast reader received "
                    f"{owed / MiB:.0f} MiB; the test needs {OWED_FACTOR * RSS_HEADROOM / MiB:.0f}"
                )
            stall = time.monotonic() - stall_started
            stall_to = max(fast.positions())

            # The others were not held back: each has, or soon has, all that was
            # published during the stall.
            deadline = time.monotonic() + CATCH_UP_GRACE
            while min(fast.positions()) < stall_to:
                assert fast.error is None, fast.error
                assert time.monotonic() < deadline, (
                    f"fast readers at {fast.positions()} did not reach {stall_to} "
                    f"within {CATCH_UP_GRACE} s of the stall's end"
                )
                time.sleep(0.01)

            # The stalled one reads again: everything up to the last, in order.
            resumed = time.monotonic()
            received_before = stalled.stream.received
            while stalled.stream.next_seq <= DEMO_COUNT:
                left()
                stalled.read(1.0)
                peak = max(peak, server.rss())
            caught_up = time.monotonic() - resumed

            # The fast readers get everything too; then nothing more comes.
            while not fast.done():
                assert fast.error is None, fast.error
                left()
                time.sleep(0.01)
            time.sleep(0.3)
            assert fast.error is None, fast.error
            stalled.read(0.2)
            assert stalled.stream.next_seq == DEMO_COUNT + 1
            assert stalled.stream.only_heartbeats_left()
            for stream in fast.streams:
                assert stream.next_seq == DEMO_COUNT + 1, stream.name
                assert stream.only_heartbeats_left(), stream.name
            assert stalled.stream.logged_in
        finally:
            fast.stop()
            if stalled is not None:
                stalled.close()

    print(
        f"\n{when}: RSS baseline {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB "
        f"(+{(peak - baseline) / MiB:.1f}), {samples} samples in a stall of "
        f"{stall:.1f} s from {stall_from} to {stall_to} "
        f"({(stall_to - stall_from) * PACKET / MiB:.0f} MiB published); then read "
        f"{(stalled.stream.received - received_before) / MiB:.0f} MiB in {caught_up:.1f} s; "
        f"total {time.monotonic() - started:.1f} s"
    )
