"""Failures around a cluster of three nodes on a real three-server JetStream cluster
(``sync_interval: always``, loopback ports), with real ``tickertape serve --cluster``
processes: NATS servers SIGKILLed under publishing (one: publishing goes on; two:
publishing pauses, nothing is acknowledged, and it resumes with no gap once they are
back), and a node stopped while 100,000 messages and a roll go by, which catches up on
restart and then serves the same bytes as the others."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tickertape.cluster.journal import JournalConfig
from tickertape.cluster.local import NatsServer, jetstream_ready

from clusternodes import (
    ADMIN_TOKEN,
    Feed,
    Node,
    Nodes,
    Reader,
    check_logs,
    cluster_nodes,
    message,
    message_id,
    publish,
    raw_publisher_login,
    settled,
    stop_tasks,
)
from support import session_payloads, until

FLOWING = 10_000
"""Acknowledged messages that show publishing goes on (about half a second's worth)."""
NO_SEQUENCER = "no node is at the moment"
"""What a node says to a publisher while no node can be the sequencer."""


def test_publishing_goes_on_without_one_nats_server_and_pauses_without_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cluster_nodes(tmp_path) as nodes:
        summary = asyncio.run(_nats_servers_killed(nodes))
    with capsys.disabled():
        print(f"\nnats-servers killed under publishing: {summary}")


async def journal_leader(nodes: Nodes) -> NatsServer:
    """The NATS server that leads the journal's stream (its Raft group) now."""
    client = await jetstream_ready(nodes.nats.urls)
    try:
        info = await client.jetstream().stream_info(JournalConfig().stream)
    finally:
        await client.close()
    assert info.cluster is not None
    (leader,) = [s for s in nodes.nats.servers if s.name == info.cluster.leader]
    return leader


async def _nats_servers_killed(nodes: Nodes) -> str:
    nats = nodes.nats
    # A publisher that does not send again what was not acknowledged: every message in
    # the logs must then be there exactly once.
    feed = Feed(nodes, resend=False, limit=1_500_000)
    reader = Reader(nodes, 0)
    tasks = [asyncio.create_task(feed.run()), asyncio.create_task(reader.run())]
    try:
        await until(lambda: feed.acked >= FLOWING, "publishing", 30)

        # One server of three lost (the journal's leader: the hardest one to lose).
        first = await journal_leader(nodes)
        acked, killed = feed.acked, time.monotonic()
        nats.kill(first)
        await until(lambda: feed.acked >= acked + FLOWING, "publishing going on", 30)
        one_down = time.monotonic() - killed

        # Two of three lost: no quorum. The publisher is told, and no node takes one.
        second = next(s for s in nats.servers if s.process is not None)
        lost, marks = len(feed.lost), {n.name: len(n.output()) for n in nodes.nodes}
        nats.kill(second)
        await until(lambda: len(feed.lost) > lost, "the publisher told to stop", 30)
        connections, paused = len(feed.connected_at), feed.acked
        told = feed.lost[-1]  # why, or (if the lease lapsed first) that no node takes it
        assert "not published" in told, told
        assert "quorum" in told or NO_SEQUENCER in told, told
        for node in nodes.nodes:

            async def refused(node: Node = node) -> str:
                debug, rejected = await raw_publisher_login(node)
                assert rejected == b"JS", rejected  # J: not available
                return debug[1:].decode()

            async def why(node: Node = node) -> str | None:
                text = await refused(node)
                return text if NO_SEQUENCER in text and "no quorum" in text else None

            await until(why, f"{node.name} telling publishers why no node takes them", 30, 0.1)

            def logged(node: Node = node) -> bool:
                return "no quorum" in node.output()[marks[node.name] :]

            await until(logged, f"{node.name} saying why no node sequences", 30, 0.1)
        assert feed.acked == paused, "acknowledged without a quorum"
        assert len(feed.connected_at) == connections, "a node took a publisher"

        # Both back: publishing resumes, numbering goes on.
        restarted = time.monotonic()
        nats.start(first)
        nats.start(second)
        await until(lambda: feed.acked > paused, "publishing resuming", 45, 0.01)
        took = time.monotonic() - restarted
        await until(lambda: feed.acked >= paused + FLOWING, "publishing going on", 30)
        feed.stopping.set()
        await asyncio.wait_for(tasks[0], 30)
        count = await settled(nodes)
        await until(lambda: reader.first + len(reader.received) > count, "the reader", 30)
    finally:
        await stop_tasks(tasks)

    payloads = check_logs(nodes, [feed])  # byte-identical logs, everything acknowledged
    assert len(payloads) == count
    numbers = [int(message_id(p)[1:]) for p in payloads]
    assert numbers == sorted(set(numbers)), "a message twice, or out of order"
    assert Counter(map(message_id, payloads)).most_common(1)[0][1] == 1
    acknowledged = {message_id(p) for p in feed.sent[: feed.acked]}
    assert acknowledged <= {message_id(p) for p in payloads}
    assert reader.received == payloads  # a subscriber saw no gap through all of it
    return (
        f"{feed.acked} acknowledged, {len(feed.given_up)} given up "
        f"({len(payloads) - feed.acked} of them in the logs anyway); {FLOWING} more "
        f"acknowledged {one_down:.2f} s after one server was killed; publishing resumed "
        f"{took:.2f} s after the two were restarted"
    )


def test_a_node_stopped_for_100000_messages_and_a_roll_catches_up_byte_for_byte(
    tmp_path: Path,
) -> None:
    with cluster_nodes(tmp_path, admin=True) as nodes:
        asyncio.run(_catching_up(nodes))


def roll(node: Node) -> tuple[str, str]:
    """Roll the session as an operator does (``tickertape sessions roll``); the session
    ended and the one opened."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickertape",
            "sessions",
            "roll",
            "--admin-port",
            str(node.admin_port),
            "--admin-token",
            ADMIN_TOKEN,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found = re.fullmatch(r"session (\d{10}) ended; session (\d{10}) is active\n", done.stdout)
    assert found is not None, done.stdout
    return found[1], found[2]


def session_files(node: Node) -> dict[str, bytes]:
    """Every file of every session directory of ``node``, by its path there."""
    return {
        f"{session.name}/{path.name}": path.read_bytes()
        for session in node.sessions()
        for path in sorted(session.iterdir())
    }


async def raw_read(node: Node, session: str, count: int) -> bytes:
    """What a subscriber logged in to ``session`` of ``node`` at sequence number 1 is
    sent, by a raw client written from the spec: the Sequenced Data packets, exactly
    as framed, up to message ``count`` (or End of Session)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    # Login Request: username (6), password (10), session (10), sequence number (20).
    writer.write(b"\x00\x2f" + b"L" + b" " * 16 + session.encode() + b"%20d" % 1)
    received, messages, heard = bytearray(), 0, time.monotonic()
    try:
        header = await reader.readexactly(3)
        body = await reader.readexactly(int.from_bytes(header[:2], "big") - 1)
        assert header[2:] == b"A" and body[:10] == session.encode(), (header, body)
        while messages < count:
            header = await reader.readexactly(3)
            body = await reader.readexactly(int.from_bytes(header[:2], "big") - 1)
            if header[2:] == b"S":
                received += header + body
                messages += 1
            elif header[2:] == b"Z":
                break
            if time.monotonic() - heard > 0.5:  # a Client Heartbeat now and then
                writer.write(b"\x00\x01R")
                heard = time.monotonic()
    finally:
        writer.close()
    return bytes(received)


async def _catching_up(nodes: Nodes) -> None:
    sequencer = await nodes.sequencer()
    stopped, other = [n for n in nodes.nodes if n is not sequencer]
    (first,) = [p.name for p in sequencer.sessions()]
    before = [message(b"a", n) for n in range(1, 1_001)]
    assert await publish(sequencer, before) == len(before)
    await until(lambda: stopped.messages(first) == len(before), "the node applying", 30)
    assert nodes.stop(stopped) == 0

    # While it is down: 100,000 messages, a roll, more messages in the next session.
    down = [message(b"b", n) for n in range(1, 100_001)]
    assert await publish(sequencer, down) == len(down)
    ended, second = await asyncio.to_thread(roll, sequencer)
    assert ended == first
    after = [message(b"c", n) for n in range(1, 20_001)]
    assert await publish(sequencer, after) == len(after)
    assert stopped.messages(first) == len(before)  # it was down: nothing applied

    await asyncio.to_thread(nodes.start, stopped)

    def caught_up(node: Node) -> bool:
        sessions = [p.name for p in node.sessions()]
        return sessions == [first, second] and node.messages(second) == len(after)

    await until(lambda: caught_up(stopped), "the restarted node catching up", 60, 0.1)
    await until(lambda: caught_up(other), "the other follower", 30, 0.1)

    # The roll at the same point on every node; the same files, byte for byte.
    for node in nodes.nodes:
        assert node.messages(first) == len(before) + len(down)
        assert (node.data / first / "ended").exists()
    expected = session_files(sequencer)
    assert set(expected) >= {f"{first}/log", f"{first}/index", f"{first}/ended"}
    for node in (stopped, other):
        assert session_files(node) == expected, f"{node.name}'s session directories differ"

    # Served from sequence 1 of each session: the same bytes as the others serve.
    for session, count in ((first, len(before) + len(down)), (second, len(after))):
        log = sequencer.log_bytes(session)
        for node in nodes.nodes:
            assert await raw_read(node, session, count) == log, (node.name, session)
    assert session_payloads(stopped.data / first) == before + down
    assert session_payloads(stopped.data / second) == after
