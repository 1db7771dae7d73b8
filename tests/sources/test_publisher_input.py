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
    """Numbers messages from 1; each publish_many waits until the test releases it."""

    def __init__(self) -> None:
        self.session_id = "S1"
        self.published: list[bytes] = []
        self.calls: list[list[bytes]] = []
        self.ends: list[str] = []
        self.release = asyncio.Event()
        self.fail_after: int | None = None

    async def publish_many(self, payloads: Sequence[bytes]) -> int:
        self.calls.append(list(payloads))
        await self.release.wait()
        first = len(self.published) + 1
        if self.fail_after is not None:
            self.published += payloads[: self.fail_after]
            raise PublishFailed("disk full", self.fail_after, first)
        self.published += payloads
        return first

    async def end_session(self) -> str:
        self.ends.append(self.session_id)
        self.session_id = "S2"
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


def test_runs_go_to_the_engine_in_order_one_call_in_flight() -> None:
    async def main() -> None:
        engine = StandInEngine()
        wiring = Wiring(engine)
        assert wiring.input.received([b"a", b"b"])
        await settle()
        assert wiring.input.received([b"c"])  # arrives while the first call is in flight
        await settle()
        assert engine.calls == [[b"a", b"b"]]
        engine.release.set()
        await settle()
        assert engine.calls == [[b"a", b"b"], [b"c"]]
        assert wiring.sent == [Ack(2, "S1", 2), Ack(3, "S1", 3)]
        assert wiring.input.acked == 3 and wiring.input.unpublished == 0

    asyncio.run(main())


def test_end_of_session_after_what_came_before_it() -> None:
    async def main() -> None:
        engine = StandInEngine()
        engine.release.set()
        wiring = Wiring(engine)
        wiring.input.received([b"a", END, b"b"])
        await settle()
        assert engine.ends == ["S1"]
        assert wiring.sent == [Ack(1, "S1", 1), Ack(1, "S1", 0), Ack(2, "S2", 1)]

    asyncio.run(main())


def test_reading_stops_while_the_engine_is_behind_and_starts_again() -> None:
    async def main() -> None:
        engine = StandInEngine()
        wiring = Wiring(engine, max_messages=3)
        wiring.input.received([b"a"])
        await settle()  # in flight: [a]
        wiring.input.received([b"b", b"c", b"d"])
        assert wiring.paused == 1 and wiring.input.paused
        engine.release.set()
        await settle()
        assert wiring.resumed == 1 and not wiring.input.paused
        assert engine.published == [b"a", b"b", b"c", b"d"]

    asyncio.run(main())


def test_a_failed_write_acknowledges_what_was_written_and_closes() -> None:
    async def main() -> None:
        engine = StandInEngine()
        engine.fail_after = 1
        engine.release.set()
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


def test_stop_cancels_the_hand_over() -> None:
    async def main() -> None:
        engine = StandInEngine()
        wiring = Wiring(engine)
        wiring.input.received([b"a"])
        await settle()
        wiring.input.stop()
        await settle()
        engine.release.set()
        await settle()
        assert wiring.sent == []

    asyncio.run(main())
