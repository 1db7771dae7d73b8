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
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.errors import LoginRejected
from tickertape.wire.publishing import redirect_address, redirect_text

from clusternodes import (
    Feed,
    Node,
    Nodes,
    Reader,
    check_logs,
    cluster_nodes,
    message,
    settled,
    stop_tasks,
)
from support import until

ROUNDS = 20


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
        await stop_tasks(tasks)
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
