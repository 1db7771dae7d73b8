"""Sources inside the server wait out a full disk and lose nothing: the demo, as the
example, against a log whose writes fail with ENOSPC until the disk has room again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.writer import WriterConfig
from tickertape.sources.demo import run_demo
from tickertape.sources.persist import publish_until_persisted
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability

from support import FullDisk, JumpingLoop, session_payloads, until

RETRY = 60.0
"""The engine's retry delay: only the loop's clock jumping lets a retry happen."""


def run_jumping(tmp_path: Path, scenario: object) -> None:
    loop = JumpingLoop()

    async def main() -> None:
        engine = Engine(
            Catalogue(tmp_path, Durability.BATCH),
            WriterConfig(durability=Durability.BATCH, publish_retry=RETRY),
        )
        await engine.start(roll_on_schedule=False)
        try:
            await scenario(engine, loop)  # type: ignore[operator]
        finally:
            await engine.close()

    try:
        loop.run_until_complete(main())  # bounded by pytest-timeout: the clock jumps
    finally:
        loop.close()


def logged(tmp_path: Path) -> list[bytes]:
    session = next(p for p in tmp_path.iterdir() if p.is_dir())
    return session_payloads(session)


@pytest.mark.timeout(60)
def test_the_demo_waits_out_a_full_disk_and_numbers_every_message_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FullDisk(monkeypatch, marker=b" demo", full=False)  # every demo batch

    async def scenario(engine: Engine, loop: JumpingLoop) -> None:
        demo = asyncio.ensure_future(run_demo(engine, rate=1000, count=300, tick=0.001))
        await until(lambda: engine.next_seq >= 100, "100 published", interval=0.01)
        disk.full = True
        await until(lambda: disk.failures, "a failed write", interval=0.01)
        for _ in range(3):  # still full after each delay: the demo waits on
            loop.advance(8 * RETRY)
            await asyncio.sleep(0.05)
        assert not demo.done()
        assert engine.publishing_error is not None
        disk.full = False
        loop.advance(8 * RETRY)
        await asyncio.wait_for(demo, 10)
        assert engine.next_seq == 301

    run_jumping(tmp_path, scenario)
    payloads = logged(tmp_path)
    assert len(payloads) == 300
    # Every demo payload starts with its own sequence number: no gap, none twice.
    assert [int(p.split()[0]) for p in payloads] == list(range(1, 301))


@pytest.mark.timeout(60)
def test_an_engine_shutting_down_is_not_waited_for(tmp_path: Path) -> None:
    async def scenario(engine: Engine, loop: JumpingLoop) -> None:
        await engine.close()
        with pytest.raises(StoreError, match="shutting down"):
            await publish_until_persisted(engine, [b"late"], "test")

    run_jumping(tmp_path, scenario)
