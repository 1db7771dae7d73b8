"""The ``cluster`` workload of ``bench/bench.py`` (``--only cluster``): tickertape's
cluster mode measured on this machine, in one run, beside a single node and beside NATS
JetStream used directly.

One run starts, as subprocesses on 127.0.0.1: a single node (``tickertape serve
--durability batch``), a three-server NATS JetStream cluster
(:func:`tickertape.cluster.local.nats_cluster`: ``sync_interval: always``) and three
nodes on it (``tickertape serve --cluster ... --durability batch``). Then:

- **Publishing.** ``--cluster-messages`` 100-byte messages published by tickertape's
  :class:`~tickertape.client.publisher.Publisher` (``send_many`` of ``--batch``-message
  lists, up to ``--cluster-window`` of them unacknowledged), to the single node and to
  the cluster's sequencer; and ``--jetstream-messages`` of the same messages published
  to JetStream directly by nats-py, on the same three servers, into a stream of file
  storage and 3 replicas, one JetStream message per message (``publish_async``, up to
  20,000 awaiting their acknowledgements: nats-py's fastest acknowledged publishing).
  Each from the first message handed to the client to the last acknowledgement.
  ``--repeat`` rounds, the three alternating; each stream keeps what it was given.
- **Late-joiner replay.** A reader in another process logs in at 1 and reads the whole
  session (every round's messages) from a follower node, then from the single node,
  ``--repeat`` times: from sending the login to the last byte (as the ``replay``
  workload).
- **Failover.** A publisher sends to the sequencer at a steady rate; at a random moment
  (0.2 to 1.2 s in: anywhere in a lease renewal period) the sequencer is SIGKILLed; the
  time from the kill to the first acknowledgement from the node that took over, the
  publisher trying every node every 50 ms. ``--failover-rounds`` times, the killed node
  restarted in between.

Everything it starts is stopped on the way out, on an error or Ctrl-C too.

What this module does not hold: the table, the settings, the child-process and reader
helpers (``bench.py``, imported from here), the cluster's correctness under failover
(``tests/system/cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from bench import (
    HOST,
    LOGIN_ACCEPTED_SIZE,
    BenchError,
    BenchSkipped,
    Report,
    Row,
    ServerProcess,
    Settings,
    fresh_dir,
    make_batches,
    make_payloads,
    paired,
    rate,
    recv_sync,
    replay_read,
    say,
    start_child,
    stop_child,
    verdict,
)
from tickertape.client.publisher import Publisher
from tickertape.cluster.local import (
    MissingDependency,
    NatsCluster,
    free_port,
    jetstream_ready,
    nats_cluster,
    nats_server,
    require_nats,
)
from tickertape.errors import LoginRejected, TickertapeError
from tickertape.store.layout import LOG_FILE

NODES: Final = 3
JOURNAL: Final = "TICKERTAPE-tickertape"
"""The journal stream of the nodes (``--cluster-name`` left at its default)."""
JETSTREAM_STREAM: Final = "BENCH"
JETSTREAM_SUBJECT: Final = "bench.messages"
JETSTREAM_MAX_PENDING: Final = 20_000
"""nats-py ``publish_async`` calls awaiting their acknowledgement at most."""
ACK_POLL: Final = 0.001
"""Seconds a windowed publisher waits before looking at its acknowledgements again."""
RETRY_EVERY: Final = 0.05
"""Seconds between two rounds of a publisher looking for the sequencer."""
FAILOVER_BATCH: Final = 500
FAILOVER_PACE: Final = 0.01
"""A failover round's publisher sends FAILOVER_BATCH messages every FAILOVER_PACE s."""
FAILOVER_TARGET: Final = 5.0
LAGGING: Final = 10.0
"""Seconds a follower may take to apply everything after another one has."""
SEQUENCER_WITHIN: Final = 60.0
"""Bound on the wait for a node to take publishers (at start, and after a kill)."""


# ---------------------------------------------------------------------------- nodes


