"""The MoldUDP64 re-request server, over real UDP sockets on 127.0.0.1: answers from the
active session and closed ones, what gets no answer, and each requester's budget."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mold_support import (
    TIMEOUT,
    Receiver,
    mold_server,
    payloads,
    synchronous,
)
from tickertape.server.engine import Engine
from tickertape.server.moldudp64.rerequest import MoldRequestServer
from tickertape.server.moldudp64.settings import RequestServerConfig
from tickertape.store.archive import archive_session
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.wire.moldudp64 import MAX_DATAGRAM, Downstream, Request

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
