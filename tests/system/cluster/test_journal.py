"""The cluster's journal on a real three-server JetStream cluster: appends are fenced by
the journal's own last position, read back in order, and refused without a quorum."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickertape.cluster.journal import Fenced, Journal, JournalConfig, Misconfigured, Unavailable
from tickertape.cluster.lease import Holder, Lease, LeaseConfig
from tickertape.cluster.local import NatsCluster, jetstream_ready, nats_cluster
from tickertape.cluster.records import Batch, Fence, Record, Roll

names = (f"j{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


async def read(journal: Journal, start: int, count: int) -> list[tuple[int, Record]]:
    got: list[tuple[int, Record]] = []
    async for item in journal.read(start):
        got.append(item)
        if len(got) == count:
            break
    return got


def test_records_are_appended_at_consecutive_positions_and_read_back_in_order(
    cluster: NatsCluster,
) -> None:
    appended: list[Record] = [
        Fence("a", "127.0.0.1:1", 1),
        Batch("2026120701", 1, 2, b"\x00\x02Sa\x00\x02Sb"),
        Batch("2026120701", 3, 1, b"\x00\x02Sc"),
        Roll("2026120701", "2026120702"),
        Batch("2026120702", 1, 1, b"\x00\x02Sd"),
    ]

    async def scenario() -> None:
        client = await jetstream_ready(cluster.urls)
        journal = await Journal.open(client.jetstream(), JournalConfig(name=next(names)))
        assert await journal.end() == 0
        positions: list[int] = []
        for record in appended:
            positions.append(await journal.append(record, after=len(positions)))
        assert positions == [1, 2, 3, 4, 5]
        assert await journal.end() == 5
        assert await read(journal, 1, 5) == list(zip(positions, appended, strict=True))
        assert await read(journal, 4, 2) == [(4, appended[3]), (5, appended[4])]
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_append_after_a_stale_position_is_refused_and_changes_nothing(
    cluster: NatsCluster,
) -> None:
    """A writer that last saw the journal end at 1 while another has appended since (a
    sequencer paused while the next took over) gets nothing in."""

    async def scenario() -> None:
        client = await jetstream_ready(cluster.urls)
        config = JournalConfig(name=next(names))
        journal = await Journal.open(client.jetstream(), config)
        await journal.append(Fence("old", "127.0.0.1:1", 1), after=0)
        await journal.append(Fence("new", "127.0.0.1:2", 2), after=1)
        with pytest.raises(Fenced, match="moved past 1"):
            await journal.append(Batch("2026120701", 1, 1, b"\x00\x02Sz"), after=1)
        assert await journal.end() == 2
        assert [record for _, record in await read(journal, 1, 2)] == [
            Fence("old", "127.0.0.1:1", 1),
            Fence("new", "127.0.0.1:2", 2),
        ]
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_of_two_writers_appending_after_the_same_position_exactly_one_succeeds(
    cluster: NatsCluster,
) -> None:
    async def scenario() -> None:
        first = await jetstream_ready(cluster.urls)
        second = await jetstream_ready(cluster.urls)
        config = JournalConfig(name=next(names))
        journals = [await Journal.open(c.jetstream(), config) for c in (first, second)]
        for round_ in range(20):
            results = await asyncio.gather(
                *(
                    journal.append(Fence(f"w{i}", "127.0.0.1:1", round_), after=round_)
                    for i, journal in enumerate(journals)
                ),
                return_exceptions=True,
            )
            assert sorted(type(result).__name__ for result in results) == ["Fenced", "int"]
            assert round_ + 1 in results
        assert await journals[0].end() == 20
        await first.close()
        await second.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_appends_go_on_with_one_server_of_three_lost_and_stop_without_a_quorum(
    tmp_path: Path,
) -> None:
    with nats_cluster(tmp_path) as cluster:

        async def scenario() -> None:
            client = await jetstream_ready(cluster.urls)
            config = JournalConfig(name="quorum", timeout=1.0)
            journal = await Journal.open(client.jetstream(), config)
            await journal.append(Fence("a", "127.0.0.1:1", 1), after=0)

            cluster.kill(cluster.servers[0])
            end = await appended_once_the_leader_is_known(journal, 1)
            assert end == 2

            cluster.kill(cluster.servers[1])
            with pytest.raises(Unavailable, match="quorum"):
                await journal.append(UNACKNOWLEDGED, after=end)

            cluster.start(cluster.servers[0])
            cluster.start(cluster.servers[1])
            # The refused append may still be stored once the quorum is back (it was
            # proposed before the servers went): a writer reads the journal again, and
            # appends after what it finds, as often as it finds more.
            final = Batch("2026120701", 3, 1, b"\x00\x02Sw")
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, "no append went in after the restart"
                end = await settled_end(journal)
                try:
                    position = await journal.append(final, after=end)
                    break
                except Fenced:
                    continue  # the journal moved on meanwhile: read its end again
                except Unavailable:
                    await asyncio.sleep(0.2)  # the restarted servers are electing
            kept = [record for _, record in await read_settled(journal, position)]
            assert kept[:2] == [Fence("a", "127.0.0.1:1", 1), LOST_ONE]
            # An append that timed out may be stored late, even after its own retry:
            # what a node applies is each batch once, by its first number.
            assert first_copies(kept[2:]) in ([final], [UNACKNOWLEDGED, final])
            await client.close()

        asyncio.run(asyncio.wait_for(scenario(), 90))


LOST_ONE = Batch("2026120701", 1, 1, b"\x00\x02Sx")
"""Appended while one server of three is down."""
UNACKNOWLEDGED = Batch("2026120701", 2, 1, b"\x00\x02Sy")
"""Appended while two of three are down: not acknowledged, maybe stored later."""


async def appended_once_the_leader_is_known(journal: Journal, after: int) -> int:
    """Append :data:`LOST_ONE` after ``after``, retrying while the stream elects a new
    leader (bounded: the cluster has 30 s to recover); its position."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return await journal.append(LOST_ONE, after=after)
        except Unavailable:
            await asyncio.sleep(0.2)  # an election under way: nothing to wait on
        except Fenced:  # an earlier try was stored after all
            end = await journal.end()
            assert end == after + 1
            assert (await read(journal, end, 1))[0][1] == LOST_ONE
            return end
    raise AssertionError("the journal did not take an append within 30 s")


