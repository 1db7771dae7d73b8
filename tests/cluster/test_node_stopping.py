"""The cluster node's loop, without NATS: what it does when a task it stops (the
journal's applier, the lease keeper) does not stop when it is first told to."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from tickertape.cluster import records
from tickertape.cluster.config import ClusterConfig
from tickertape.cluster.journal import Journal
from tickertape.cluster.lease import Lease, LeaseLost
from tickertape.cluster.node import ClusterNode, Role
from tickertape.server.engine import Engine


class LosingJournal:
    """A journal whose reader loses the first cancellation it gets while it waits, as
    ``asyncio.wait_for`` does on Python 3.11 when the future it waits for completes as
    the cancellation comes (nats-py waits for JetStream's answers with it), then reads
    one record, another node's Fence."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    async def span(self) -> tuple[int, int]:
        return 0, 0  # empty, as far as the node can tell before it reads

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


class KeptLease:
    """A lease this node holds, whose renewal loses the cancellation that comes as
    JetStream answers it (see :class:`LosingJournal`)."""

    term = 7

    def __init__(self) -> None:
        self.renewing = asyncio.Event()
        self.released = False

    def remaining(self) -> float:
        return 60.0

    def held(self) -> bool:
        return True

    async def renew(self) -> None:
        if not self.renewing.is_set():
            self.renewing.set()
            # JetStream's answer comes as the cancellation does.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    async def release(self) -> None:
        self.released = True


class FencedJournal:
    """An empty journal that takes a Fence."""

    async def span(self) -> tuple[int, int]:
        return 0, 0

    async def append(self, record: records.Record, after: int) -> int:
        return after + 1


def test_stepping_down_stops_a_lease_keeper_that_lost_its_cancellation(tmp_path: Path) -> None:
    async def main() -> None:
        engine = _engine()
        config = ClusterConfig(
            servers=("nats://127.0.0.1:1",), node="n1", address="a:1", renew_every=0.01
        )
        node = ClusterNode(engine, tmp_path, config, asyncio.Event())
        lease = KeptLease()
        node._journal = cast(Journal, FencedJournal())
        node._lease = cast(Lease, lease)
        leading = asyncio.create_task(node._lead())
        await lease.renewing.wait()
        assert node.role is Role.SEQUENCER
        node._step_down("an append was refused")  # as _append does
        # Before the fix the node waited for ever for a keeper that went on renewing
        # the lease it would never give up.
        await asyncio.wait_for(leading, 10)
        assert lease.released
        assert node.refusal() is not None  # publishers go elsewhere

    asyncio.run(main())


class SilentLease(KeptLease):
    """A lease this node holds for a short while, whose renewals get no answer (the
    node is cut off from NATS)."""

    def __init__(self, valid_for: float) -> None:
        super().__init__()
        self.valid_until = time.monotonic() + valid_for

    def remaining(self) -> float:
        return self.valid_until - time.monotonic()

    def held(self) -> bool:
        return self.remaining() > 0

    async def renew(self) -> None:
        await asyncio.Event().wait()  # no answer


def test_a_sequencer_cut_off_from_nats_steps_down_when_its_lease_could_have_lapsed(
    tmp_path: Path,
) -> None:
    """It cannot renew: it stops counting itself the sequencer as soon as it may no
    longer count on the lease, not at its next renewal, which may be later."""

    async def main() -> None:
        config = ClusterConfig(
            servers=("nats://127.0.0.1:1",), node="n1", address="a:1", renew_every=60.0
        )
        node = ClusterNode(_engine(), tmp_path, config, asyncio.Event())
        lease = SilentLease(valid_for=0.2)
        node._journal = cast(Journal, FencedJournal())
        node._lease = cast(Lease, lease)
        leading = asyncio.create_task(node._lead())
        with pytest.raises(LeaseLost):
            await asyncio.wait_for(leading, 10)
        assert not lease.held()
        assert node.role is Role.FOLLOWER
        assert lease.released

    asyncio.run(main())


def _engine() -> Engine:
    """What of an engine a leading node uses, doing nothing."""

    async def nothing() -> None:
        pass

    writer = SimpleNamespace(
        replicator=None, drain=nothing, release=lambda: None, resume=lambda: None
    )
    roller = SimpleNamespace(roll_on_schedule=lambda: None, stop_schedule=nothing)
    return cast(
        Engine,
        SimpleNamespace(
            active=SimpleNamespace(writer=writer),
            roller=roller,
            session_id="2026120701",
            next_seq=1,
        ),
    )
