"""Three tickertape nodes of a cluster on a real three-server JetStream cluster, each a
``tickertape serve --cluster`` subprocess with its own data directory, for the system
tests of the cluster: start, kill, pause and restart a node, find the sequencer, read
what each node's logs hold."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tickertape.client.publisher import Publisher
from tickertape.cluster.local import NatsCluster, free_port, jetstream_ready, nats_cluster
from tickertape.errors import LoginRejected
from tickertape.store.log import SessionLog

import support
from support import until, until_sync

START_TIMEOUT = 30.0


@dataclass
class Node:
    """One node: its name, SoupBinTCP port, data directory and process (None: down)."""

    name: str
    port: int
    data: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

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
def cluster_nodes(directory: Path, count: int = 3, extra: Sequence[str] = ()) -> Iterator[Nodes]:
    """A JetStream cluster and ``count`` nodes on it, all started; everything killed
    on the way out, whatever happens."""
    with nats_cluster(directory / "nats") as nats:

        async def ready() -> None:
            client = await jetstream_ready(nats.urls)
            await client.close()

        asyncio.run(ready())
        nodes = Nodes(directory, nats, extra=extra)
        nodes.nodes = [
            Node(f"n{i}", free_port(), directory / f"n{i}" / "data", directory / f"n{i}.log")
            for i in range(1, count + 1)
        ]
        try:
            for node in nodes.nodes:
                nodes.start(node)
            yield nodes
        finally:
            nodes.close()
