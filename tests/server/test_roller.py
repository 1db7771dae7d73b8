"""The session roller: what an end promises is durable before the end is."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import INDEX_FILE
from tickertape.store.log import Durability

from engine_support import run
from support import LoopClock, until


@pytest.mark.parametrize("durability", list(Durability), ids=lambda d: d.value)
def test_an_end_syncs_the_log_and_index_before_its_ended_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: Durability
) -> None:
    """What an end promises (the session's messages, and the checksums that vouch for
    them) is on stable storage before the end is: whatever the durability policy."""
    synced: list[str] = []

    def spy(real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            real(fd)
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))

        return sync

    async def scenario(engine: Engine) -> None:
        ended = engine.session_id
        await engine.publish_many([b"a", b"b"])
        monkeypatch.setattr(os, "fdatasync", spy(os.fdatasync))
        monkeypatch.setattr(os, "fsync", spy(os.fsync))
        await engine.end_session()
        monkeypatch.undo()
        directory = tmp_path / ended
        marker = synced.index(str(directory / "ended"))
        assert str(directory / "log") in synced[:marker]
        assert str(directory / INDEX_FILE) in synced[:marker]

    run(durability, scenario, tmp_path)


class HeldReplicator:
    """A cluster node's part, as the roller sees it: its rolls wait for the test."""

    def __init__(self) -> None:
        self.rolling = asyncio.Event()
        self.go = asyncio.Event()
        self.writes = 0

    def refusal(self) -> str | None:
        return None

    async def batch(self, session: str, first: int, count: int, data: bytes) -> None:
        raise AssertionError("no batch in this test")

    def written(self) -> None:
        self.writes += 1

    def not_written(self, error: BaseException) -> None:
        raise AssertionError(f"not written: {error}")

    async def roll(self, ended: str, next_session: str) -> None:
        self.rolling.set()
        await self.go.wait()


def test_stopping_the_schedule_waits_for_a_roll_under_way(tmp_path: Path) -> None:
    """A sequencer that steps down stops the schedule, then settles its writer: a roll
    still under way must be over by then, or the writer goes on in the ended session."""

    async def scenario(engine: Engine) -> None:
        replicator = HeldReplicator()
        engine.active.writer.replicator = replicator
        ended = engine.session_id
        rolling = asyncio.create_task(engine.roll())
        await replicator.rolling.wait()
        stopping = asyncio.create_task(engine.roller.stop_schedule())
        try:
            for _ in range(10):  # turns of the loop, not time: nothing else can happen
                await asyncio.sleep(0)
            assert not stopping.done()
        finally:
            replicator.go.set()
        await rolling
        await stopping
        assert engine.session_id != ended
        assert replicator.writes == 1

    run(Durability.BATCH, scenario, tmp_path)


def test_rolling_on_schedule_rolls_at_once_a_session_of_a_day_gone_by(tmp_path: Path) -> None:
    """A cluster node that takes over after the roll time (its predecessor died just
    before midnight) starts rolling on the schedule in yesterday's session: it rolls
    at once, not a day later."""

    async def scenario() -> None:
        clock = LoopClock(dt.datetime(2026, 12, 8, 0, 0, 2, tzinfo=dt.UTC))
        engine = Engine(Catalogue(tmp_path), clock=clock)
        await engine.start(roll_on_schedule=False, session="2026120701")
        try:
            await engine.publish_many([b"late"])
            engine.roller.roll_on_schedule()
            await until(lambda: engine.session_id == "2026120801", "the roll", within=10)
            assert (tmp_path / "2026120701" / "ended").exists()
        finally:
            await engine.close()

    asyncio.run(scenario())


class Elsewhere(HeldReplicator):
    """A cluster node that is not the sequencer."""

    def refusal(self) -> str | None:
        return "this node is not the cluster's sequencer: publish to 10.0.0.1:7300"


def test_a_node_that_is_not_the_sequencer_refuses_a_roll_naming_the_sequencer(
    tmp_path: Path,
) -> None:
    async def scenario(engine: Engine) -> None:
        engine.active.writer.replicator = Elsewhere()
        ended = engine.session_id
        with pytest.raises(StoreError) as refused:
            await engine.roll()
        assert str(refused.value).startswith("sessions are rolled by the cluster's sequencer")
        assert "10.0.0.1:7300" in str(refused.value)
        assert engine.session_id == ended
        refused_publishing = engine.metrics.registry.get_sample_value(
            "tickertape_publish_failures_total", {"reason": "elsewhere"}
        )
        assert not refused_publishing  # a roll is not a publish call

    run(Durability.BATCH, scenario, tmp_path)
