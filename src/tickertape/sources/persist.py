"""Publishing from a source that must not give up on a full disk.

A source inside the server (the demo, an upstream feed, a plug-in) has nobody to hand an
error to: when a write to the log fails, the engine pauses publishing and tries again
after a delay; the source waits with it and then publishes the same messages. They got
no numbers the first time, so the numbering stays gapless and they keep their place.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tickertape.server.engine import Engine
from tickertape.server.writer import PublishFailed

__all__ = ["publish_until_persisted"]

log = logging.getLogger(__name__)


async def publish_until_persisted(engine: Engine, payloads: Sequence[bytes], source: str) -> int:
    """Publish ``payloads`` in order, however long publishing stays paused; returns the
    number of the first. Any error but a paused engine's (it is shutting down, a message
    is too long) is raised; a paused engine makes each new call wait its delay first."""
    done = 0
    first = 0
    while True:
        try:
            seq = await engine.publish_many(payloads[done:])
        except PublishFailed as exc:
            if exc.published:
                first = first or exc.first_seq
                done += exc.published
            waiting = len(payloads) - done
            log.warning(
                "%s: %s for publishing to resume",
                source,
                "1 message waits" if waiting == 1 else f"{waiting} messages wait",
            )
            continue
        return first or seq