@dataclass
class Node:
    """A ``tickertape serve`` subprocess: the single node, or one of the cluster's."""

    name: str
    port: int
    data: Path
    args: Sequence[str]
    server: ServerProcess | None = None

    def start(self, timeout: float) -> None:
        """Start it and wait until it listens (a fresh :class:`ServerProcess` each time:
        one is started once). Port 0: the one the server picks."""
        self.server = ServerProcess(
            "--port", str(self.port), "--data", str(self.data), "--durability", "batch", *self.args
        )
        self.server.keep_all = True
        self.port = self.server.start(timeout)

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def pid(self) -> int:
        if self.server is None:
            raise BenchError(f"node {self.name} is not running")
        return self.server.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would (:meth:`stop` reaps it)."""
        if self.alive():
            assert self.server is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def session(self) -> Path:
        """Its one session directory."""
        sessions = sorted(p for p in self.data.iterdir() if p.is_dir() and p.name[:1].isdigit())
        if len(sessions) != 1:
            raise BenchError(f"node {self.name} has {len(sessions)} sessions, not 1")
        return sessions[0]

    def tail(self, lines: int = 20) -> str:
        """Its last lines of output, less the refused publisher logins (the benchmark's
        own, looking for the sequencer)."""
        said = [] if self.server is None else self.server.all_lines
        return "\n".join([line for line in said if "login of" not in line][-lines:])


def cluster_node(name: str, directory: Path, nats: NatsCluster) -> Node:
    return Node(
        name,
        free_port(),
        directory / name,
        ["--cluster", ",".join(nats.urls), "--node", name],
    )


def nats_pids(nats: NatsCluster) -> list[int]:
    return [server.process.pid for server in nats.servers if server.process is not None]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU time the processes ``pids`` have used (``/proc/PID/stat``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def find_sequencer(nodes: Sequence[Node], within: float) -> Node:
    """The node that takes a publisher's login, trying them all every RETRY_EVERY s."""
    deadline = time.monotonic() + within
    while True:
        for node in nodes:
            if not node.alive():
                continue
            try:
                publisher = await Publisher.connect(HOST, node.port, server_timeout=2)
            except (LoginRejected, OSError):
                continue
            await publisher.close()
            return node
        if time.monotonic() > deadline:
            raise BenchError(f"no cluster node took a publisher in {within:.0f} s")
        await asyncio.sleep(RETRY_EVERY)


def applied(node: Node) -> int:
    """How many bytes the log of ``node``'s session holds (0: no session yet)."""
    with contextlib.suppress(BenchError, OSError):
        return (node.session() / LOG_FILE).stat().st_size
    return 0


def short_of(node: Node, size: int) -> str:
    held = sorted(entry.name for entry in node.data.iterdir()) if node.data.is_dir() else []
    return (
        f"node {node.name} applied {applied(node):,} of {size:,} bytes; its data directory "
        f"holds {held}; it said:\n{node.tail()}"
    )


async def until_applied(nodes: Sequence[Node], size: int, within: float) -> list[Node]:
    """Wait until the logs of ``nodes`` hold ``size`` bytes (followers applying the
    journal), ``within`` seconds at most; those that do not."""
    deadline = time.monotonic() + within
    while True:
        short = [node for node in nodes if applied(node) < size]
        if not short or time.monotonic() > deadline:
            return short
        await asyncio.sleep(0.05)


async def first_applied(nodes: Sequence[Node], size: int, within: float) -> Node:
    """The first of ``nodes`` whose log holds ``size`` bytes."""
    deadline = time.monotonic() + within
    while True:
        for node in nodes:
            if applied(node) >= size:
                return node
        if time.monotonic() > deadline:
            raise BenchError(
                f"no node applied everything in {within:.0f} s: "
                + "; ".join(short_of(node, size) for node in nodes)
            )
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------- publishing


