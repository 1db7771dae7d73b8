"""The cluster node's loop, without NATS: what it does when the journal's applier does
not stop when it is first told to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from tickertape.cluster import records
from tickertape.cluster.config import ClusterConfig
from tickertape.cluster.journal import Journal
from tickertape.cluster.lease import Lease
from tickertape.cluster.node import ClusterNode
from tickertape.server.engine import Engine


class LosingJournal:
    """A journal whose reader loses the first cancellation it gets while it waits, as
    ``asyncio.wait_for`` does on Python 3.11 when the future it waits for completes as
    the cancellation comes (nats-py waits for JetStream's answers with it), then reads
    one record, another node's Fence."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    async def read(self, start: int) -> AsyncGenerator[tuple[int, records.Record]]:
        self.waiting.set()
        # JetStream's answer to "start a reader" comes as the cancellation does.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        yield start, records.Fence("n2", "127.0.0.1:2", 7)
        await asyncio.Event().wait()  # no more records


class TakenLease:
    """A lease this node takes at its first try, once the applier is reading."""

    def __init__(self, journal: LosingJournal) -> None:
        self._journal = journal

    async def take(self) -> bool:
        await self._journal.waiting.wait()
        return True


def test_taking_the_lease_stops_an_applier_that_lost_its_cancellation(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SimpleNamespace(replicator=None)
        engine = cast(Engine, SimpleNamespace(active=SimpleNamespace(writer=writer)))
        config = ClusterConfig(servers=("nats://127.0.0.1:1",), node="n1", address="a:1")
        node = ClusterNode(engine, tmp_path, config, asyncio.Event())
        journal = LosingJournal()
        node._journal = cast(Journal, journal)
        node._lease = cast(Lease, TakenLease(journal))
        # The node stops following to lead; before the fix it waited for ever for an
        # applier that was waiting for the lock the node held.
        await asyncio.wait_for(node._follow(), 10)
        # Nothing was applied once the node had decided to lead.
        assert node.position == 0
        assert node.sequencer is None

    asyncio.run(main())
