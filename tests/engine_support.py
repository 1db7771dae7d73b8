"""What the engine's tests share: running a scenario against a started engine, and a
cursor that records what it is handed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from tickertape.server.engine import Engine
from tickertape.server.writer import WriterConfig
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability


class Recorder:
    """A cursor that records what it is handed, as a live subscriber would send it."""

    def __init__(self, next_seq: int) -> None:
        self.next_seq = next_seq
        self.batches: list[tuple[int, int]] = []
        self.payload_bytes: list[int] = []
        self.data = b""

    def deliver(self, data: bytes, first_seq: int, count: int, now: float) -> None:
        self.batches.append((first_seq, count))
        self.payload_bytes.append(len(data) - 3 * count)
        self.data += data
        self.next_seq = first_seq + count

    def session_ended(self) -> None:
        raise AssertionError("not expected")

    def abort(self) -> None:
        raise AssertionError("not expected")


def run(durability: Durability, scenario: Callable[[Engine], Awaitable[None]], data: Path) -> None:
    """Start an engine on ``data``, run ``scenario`` with it, close it."""

    async def main() -> None:
        engine = Engine(Catalogue(data, durability), WriterConfig(durability=durability))
        await engine.start()
        try:
            await scenario(engine)
        finally:
            await engine.close()

    asyncio.run(main())
