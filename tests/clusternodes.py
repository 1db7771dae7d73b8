"""Three tickertape nodes of a cluster on a real three-server JetStream cluster, each a
``tickertape serve --cluster`` subprocess with its own data directory, for the system
tests of the cluster: start, kill, pause and restart a node, find the sequencer, read
what each node's logs hold; and the publishers and readers those tests share (a
:class:`Feed` that keeps publishing through failures, a :class:`Reader` that moves
between nodes, the check that every node's log holds what was acknowledged)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription
from tickertape.cluster.local import NatsCluster, free_port, jetstream_ready, nats_cluster
from tickertape.errors import LoginRejected
from tickertape.store.log import SessionLog
from tickertape.wire.publishing import NO_STREAM
from tickertape.wire.soupbintcp import LoginRequest

import support
from support import until, until_sync

START_TIMEOUT = 30.0
ADMIN_TOKEN = "cluster-test-token"
"""The admin token of nodes started with an admin port."""


@dataclass
class Node:
    """One node: its name, SoupBinTCP port, data directory, process (None: down) and
    admin API port (None: it serves none)."""

    name: str
    port: int
    data: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    admin_port: int | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            return True
        return False

    def sessions(self) -> list[Path]:
        return sorted(p for p in self.data.iterdir() if p.name[:1].isdigit())

    def log_bytes(self, session: str) -> bytes:
        """What the index of ``session`` vouches for in its log."""
        log = SessionLog.open(self.data / session, writable=False)
        try:
            return log.read_range(0, log.offset_of(log.next_seq))
        finally:
            log.close()

    def messages(self, session: str) -> int:
        log = SessionLog.open(self.data / session, writable=False)
        try:
            return log.next_seq - 1
        finally:
            log.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Nodes:
    """The nodes of one cluster, on ``nats``."""

    directory: Path
    nats: NatsCluster
    nodes: list[Node] = field(default_factory=list)
    extra: Sequence[str] = ()

    def start(self, node: Node) -> None:
        """Start ``node`` and wait until it listens."""
        node.data.mkdir(parents=True, exist_ok=True)
        admin = []
        if node.admin_port is not None:
            admin = ["--admin-port", str(node.admin_port), "--admin-token", ADMIN_TOKEN]
        with open(node.log, "ab") as output:
            node.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tickertape",
                    "serve",
                    "--cluster",
                    ",".join(self.nats.urls),
                    "--node",
                    node.name,
                    "--port",
                    str(node.port),
                    "--data",
                    str(node.data),
                    "--verbose",
                    *self.extra,
                    *admin,
                ],
                stdout=output,
                stderr=output,
            )
        until_sync(
            lambda: node.listening() or node.process is None or node.process.poll() is not None,
            f"node {node.name} listening",
            START_TIMEOUT,
            0.05,
        )
        assert node.process.poll() is None, node.output()

    def kill(self, node: Node) -> None:
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def stop(self, node: Node) -> int:
        """Stop ``node`` as an operator does (SIGTERM); its exit status."""
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        status = node.process.wait(30)
        node.process = None
        return status

    def pause(self, node: Node) -> None:
        """SIGSTOP ``node``, and wait until every thread of it has stopped."""
        assert node.process is not None
        support.pause(node.process)

    def resume(self, node: Node) -> None:
        assert node.process is not None
        support.resume(node.process)

    def close(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGCONT)
                self.kill(node)

    @property
    def up(self) -> list[Node]:
        return [node for node in self.nodes if node.process is not None]

    async def sequencer(self, within: float = START_TIMEOUT) -> Node:
        """The node that accepts a publisher's login (waiting until one does)."""

        async def accepting() -> Node | None:
            for node in self.up:
                try:
                    publisher = await Publisher.connect("127.0.0.1", node.port, server_timeout=2)
                except (LoginRejected, OSError):
                    continue
                await publisher.close()
                return node
            return None

        return await until(accepting, "a node taking publishers", within, 0.1)


