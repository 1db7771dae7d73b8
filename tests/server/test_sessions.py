"""Sessions over their life: rolled at midnight and on demand, ended, pulled after.

The server runs in-process on an event loop whose clock jumps, with a wall clock that
moves with it: crossing midnight takes milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.writer import WriterConfig
from tickertape.store.archive import archive_session
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability, SessionLog
from tickertape.store.retention import Retention
from tickertape.store.schedule import RollSchedule
from tickertape.wire.soupbintcp import (
    EndOfSession,
    LoginAccepted,
    SequencedData,
    encode_sequenced_many,
)

from support import JumpingLoop, LoopClock, SoupClient, running_server, until

UTC = dt.UTC
REAL_TIMEOUT = 10.0


Client = SoupClient


def payloads(tag: str, count: int) -> list[bytes]:
    return [f"{tag} {n}".encode() for n in range(1, count + 1)]


def run(
    tmp_path: Path,
    start: dt.datetime,
    scenario: Callable[[JumpingLoop, Engine, int], Awaitable[None]],
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        engine = Engine(
            Catalogue(tmp_path, Durability.BATCH),
            WriterConfig(durability=Durability.BATCH),
            clock=LoopClock(start),
            schedule=RollSchedule(zone=UTC),
        )
        async with running_server(tmp_path, engine=engine) as (_, server):
            await scenario(loop, engine, server.port)

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(asyncio.wait_for(main(), 60))


def test_crossing_midnight_ends_the_day_and_opens_the_next(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, engine: Engine, port: int) -> None:
        assert engine.session_id == "2026112901"
        await engine.publish_many(payloads("day1", 10))
        replaying = await Client.login(port, seq=1)
        live = await Client.login(port, seq=0)
        await until(lambda: engine.stream.live_count >= 2, "both at the tail", interval=0.001)
        await engine.publish_many(payloads("late", 5))

        loop.advance(2.0)  # 23:59:59 -> 00:00:01
        accepted, got = await replaying.session()
        assert accepted == LoginAccepted("2026112901", 1)
        assert got == payloads("day1", 10) + payloads("late", 5)
        accepted, got = await live.session()
        assert accepted == LoginAccepted("2026112901", 11)
        assert got == payloads("late", 5)

        assert engine.session_id == "2026113001"
        await engine.publish_many(payloads("day2", 3))
        fresh = await Client.login(port, seq=1)
        assert await fresh.packet() == LoginAccepted("2026113001", 1)
        for expected in payloads("day2", 3):
            assert await fresh.packet() == SequencedData(expected)
        fresh.writer.close()

        yesterday = await Client.login(port, "2026112901", 1)
        accepted, got = await yesterday.session()
        assert accepted == LoginAccepted("2026112901", 1)
        assert got == payloads("day1", 10) + payloads("late", 5)

    run(tmp_path, dt.datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC), scenario)


def test_rolls_on_demand_number_the_day_and_every_session_stays_served(
    tmp_path: Path,
) -> None:
    async def scenario(loop: JumpingLoop, engine: Engine, port: int) -> None:
        published = {}
        for counter in (1, 2, 3):
            session = engine.session_id
            assert session == "2026112901"[:-1] + str(counter)
            published[session] = payloads(session, 7 * counter)
            await engine.publish_many(published[session])
            if counter < 3:
                assert await engine.roll() == f"202611290{counter + 1}"
        await engine.end_session()  # the third ends too; a fourth opens
        assert engine.session_id == "2026112904"
        for session, expected in published.items():
            for start in (1, 4, len(expected)):
                client = await Client.login(port, session, start)
                accepted, got = await client.session()
                assert accepted == LoginAccepted(session, start)
                assert got == expected[start - 1 :]

    run(tmp_path, dt.datetime(2026, 11, 29, 9, 30, tzinfo=UTC), scenario)


def test_publishers_during_a_roll_publish_into_the_next_session(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, engine: Engine, port: int) -> None:
        await engine.publish_many(payloads("old", 2))
        roll = asyncio.ensure_future(engine.roll())
        while not engine.rolling:  # once the roll has begun, publishing waits for the next
            await asyncio.sleep(0)
        first = await engine.publish(b"new 1")
        assert await roll == "2026112902"
        assert first == 1
        assert engine.session_id == "2026112902"

    run(tmp_path, dt.datetime(2026, 11, 29, 9, 30, tzinfo=UTC), scenario)


def restart(tmp_path: Path, now: dt.datetime) -> tuple[str, int]:
    """Start an engine on ``tmp_path`` at ``now``; its session and next number."""

    async def main() -> tuple[str, int]:
        engine = Engine(
            Catalogue(tmp_path, Durability.BATCH),
            clock=LoopClock(now),
            schedule=RollSchedule(zone=UTC),
        )
        await engine.start(roll_on_schedule=False)
        try:
            result = engine.session_id, engine.next_seq
            await engine.publish(b"x")
            return result
        finally:
            await engine.close()

    return asyncio.run(main())


def test_a_restart_mid_day_continues_and_on_a_later_date_opens_the_new_day(
    tmp_path: Path,
) -> None:
    morning = dt.datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    assert restart(tmp_path, morning) == ("2026112901", 1)
    assert restart(tmp_path, morning + dt.timedelta(hours=3)) == ("2026112901", 2)
    assert restart(tmp_path, morning + dt.timedelta(days=2)) == ("2026120101", 1)
    assert (tmp_path / "2026112901" / "ended").exists()


def test_an_archived_session_is_served_byte_for_byte_as_before(tmp_path: Path) -> None:
    sizes = [0, 1, 100, 5000, 65534]
    messages = [bytes([n % 251]) * sizes[n % len(sizes)] for n in range(3000)]
    starts = (1, 1234, len(messages))

    async def pulls(port: int, session: str) -> dict[int, list[bytes]]:
        served = {}
        for start in starts:
            client = await Client.login(port, session, start)
            accepted, served[start] = await client.session()
            assert accepted == LoginAccepted(session, start)
        return served

    async def before() -> tuple[str, dict[int, list[bytes]]]:
        async with running_server(tmp_path) as (engine, server):
            for first in range(0, len(messages), 250):
                await engine.publish_many(messages[first : first + 250])
            ended = engine.session_id
            await engine.roll()
            return ended, await pulls(server.port, ended)

    async def after(session: str) -> dict[int, list[bytes]]:
        async with running_server(tmp_path) as (_, server):
            return await pulls(server.port, session)

    ended, served = asyncio.run(asyncio.wait_for(before(), 60))
    assert served == {start: messages[start - 1 :] for start in starts}
    result = archive_session(tmp_path / ended, chunk_bytes=64 << 10)
    assert result.chunks > 10
    assert not (tmp_path / ended / "log").exists()
    assert asyncio.run(asyncio.wait_for(after(ended), 60)) == served


def test_retention_applies_at_start_and_after_each_roll(tmp_path: Path) -> None:
    for old in ("2026112001", "2026112501"):
        with SessionLog.open(tmp_path / old, create=True) as session_log:
            session_log.append(encode_sequenced_many([old.encode()]), 1)
        (tmp_path / old / "ended").touch()

    async def main() -> None:
        engine = Engine(
            Catalogue(tmp_path, Durability.NONE),
            clock=LoopClock(dt.datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
            schedule=RollSchedule(zone=UTC),
            retention=Retention(archive_after_days=2, delete_after_days=7),
        )
        await engine.start(roll_on_schedule=False)
        try:
            assert engine.housekeeping is not None
            assert await engine.housekeeping == [
                "deleted session 2026112001 (9 days old)",
                "archived session 2026112501 (4 days old): 13 bytes to 130",
            ]
            await engine.roll()
            assert await engine.housekeeping == []  # today's ended session is young
        finally:
            await engine.close()

    asyncio.run(main())


def test_with_zero_days_a_session_goes_as_soon_as_it_ends_and_the_policy_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        engine = Engine(
            Catalogue(tmp_path, Durability.NONE),
            clock=LoopClock(dt.datetime(2026, 11, 29, 9, 30, tzinfo=UTC)),
            schedule=RollSchedule(zone=UTC),
            retention=Retention(delete_after_days=0),
        )
        await engine.start(roll_on_schedule=False)
        try:
            await engine.publish(b"gone soon")
            assert await engine.roll() == "2026112902"
            assert engine.housekeeping is not None
            assert await engine.housekeeping == ["deleted session 2026112901 (0 days old)"]
        finally:
            await engine.close()

    with caplog.at_level(logging.INFO, logger="tickertape"):
        asyncio.run(main())
    assert "retention: ended sessions are deleted once ended (today's too: 0 days)" in (caplog.text)
    assert sorted(os.listdir(tmp_path)) == [".lock", "2026112902"]


def open_files() -> set[str]:
    """What this process has open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_a_closed_session_nobody_reads_is_not_kept_open(tmp_path: Path) -> None:
    """So that archiving or deleting it frees its space while the server runs."""

    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            await engine.publish_many(payloads("old", 5))
            reader = await Client.login(server.port, seq=1)
            assert await reader.packet() == LoginAccepted(engine.session_id, 1)
            ended = engine.session_id
            log_path = str(tmp_path / ended / "log")
            await engine.roll()
            # its subscriber still reads the ended session: the log stays open
            assert [await reader.packet() for _ in range(5)] == [
                SequencedData(p) for p in payloads("old", 5)
            ]
            assert await reader.packet() == EndOfSession()
            assert await reader.packet() is None
            # The server notices the close on its next turn:
            await until(lambda: log_path not in open_files(), "the ended log closed")
            puller = await Client.login(server.port, ended, 2)
            accepted, got = await puller.session()
            assert accepted == LoginAccepted(ended, 2)
            assert got == payloads("old", 5)[1:]
            await until(lambda: log_path not in open_files(), "the ended log closed again")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_failed_roll_leaves_the_session_going(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(loop: JumpingLoop, engine: Engine, port: int) -> None:
        await engine.publish(b"before")

        def no_room(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(engine.catalogue, "open_next", no_room)
        with pytest.raises(StoreError, match=r"rolling session 2026112901 failed: .*No space"):
            await engine.roll()
        assert engine.session_id == "2026112901"
        assert await asyncio.wait_for(engine.publish(b"after"), REAL_TIMEOUT) == 2

    run(tmp_path, dt.datetime(2026, 11, 29, 9, 30, tzinfo=UTC), scenario)


def test_a_roll_that_cannot_end_the_session_leaves_no_new_session_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(loop: JumpingLoop, engine: Engine, port: int) -> None:
        await engine.publish(b"before")
        mark_ended = engine.catalogue.mark_ended

        def no_room(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(engine.catalogue, "mark_ended", no_room)
        with pytest.raises(StoreError, match=r"rolling session 2026112901 failed: .*No space"):
            await engine.roll()
        assert engine.session_id == "2026112901"
        assert sorted(os.listdir(tmp_path)) == [".lock", "2026112901"]
        assert await asyncio.wait_for(engine.publish(b"after"), REAL_TIMEOUT) == 2
        monkeypatch.setattr(engine.catalogue, "mark_ended", mark_ended)
        assert await engine.roll() == "2026112902"

    run(tmp_path, dt.datetime(2026, 11, 29, 9, 30, tzinfo=UTC), scenario)


def test_a_roll_whose_caller_is_cancelled_still_completes(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, engine: Engine, port: int) -> None:
        published = asyncio.ensure_future(engine.publish_many([b"a"] * 1000))
        roll = asyncio.ensure_future(engine.roll())
        await asyncio.sleep(0)
        roll.cancel()
        assert await published == 1  # persisted, and the publisher told so
        await until(lambda: engine.session_id != "2026112901", "the roll", interval=0.001)
        assert engine.session_id == "2026112902"
        assert await engine.publish(b"next") == 1

    run(tmp_path, dt.datetime(2026, 11, 29, 9, 30, tzinfo=UTC), scenario)