async def settled_end(journal: Journal) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            return await journal.end()
        except Unavailable:
            await asyncio.sleep(0.2)  # the restarted servers are electing
    raise AssertionError("the journal's end could not be read within 30 s")


async def read_settled(journal: Journal, count: int) -> list[tuple[int, Record]]:
    """The first ``count`` records, once JetStream starts a reader again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await read(journal, 1, count)
        except Unavailable:
            assert time.monotonic() < deadline, "no reader started within 30 s"
            await asyncio.sleep(0.2)  # the restarted servers are electing


def first_copies(kept: list[Record]) -> list[Record]:
    """``kept`` without the later copies of a batch (the same session and numbers)."""
    seen: set[tuple[str, int]] = set()
    unique: list[Record] = []
    for record in kept:
        if isinstance(record, Batch):
            if (record.session, record.first) in seen:
                continue
            seen.add((record.session, record.first))
        unique.append(record)
    return sorted(unique, key=lambda r: r.first if isinstance(r, Batch) else 0)


def test_a_node_given_other_settings_than_the_cluster_is_told_which(
    cluster: NatsCluster,
) -> None:
    """The first node makes the journal and the lease bucket; a node started with other
    settings is refused at once, naming the options, not after waiting for JetStream."""
    name = next(names)

    async def scenario() -> None:
        client = await jetstream_ready(cluster.urls)
        js = client.jetstream()
        await Journal.open(js, JournalConfig(name=name, retention_days=3))
        with pytest.raises(Misconfigured, match="--cluster-retention"):
            await Journal.open(js, JournalConfig(name=name, retention_days=1))
        me = Holder("a", "127.0.0.1:1")
        await Lease.open(js, me, LeaseConfig(name=name, ttl=3.0))
        with pytest.raises(Misconfigured, match="--lease-ttl"):
            await Lease.open(js, me, LeaseConfig(name=name, ttl=10.0))
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
