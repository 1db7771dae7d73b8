"""Three ``tickertape serve --cluster`` nodes on a real three-server JetStream cluster
(``sync_interval: always``, loopback ports): one sequencer takes the publisher, every
node serves the same session, numbers and bytes, to subscribers from the start, from
the middle and live."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription
from tickertape.errors import LoginRejected
from tickertape.wire.publishing import redirect_address
from tickertape.wire.soupbintcp import encode_sequenced_many

from clusternodes import Node, Nodes, cluster_nodes, publish, raw_publisher_login
from support import until

MESSAGES = 200_000
HALF = MESSAGES // 2


def payload(number: int) -> bytes:
    """Message ``number``: 100 bytes that say which it is."""
    return b"%010d " % number + bytes((number * 7 + i) % 251 for i in range(89))


PAYLOADS = [payload(i) for i in range(1, MESSAGES + 1)]


async def receive(node: Node, seq: int, started: asyncio.Event) -> tuple[int, list[bytes]]:
    """What a subscriber of ``node`` logged in at ``seq`` (0: live, from the tail)
    receives up to the last message: the number of the first, and the payloads."""
    first, received = 0, list[bytes]()
    async with Subscription("127.0.0.1", node.port, seq=seq, reconnect=False) as subscription:
        batches = subscription.batches()
        started.set()
        async for batch in batches:
            if not received:
                first = batch.first_seq
            received += batch.payloads
            if batch.next_seq > MESSAGES:
                return first, received
    raise AssertionError(f"the subscription to {node.name} ended early")


async def subscribed(node: Node, seq: int) -> asyncio.Task[tuple[int, list[bytes]]]:
    started = asyncio.Event()
    task = asyncio.create_task(receive(node, seq, started))
    await started.wait()
    return task


def test_every_node_serves_every_subscriber_the_same_bytes(tmp_path: Path) -> None:
    with cluster_nodes(tmp_path) as nodes:
        asyncio.run(_every_node_serves_the_same(nodes))


async def _every_node_serves_the_same(nodes: Nodes) -> None:
    sequencer = await nodes.sequencer()
    from_start = [await subscribed(node, 1) for node in nodes.nodes]
    assert await publish(sequencer, PAYLOADS[:HALF]) == HALF
    from_middle = [await subscribed(node, HALF) for node in nodes.nodes]
    live = [await subscribed(node, 0) for node in nodes.nodes]
    assert await publish(sequencer, PAYLOADS[HALF:]) == MESSAGES - HALF

    for task in from_start:
        assert await task == (1, PAYLOADS)
    for task in from_middle:
        assert await task == (HALF, PAYLOADS[HALF - 1 :])
    for task in live:
        first, received = await task
        assert first > HALF  # joined after the first half, at the tail
        assert received == PAYLOADS[first - 1 :]

    # Every node's log holds the same bytes: the packets the sequencer encoded.
    session = sequencer.sessions()[-1].name
    for node in nodes.nodes:

        def applied(node: Node = node) -> bool:
            return node.messages(session) == MESSAGES

        await until(applied, f"{node.name} applying every message")
    expected = encode_sequenced_many(PAYLOADS)
    for node in nodes.nodes:
        assert [p.name for p in node.sessions()] == [session]
        assert node.log_bytes(session) == expected


def test_a_node_that_is_not_the_sequencer_sends_a_publisher_to_it(tmp_path: Path) -> None:
    with cluster_nodes(tmp_path) as nodes:
        asyncio.run(_followers_redirect(nodes))


async def _followers_redirect(nodes: Nodes) -> None:
    sequencer = await nodes.sequencer()
    for node in nodes.nodes:
        if node is sequencer:
            continue

        async def redirected(node: Node = node) -> tuple[bytes, bytes] | None:
            debug, rejected = await raw_publisher_login(node)
            return (debug, rejected) if b"publish to" in debug else None

        # A follower learns who took the lease within a moment.
        debug, rejected = await until(redirected, f"{node.name} naming the sequencer", 10, 0.05)
        assert debug[:1] == b"+"
        assert redirect_address(debug[1:].decode()) == ("127.0.0.1", sequencer.port)
        assert rejected == b"JS"
        # tickertape's own client says the same.
        with pytest.raises(LoginRejected, match=f"publish to {sequencer.address}"):
            await Publisher.connect("127.0.0.1", node.port)
