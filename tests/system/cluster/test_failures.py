"""Failures around a cluster of three nodes on a real three-server JetStream cluster
(``sync_interval: always``, loopback ports), with real ``tickertape serve --cluster``
processes: a node stopped while 100,000 messages and a roll go by, which catches up on
restart and then serves the same bytes as the others."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from clusternodes import (
    ADMIN_TOKEN,
    Node,
    Nodes,
    cluster_nodes,
    message,
    publish,
)
from support import session_payloads, until


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
