"""Applying the journal's records to a node's engine, in the journal's order: what
makes every node's data directory the same, byte for byte.

A record may come twice (an append that was not acknowledged may be stored anyway, and
a node that restarts reads again from the position it last saved), so a batch is
applied only if it starts where the session's log ends, skipped if the log already
holds it; anything else (a gap, an overlap, a batch whose packets do not add up, a
session this data directory does not have) is a :class:`ClusterError`: the node stops
rather than serve something other than what the others serve.
"""

from __future__ import annotations

import logging

from tickertape.cluster import records
from tickertape.errors import StoreError, TickertapeError
from tickertape.server.engine import Engine
from tickertape.wire.framing import packet_offsets

log = logging.getLogger(__name__)


class ClusterError(TickertapeError):
    """This node cannot follow the journal (a gap, a session it does not have): it stops."""


async def apply(engine: Engine, position: int, record: records.Record) -> None:
    """Apply ``record``, at journal ``position``, to ``engine``'s data directory (a
    fence changes nothing there)."""
    match record:
        case records.Batch():
            await _apply_batch(engine, position, record)
        case records.Roll(ended, next_session):
            current = engine.session_id
            if current == ended:
                await engine.roll(to=next_session)
            elif current < ended:
                await _adopt(engine, next_session, position)
            # else: a roll applied before


async def _apply_batch(engine: Engine, position: int, batch: records.Batch) -> None:
    if batch.session < engine.session_id:
        return  # of a session this node has ended: applied before
    if batch.session != engine.session_id:
        await _adopt(engine, batch.session, position)
    tail = engine.next_seq
    if batch.next <= tail:
        return  # a copy of a batch applied before
    if batch.first != tail:
        why = (
            "a gap (the journal no longer holds what this node missed)"
            if batch.first > tail
            else "batches that overlap"
        )
        raise ClusterError(
            f"journal position {position} holds messages {batch.first}..{batch.next - 1} "
            f"of session {batch.session}, and this node's log ends at {tail - 1}: {why}"
        )
    _check_packets(batch, position)
    try:
        await engine.apply(batch.first, batch.count, batch.data)
    except (OSError, StoreError) as exc:
        raise ClusterError(f"cannot apply journal position {position}: {exc}") from exc


async def _adopt(engine: Engine, session: str, position: int) -> None:
    """Make ``session`` (later than the active one) active: only while the active one
    is empty (a node's first session, before the journal's reached it)."""
    if session > engine.session_id and engine.next_seq == 1:
        log.info(
            "session %s (journal position %d) replaces this node's empty session %s",
            session,
            position,
            engine.session_id,
        )
        await engine.roll(to=session)
        return
    raise ClusterError(
        f"journal position {position} is of session {session}, and this node's "
        f"active session is {engine.session_id} with {engine.next_seq - 1} messages: "
        "this data directory is not a copy of the cluster's (start the node with an "
        "empty one, or a copy of another node's)"
    )


def _check_packets(batch: records.Batch, position: int) -> None:
    offsets = packet_offsets(batch.data)
    if len(offsets) != batch.count + 1 or offsets[-1] != len(batch.data):
        raise ClusterError(
            f"journal position {position}: the batch does not hold {batch.count} "
            "Sequenced Data packets"
        )


__all__ = ["ClusterError", "apply"]
