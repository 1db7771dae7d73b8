"""The sequencer's lease on a real three-server JetStream cluster: one holder at a time,
kept by renewing, lapsing when not renewed, given up at once on release."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator

import pytest

from tickertape.cluster.lease import Holder, Lease, LeaseConfig, LeaseLost
from tickertape.cluster.local import NatsCluster, jetstream_ready, nats_cluster

names = (f"l{i}" for i in itertools.count())
A = Holder("a", "127.0.0.1:1001")
B = Holder("b", "127.0.0.1:1002")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_node_holds_the_lease_and_keeps_it_by_renewing(cluster: NatsCluster) -> None:
    async def scenario() -> None:
        client = await jetstream_ready(cluster.urls)
        config = LeaseConfig(name=next(names), ttl=5.0)
        a = await Lease.open(client.jetstream(), A, config)
        b = await Lease.open(client.jetstream(), B, config)
        assert await a.holder() is None
        assert await a.take()
        assert not await b.take()
        for _ in range(3):
            await a.renew()
            assert not await b.take()
        assert a.held() and not b.held()
        assert await b.holder() == A
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_lease_not_renewed_lapses_and_the_next_holder_has_a_later_term(
    cluster: NatsCluster,
) -> None:
    """A holder that stops renewing (dead, paused, cut off) loses the lease after its
    ttl; another node takes it, and the old holder's renewal then fails."""

    async def scenario() -> None:
        client = await jetstream_ready(cluster.urls)
        config = LeaseConfig(name=next(names), ttl=1.0)
        a = await Lease.open(client.jetstream(), A, config)
        b = await Lease.open(client.jetstream(), B, config)
        assert await a.take()
        taken = time.monotonic()
        while not await b.take():  # the lapse is on the servers' clock: poll, bounded
            assert time.monotonic() - taken < 15, "the lease did not lapse"
            await asyncio.sleep(0.1)
        assert b.term > a.term
        assert await a.holder() == B
        with pytest.raises(LeaseLost, match="another node took the lease"):
            await a.renew()
        assert not a.held()
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_released_lease_is_taken_at_once(cluster: NatsCluster) -> None:
    async def scenario() -> None:
        client = await jetstream_ready(cluster.urls)
        config = LeaseConfig(name=next(names), ttl=30.0)
        a = await Lease.open(client.jetstream(), A, config)
        b = await Lease.open(client.jetstream(), B, config)
        assert await a.take()
        await a.release()
        assert not a.held()
        assert await b.take()
        assert await a.holder() == B
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_holder_stops_counting_on_its_lease_before_it_can_lapse(cluster: NatsCluster) -> None:
    """Held until ttl minus the margin after the last successful write was *sent*: the
    servers cannot let it lapse before then."""

    async def scenario() -> None:
        client = await jetstream_ready(cluster.urls)
        clock = FakeMonotonic()
        config = LeaseConfig(name=next(names), ttl=10.0, margin=2.0)
        a = await Lease.open(client.jetstream(), A, config, monotonic=clock)
        assert await a.take()
        clock.now = 7.9
        assert a.held()
        clock.now = 8.0
        assert not a.held()
        await a.renew()  # sent at 8.0: held until 16.0
        clock.now = 15.9
        assert a.held()
        clock.now = 16.0
        assert not a.held()
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
