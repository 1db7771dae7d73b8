"""The MoldUDP64 publisher and re-request server, over real UDP sockets on 127.0.0.1.

A unicast address stands in for the multicast group in most tests; the last one runs a
real server and two receivers joined to a real group, in a network namespace of its own.
Timers are tested on an event loop whose clock jumps (``support.JumpingLoop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickertape.cli.main import main
from tickertape.client.moldudp64 import MoldSubscription
from tickertape.server.engine import Engine
from tickertape.server.moldudp64 import (
    MoldPublisher,
    MoldRequestServer,
    PublisherConfig,
    RequestServerConfig,
    TokenBuckets,
    parse_group,
)
from tickertape.store.archive import archive_session
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.wire.moldudp64 import MAX_DATAGRAM, MAX_MESSAGE, Downstream, Request

from support import JumpingLoop, network_namespace

TIMEOUT = 10.0
P = ParamSpec("P")


# ---------------------------------------------------------------------------- helpers


class Receiver:
    """A UDP socket on 127.0.0.1 that stands in for the group, or a re-requester."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.sizes: list[int] = []

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def packet(self, wait: float = TIMEOUT) -> Downstream:
        loop = asyncio.get_running_loop()
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), wait)
        self.sizes.append(len(data))
        return Downstream.decode(data)

    def pending(self) -> list[Downstream]:
        """The packets that have arrived and not been read, without waiting."""
        found: list[Downstream] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return found
            self.sizes.append(len(data))
            found.append(Downstream.decode(data))

    def ask(self, port: int, request: Request | bytes) -> None:
        data = request.encode() if isinstance(request, Request) else request
        self.sock.sendto(data, ("127.0.0.1", port))

    async def answer(self, port: int, request: Request, wait: float = TIMEOUT) -> Downstream:
        self.ask(port, request)
        return await self.packet(wait)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Mold:
    engine: Engine
    publisher: MoldPublisher
    requests: MoldRequestServer
    group: Receiver

    @property
    def session(self) -> str:
        return self.engine.session_id

    async def messages(self, through: int, session: str | None = None) -> list[tuple[int, bytes]]:
        """Every message the group got, by number, up to ``through`` (heartbeats and
        other sessions' packets are skipped)."""
        session = session or self.session
        got: list[tuple[int, bytes]] = []
        while not got or got[-1][0] < through:
            packet = await self.group.packet()
            if packet.session != session or packet.end_of_session:
                continue
            got += [(packet.sequence + i, m) for i, m in enumerate(packet.messages)]
        return got


@contextlib.asynccontextmanager
async def mold_server(
    data: Path,
    publisher: PublisherConfig | None = None,
    requests: RequestServerConfig | None = None,
    *,
    before: Callable[[Engine], Awaitable[None]] | None = None,
) -> AsyncIterator[Mold]:
    """An engine on ``data``, a publisher sending to a receiver on 127.0.0.1, and a
    re-request server on a free port. ``before`` runs once the engine has started and
    before the publisher joins."""
    engine = Engine(Catalogue(data, Durability.NONE))
    await engine.start(roll_on_schedule=False)
    group = Receiver()
    config = dataclasses.replace(
        publisher or PublisherConfig("", 0), group="127.0.0.1", port=group.port
    )
    sender = MoldPublisher(engine, config)
    server = MoldRequestServer(engine, requests or RequestServerConfig())
    try:
        if before is not None:
            await before(engine)
        sender.start()
        await server.start()
        yield Mold(engine, sender, server, group)
    finally:
        await server.close()
        await engine.close()
        await sender.close()
        group.close()


