"""The batcher: what a producer adds is published in order, in batches no larger than the
engine's, with ends of session in their place; a producer is held back, never dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tickertape.server.engine import Engine
from tickertape.server.writer import WriterConfig
from tickertape.sources.batcher import Batcher
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.wire.soupbintcp import MAX_PAYLOAD

from support import session_payloads

TIMEOUT = 20.0


def run(
    tmp_path: Path,
    scenario: Callable[[Engine, Batcher], Awaitable[None]],
    config: WriterConfig | None = None,
) -> dict[str, list[bytes]]:
    """Run ``scenario`` with a batcher into a fresh engine; the payloads of every session
    on disk afterwards, by id."""

    async def main() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.NONE), config)
        await engine.start(roll_on_schedule=False)
        try:
            await scenario(engine, Batcher(engine, "test producer"))
        finally:
            await engine.close()

    asyncio.run(asyncio.wait_for(main(), 60))
    return {p.name: session_payloads(p) for p in sorted(tmp_path.iterdir()) if p.is_dir()}


def payloads(count: int, start: int = 1) -> list[bytes]:
    return [b"message %d" % n for n in range(start, start + count)]


def test_a_producer_is_held_back_at_a_whole_batch_and_everything_is_published_in_order(
    tmp_path: Path,
) -> None:
    config = WriterConfig(durability=Durability.NONE, max_batch_messages=10)

    async def scenario(engine: Engine, batcher: Batcher) -> None:
        publishing = asyncio.create_task(batcher.run())
        waits = 0
        for payload in payloads(35):
            if batcher.full:
                waits += 1
                await asyncio.wait_for(batcher.wait_for_room(), TIMEOUT)
            batcher.add(payload)
            assert not publishing.done()
        batcher.finish()
        assert await asyncio.wait_for(publishing, TIMEOUT) is False  # no end last
        assert batcher.published == 35
        assert engine.next_seq == 36
        assert waits >= 1  # the 11th payload found a whole batch gathered

    sessions = run(tmp_path, scenario, config)
    assert list(sessions.values()) == [payloads(35)]


def test_a_batch_is_whole_at_the_engines_bytes_too(tmp_path: Path) -> None:
    config = WriterConfig(durability=Durability.NONE, max_batch_bytes=100)

    async def scenario(engine: Engine, batcher: Batcher) -> None:
        batcher.add_many([b"x" * 40, b"y" * 40])
        assert not batcher.full
        batcher.add_many([b"z" * 20])
        assert batcher.full
        waiting = asyncio.create_task(batcher.wait_for_room())
        await asyncio.sleep(0)
        assert not waiting.done()  # nothing has taken the batch yet
        publishing = asyncio.create_task(batcher.run())
        await asyncio.wait_for(waiting, TIMEOUT)
        batcher.add_many([])
        batcher.finish()
        assert await asyncio.wait_for(publishing, TIMEOUT) is False
        assert batcher.published == 3

    sessions = run(tmp_path, scenario, config)
    assert list(sessions.values()) == [[b"x" * 40, b"y" * 40, b"z" * 20]]


@pytest.mark.parametrize("end_last", [False, True], ids=["more-after", "end-last"])
def test_an_end_of_session_falls_between_what_was_added_before_and_after_it(
    tmp_path: Path, end_last: bool
) -> None:
    async def scenario(engine: Engine, batcher: Batcher) -> None:
        first = engine.session_id
        batcher.add_many(payloads(3))
        ended = batcher.end_session()
        if not end_last:
            batcher.add(b"after")
        batcher.finish()
        assert await asyncio.wait_for(batcher.run(), TIMEOUT) is end_last
        following = await ended
        assert following == engine.session_id != first

    sessions = run(tmp_path, scenario)
    assert list(sessions.values()) == [payloads(3), [] if end_last else [b"after"]]


def test_a_payload_too_long_for_soupbintcp_is_refused_and_nothing_is_added(
    tmp_path: Path,
) -> None:
    async def scenario(engine: Engine, batcher: Batcher) -> None:
        with pytest.raises(ValueError, match=f"SoupBinTCP carries at most {MAX_PAYLOAD} bytes"):
            batcher.add(b"x" * (MAX_PAYLOAD + 1))
        batcher.add(b"x" * MAX_PAYLOAD)
        batcher.finish()
        await asyncio.wait_for(batcher.run(), TIMEOUT)
        assert batcher.published == 1

    sessions = run(tmp_path, scenario)
    assert list(sessions.values()) == [[b"x" * MAX_PAYLOAD]]


def test_ends_of_session_not_done_are_cancelled_when_the_batcher_stops(tmp_path: Path) -> None:
    async def scenario(engine: Engine, batcher: Batcher) -> None:
        first = engine.session_id
        batcher.add(b"before")
        ended = batcher.end_session()
        batcher.cancel_endings()
        assert ended.cancelled()
        assert engine.session_id == first

    sessions = run(tmp_path, scenario)
    assert list(sessions.values()) == [[]]
