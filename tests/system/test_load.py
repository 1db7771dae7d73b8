"""A thousand subscribers on one server while a publisher publishes: each gets every
message, byte for byte as in the log. The server's peak memory and the slowest
subscriber's lag are printed (``pytest -s``); they are figures, not asserts."""

from __future__ import annotations

import asyncio
import bisect
import resource
import sys
import time
from pathlib import Path

import psutil

from tickertape.store.log import SessionLog
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import LoginRequest

from support import ServerProcess

SUBSCRIBERS = 1000
MESSAGES = 5000
RATE = 5000
"""Messages a second the publisher sends: for one second, to a thousand subscribers."""
SIZE = 100
TIMEOUT = 120.0

_PUBLISHER = """
import asyncio, sys, time
from tickertape.client.publisher import Publisher

async def main(port: int, count: int, rate: int, size: int) -> None:
    publisher = await Publisher.connect("127.0.0.1", port)
    start = time.monotonic()
    sent = 0
    while sent < count:
        due = min(count, int((time.monotonic() - start) * rate) + 1) - sent
        if due <= 0:
            await asyncio.sleep(0.001)
            continue
        stamp = repr(time.time()).encode()
        await publisher.send_many(
            [(b"%d %s " % (sent + i + 1, stamp)).ljust(size, b".") for i in range(due)]
        )
        sent += due
    await asyncio.wait_for(publisher.flush(), 60)
    await publisher.close()

asyncio.run(main(*map(int, sys.argv[1:])))
"""


LAST = b"\x00%cS%d " % (SIZE + 1, MESSAGES)
"""How the packet of the last message starts."""


class Subscriber(asyncio.Protocol):
    """Logs in from 1 and keeps what it receives, with when each read arrived. It only
    keeps bytes while receiving (so that it costs little): they are checked after."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.chunks: list[bytes] = []
        self.arrivals: list[tuple[int, float]] = []  # (bytes received so far, time)
        self.received = 0
        self.tail = b""  # the last bytes received: the last message's start may be split
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Silent on purpose (it sends no heartbeats): a 4.10 login asking for a long timeout.
        transport.write(LoginRequest("", "", "", 1, heartbeat_timeout_ms=99_999).encode())

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        self.arrivals.append((self.received, time.time()))
        # The last message ends the stream (a heartbeat may follow it in the same read);
        # the check after says whether all came before it.
        seen = self.tail + data
        self.tail = seen[-len(LAST) :]
        if LAST in seen and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed after {self.received} B: {exc}"))


def lags(subscriber: Subscriber, sample_every: int = 50) -> list[float]:
    """Seconds from a message's making to its arrival, for every ``sample_every``-th."""
    framer = Framer()
    framer.feed(b"".join(subscriber.chunks))
    offsets = [end for end, _ in subscriber.arrivals]
    found, position, seq = [], 0, 0
    for frame in framer:
        position += 2 + len(frame)
        if frame[0] != 0x53:
            continue
        seq += 1
        if seq % sample_every == 0 or seq == MESSAGES:
            stamp = float(frame[1:].split(b" ")[1])
            arrived = subscriber.arrivals[bisect.bisect_left(offsets, position)][1]
            found.append(arrived - stamp)
    return found


def test_a_thousand_subscribers_each_get_every_message(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * SUBSCRIBERS)), hard))
    with ServerProcess(
        tmp_path,
        "--max-connections-per-source",
        str(2 * SUBSCRIBERS),
        "--durability",
        "batch",
    ) as server:
        process = psutil.Process(server.pid)

        async def scenario() -> list[Subscriber]:
            loop = asyncio.get_running_loop()
            subscribers = []
            for _ in range(SUBSCRIBERS):
                subscriber = Subscriber(loop.create_future())
                subscribers.append(subscriber)
                await loop.create_connection(lambda: subscribers[-1], "127.0.0.1", server.port)
            # Every login answered before publishing starts: all are live subscribers.
            while sum(s.received > 0 for s in subscribers) < SUBSCRIBERS:
                await asyncio.sleep(0.05)
            publisher = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _PUBLISHER,
                str(server.port),
                str(MESSAGES),
                str(RATE),
                str(SIZE),
            )
            await asyncio.wait_for(asyncio.gather(*(s.done for s in subscribers)), TIMEOUT)
            assert await asyncio.wait_for(publisher.wait(), TIMEOUT) == 0
            return subscribers

        subscribers = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
        with open(f"/proc/{server.pid}/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
        connections = len(process.net_connections())

    # Each subscriber got exactly the log's messages, in order, byte for byte.
    log = SessionLog.open(next(tmp_path.glob("20*")), writable=False)
    try:
        assert log.next_seq == MESSAGES + 1
        end = log.offset_of(MESSAGES + 1)
        expected = log.read_range(log.offset_of(1), end - log.offset_of(1))
    finally:
        log.close()
    for number, subscriber in enumerate(subscribers):
        framer = Framer()
        framer.feed(b"".join(subscriber.chunks))
        frames = [frame for frame in framer if frame[0] != 0x48]  # without heartbeats
        assert frames[0][0] == 0x41, number  # "A": Login Accepted, then the stream
        got = b"".join(len(f).to_bytes(2, "big") + f for f in frames[1:])
        assert got == expected, f"subscriber {number} differs from the log"

    all_lags = sorted(lag for subscriber in subscribers for lag in lags(subscriber))
    slowest = max(subscribers, key=lambda s: max(lags(s)))
    print(
        f"\n{SUBSCRIBERS} subscribers x {MESSAGES} messages of {SIZE} B at {RATE}/s: "
        f"{SUBSCRIBERS * MESSAGES:,} deliveries checked; server peak RSS {peak / 1024:.1f} MiB "
        f"({connections} sockets at the end); lag from making to arrival: median "
        f"{all_lags[len(all_lags) // 2] * 1000:.1f} ms, p99 "
        f"{all_lags[int(len(all_lags) * 0.99)] * 1000:.1f} ms, slowest subscriber's worst "
        f"{max(lags(slowest)) * 1000:.1f} ms"
    )