async def publish_soup(
    port: int, batches: Sequence[list[bytes]], window: int, time_limit: float
) -> float:
    """tickertape's Publisher: ``send_many`` of each batch, at most ``window`` batches
    unacknowledged; seconds from the first send to the last acknowledgement."""
    total = sum(map(len, batches))
    limit = window * max(map(len, batches))
    publisher = await Publisher.connect(HOST, port)
    try:
        started = time.monotonic()
        deadline = started + time_limit
        for batch in batches:
            while publisher.sent - publisher.acked >= limit:
                if time.monotonic() > deadline:
                    raise BenchError(f"publishing did not finish in {time_limit:.0f} s")
                # flush() raises if the connection failed; bounded, it is a short wait
                # for the acknowledgements that open the window again.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(publisher.flush(), ACK_POLL)
            await publisher.send_many(batch)
        try:
            await asyncio.wait_for(publisher.flush(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise BenchError(f"publishing did not finish in {time_limit:.0f} s") from None
        seconds = time.monotonic() - started
        if publisher.acked != total:
            raise BenchError(f"{publisher.acked:,} of {total:,} messages acknowledged")
        return seconds
    finally:
        await publisher.close()


async def create_jetstream_stream(urls: list[str]) -> None:
    """The stream nats-py publishes to directly: file storage, 3 replicas. Tried again
    for up to SEQUENCER_WITHIN s: a cluster that has just elected its leader may not
    know of enough peers to place 3 replicas yet."""
    import nats.errors  # noqa: PLC0415 - optional
    from nats.js.api import StorageType, StreamConfig  # noqa: PLC0415 - optional

    config = StreamConfig(
        name=JETSTREAM_STREAM,
        subjects=[JETSTREAM_SUBJECT],
        storage=StorageType.FILE,
        num_replicas=NODES,
    )
    client = await jetstream_ready(urls)
    deadline = time.monotonic() + SEQUENCER_WITHIN
    try:
        while True:
            try:
                await client.jetstream().add_stream(config)
                return
            except nats.errors.Error as exc:
                if time.monotonic() > deadline:
                    raise BenchError(f"JetStream did not create a stream: {exc}") from exc
                say(f"cluster: JetStream cannot create a stream yet ({exc}); trying again")
                await asyncio.sleep(0.2)
    finally:
        await client.close()


async def publish_jetstream(
    urls: list[str], batches: Sequence[list[bytes]], time_limit: float
) -> float:
    """nats-py: ``publish_async`` of every message, one JetStream message each, at most
    JETSTREAM_MAX_PENDING awaiting their acknowledgement; seconds from the first publish
    to the last acknowledgement."""
    total = sum(map(len, batches))
    client = await jetstream_ready(urls)
    acked = 0
    failure: list[str] = []

    def acknowledged(future: asyncio.Future[Any]) -> None:
        nonlocal acked
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            acked += 1
        elif not failure:
            failure.append(repr(error))

    try:
        js = client.jetstream(publish_async_max_pending=JETSTREAM_MAX_PENDING)
        publish = js.publish_async
        started = time.monotonic()
        deadline = started + time_limit
        for batch in batches:
            for payload in batch:
                (await publish(JETSTREAM_SUBJECT, payload)).add_done_callback(acknowledged)
            if time.monotonic() > deadline:
                raise BenchError(f"JetStream publishing did not finish in {time_limit:.0f} s")
        try:
            await asyncio.wait_for(
                js.publish_async_completed(), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            raise BenchError(f"JetStream publishing did not finish in {time_limit:.0f} s") from None
        seconds = time.monotonic() - started
        await asyncio.sleep(0)  # the last done-callbacks
        if failure or acked != total:
            raise BenchError(
                f"JetStream acknowledged {acked:,} of {total:,}"
                + (f": {failure[0]}" if failure else "")
            )
        return seconds
    finally:
        await client.close()


async def journal_records(urls: list[str]) -> int:
    """How many messages the nodes' journal stream holds (their batches, and a few
    fences)."""
    client = await jetstream_ready(urls)
    try:
        info = await client.jetstream().stream_info(JOURNAL)
        return int(info.state.messages)
    finally:
        await client.close()


# ---------------------------------------------------------------------------- replay


def replay_reader_main(conn: Connection, expected: int, time_limit: float) -> None:
    """A late joiner in its own process: for each (port, session) it is sent, log in at
    1 and read until ``expected`` bytes came; answer ("done", seconds); until "close"."""
    try:
        for _ in range(10_000):
            message = recv_sync(conn, time_limit + 600)
            if message == "close":
                return
            port, session = message
            seconds, _ = replay_read(port, session, expected, time_limit)
            conn.send(("done", seconds))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", repr(exc)))


# ---------------------------------------------------------------------------- failover


@dataclass
class Feed:
    """A publisher that keeps publishing at a steady rate, moving to whichever node
    takes publishers when its connection is lost (it does not send again what was not
    acknowledged: only the time matters here)."""

    nodes: Sequence[Node]
    deadline: float
    """When it stops, whatever happens."""
    first_acks: list[float] = field(default_factory=list)
    """For each connection, when its first batch was acknowledged (inf: not yet)."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    payloads: list[bytes] = field(default_factory=list)

    async def run(self) -> None:
        for _ in range(10_000):
            if self.stopping.is_set() or time.monotonic() > self.deadline:
                return
            publisher = await self._connect()
            self.first_acks.append(math.inf)
            try:
                await publisher.send_many(self.payloads)
                await asyncio.wait_for(publisher.flush(), SEQUENCER_WITHIN)
                self.first_acks[-1] = time.monotonic()
                while not self.stopping.is_set() and time.monotonic() < self.deadline:
                    await asyncio.sleep(FAILOVER_PACE)  # the steady rate, not a wait
                    await publisher.send_many(self.payloads)
            except (OSError, TickertapeError):
                pass  # lost: the sequencer was killed
            finally:
                await publisher.close()

    async def _connect(self) -> Publisher:
        deadline = time.monotonic() + SEQUENCER_WITHIN
        while True:
            for node in self.nodes:
                with contextlib.suppress(LoginRejected, OSError):
                    return await Publisher.connect(HOST, node.port, server_timeout=2)
            if time.monotonic() > deadline:
                raise BenchError(f"no node took publishers in {SEQUENCER_WITHIN:.0f} s")
            await asyncio.sleep(RETRY_EVERY)

    def resumed(self, connections: int) -> float | None:
        """When a connection made after the first ``connections`` was acknowledged."""
        later = [at for at in self.first_acks[connections:] if at < math.inf]
        return min(later) if later else None


async def failovers(
    nodes: list[Node], rounds: int, payload_size: int, time_limit: float
) -> list[float]:
    """Seconds from SIGKILLing the sequencer to the first acknowledgement from the node
    that took over, per round; the killed node is restarted after each."""
    feed = Feed(
        nodes,
        time.monotonic() + rounds * (2 * SEQUENCER_WITHIN + 2 * time_limit),
        payloads=make_payloads(FAILOVER_BATCH, payload_size),
    )
    task = asyncio.create_task(feed.run())
    rng = random.Random(20261207)
    took: list[float] = []
    try:
        for number in range(rounds):
            sequencer = await find_sequencer(nodes, SEQUENCER_WITHIN)
            deadline = time.monotonic() + SEQUENCER_WITHIN
            while feed.resumed(len(feed.first_acks) - 1) is None:  # publishing, acknowledged
                if task.done():
                    task.result()  # its failure
                if time.monotonic() > deadline:
                    raise BenchError("the failover publisher did not get going")
                await asyncio.sleep(0.01)
            # Under load for a while: a moment anywhere in the lease's renewal period.
            await asyncio.sleep(rng.uniform(0.2, 1.2))
            connections = len(feed.first_acks)
            killed_at = time.monotonic()
            sequencer.kill()
            deadline = killed_at + time_limit
            while (resumed := feed.resumed(connections)) is None:
                if task.done():
                    task.result()  # its failure
                if time.monotonic() > deadline:
                    raise BenchError(f"publishing did not resume in {time_limit:.0f} s")
                await asyncio.sleep(0.005)
            took.append(resumed - killed_at)
            say(
                f"cluster: failover {number + 1}: node {sequencer.name} killed, publishing "
                f"resumed after {took[-1]:.2f} s"
            )
            await asyncio.to_thread(sequencer.stop)
            await asyncio.to_thread(sequencer.start, time_limit)
    finally:
        feed.stopping.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        if not task.done():
            task.cancel()
    return took


# ---------------------------------------------------------------------------- the workload


@dataclass
class Figures:
    single: list[float] = field(default_factory=list)
    cluster: list[float] = field(default_factory=list)
    jetstream: list[float] = field(default_factory=list)
    replay_follower: list[float] = field(default_factory=list)
    replay_single: list[float] = field(default_factory=list)
    failover: list[float] = field(default_factory=list)
    records: int = 0
    warnings: list[str] = field(default_factory=list)
    follower: str = ""
    """The follower the late joiner read from: the first to apply everything."""
    cpu: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    """Per publishing side, per run: CPU seconds each group of processes used."""


def bench_cluster(settings: Settings, report: Report) -> None:
    try:
        require_nats()
        nats_server()
    except MissingDependency as exc:
        raise BenchSkipped(f"needs the cluster extra ({exc})") from None
    import nats.errors as nats_errors  # noqa: PLC0415 - optional, there now

    messages = settings.cluster_messages
    say(f"cluster: building {messages:,} payloads in batches of {settings.batch}")
    batches = make_batches(messages, settings.payload_size, settings.batch)
    root = fresh_dir(settings.run_dir / "cluster")
    figures = Figures()
    nodes: list[Node] = []
    single = Node("single", 0, root / "single", [])
    try:
        say("cluster: starting a single node, three nats-servers and three cluster nodes")
        single.start(settings.timeout)
        with nats_cluster(root / "nats") as nats:
            try:
                asyncio.run(create_jetstream_stream(nats.urls))
                nodes += [cluster_node(f"n{i}", root, nats) for i in range(1, NODES + 1)]
                for node in nodes:
                    node.start(settings.timeout)
                measure(settings, batches, single, nodes, nats, figures)
            except (TickertapeError, nats_errors.Error) as exc:  # a login, JetStream
                raise BenchError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                for node in nodes:
                    node.stop()
    finally:
        single.stop()
        for node in [single, *nodes]:
            if node.server is not None and node.server.alive():
                say(f"cluster: node {node.name} did not stop:\n{node.tail()}")
    rows(settings, report, figures)


def measure(
    settings: Settings,
    batches: Sequence[list[bytes]],
    single: Node,
    nodes: list[Node],
    nats: NatsCluster,
    figures: Figures,
) -> None:
    messages, direct = settings.cluster_messages, settings.jetstream_messages
    direct_batches = make_batches(direct, settings.payload_size, settings.batch)
    for attempt in range(settings.repeat):
        sequencer = asyncio.run(find_sequencer(nodes, SEQUENCER_WITHIN))
        say(f"cluster {attempt + 1}: node {sequencer.name} is the sequencer")
        for name, times, port, count in (
            ("single node", figures.single, single.port, messages),
            ("cluster", figures.cluster, sequencer.port, messages),
            ("JetStream direct", figures.jetstream, 0, direct),
        ):
            groups = {
                "single node": {"server": [single.pid()]},
                "cluster": {
                    "sequencer": [sequencer.pid()],
                    "followers": [node.pid() for node in nodes if node is not sequencer],
                    "nats-servers": nats_pids(nats),
                },
                "JetStream direct": {"nats-servers": nats_pids(nats)},
            }[name]
            before = {group: cpu_seconds(pids) for group, pids in groups.items()}
            publisher = time.process_time()
            seconds = asyncio.run(
                publish_soup(port, batches, settings.cluster_window, settings.timeout)
                if port
                else publish_jetstream(nats.urls, direct_batches, settings.timeout)
            )
            used = {group: cpu_seconds(pids) - before[group] for group, pids in groups.items()}
            used["publisher"] = time.process_time() - publisher
            figures.cpu.setdefault(name, []).append(used)
            times.append(seconds)
            say(
                f"cluster {attempt + 1}: {name} publish {count:,}: "
                f"{rate(count / seconds, 'msg/s')} ({seconds:.3f} s)"
            )
    figures.records = asyncio.run(journal_records(nats.urls))
    total = messages * settings.repeat
    size = total * settings.packet_size
    followers = [node for node in nodes if node is not sequencer]
    follower = asyncio.run(first_applied(followers, size, settings.timeout))
    figures.follower = follower.name
    asyncio.run(first_applied([single], size, settings.timeout))
    others = [node for node in followers if node is not follower]
    for node in asyncio.run(until_applied(others, size, LAGGING)):
        warning = f"a follower did not apply the journal ({LAGGING:.0f} s after another did): "
        say(f"cluster: WARNING: {warning}{short_of(node, size)}")
        figures.warnings.append(warning + short_of(node, size).split(";")[0])
    sides = [
        ("follower", figures.replay_follower, follower),
        ("single node", figures.replay_single, single),
    ]
    reader, conn = start_child(replay_reader_main, size + LOGIN_ACCEPTED_SIZE, settings.timeout)
    try:
        for attempt in range(settings.repeat):
            for name, times, node in sides:
                conn.send((node.port, node.session().name))
                _, seconds = recv_sync(conn, settings.timeout + 60)
                times.append(seconds)
                say(
                    f"cluster {attempt + 1}: replay of {total:,} from {name} {node.name}: "
                    f"{rate(total / seconds, 'msg/s')} ({seconds:.3f} s)"
                )
    finally:
        stop_child(reader, conn)
    figures.failover = asyncio.run(
        failovers(nodes, settings.failover_rounds, settings.payload_size, settings.timeout)
    )


def rows(settings: Settings, report: Report, figures: Figures) -> None:
    messages, size = settings.cluster_messages, settings.payload_size
    direct = settings.jetstream_messages
    total = messages * settings.repeat
    cluster = messages / min(figures.cluster)
    jetstream = direct / min(figures.jetstream)
    single = messages / min(figures.single)
    over_jetstream = cluster / jetstream
    report.rows.append(
        Row(
            f"cluster: publish {messages:,} x {size} B, 3 nodes; raw: JetStream direct (R3)",
            rate(cluster, "msg/s"),
            rate(jetstream, "msg/s"),
            f"{over_jetstream:.2f}",
            f">= 200 k/s: {verdict(cluster >= 200e3)}; "
            f">= 5 x JetStream: {verdict(over_jetstream >= 5)}",
        )
    )
    report.rows.append(
        Row(
            f"cluster: publish {messages:,} x {size} B, 3 nodes; raw: a single node",
            rate(cluster, "msg/s"),
            rate(single, "msg/s"),
            f"{cluster / single:.2f}",
            "-",
        )
    )
    follower = total / min(figures.replay_follower)
    alone = total / min(figures.replay_single)
    report.rows.append(
        Row(
            f"cluster: late joiner replays {total:,} x {size} B from a follower; raw: a single "
            "node",
            rate(follower, "msg/s"),
            rate(alone, "msg/s"),
            f"{follower / alone:.2f}",
            f">= 0.8 of a single node: {verdict(follower >= 0.8 * alone)}",
        )
    )
    median, worst = statistics.median(figures.failover), max(figures.failover)
    report.rows.append(
        Row(
            "cluster: publishing resumes after the sequencer is SIGKILLed ("
            f"{len(figures.failover)} round{'' if len(figures.failover) == 1 else 's'})",
            f"median {median:.2f} s, worst {worst:.2f} s",
            "-",
            "-",
            f"<= {FAILOVER_TARGET:.0f} s: {verdict(worst <= FAILOVER_TARGET)}",
        )
    )
    report.notes.append(
        f"cluster publish: best of {settings.repeat}; tickertape's Publisher, send_many of "
        f"{settings.batch}-message lists, at most {settings.cluster_window} unacknowledged; "
        "runs single node "
        + ", ".join(f"{s:.3f}" for s in figures.single)
        + " s, cluster "
        + ", ".join(f"{s:.3f}" for s in figures.cluster)
        + " s, JetStream direct "
        + ", ".join(f"{s:.3f}" for s in figures.jetstream)
        + f" s ({direct:,} messages); "
        + paired(
            [
                (messages / c) / (direct / j)
                for c, j in zip(figures.cluster, figures.jetstream, strict=True)
            ]
        )
        + f" (cluster over JetStream); the journal held {figures.records:,} JetStream messages "
        f"for {total:,} messages (about {total / max(1, figures.records):,.0f} a batch)"
    )
    spent = []
    for name, times in (
        ("single node", figures.single),
        ("cluster", figures.cluster),
        ("JetStream direct", figures.jetstream),
    ):
        best = times.index(min(times))
        used = figures.cpu[name][best]
        spent.append(
            f"{name} ({times[best]:.2f} s): "
            + ", ".join(f"{group} {seconds:.2f}" for group, seconds in used.items())
        )
    report.notes.append(
        "cluster publish, CPU seconds used in the best run of each (2 CPUs): " + "; ".join(spent)
    )
    report.notes.append(
        f"cluster JetStream direct: nats-py publish_async of each of {direct:,} messages a "
        "round (one JetStream message each) to a stream of file storage and 3 replicas on "
        f"the same three nats-servers (sync_interval: always), up to "
        f"{JETSTREAM_MAX_PENDING:,} awaiting acknowledgement, all acknowledgements awaited "
        "(publish_async_completed); publish durability batch on the single node and the "
        "cluster's nodes"
    )
    report.notes.extend(f"cluster: WARNING: {warning}" for warning in figures.warnings)
    report.notes.append(
        f"cluster replay: best of {settings.repeat}; a reader process logs in at 1 and reads "
        f"{total:,} messages (login to last byte); follower {figures.follower} "
        + ", ".join(f"{s:.3f}" for s in figures.replay_follower)
        + " s, single node "
        + ", ".join(f"{s:.3f}" for s in figures.replay_single)
        + " s; "
        + paired(
            [s / f for f, s in zip(figures.replay_follower, figures.replay_single, strict=True)]
        )
    )
    report.notes.append(
        f"cluster failover: a publisher sends {FAILOVER_BATCH} messages every "
        f"{FAILOVER_PACE * 1000:.0f} ms to the sequencer, which is SIGKILLed; time from the "
        f"kill to the first acknowledgement from the new sequencer (the publisher tries every "
        f"node every {RETRY_EVERY * 1000:.0f} ms; default --lease-ttl): "
        + ", ".join(f"{s:.2f}" for s in figures.failover)
        + " s"
    )
