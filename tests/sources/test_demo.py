"""The demo source numbers each message when the engine assigns its number, also across
rolls: every message of every session starts with its own sequence number."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tickertape.server.engine import Engine
from tickertape.server.writer import WriterConfig
from tickertape.sources.demo import run_demo
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability

from support import session_payloads, until


@pytest.mark.timeout(60)
def test_every_demo_message_of_every_session_starts_with_its_own_number(
    tmp_path: Path,
) -> None:
    rolls = 3

    async def main() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.NONE), WriterConfig())
        await engine.start(roll_on_schedule=False)
        demo = asyncio.ensure_future(run_demo(engine, rate=200_000, tick=0.001))
        try:
            for _ in range(rolls):
                # Roll while the demo publishes: a batch is in flight at the end.
                target = engine.next_seq + 2_000
                await until(lambda: engine.next_seq >= target, "the demo publishing")  # noqa: B023
                await engine.roll()
            target = engine.next_seq + 2_000
            await until(lambda: engine.next_seq >= target, "the demo publishing")
        finally:
            demo.cancel()
            with pytest.raises(asyncio.CancelledError):
                await demo
            await engine.close()

    asyncio.run(main())
    sessions = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(sessions) == rolls + 1
    for session in sessions:
        payloads = session_payloads(session)
        assert len(payloads) >= 2_000, session.name
        wrong = [
            (seq, payload[:12])
            for seq, payload in enumerate(payloads, 1)
            if payload.split(b" ", 1)[0] != str(seq).encode()
        ]
        assert not wrong, f"session {session.name}: {len(wrong)} misnumbered, {wrong[:3]}"
