"""Failover in a cluster of three nodes on a real JetStream cluster: the sequencer
SIGKILLed at a random moment under publishing and fan-out, round after round, and a
sequencer paused (SIGSTOP) long enough to be replaced, then resumed (a zombie).

Every message carries its own id, so that what is in the logs can be checked against
what was acknowledged: an acknowledged message is present, once if it was never sent
again; one sent again after a failure (it was not acknowledged) may be present twice."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription
from tickertape.errors import LoginRejected
from tickertape.wire.publishing import redirect_address, redirect_text

from clusternodes import Node, Nodes, cluster_nodes
from support import until

ROUNDS = 20
CHUNK = 200
"""Messages a publisher sends at a time."""
PACE = 0.01
"""Seconds between a publisher's sends: about 20,000 messages a second."""


def message(tag: bytes, number: int) -> bytes:
    return tag + b"%09d" % number + b"." * 80


def message_id(payload: bytes) -> bytes:
    return payload[:10]


@dataclass
class Feed:
    """A publisher that keeps publishing through failovers: on a lost connection it
    finds the node that takes publishers and sends again, in order, what was not
    acknowledged."""

    nodes: Nodes
    tag: bytes = b"m"
    sent: list[bytes] = field(default_factory=list)
    acked = 0
    """How many of :attr:`sent`, from the first, are acknowledged."""
    resent: set[bytes] = field(default_factory=set)
    connected_at: list[float] = field(default_factory=list)
    first_ack_at: list[float] = field(default_factory=list)
    """For each connection, when its first acknowledgement came (inf: none yet)."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stopping.is_set():
            node = await self.nodes.sequencer(within=60)
            try:
                publisher = await Publisher.connect("127.0.0.1", node.port, server_timeout=5)
            except (LoginRejected, OSError):
                continue
            self.connected_at.append(time.monotonic())
            self.first_ack_at.append(float("inf"))
            with contextlib.suppress(OSError, LoginRejected):
                await self._publish(publisher)
            with contextlib.suppress(OSError):
                await publisher.close()

    async def _publish(self, publisher: Publisher) -> None:
        base = self.acked
        again = self.sent[base:]
        self.resent.update(map(message_id, again))
        if again:
            await publisher.send_many(again)
        while True:
            self._count(publisher, base)
            if self.stopping.is_set():
                await publisher.flush()
                self._count(publisher, base)
                return
            first = len(self.sent) + 1
            fresh = [message(self.tag, n) for n in range(first, first + CHUNK)]
            self.sent += fresh
            await publisher.send_many(fresh)
            await asyncio.sleep(PACE)  # pacing the load, not waiting for anything

    def _count(self, publisher: Publisher, base: int) -> None:
        if base + publisher.acked > self.acked:
            self.acked = base + publisher.acked
            if self.first_ack_at[-1] == float("inf"):
                self.first_ack_at[-1] = time.monotonic()


@dataclass
class Reader:
    """A subscriber that moves to another node when its node is lost, at the next
    number; it keeps what it received, in order, with the number of the first."""

    nodes: Nodes
    node: int
    first: int = 1
    received: list[bytes] = field(default_factory=list)
    moves = 0

    async def run(self) -> None:
        while True:
            candidates = [n for n in self.nodes.up if n.listening()]
            if not candidates:
                await asyncio.sleep(0.05)  # every node down for a moment: look again
                continue
            node = candidates[self.node % len(candidates)]
            self.node += 1
            next_seq = self.first + len(self.received)
            with contextlib.suppress(OSError, LoginRejected):
                async with Subscription(
                    "127.0.0.1", node.port, seq=next_seq, reconnect=False, server_timeout=5
                ) as subscription:
                    async for batch in subscription.batches():
                        assert batch.first_seq == self.first + len(self.received), "a gap"
                        self.received += batch.payloads
            self.moves += 1


async def settled(nodes: Nodes) -> int:
    """Wait until every node has applied the same messages; how many."""

    def same() -> int | None:
        sessions = {n.sessions()[-1].name for n in nodes.nodes}
        if len(sessions) != 1:
            return None
        (session,) = sessions
        counts = {n.messages(session) for n in nodes.nodes}
        return counts.pop() if len(counts) == 1 else None

    return await until(same, "every node applying the same messages", 60, 0.1)


def check_logs(nodes: Nodes, feeds: list[Feed]) -> list[bytes]:
    """Every node's logs are the same bytes; every acknowledged message is in them
    (once, unless it was sent again); the payloads of the session, in order."""
    (session,) = {n.sessions()[-1].name for n in nodes.nodes}
    logs = {node.name: node.log_bytes(session) for node in nodes.nodes}
    first = logs[nodes.nodes[0].name]
    for name, data in logs.items():
        assert data == first, f"node {name}'s log differs"
    payloads, position = [], 0
    while position < len(first):
        length = int.from_bytes(first[position : position + 2], "big")
        payloads.append(first[position + 3 : position + 2 + length])
        position += 2 + length
    counts = Counter(map(message_id, payloads))
    for feed in feeds:
        for sent in feed.sent[: feed.acked]:
            key = message_id(sent)
            assert counts[key] >= 1, f"acknowledged {key!r} is lost"
            assert counts[key] == 1 or (key in feed.resent and counts[key] == 2), key
    return payloads


def test_the_sequencer_killed_at_random_moments_loses_nothing_acknowledged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cluster_nodes(tmp_path) as nodes:
        took = asyncio.run(_kill_loop(nodes))
    median, worst = statistics.median(took), max(took)
    with capsys.disabled():
        print(
            f"\ncluster failover over {len(took)} SIGKILLs of the sequencer: publishing "
            f"resumed after {median:.2f} s (median), {worst:.2f} s (worst)"
        )


async def _kill_loop(nodes: Nodes) -> list[float]:
    rng = random.Random(20261207)
    feed = Feed(nodes)
    readers = [Reader(nodes, i) for i in range(3)]
    tasks = [asyncio.create_task(feed.run())]
    tasks += [asyncio.create_task(reader.run()) for reader in readers]
    took = []
    try:
        for _ in range(ROUNDS):
            sequencer = await nodes.sequencer(within=60)
            flowing = feed.acked
            await until(lambda: feed.acked > flowing, "publishing", 60)  # noqa: B023
            await asyncio.sleep(rng.uniform(0.0, 1.0))  # a random moment under load
            connections = len(feed.connected_at)
            killed_at = time.monotonic()
            nodes.kill(sequencer)

            def resumed(connections: int = connections) -> float | None:
                later = feed.first_ack_at[connections:]
                return min(later) if later and min(later) < float("inf") else None

            took.append(await until(resumed, "publishing resuming", 60, 0.01) - killed_at)
            await asyncio.to_thread(nodes.start, sequencer)
        feed.stopping.set()
        await asyncio.wait_for(tasks[0], 60)
        await tasks[0]
        count = await settled(nodes)
        await until(lambda: all(r.first + len(r.received) > count for r in readers), "readers", 60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    payloads = check_logs(nodes, [feed])
    assert len(payloads) == count
    for reader in readers:
        assert reader.received == payloads[: len(reader.received)]
    assert sum(r.moves for r in readers) >= ROUNDS  # they did move nodes, again and again
    return took


def test_a_paused_sequencer_that_wakes_up_after_a_takeover_writes_nothing(
    tmp_path: Path,
) -> None:
    with cluster_nodes(tmp_path) as nodes:
        asyncio.run(_zombie(nodes))


async def _zombie(nodes: Nodes) -> None:
    zombie = await nodes.sequencer()
    reader = Reader(nodes, nodes.nodes.index(zombie))  # reads from the zombie first
    reading = asyncio.create_task(reader.run())
    publisher = await Publisher.connect("127.0.0.1", zombie.port)
    before = [message(b"b", n) for n in range(1, 1001)]
    await publisher.send_many(before)
    await publisher.flush()
    assert publisher.acked == len(before)

    nodes.pause(zombie)
    # Sent while it sleeps: read only once it wakes, when it is no longer the sequencer.
    asleep = [message(b"z", n) for n in range(1, 501)]
    await publisher.send_many(asleep)
    others = [n for n in nodes.nodes if n is not zombie]

    async def successor() -> Node | None:
        for node in others:
            try:
                candidate = await Publisher.connect("127.0.0.1", node.port, server_timeout=2)
            except (LoginRejected, OSError):
                continue
            await candidate.close()
            return node
        return None

    new = await until(successor, "another node taking over", 30, 0.1)
    feed = Feed(nodes, tag=b"n")
    async with await Publisher.connect("127.0.0.1", new.port) as publisher_2:
        after = [message(b"n", n) for n in range(1, 2001)]
        await publisher_2.send_many(after)
        await publisher_2.flush()
        assert publisher_2.acked == len(after)
        feed.sent, feed.acked = after, len(after)

        nodes.resume(zombie)

        # The zombie's publisher is told to go elsewhere, and nothing it sent is taken.
        async def send_more() -> None:
            await publisher.send_many([message(b"y", n) for n in range(1, 501)])
            await publisher.flush()

        with pytest.raises((ConnectionError, OSError)):
            await send_more()
        assert publisher.acked == len(before)
        said = publisher.last_words or ""
        assert redirect_text(None) in said or redirect_address(said) is not None, said
        with contextlib.suppress(OSError):
            await publisher.close()
        # The new sequencer goes on; the zombie follows it.
        later = [message(b"n", n) for n in range(2001, 3001)]
        await publisher_2.send_many(later)
        await publisher_2.flush()
        feed.sent, feed.acked = after + later, len(after) + len(later)

    count = await settled(nodes)
    assert count == len(before) + len(after) + len(later)
    await until(lambda: reader.first + len(reader.received) > count, "the reader", 30)
    reading.cancel()
    payloads = check_logs(nodes, [feed])
    assert payloads == before + after + later  # nothing of the zombie's after its pause
    assert reader.received == payloads
    assert "stops sequencing" in zombie.output()
