"""PublisherInput: a publisher connection's runs of messages, into an engine in order,
acknowledged once durable; a stand-in engine whose durability the test decides."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tickertape.server.writer import PublishFailed
from tickertape.sources.publisher import PublisherInput
from tickertape.wire.publishing import END_OF_SESSION_MARKER as END
from tickertape.wire.publishing import Ack


class StandInEngine:
    """Numbers messages from 1 as they are queued; they become durable, in order, when
    the test calls :meth:`write` (or at once, with ``auto``). ``room`` cleared: full."""

    def __init__(self, auto: bool = False) -> None:
        self.session_id = "S1"
        self.assigned = 0
        self.published: list[bytes] = []
        self.calls: list[list[bytes]] = []
        self.ends: list[str] = []
        self.room = asyncio.Event()
        self.room.set()
        self.auto = auto
        self.fail_after: int | None = None
        self._queued: list[tuple[list[bytes], int, asyncio.Future[int]]] = []

    async def wait_for_room(self) -> None:
        await self.room.wait()

    def enqueue_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        self.calls.append(list(payloads))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queued.append((list(payloads), self.assigned + 1, future))
        self.assigned += len(payloads)
        if self.auto:
            asyncio.get_running_loop().call_soon(self.write)
        return future

    def write(self) -> None:
        """Everything queued becomes durable, in order (or the first write fails)."""
        for payloads, first, future in self._queued:
            if self.fail_after is not None:
                self.published += payloads[: self.fail_after]
                future.set_exception(PublishFailed("disk full", self.fail_after, first))
                self.fail_after = 0
            else:
                self.published += payloads
                future.set_result(first)
        self._queued = []

    async def end_session(self) -> str:
        assert not self._queued, "the session ended before what was queued was durable"
        self.ends.append(self.session_id)
        self.session_id = "S2"
        self.assigned = 0
        self.published = []
        return self.ends[-1]


class Wiring:
    def __init__(self, engine: StandInEngine, max_messages: int = 100) -> None:
        self.sent: list[Ack] = []
        self.paused = 0
        self.resumed = 0
        self.closed: list[str] = []
        self.failed: list[str] = []
        self.input = PublisherInput(
            engine,
            "peer",
            send=lambda payload: self.sent.append(Ack.decode(payload)),
            pause=lambda: setattr(self, "paused", self.paused + 1),
            resume=lambda: setattr(self, "resumed", self.resumed + 1),
            close=self.closed.append,
            failed=self.failed.append,
            max_messages=max_messages,
            max_bytes=1 << 20,
        )


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_runs_are_handed_over_in_order_while_earlier_ones_are_still_written() -> None:
    """A run goes to the engine while the one before it is still being written (one
    publisher is not held to one write-and-sync at a time); acknowledgements follow in
    order, each once its messages are durable."""

    async def main() -> None:
        engine = StandInEngine()
        wiring = Wiring(engine)
        assert wiring.input.received([b"a", b"b"])
        await settle()
        assert wiring.input.received([b"c"])  # arrives while the first is being written
        await settle()
        assert engine.calls == [[b"a", b"b"], [b"c"]]
        assert wiring.sent == []  # nothing is durable yet
        engine.write()
        await settle()
        assert engine.published == [b"a", b"b", b"c"]
        assert wiring.sent == [Ack(2, "S1", 2), Ack(3, "S1", 3)]
        assert wiring.input.acked == 3 and wiring.input.unpublished == 0

    asyncio.run(main())


def test_end_of_session_after_what_came_before_it_is_durable() -> None:
    async def main() -> None:
        engine = StandInEngine(auto=True)
        wiring = Wiring(engine)
        wiring.input.received([b"a", END, b"b"])
        await settle()
        assert engine.ends == ["S1"]
        assert wiring.sent == [Ack(1, "S1", 1), Ack(1, "S1", 0), Ack(2, "S2", 1)]

    asyncio.run(main())


def test_reading_stops_while_the_engine_is_full_and_starts_again() -> None:
    async def main() -> None:
        engine = StandInEngine(auto=True)
        engine.room.clear()
        wiring = Wiring(engine, max_messages=3)
        wiring.input.received([b"a"])
        await settle()  # waiting for room, [a] held
        wiring.input.received([b"b", b"c", b"d"])
        assert wiring.paused == 1 and wiring.input.paused
        engine.room.set()
        await settle()
        assert wiring.resumed == 1 and not wiring.input.paused
        assert engine.published == [b"a", b"b", b"c", b"d"]
        assert wiring.sent[-1] == Ack(4, "S1", 4)

    asyncio.run(main())


def test_a_failed_write_acknowledges_what_was_written_and_closes() -> None:
    async def main() -> None:
        engine = StandInEngine(auto=True)
        engine.fail_after = 1
        wiring = Wiring(engine)
        wiring.input.received([b"a", b"b"])
        await settle()
        assert wiring.sent == [Ack(1, "S1", 1)]
        assert wiring.closed == ["not published: disk full"]

    asyncio.run(main())


def test_a_relay_refuses_publishers() -> None:
    async def main() -> None:
        engine = StandInEngine()
        engine.relay_from = "upstream:7300"  # type: ignore[attr-defined]
        wiring = Wiring(engine)
        assert not wiring.input.received([b"a"])
        await settle()
        assert engine.calls == []
        assert wiring.failed == ["relay"]
        assert wiring.closed == ["this server relays upstream:7300: publish there"]

    asyncio.run(main())


def test_stop_ends_the_hand_over_and_what_was_queued_is_still_written() -> None:
    async def main() -> None:
        engine = StandInEngine()
        wiring = Wiring(engine)
        wiring.input.received([b"a"])
        await settle()
        wiring.input.stop()
        await settle()
        engine.write()
        await settle()
        assert engine.published == [b"a"]
        assert wiring.sent == []

    asyncio.run(main())