def synchronous(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh event loop."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def payloads(count: int, size: int = 50, start: int = 1) -> list[bytes]:
    return [f"{n:08d}".encode().ljust(size, b".") for n in range(start, start + count)]


def run_jumping(scenario: Callable[[JumpingLoop], Awaitable[None]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        await scenario(loop)

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(main())


async def turn(loop: JumpingLoop, seconds: float, mold: Mold) -> None:
    """Jump the clock, let the timers due fire, and the sending thread send."""
    loop.advance(seconds)
    for _ in range(3):
        await asyncio.sleep(0)
    await mold.publisher.flush()


# ---------------------------------------------------------------------------- publisher


@synchronous
async def test_every_published_message_goes_out_in_order_in_packets_that_fit(
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    sent: list[bytes] = []
    async with mold_server(tmp_path) as mold:
        for _ in range(30):
            batch = [
                bytes([rng.randrange(256)]) * rng.choice([1, 10, 100, 700, MAX_MESSAGE])
                for _ in range(rng.randrange(1, 200))
            ]
            await mold.engine.publish_many(batch)
            sent += batch
        got = await mold.messages(len(sent))
    assert [seq for seq, _ in got] == list(range(1, len(sent) + 1))
    assert [message for _, message in got] == sent
    assert max(mold.group.sizes) <= MAX_DATAGRAM
    assert max(mold.group.sizes) == MAX_DATAGRAM or any(
        size > MAX_DATAGRAM - 100 for size in mold.group.sizes
    )  # packets are filled, not one message each
    assert mold.publisher.stats.messages == len(sent)
    assert mold.publisher.stats.packets < len(sent)


@synchronous
async def test_the_publisher_joins_at_the_tail(tmp_path: Path) -> None:
    async def early(engine: Engine) -> None:
        await engine.publish_many(payloads(10))

    async with mold_server(tmp_path, before=early) as mold:
        first = await mold.group.packet()
        assert first.heartbeat and first.sequence == 11
        await mold.engine.publish_many(payloads(5, start=11))
        got = await mold.messages(15)
    assert [seq for seq, _ in got] == [11, 12, 13, 14, 15]
    assert [m for _, m in got] == payloads(5, start=11)


@synchronous
async def test_messages_too_long_for_a_packet_are_skipped_and_counted(tmp_path: Path) -> None:
    too_long = b"x" * (MAX_MESSAGE + 1)
    async with mold_server(tmp_path) as mold:
        await mold.engine.publish_many([b"one", too_long, b"three", b"y" * MAX_MESSAGE])
        packets: list[Downstream] = []
        while sum(len(p.messages) for p in packets) < 3:
            packet = await mold.group.packet()
            if packet.messages:
                packets.append(packet)
        assert [(p.sequence, p.messages) for p in packets] == [
            (1, (b"one",)),
            (3, (b"three",)),
            (4, (b"y" * MAX_MESSAGE,)),
        ]
        assert mold.publisher.stats.oversized == 1
        asker = Receiver()
        # A re-request cannot carry it either: no answer; one from 1 stops before it.
        asker.ask(mold.requests.port, Request(mold.session, 2, 1))
        answer = await asker.answer(mold.requests.port, Request(mold.session, 1, 10))
        assert (answer.sequence, answer.messages) == (1, (b"one",))
        answer = await asker.answer(mold.requests.port, Request(mold.session, 3, 10))
        assert (answer.sequence, answer.messages) == (3, (b"three",))
        assert mold.requests.stats.oversized == 1
        asker.close()


def test_a_heartbeat_after_each_second_with_nothing_sent(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop) -> None:
        async with mold_server(tmp_path) as mold:
            await mold.publisher.flush()
            assert [(p.heartbeat, p.sequence) for p in mold.group.pending()] == [(True, 1)]
            await turn(loop, 1.0, mold)
            assert [(p.heartbeat, p.sequence) for p in mold.group.pending()] == [(True, 1)]
            await turn(loop, 0.5, mold)
            assert mold.group.pending() == []
            await mold.engine.publish_many(payloads(3))
            await mold.publisher.flush()
            assert [p.sequence for p in mold.group.pending()] == [1]
            await turn(loop, 0.7, mold)  # 1.2 s after the last heartbeat, 0.7 s after data
            assert mold.group.pending() == []
            await turn(loop, 0.4, mold)
            assert [(p.heartbeat, p.sequence) for p in mold.group.pending()] == [(True, 4)]
            for _ in range(5):
                await turn(loop, 1.0, mold)
            assert [p.sequence for p in mold.group.pending()] == [4] * 5
            assert mold.publisher.stats.heartbeats == 8

    run_jumping(scenario)


def test_end_of_session_repeats_in_place_of_heartbeats_while_the_next_session_is_quiet(
    tmp_path: Path,
) -> None:
    async def scenario(loop: JumpingLoop) -> None:
        config = PublisherConfig("127.0.0.1", 0, eos_seconds=5.0)
        async with mold_server(tmp_path, config) as mold:
            ended = mold.session
            await mold.engine.publish_many(payloads(7))
            await mold.messages(7)
            await mold.engine.roll()
            following = mold.session
            assert following != ended
            await mold.publisher.flush()
            seen = [[(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]]
            for _ in range(7):
                await turn(loop, 1.0, mold)
                seen.append(
                    [(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]
                )
            # Once a second for 5 s in all, and nothing of the next session meanwhile;
            # then the next session's heartbeats.
            assert seen == [[(ended, 8, True)]] * 5 + [[(following, 1, False)]] * 3
            assert mold.publisher.stats.end_of_session == 5

    run_jumping(scenario)


def test_no_end_of_session_after_the_next_session_s_first_message(tmp_path: Path) -> None:
    """Receivers that take the session from every packet (some do) must never see an
    End of Session after the next session's first packet: they would take it for the
    end of the new session."""

    async def scenario(loop: JumpingLoop) -> None:
        config = PublisherConfig("127.0.0.1", 0, eos_seconds=5.0)
        async with mold_server(tmp_path, config) as mold:
            ended = mold.session
            await mold.engine.publish_many(payloads(7))
            await mold.messages(7)
            await mold.engine.roll()
            following = mold.session
            await turn(loop, 1.0, mold)  # one repeat while the next session is quiet
            await mold.engine.publish_many(payloads(2))
            await mold.publisher.flush()
            packets = [(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]
            assert packets == [(ended, 8, True), (ended, 8, True), (following, 1, False)]
            seen = []
            for _ in range(8):
                await turn(loop, 1.0, mold)
                seen += [(p.session, p.sequence, p.end_of_session) for p in mold.group.pending()]
            assert seen == [(following, 3, False)] * 8  # its heartbeats, nothing else
            assert mold.publisher.stats.end_of_session == 2

    run_jumping(scenario)


@synchronous
async def test_a_sending_thread_too_far_behind_drops_whole_batches(tmp_path: Path) -> None:
    config = PublisherConfig("127.0.0.1", 0, max_queued_bytes=10_000)
    async with mold_server(tmp_path, config) as mold:
        held = threading.Event()
        sender = mold.publisher._sender
        assert sender is not None

        def block() -> None:
            held.wait(TIMEOUT)

        sender.put(block)
        for start in range(1, 301, 30):
            await mold.engine.publish_many(payloads(30, 100, start))  # ~3 KiB a batch
        assert mold.publisher.stats.dropped_batches > 0
        dropped = mold.publisher.stats.dropped_messages
        held.set()
        await mold.engine.publish_many(payloads(1, 100, 301))
        await mold.publisher.flush()
        got = {
            packet.sequence + i
            for packet in mold.group.pending()
            for i in range(len(packet.messages))
        }
        assert 301 in got
        assert len(got) == 301 - dropped
        assert mold.publisher.next_seq == 302


# ---------------------------------------------------------------------------- re-requests


@synchronous
async def test_re_requests_of_the_active_session(tmp_path: Path) -> None:
    async with mold_server(tmp_path) as mold:
        await mold.engine.publish_many(payloads(100))
        for start in range(101, 1101, 100):  # several batches
            await mold.engine.publish_many(payloads(100, start=start))
        asker = Receiver()
        port = mold.requests.port
        answer = await asker.answer(port, Request(mold.session, 1, 65535))
        per_packet = (MAX_DATAGRAM - 20) // 52
        assert answer.session == mold.session
        assert (answer.sequence, answer.messages) == (1, tuple(payloads(per_packet)))
        assert asker.sizes[-1] <= MAX_DATAGRAM
        answer = await asker.answer(port, Request(mold.session, 95, 3))
        assert (answer.sequence, answer.messages) == (95, tuple(payloads(3, start=95)))
        answer = await asker.answer(port, Request(mold.session, 1095, 100))
        assert answer.messages == tuple(payloads(6, start=1095))
        # Across batch boundaries, a gap filled chunk by chunk.
        seq = 50
        while seq <= 1100:
            answer = await asker.answer(port, Request(mold.session, seq, 1000))
            assert answer.sequence == seq
            assert answer.messages == tuple(payloads(len(answer.messages), start=seq))
            assert len(answer.messages) == min(per_packet, 1101 - seq)
            seq = answer.next_sequence
        asker.close()


@synchronous
async def test_no_answer_to_what_cannot_be_answered(tmp_path: Path) -> None:
    async with mold_server(tmp_path) as mold:
        await mold.engine.publish_many(payloads(10))
        asker = Receiver()
        port = mold.requests.port
        session = mold.session
        nothing: list[Request | bytes] = [
            Request(session, 11, 1),  # not yet published
            Request(session, 0, 5),
            Request(session, 2**64 - 1, 5),
            Request("2001010101", 1, 5),  # no such session
            Request("nonsense", 1, 5),
            Request(session, 3, 1).encode()[:19],
            Request(session, 3, 1).encode() + b"x",
            Request(session, 3, 1).encode()[:18] + b"\x00\x00",  # count 0
            b"",
        ]
        for datagram in nothing:
            asker.ask(port, datagram)
        answer = await asker.answer(port, Request(session, 7, 1))  # the probe
        assert (answer.sequence, answer.messages) == (7, (payloads(10)[6],))
        await asyncio.sleep(0.2)
        assert asker.pending() == []
        assert mold.requests.stats.answered == 1
        assert mold.requests.stats.malformed == 3
        asker.close()


@synchronous
async def test_catching_up_in_order_is_charged_little_more_than_the_messages(
    tmp_path: Path,
) -> None:
    """A client asking for one reply's worth at a time, in order, pays for the reads of
    the log a few percent on top of the messages: 4,000 of them fit a budget of 4,400
    (with no refill to speak of), from a closed session and from the active one; and
    each answer is a full packet."""

    async def history(engine: Engine) -> None:
        await engine.publish_many(payloads(4000, 100))
        await engine.roll()
        await engine.publish_many(payloads(4000, 100))

    config = RequestServerConfig(rate=1.0, burst=4400.0)
    async with mold_server(tmp_path, requests=config, before=history) as mold:
        closed = str(mold.engine.catalogue.sessions()[0].id)
        for session in (closed, mold.session):
            asker = Receiver()
            seq = 1
            while seq <= 4000:
                answer = await asker.answer(mold.requests.port, Request(session, seq, 14))
                assert (answer.session, answer.sequence) == (session, seq)
                assert answer.messages == tuple(payloads(min(14, 4001 - seq), 100, seq))
                seq += len(answer.messages)
            asker.close()
        assert mold.requests.stats.rate_limited == 0


@synchronous
async def test_re_requests_of_closed_and_archived_sessions(tmp_path: Path) -> None:
    async def history(engine: Engine) -> None:
        await engine.publish_many(payloads(300, 30))
        await engine.roll()
        await engine.publish_many(payloads(200, 40))
        await engine.roll()

    async with mold_server(tmp_path, before=history) as mold:
        first, second = (str(info.id) for info in mold.engine.catalogue.sessions()[:2])
        await asyncio.to_thread(archive_session, tmp_path / first, chunk_bytes=1024)
        assert not (tmp_path / first / "log").exists()
        await mold.engine.publish_many(payloads(5))
        asker = Receiver()
        port = mold.requests.port
        for session, size, count in [(first, 30, 300), (second, 40, 200), (mold.session, 50, 5)]:
            seq = 1
            while seq <= count:
                answer = await asker.answer(port, Request(session, seq, 65535))
                assert answer.session == session and answer.sequence == seq
                assert answer.messages == tuple(payloads(len(answer.messages), size, seq))
                assert len(answer.messages) == min(
                    (MAX_DATAGRAM - 20) // (size + 2), count + 1 - seq
                )
                seq = answer.next_sequence
            asker.ask(port, Request(session, count + 1, 1))  # past the end: nothing
        answer = await asker.answer(port, Request(first, 299, 10))
        assert answer.messages == tuple(payloads(2, 30, 299))
        await asyncio.sleep(0.2)
        assert asker.pending() == []
        assert mold.requests.stats.out_of_range == 3
        asker.close()


@synchronous
async def test_a_burst_of_requests_from_many_clients_is_all_answered(tmp_path: Path) -> None:
    async def history(engine: Engine) -> None:
        await engine.publish_many(payloads(500, 20))
        await engine.roll()

    async with mold_server(tmp_path, before=history) as mold:
        closed = str(mold.engine.catalogue.sessions()[0].id)
        await mold.engine.publish_many(payloads(500))
        askers = [Receiver() for _ in range(200)]
        wanted = {}
        for number, asker in enumerate(askers):
            session = closed if number % 2 else mold.session
            seq = 1 + number * 2
            wanted[asker] = (session, seq)
            asker.ask(mold.requests.port, Request(session, seq, 3))
        for asker, (session, seq) in wanted.items():
            answer = await asker.packet()
            assert (answer.session, answer.sequence) == (session, seq)
            size = 20 if session == closed else 50
            assert answer.messages == tuple(payloads(3, size, seq))
            asker.close()
        assert mold.requests.stats.answered == 200


@pytest.mark.parametrize("closed", [False, True], ids=["active", "closed"])
@synchronous
async def test_a_greedy_requester_cannot_starve_another(tmp_path: Path, closed: bool) -> None:
    async def history(engine: Engine) -> None:
        await engine.publish_many(payloads(2000, 20))
        if closed:
            await engine.roll()

    rate = 2000.0
    config = RequestServerConfig(rate=rate)
    async with mold_server(tmp_path, requests=config, before=history) as mold:
        session = str(mold.engine.catalogue.sessions()[0].id)
        port = mold.requests.port
        stop = threading.Event()
        sent = [0]

        def greedy() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                request = Request(session, 1, 65535).encode()
                while not stop.is_set():
                    for _ in range(50):
                        sock.sendto(request, ("127.0.0.1", port))
                        sent[0] += 1
                    time.sleep(0.001)

        hog = threading.Thread(target=greedy)
        started = time.monotonic()
        hog.start()
        polite = Receiver()
        answered = 0
        try:
            await asyncio.sleep(0.2)
            for number in range(20):
                seq = 1 + number * 50
                for _attempt in range(3):
                    polite.ask(port, Request(session, seq, 10))
                    with contextlib.suppress(TimeoutError):
                        answer = await polite.packet(1.0)
                        assert answer.sequence == seq
                        assert answer.messages == tuple(payloads(10, 20, seq))
                        answered += 1
                        break
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.to_thread(hog.join)
        elapsed = time.monotonic() - started
        polite.close()
        stats = mold.requests.stats
        assert answered == 20
        greedy_messages = stats.messages - 20 * 10
        assert sent[0] > 10 * stats.answered  # it asked far more than it was given
        assert stats.rate_limited > 0
        per_packet = (MAX_DATAGRAM - 20) // 22
        assert greedy_messages <= rate * (elapsed + 1) + per_packet


def test_token_buckets() -> None:
    buckets = TokenBuckets(rate=100, burst=10)
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    assert buckets.take(a, 0.0, 8) == 8
    assert buckets.take(a, 0.0, 8) == 8  # 2 left: taken whole, 6 owed
    assert buckets.take(a, 0.0, 1) == 0
    assert buckets.take(b, 0.0, 5) == 5  # another requester is not affected
    assert buckets.take(a, 0.06, 1) == 0  # 6 paid back, not yet 1 more
    assert buckets.take(a, 0.08, 1) == 1
    buckets.settle(a, 100, 0)
    assert buckets.take(a, 0.08, 10) == 10  # refunds fill it, no further than the burst
    assert buckets.take(a, 0.08, 1) == 0
    buckets.settle(a, 1, 21)  # it cost more than was reserved: 20 more owed
    assert buckets.take(a, 0.28, 1) == 0
    assert buckets.take(a, 0.3, 1) == 1
    assert len(buckets) == 2


@st.composite
def garbage(draw: st.DrawFn, session: str) -> bytes:
    """A datagram that is not a request that can be answered (the active session holds
    messages 1..10)."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        data = draw(st.binary(max_size=100).filter(lambda d: len(d) != 20))
    elif kind == 1:
        data = draw(st.binary(min_size=20, max_size=20))
    else:
        name = draw(
            st.sampled_from([session, "2001010101", "", "  ", "ZZZZZZZZZZ"])
            if kind == 2
            else st.text("0123456789", min_size=10, max_size=10)
        )
        seq = draw(st.integers(0, 2**64 - 1))
        count = draw(st.integers(0, 65535))
        data = Request(name, seq, 1).encode()[:18] + count.to_bytes(2, "big")
    if len(data) == 20:
        try:
            request = Request.decode(data)
        except Exception:
            return data
        valid = request.session == session and 1 <= request.sequence <= 10 and request.count
        if valid:
            return data[:19]
    return data


class ThreadedServer:
    """An engine holding messages 1..10 and a re-request server, on an event loop in a
    thread of their own, for tests that drive them with blocking sockets."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = 0
        self.session = ""
        self.requests: MoldRequestServer | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        engine = Engine(Catalogue(self.data, Durability.NONE))
        await engine.start(roll_on_schedule=False)
        await engine.publish_many(payloads(10))
        self.requests = MoldRequestServer(engine)
        await self.requests.start()
        self.port, self.session = self.requests.port, engine.session_id
        self._ready.set()
        await self._stop.wait()
        await self.requests.close()
        await engine.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[ThreadedServer]:
        self._thread.start()
        assert self._ready.wait(TIMEOUT)
        try:
            yield self
        finally:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(TIMEOUT)


def test_garbage_gets_no_answer_and_breaks_nothing(tmp_path: Path) -> None:
    with (
        ThreadedServer(tmp_path).running() as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
    ):
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(TIMEOUT)
        target = ("127.0.0.1", server.port)
        probes = 0

        @settings(
            max_examples=300,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(st.lists(garbage(server.session), min_size=1, max_size=5), st.integers(1, 10))
        def check(datagrams: list[bytes], probe: int) -> None:
            nonlocal probes
            for datagram in datagrams:
                sock.sendto(datagram, target)
            sock.sendto(Request(server.session, probe, 1).encode(), target)
            probes += 1
            answer = Downstream.decode(sock.recv(65536))
            assert (answer.sequence, answer.messages) == (probe, (payloads(10)[probe - 1],))

        check()
        sock.settimeout(0.5)  # answers to closed-session lookups would come late
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        assert server.requests is not None
        assert server.requests.stats.answered == probes


@synchronous
async def test_a_late_subscriber_fills_its_gap_by_re_request_then_follows_live(
    tmp_path: Path,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        group_port = probe.getsockname()[1]  # free, for the subscriber to bind
    engine = Engine(Catalogue(tmp_path, Durability.NONE))
    await engine.start(roll_on_schedule=False)
    await engine.publish_many(payloads(2000))  # before the publisher: by re-request only
    publisher = MoldPublisher(engine, PublisherConfig("127.0.0.1", group_port))
    requests = MoldRequestServer(engine)
    await requests.start()
    got: list[tuple[str, int, bytes]] = []
    subscription = MoldSubscription("127.0.0.1", group_port, ("127.0.0.1", requests.port))

    async def follow() -> None:
        async for message in subscription:
            got.append((message.session, message.seq, message.payload))

    try:
        following = asyncio.create_task(follow())
        await asyncio.sleep(0.1)  # its socket is bound
        publisher.start()
        session = engine.session_id
        for start in range(2001, 3001, 100):
            await engine.publish_many(payloads(100, start=start))
            await asyncio.sleep(0.01)
        await engine.roll()
        await asyncio.wait_for(following, TIMEOUT)
    finally:
        await subscription.close()
        await requests.close()
        await engine.close()
        await publisher.close()
    assert [seq for _, seq, _ in got] == list(range(1, 3001))
    assert [payload for _, _, payload in got] == payloads(3000)
    assert {name for name, _, _ in got} == {session}
    assert requests.stats.messages >= 2000


# ---------------------------------------------------------------------------- command line


def test_command_line_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_group("239.1.1.1:30001") == ("239.1.1.1", 30001)
    for bad in ["239.1.1.1", "nowhere:1", "239.1.1.1:0", "239.1.1.1:x", ":1"]:
        with pytest.raises(ValueError, match=r"\S"):
            parse_group(bad)
    for argv in (
        ["serve", "--mold", "239.1.1.1"],
        ["serve", "--mold-ttl", "3"],
        ["serve", "--mold-iface", "127.0.0.1"],
        ["serve", "--mold", "239.1.1.1:1", "--mold-eos-seconds", "-1"],
        ["serve", "--mold-request-rate", "10"],
        ["serve", "--mold", "239.1.1.1:1", "--mold-iface", "eth0"],
        ["serve", "--mold-request", "0", "--mold-request-rate", "0"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "--mold" in capsys.readouterr().err


# ---------------------------------------------------------------------------- real multicast

GROUP = "239.1.1.1"
MOLD_PORT = 30001
REQUEST_PORT = 30002
RECEIVER = r"""
import json, socket, struct, sys
from tickertape.wire.moldudp64 import Downstream, Request

group, port, request_port, ask = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
sock.bind((group, port))
membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("127.0.0.1"))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
sock.settimeout(30)
print("ready", flush=True)
session, messages, end = None, [], None
while end is None:
    packet = Downstream.decode(sock.recv(65536))
    session = session or packet.session
    if packet.session != session:
        continue
    if packet.end_of_session:
        end = packet.sequence
    for i, message in enumerate(packet.messages):
        messages.append((packet.sequence + i, message.decode().split(" ")[0]))
answer = None
if ask == "yes":
    asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    asker.settimeout(10)
    asker.sendto(Request(session, 1, 5).encode(), ("127.0.0.1", request_port))
    reply = Downstream.decode(asker.recv(65536))
    answer = [reply.sequence, [m.decode().split(" ")[0] for m in reply.messages]]
print(json.dumps({"session": session, "messages": messages, "end": end, "answer": answer}))
"""


def test_real_multicast_reaches_two_receivers(tmp_path: Path) -> None:
    count = 3000
    with network_namespace("mold") as name:
        inside = ["ip", "netns", "exec", name, sys.executable]
        receivers = [
            subprocess.Popen(
                [*inside, "-c", RECEIVER, GROUP, str(MOLD_PORT), str(REQUEST_PORT), ask],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for ask in ("yes", "no")
        ]
        server: subprocess.Popen[str] | None = None
        try:
            for receiver in receivers:
                assert receiver.stdout is not None
                assert receiver.stdout.readline().strip() == "ready"
            server = subprocess.Popen(
                [
                    *inside,
                    "-m",
                    "tickertape",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--data",
                    str(tmp_path / "data"),
                    "--mold",
                    f"{GROUP}:{MOLD_PORT}",
                    "--mold-iface",
                    "127.0.0.1",
                    "--mold-request",
                    str(REQUEST_PORT),
                    "--mold-eos-seconds",
                    "3",
                    "--demo",
                    "3000",
                    "--demo-count",
                    str(count),
                    "--demo-end",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            results = []
            for receiver in receivers:
                out, err = receiver.communicate(timeout=60)
                assert receiver.returncode == 0, err
                results.append(json.loads(out))
        finally:
            for process in [*receivers, server]:
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(15)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(5)
        assert server is not None
        _, log = server.communicate()
        assert server.returncode == 0, log
    for result in results:
        assert result["end"] == count + 1
        assert [seq for seq, _ in result["messages"]] == list(range(1, count + 1))
        assert all(text == str(seq) for seq, text in result["messages"])  # demo payloads
    assert results[0]["session"] == results[1]["session"]
    assert results[0]["answer"] == [1, ["1", "2", "3", "4", "5"]]
