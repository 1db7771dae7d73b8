"""One node of a cluster, in process:

* its sessions are the cluster's, not its clock's: a node that comes back on a later day
  (down across midnight, or a clock ahead) goes on applying the cluster's session where
  it left it, instead of ending it early and opening a day of its own;
* a sequencer whose append the journal refuses stops at once, and its publishers are
  told to look for the sequencer elsewhere.

In-process nodes (an engine and a ClusterNode each, with a clock the test sets) on a
real three-server JetStream cluster."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tickertape.cluster.config import ClusterConfig
from tickertape.cluster.journal import Journal, JournalConfig
from tickertape.cluster.local import NatsCluster, jetstream_ready, nats_cluster
from tickertape.cluster.node import ClusterNode, Role
from tickertape.cluster.records import Fence
from tickertape.server.engine import Engine
from tickertape.server.writer import PublishFailed
from tickertape.store.catalogue import Catalogue
from tickertape.wire.publishing import redirect_text

from support import until

DAY1 = dt.datetime(2026, 12, 7, 23, 50, tzinfo=dt.UTC)
DAY2 = dt.datetime(2026, 12, 8, 0, 10, tzinfo=dt.UTC)
names = (f"days{i}" for i in itertools.count())


class SetClock:
    """The wall clock is what the test says; the monotonic clock is the system's."""

    def __init__(self, now: dt.datetime) -> None:
        self.at = now

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return self.at


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


@asynccontextmanager
async def node(
    cluster: NatsCluster, name: str, data: Path, now: dt.datetime, cluster_name: str
) -> AsyncIterator[ClusterNode]:
    """A node started as ``tickertape serve --cluster`` starts one."""
    engine = Engine(Catalogue(data), clock=SetClock(now))
    config = ClusterConfig(
        servers=tuple(cluster.urls),
        node=name,
        address=f"127.0.0.1:{7000 + len(name)}",
        name=cluster_name,
        lease_ttl=1.5,
        renew_every=0.5,
    )
    member = ClusterNode(engine, data, config, asyncio.Event())
    await member.connect()
    await engine.start(roll_on_schedule=False, session=await member.session_to_open())
    member.start()
    try:
        yield member
    finally:
        await member.close()
        await engine.close()


@asynccontextmanager
async def first_node(cluster: NatsCluster, tmp_path: Path, name: str) -> AsyncIterator[ClusterNode]:
    """Node ``a``, the first of cluster ``name``, once it is the sequencer."""
    async with node(cluster, "a", tmp_path / "a", DAY1, name) as a:
        await until(lambda: a.role is Role.SEQUENCER)
        yield a


def log_bytes(data: Path, session: str) -> bytes:
    return (data / session / "log").read_bytes()


def test_a_node_back_on_a_later_day_goes_on_with_the_clusters_session(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    name = next(names)

    async def scenario() -> None:
        await (await jetstream_ready(cluster.urls)).close()
        async with first_node(cluster, tmp_path, name) as a:
            session = a.engine.session_id
            assert session == "2026120701"
            await a.engine.publish_many([b"one", b"two"])
            async with node(cluster, "b", tmp_path / "b", DAY1, name) as b:
                await until(lambda: b.position == a.position)
            await a.engine.publish_many([b"three", b"four", b"five"])
            async with node(cluster, "b", tmp_path / "b", DAY2, name) as b:
                await until(lambda: b.position == a.position)
                assert b.engine.session_id == session
                assert b.engine.next_seq == 6
            assert log_bytes(tmp_path / "b", session) == log_bytes(tmp_path / "a", session)
            assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir()) == [session]

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_new_node_whose_clock_is_a_day_ahead_starts_on_the_clusters_session(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    name = next(names)

    async def scenario() -> None:
        async with first_node(cluster, tmp_path, name) as a:
            await a.engine.publish_many([b"one", b"two"])
            async with node(cluster, "c", tmp_path / "c", DAY2, name) as c:
                await until(lambda: c.position == a.position)
                assert c.engine.session_id == a.engine.session_id == "2026120701"
            session = a.engine.session_id
            assert log_bytes(tmp_path / "c", session) == log_bytes(tmp_path / "a", session)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_sequencer_whose_append_is_refused_steps_down_and_sends_publishers_on(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    name = next(names)

    async def scenario() -> None:
        async with first_node(cluster, tmp_path, name) as a:
            await a.engine.publish_many([b"one"])
            # Another writer's record: the journal has moved past where A last saw it.
            client = await jetstream_ready(cluster.urls)
            journal = await Journal.open(client.jetstream(), JournalConfig(name=name))
            await journal.append(Fence("x", "127.0.0.1:1", 99), after=await journal.end())
            await client.close()
            try:
                await a.engine.publish_many([b"two"])
            except PublishFailed as exc:
                said = str(exc)
            else:
                raise AssertionError("a fenced append was acknowledged")
            assert redirect_text(None) in said, said
            assert "moved past" in said, said
            assert a.role is Role.FOLLOWER
            assert a.engine.next_seq == 2

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_position_a_sequencer_saves_is_never_past_its_own_log(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """What the journal holds but the local log does not yet is not counted as applied:
    a node killed in between reads it again from the journal when it comes back."""
    name = next(names)

    async def scenario() -> None:
        async with first_node(cluster, tmp_path, name) as a:
            await a.engine.publish_many([b"one"])
            applied = a.position
            # As the writer does: replicate a batch; the local write comes after.
            packet = b"\x00\x04Stwo"
            await a.batch(a.engine.session_id, 2, 1, packet)
            assert a.position == applied
            await a.engine.apply(2, 1, packet)
            a.written()
            assert a.position == applied + 1

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_node_whose_journal_was_made_again_stops_saying_so(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """A journal deleted and made again (to change its replicas, say) starts at 1 again:
    a node that had applied more of the old one cannot tell where it is in the new one,
    and stops with the reason instead of taking the lease and fencing for ever."""
    name = next(names)

    async def scenario() -> None:
        async with first_node(cluster, tmp_path, name) as a:
            await a.engine.publish_many([b"one", b"two"])
        client = await jetstream_ready(cluster.urls)
        await client.jetstream().delete_stream(JournalConfig(name=name).stream)
        await client.close()
        async with node(cluster, "a", tmp_path / "a", DAY1, name) as a:
            failure = await until(lambda: a.failure, "the node stopping")
            assert "it is not the journal this node followed" in str(failure), failure
            assert a.role is not Role.SEQUENCER

    asyncio.run(asyncio.wait_for(scenario(), 60))