@contextlib.contextmanager
def cluster_nodes(
    directory: Path, count: int = 3, extra: Sequence[str] = (), *, admin: bool = False
) -> Iterator[Nodes]:
    """A JetStream cluster and ``count`` nodes on it, all started (``admin``: each with
    an admin API port, token :data:`ADMIN_TOKEN`); everything killed on the way out,
    whatever happens."""
    with nats_cluster(directory / "nats") as nats:

        async def ready() -> None:
            client = await jetstream_ready(nats.urls)
            await client.close()

        asyncio.run(ready())
        nodes = Nodes(directory, nats, extra=extra)
        nodes.nodes = [
            Node(
                f"n{i}",
                free_port(),
                directory / f"n{i}" / "data",
                directory / f"n{i}.log",
                admin_port=free_port() if admin else None,
            )
            for i in range(1, count + 1)
        ]
        try:
            for node in nodes.nodes:
                nodes.start(node)
            yield nodes
        finally:
            nodes.close()


# ---------------------------------------------------------------- publishing and reading

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
    acknowledged (or, with ``resend=False``, gives it up and goes on with new messages).
    It sends at most ``limit`` messages of its own."""

    nodes: Nodes
    tag: bytes = b"m"
    resend: bool = True
    limit: int = 10_000_000
    sent: list[bytes] = field(default_factory=list)
    acked = 0
    """How many of :attr:`sent`, from the first, are acknowledged."""
    numbered = 0
    """The number of the last message made."""
    resent: set[bytes] = field(default_factory=set)
    given_up: set[bytes] = field(default_factory=set)
    """Messages not acknowledged on a lost connection, not sent again (``resend=False``)."""
    lost: list[str] = field(default_factory=list)
    """What the server said when it closed each connection that was lost."""
    connected_at: list[float] = field(default_factory=list)
    first_ack_at: list[float] = field(default_factory=list)
    """For each connection, when its first acknowledgement came (inf: none yet)."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stopping.is_set() and self.numbered < self.limit:
            node = await self.nodes.sequencer(within=60)
            try:
                publisher = await Publisher.connect("127.0.0.1", node.port, server_timeout=5)
            except (LoginRejected, OSError):
                continue
            self.connected_at.append(time.monotonic())
            self.first_ack_at.append(float("inf"))
            try:
                await self._publish(publisher)
            except (OSError, LoginRejected) as exc:
                self.lost.append(publisher.last_words or str(exc))
            with contextlib.suppress(OSError):
                await publisher.close()

    async def _publish(self, publisher: Publisher) -> None:
        base = self.acked
        again = self.sent[base:]
        if not self.resend:
            self.given_up.update(map(message_id, again))
            del self.sent[base:]
        elif again:
            self.resent.update(map(message_id, again))
            await publisher.send_many(again)
        while True:
            self._count(publisher, base)
            if self.stopping.is_set() or self.numbered >= self.limit:
                await publisher.flush()
                self._count(publisher, base)
                return
            first = self.numbered + 1
            fresh = [message(self.tag, n) for n in range(first, first + CHUNK)]
            self.numbered += CHUNK
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


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them; raise what one of them failed with (a
    reader's gap, say), which would otherwise show only as a wait that timed out."""
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome


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
    (once, unless it was sent again); one given up is there once at most; the payloads
    of the session, in order."""
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
        for key in feed.given_up:
            assert counts[key] <= 1, f"{key!r}, given up, is there {counts[key]} times"
    return payloads


async def publish(node: Node, payloads: list[bytes]) -> int:
    """Publish ``payloads`` to ``node``; how many were acknowledged."""
    async with await Publisher.connect("127.0.0.1", node.port) as publisher:
        for start in range(0, len(payloads), 2_000):
            await publisher.send_many(payloads[start : start + 2_000])
        await publisher.flush()
        return publisher.acked


async def raw_publisher_login(node: Node) -> tuple[bytes, bytes]:
    """A publisher's login, by a raw client written from the spec: the two packets a
    node that is not the sequencer answers with (Debug, then Login Rejected)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(LoginRequest("", "", "", NO_STREAM).encode())
    packets: list[bytes] = []
    while len(packets) < 2:
        header = await reader.readexactly(2)
        packets.append(await reader.readexactly(int.from_bytes(header, "big")))
    writer.close()
    return packets[0], packets[1]
