"""The demo source: a steady stream of self-describing messages.

Each payload starts with its own sequence number in ASCII decimal and a space, then the
UTC time it was made, then ``demo``, padded with spaces to a fixed size::

    17 2026-11-29T09:30:00.000123Z demo

so anyone can check a feed by eye: the number at the front must equal the sequence
number the feed says it has.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Final

from tickertape.server.engine import Engine
from tickertape.server.writer import PublishFailed
from tickertape.text import plural

log = logging.getLogger(__name__)

DEFAULT_DEMO_SIZE: Final = 100
DEFAULT_TICK: Final = 0.005
"""Seconds between demo batches: the batch holds whatever the rate made due since."""


def demo_payload(seq: int, stamp: str, size: int) -> bytes:
    """The demo message numbered ``seq``, made at ``stamp``, padded to ``size`` bytes."""
    return f"{seq} {stamp} demo".encode().ljust(size)


async def run_demo(
    engine: Engine,
    rate: float,
    size: int = DEFAULT_DEMO_SIZE,
    count: int | None = None,
    tick: float = DEFAULT_TICK,
) -> None:
    """Publish ``rate`` messages a second into the engine's active session, forever or
    until ``count`` messages were published."""
    if rate <= 0:
        raise ValueError(f"demo rate {rate} must be positive")
    loop = asyncio.get_running_loop()
    log.info("demo source: %g messages a second of %d bytes", rate, size)
    started = loop.time()
    made = 0
    while count is None or made < count:
        due = int((loop.time() - started) * rate) - made
        if count is not None:
            due = min(due, count - made)
        if due <= 0:
            await asyncio.sleep(tick)
            continue
        due = min(due, engine.config.max_batch_messages)
        made += await _publish_numbered(engine, due, size)
    log.info("demo source: published %s, stopping", plural(made, "message"))


async def _publish_numbered(engine: Engine, count: int, size: int) -> int:
    """Publish ``count`` demo messages, each made when its number is known: after any
    wait (a roll, a full queue, publishing paused) the numbers are read again, so a
    batch held back by a roll goes into the next session numbered from 1. Waits out a
    paused engine (like ``publish_until_persisted``); returns ``count``."""
    done = 0
    while done < count:
        try:
            await engine.wait_for_room()
            # From here to the numbers being assigned, nothing awaits.
            first = engine.next_assigned
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            payloads = [
                demo_payload(seq, stamp, size) for seq in range(first, first + count - done)
            ]
            await engine.publish_many(payloads)
            done = count
        except PublishFailed as exc:
            done += exc.published
            log.warning(
                "demo source: %s wait for publishing to resume", plural(count - done, "message")
            )
    return count
