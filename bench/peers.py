"""tickertape against the alternatives a user would pick, in one run on one machine.

The same workloads, with the same message sizes and counts, run against tickertape and
each peer, each measured the same way from the same client processes::

    bench/compare-peers                        # from a fresh clone: installs everything, runs
    .venv/bin/python bench/peers.py            # the full comparison; rewrites the section
                                               # "Against the alternatives" of docs/benchmarks.md
                                               # and its plots (docs/benchmarks-peers-*.png)
    .venv/bin/python bench/peers.py --quick    # small counts, every peer: a smoke run
    .venv/bin/python bench/peers.py --replot   # table and plots again from the saved figures

Peers (each started by the benchmark on 127.0.0.1, with its data in a temporary directory):

tickertape
    ``tickertape serve --durability batch`` (and ``none``) in a subprocess; tickertape's
    own ``Publisher`` (``send_many`` of 1,000-message lists, acknowledged once durable)
    and ``Subscription`` (``batches()``).
jetstream
    ``nats-server -js`` (Debian's package; ``bench/install-peers``), one stream on file
    storage; ``nats-py``: ``publish_async`` of every message (up to 20,000 awaiting their
    acknowledgement), an ordered push consumer per subscriber, delivering from start
    sequence 1.
redis
    ``redis-server`` with ``appendonly yes`` and ``appendfsync`` set to the setting
    closest to tickertape's durability (batch and always: ``always``; none: ``no``);
    ``redis-py`` (hiredis parser): ``XADD`` pipelined 1,000 at a time (the blocking
    client, faster at it), ``XREAD COUNT 10000 BLOCK`` from the last id (from 0-0: replay,
    then live; the asyncio client, one connection per subscriber).
nasdaq
    A SoupBinTCP server on ``nasdaq-protocols``' ``SoupServerSession`` with a Python list
    as its log, as its documentation and tests show it used (``on_login`` sends what the
    list holds from the requested number, ``on_unsequenced`` appends and fans out), in a
    process of its own; tickertape's ``Publisher`` and ``Subscription`` talk to it. It
    keeps nothing on disk.

Workloads:

publish
    Persisted publishing of ``--messages`` (1,000,000) messages by one publisher, no
    subscribers: from the first message handed to the client library to the last
    acknowledgement.
replay
    A late joiner catching up: on a server holding ``--messages`` messages while a
    publisher keeps adding ``--background-rate`` (10,000) a second, one subscriber asks
    for everything from the first message; from its subscribing to its receiving the
    last of those.
fanout
    Live fan-out: ``--subscribers`` (10) subscriptions in one process, subscribed first;
    one publisher publishes ``--fanout-messages`` (200,000) as fast as it can; from the
    first message handed over to the last one received by the last subscriber.
    Deliveries = messages received, summed over the subscribers.
latency
    Publish-to-receive latency at ``--latency-rate`` (50,000) messages a second, handed
    over every millisecond for ``--latency-seconds`` (10), one subscriber. Each payload
    carries the time it came due and the time it was handed to the client library;
    the subscriber subtracts them from the time the client library gave it the message.
    The first second (0.2 s with ``--quick``) is left out.

Publishing and latency are measured once per tickertape durability policy in
``--durability`` (batch, then none), Redis with the matching ``appendfsync``; JetStream
and the nasdaq-protocols server have one setting, measured once.

Every subscriber checks every message it gets against what was published (its number,
its bytes, its order) and the run fails loudly if one differs. A measurement that does
not finish within ``--time-limit`` seconds is stopped and reported as far as it got.
Clients run in three worker processes shared by every peer (a publisher, a subscriber,
and a background publisher), spawned once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, Final, Protocol

import nats
import redis
import redis.asyncio
from nasdaq_protocols import common, soup
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

import peers_report
from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription
from tickertape.wire.publishing import NO_STREAM, Ack

HOST: Final = "127.0.0.1"
ROOT: Final = Path(__file__).resolve().parent.parent
PEERS: Final = ("tickertape", "jetstream", "redis", "nasdaq")
PEER_NAMES: Final = {
    "tickertape": "tickertape",
    "jetstream": "NATS JetStream",
    "redis": "Redis Streams",
    "nasdaq": "nasdaq-protocols",
}
WORKLOADS: Final = ("publish", "replay", "fanout", "latency")
DURABILITIES: Final = ("none", "batch", "always")
REDIS_APPENDFSYNC: Final = {"none": "no", "batch": "always", "always": "always"}
"""The Redis AOF setting closest to each tickertape durability policy: ``always`` fsyncs
the AOF before replying, once per event-loop turn (so a pipeline's commands share one
fsync), as tickertape's ``batch`` syncs a batch before acknowledging it; ``no`` leaves it
to the page cache, as ``none`` does. Redis has nothing closer to ``always`` (one sync
per publish call) than its own ``always``."""
NATS_SUBJECT: Final = "bench"
NATS_STREAM: Final = "BENCH"
NATS_MAX_PENDING: Final = 20_000
REDIS_KEY: Final = "bench"
REDIS_FIELD: Final = b"d"
REDIS_READ_COUNT: Final = 10_000
NASDAQ_SESSION: Final = "BENCH"
STAMP_SIZE: Final = 16  # two u64: handed over, due (monotonic ns)
NUMBER_SIZE: Final = 12  # b"%012d"
TICK: Final = 0.001
PERCENTILES: Final = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999))
DOCS: Final = ROOT / "docs" / "benchmarks.md"
RESULTS: Final = ROOT / "docs" / "benchmarks-peers.json"
INSTALL_PEERS: Final = ROOT / "bench" / "install-peers"
_T0 = time.monotonic()


def say(message: str) -> None:
    """Progress, to stderr."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


class PeerError(Exception):
    """A peer could not be started or measured."""


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class Settings:
    peers: tuple[str, ...] = PEERS
    workloads: tuple[str, ...] = WORKLOADS
    durabilities: tuple[str, ...] = ("batch", "none")
    messages: int = 1_000_000
    fanout_messages: int = 200_000
    subscribers: int = 10
    payload_size: int = 100
    batch: int = 1000
    background_rate: int = 10_000
    latency_rate: int = 50_000
    latency_seconds: float = 10.0
    latency_warmup: float = 1.0
    time_limit: float = 120.0
    keep: bool = False
    """Subscribers keep every payload they receive (for the smoke test's comparison)."""

    @property
    def durability(self) -> str:
        """tickertape's durability in every workload but the extra publish runs."""
        return self.durabilities[0]

    @property
    def latency_total(self) -> int:
        return max(1, int(self.latency_rate * self.latency_seconds))


def binary(name: str) -> str | None:
    """Where a server binary is: on PATH, or where Debian puts it (``nats-server`` is in
    /usr/sbin, which is not on every user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/usr/local/bin")


def check_peers_installed(peers: Sequence[str]) -> list[str]:
    """The server binaries the given peers need that are missing."""
    needed = {"jetstream": "nats-server", "redis": "redis-server"}
    return [needed[p] for p in peers if p in needed and binary(needed[p]) is None]


def install_peers() -> None:
    """Run ``bench/install-peers`` (apt-get install nats-server redis-server if missing)."""
    say(f"installing the peers' servers: {INSTALL_PEERS}")
    done = subprocess.run(["sh", str(INSTALL_PEERS)], check=False, timeout=900)
    if done.returncode != 0:
        raise PeerError(f"{INSTALL_PEERS} failed (exit {done.returncode}); see above")


# ---------------------------------------------------------------------------- payloads


def payloads(first: int, count: int, size: int) -> list[bytes]:
    """Messages ``first`` to ``first + count - 1`` (from 0) of every workload but latency:
    each its number, then dots."""
    filler = b"." * (size - NUMBER_SIZE)
    return [b"%012d%s" % (number, filler) for number in range(first, first + count)]


class Checker:
    """What one subscription received, each payload checked against what was published
    (its number and its bytes, hence its order); kept if asked; for stamped payloads, the
    latency of each since it was handed over and since it was due."""

    def __init__(self, expected: int, size: int, *, stamp: bool = False, keep: bool = False):
        self.expected = expected
        self.stamp = stamp
        self.count = 0
        self.error: str | None = None
        self.kept: list[bytes] | None = [] if keep else None
        self.handed = array("q")
        self.due = array("q")
        self.finished: float | None = None
        self.last = math.nan
        self._filler = b"." * (size - NUMBER_SIZE - (STAMP_SIZE if stamp else 0))

    @property
    def done(self) -> bool:
        return self.count >= self.expected

    def feed(self, received: Sequence[bytes], received_ns: int) -> None:
        take = received[: self.expected - self.count]
        if not take:
            return
        number, filler = self.count, self._filler
        if self.error is not None:
            pass
        elif self.stamp:
            handed, due = self.handed, self.due
            for data in take:
                if data[STAMP_SIZE:] != b"%012d%s" % (number, filler):
                    self._wrong(number, data)
                    break
                handed.append(received_ns - int.from_bytes(data[:8], "little"))
                due.append(received_ns - int.from_bytes(data[8:16], "little"))
                number += 1
        else:
            for data in take:
                if data != b"%012d%s" % (number, filler):
                    self._wrong(number, data)
                    break
                number += 1
        self.count += len(take)
        if self.kept is not None:
            self.kept.extend(take)
        self.last = received_ns / 1e9
        if self.count >= self.expected:
            self.finished = self.last

    def feed_one(self, data: bytes, received_ns: int) -> bool:
        """One message (for clients that hand them over one by one); whether that was
        the last one expected."""
        count = self.count
        if count >= self.expected:
            return False
        if self.error is None:
            if self.stamp:
                if data[STAMP_SIZE:] != b"%012d%s" % (count, self._filler):
                    self._wrong(count, data)
                self.handed.append(received_ns - int.from_bytes(data[:8], "little"))
                self.due.append(received_ns - int.from_bytes(data[8:16], "little"))
            elif data != b"%012d%s" % (count, self._filler):
                self._wrong(count, data)
        self.count = count = count + 1
        if self.kept is not None:
            self.kept.append(data)
        self.last = received_ns / 1e9
        if count >= self.expected:
            self.finished = self.last
            return True
        return False

    def _wrong(self, number: int, data: bytes) -> None:
        self.error = f"message {number + 1} (from 1) is wrong: {bytes(data[:40])!r}..."

    def result(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "error": self.error,
            "finished": self.finished,
            "last": self.last,
            "kept": self.kept,
            "handed": self.handed.tobytes() if self.stamp else b"",
            "due": self.due.tobytes() if self.stamp else b"",
        }


class Pacer:
    """Which messages are due at a steady rate: a batch every tick, each message stamped
    (``stamp``) or numbered from ``first``."""

    def __init__(self, rate: float, total: int, size: int, first: int, stamp: bool) -> None:
        self.rate = rate
        self.total = total
        self.size = size
        self.first = first
        self.stamp = stamp
        self.made = 0
        self.started_ns = time.monotonic_ns()
        self._filler = b"." * (size - NUMBER_SIZE - (STAMP_SIZE if stamp else 0))

    def due(self) -> list[bytes]:
        now_ns = time.monotonic_ns()
        due = min(int((now_ns - self.started_ns) * self.rate // 1_000_000_000), self.total)
        first, self.made = self.made, max(self.made, due)
        if not self.stamp:
            return payloads(self.first + first, self.made - first, self.size)
        started, rate, filler = self.started_ns, self.rate, self._filler
        handed = now_ns.to_bytes(8, "little")
        return [
            handed
            + (started + int(number * 1_000_000_000 // rate)).to_bytes(8, "little")
            + b"%012d%s" % (number, filler)
            for number in range(first, self.made)
        ]


# ---------------------------------------------------------------------------- client adapters


@dataclass(frozen=True, slots=True)
class Endpoint:
    peer: str
    port: int


class PublisherClient(Protocol):
    @property
    def acked(self) -> int:
        """Messages acknowledged so far."""

    async def connect(self) -> None: ...
    async def send(self, batch: list[bytes]) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


class SubscriberClient(Protocol):
    async def start(self, checker: Checker, deadline: float) -> None:
        """Subscribe (from the first message) and start feeding ``checker``; return once
        subscribed."""

    async def wait(self, deadline: float) -> None:
        """Until the checker has all it expects, or the deadline."""

    async def close(self) -> None: ...


class SoupPublisher:
    """tickertape's Publisher (tickertape's server, and the nasdaq-protocols one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.publisher: Any = None

    @property
    def acked(self) -> int:
        return int(self.publisher.acked) if self.publisher is not None else 0

    async def connect(self) -> None:
        self.publisher = await Publisher.connect(HOST, self.port)

    async def send(self, batch: list[bytes]) -> None:
        await self.publisher.send_many(batch)

    async def flush(self) -> None:
        await self.publisher.flush()

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()


class ConsumingSubscriber:
    """A subscriber whose messages are taken by a task of its own (``self.task``)."""

    task: asyncio.Task[None] | None = None

    async def wait(self, deadline: float) -> None:
        assert self.task is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), max(0.0, deadline - time.monotonic()))
        if self.task.done():
            self.task.result()

    async def stop_consuming(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class SoupSubscriber(ConsumingSubscriber):
    """tickertape's Subscription, from sequence number 1, in batches."""

    def __init__(self, port: int) -> None:
        self.subscription = Subscription(HOST, port, seq=1, reconnect=False)

    async def start(self, checker: Checker, deadline: float) -> None:
        self.task = asyncio.create_task(self._consume(checker))
        # The client says nothing when its login is accepted but counts logins: wait for
        # the first (bounded; there is no event to await).
        while self.subscription.logins == 0 and not self.task.done():
            if time.monotonic() > deadline:
                raise PeerError("the SoupBinTCP login was not accepted in time")
            await asyncio.sleep(0.002)
        if self.task.done():
            self.task.result()

    async def _consume(self, checker: Checker) -> None:
        async for batch in self.subscription.batches():
            checker.feed(batch.payloads, time.monotonic_ns())
            if checker.done:
                break

    async def close(self) -> None:
        await self.stop_consuming()
        await self.subscription.close()


class NatsPublisher:
    """nats-py: ``publish_async`` of every message, acknowledgements awaited together."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.nc: Any = None
        self.js: Any = None
        self.acked = 0
        self.failed: str | None = None

    def _acknowledged(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        failure = future.exception()
        if failure is None:
            self.acked += 1
        elif self.failed is None:
            self.failed = repr(failure)

    async def connect(self) -> None:
        self.nc = await nats.connect(f"nats://{HOST}:{self.port}", max_reconnect_attempts=0)
        self.js = self.nc.jetstream(publish_async_max_pending=NATS_MAX_PENDING)

    async def send(self, batch: list[bytes]) -> None:
        publish, acknowledged = self.js.publish_async, self._acknowledged
        for data in batch:
            (await publish(NATS_SUBJECT, data)).add_done_callback(acknowledged)

    async def flush(self) -> None:
        await self.js.publish_async_completed()
        if self.failed is not None:
            raise PeerError(f"JetStream refused a message: {self.failed}")

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class NatsSubscriber:
    """nats-py: an ordered push consumer delivering from stream sequence 1."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.nc: Any = None
        self.finished = asyncio.Event()

    async def start(self, checker: Checker, deadline: float) -> None:
        finished = self.finished

        feed = checker.feed_one

        async def received(msg: Any) -> None:
            if feed(msg.data, time.monotonic_ns()):
                finished.set()

        self.nc = await nats.connect(f"nats://{HOST}:{self.port}", max_reconnect_attempts=0)
        js = self.nc.jetstream()
        await js.subscribe(
            NATS_SUBJECT,
            cb=received,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=1),
        )

    async def wait(self, deadline: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class RedisPublisher:
    """redis-py (hiredis): XADD pipelined, a pipeline per batch; its replies are the
    acknowledgements. The blocking client: it pipelines faster than the asyncio one, and
    the publisher has nothing else to do while it waits for a pipeline's replies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: redis.Redis | None = None
        self.acked = 0

    async def connect(self) -> None:
        self.client = redis.Redis(host=HOST, port=self.port)
        self.client.ping()

    async def send(self, batch: list[bytes]) -> None:
        assert self.client is not None
        pipe = self.client.pipeline(transaction=False)
        for data in batch:
            pipe.xadd(REDIS_KEY, {REDIS_FIELD: data})
        pipe.execute()
        self.acked += len(batch)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()


class RedisSubscriber(ConsumingSubscriber):
    """redis-py: XREAD COUNT n BLOCK from the last id received (from 0-0)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: Any = None

    async def start(self, checker: Checker, deadline: float) -> None:
        self.client = redis.asyncio.Redis(host=HOST, port=self.port)
        await self.client.ping()
        self.task = asyncio.create_task(self._consume(checker, deadline))

    async def _consume(self, checker: Checker, deadline: float) -> None:
        last: bytes | str = "0-0"
        read = self.client.xread
        while not checker.done and time.monotonic() < deadline:
            reply = await read({REDIS_KEY: last}, count=REDIS_READ_COUNT, block=200)
            if not reply:
                continue
            entries = reply[0][1]
            checker.feed([fields[REDIS_FIELD] for _, fields in entries], time.monotonic_ns())
            last = entries[-1][0]

    async def close(self) -> None:
        await self.stop_consuming()
        if self.client is not None:
            await self.client.aclose()


def make_publisher(endpoint: Endpoint) -> PublisherClient:
    if endpoint.peer == "jetstream":
        return NatsPublisher(endpoint.port)
    if endpoint.peer == "redis":
        return RedisPublisher(endpoint.port)
    return SoupPublisher(endpoint.port)


def make_subscriber(endpoint: Endpoint) -> SubscriberClient:
    if endpoint.peer == "jetstream":
        return NatsSubscriber(endpoint.port)
    if endpoint.peer == "redis":
        return RedisSubscriber(endpoint.port)
    return SoupSubscriber(endpoint.port)


# ---------------------------------------------------------------------------- client jobs


@dataclass(frozen=True, slots=True)
class PublishJob:
    """``bulk``: ``count`` messages from ``first``, as fast as the client takes them, then
    wait for every acknowledgement. ``paced``: ``rate`` a second until told to stop (or
    ``count``). ``stamped``: ``count`` latency messages at ``rate`` a second."""

    mode: str
    count: int
    size: int
    batch: int
    time_limit: float
    first: int = 0
    rate: float = 0.0
    keep: bool = False


@dataclass(frozen=True, slots=True)
class SubscribeJob:
    """``subscriptions`` subscriptions from the first message, each expecting ``count``;
    with ``on_go``, subscribing waits for the word and is part of the time."""

    subscriptions: int
    count: int
    size: int
    time_limit: float
    on_go: bool = False
    stamp: bool = False
    keep: bool = False


class Control:
    """The worker's end of the pipe to the benchmark, awaited without blocking the loop."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, *message: object) -> None:
        self.conn.send(message)

    async def receive(self, within: float) -> Any:
        if not self.conn.poll():
            loop = asyncio.get_running_loop()
            readable = asyncio.Event()
            loop.add_reader(self.conn.fileno(), readable.set)
            try:
                await asyncio.wait_for(readable.wait(), within)
            except TimeoutError:
                raise PeerError(f"no word from the benchmark in {within:.0f} s") from None
            finally:
                loop.remove_reader(self.conn.fileno())
        return self.conn.recv()

    def watch(self) -> asyncio.Event:
        """An event set when the benchmark next says something (left unread)."""
        loop = asyncio.get_running_loop()
        said = asyncio.Event()

        def readable() -> None:
            said.set()
            loop.remove_reader(self.conn.fileno())

        loop.add_reader(self.conn.fileno(), readable)
        return said


async def publish_job(control: Control, endpoint: Endpoint, job: PublishJob) -> dict[str, Any]:
    client = make_publisher(endpoint)
    sent: list[bytes] = []
    try:
        await client.connect()
        control.send("ready")
        go = await control.receive(300)
        if go != "go":
            raise PeerError(f"expected go, got {go!r}")
        started = time.monotonic()
        deadline = started + job.time_limit
        handed = 0
        complete = True
        if job.mode == "bulk":
            for first in range(job.first, job.first + job.count, job.batch):
                if time.monotonic() > deadline:
                    complete = False
                    break
                batch = payloads(first, min(job.batch, job.first + job.count - first), job.size)
                await client.send(batch)
                handed += len(batch)
        else:
            stop = control.watch() if job.mode == "paced" else asyncio.Event()
            pacer = Pacer(job.rate, job.count, job.size, job.first, job.mode == "stamped")
            next_tick = time.monotonic()
            while pacer.made < job.count and not stop.is_set():
                if time.monotonic() > deadline:
                    complete = job.mode == "paced"
                    break
                next_tick += TICK
                delay = next_tick - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing: the next tick's messages come due
                batch = pacer.due()
                if batch:
                    await client.send(batch)
                    handed += len(batch)
                    if job.keep:
                        sent.extend(batch)
        handed_at = time.monotonic()
        if job.mode == "paced" and (await control.receive(job.time_limit + 60)) != "stop":
            raise PeerError("expected stop")
        # The background publisher's acknowledgements are not measured: a short wait.
        wait = 5.0 if job.mode == "paced" else max(1.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(client.flush(), wait)
        except TimeoutError:
            complete = False
        finished = time.monotonic()
        acked = client.acked
        return {
            "started": started,
            "handed_at": handed_at,
            "finished": finished,
            "handed": handed,
            "acked": acked,
            "complete": complete and acked >= handed and (job.mode != "bulk" or acked >= job.count),
            "sent": sent,
        }
    finally:
        await client.close()


async def subscribe_job(control: Control, endpoint: Endpoint, job: SubscribeJob) -> dict[str, Any]:
    checkers = [
        Checker(job.count, job.size, stamp=job.stamp, keep=job.keep)
        for _ in range(job.subscriptions)
    ]
    clients = [make_subscriber(endpoint) for _ in checkers]
    try:
        if job.on_go:
            control.send("ready")
            go = await control.receive(300)
            if go != "go":
                raise PeerError(f"expected go, got {go!r}")
        started = time.monotonic()
        deadline = started + job.time_limit
        for client, checker in zip(clients, checkers, strict=True):
            await client.start(checker, deadline)
        if not job.on_go:
            control.send("ready")
            deadline = time.monotonic() + job.time_limit
        for client in clients:
            await client.wait(deadline)
        return {"started": started, "subscriptions": [c.result() for c in checkers]}
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


def worker_main(conn: Connection) -> None:
    """A client process: runs publish and subscribe jobs against any peer, one at a time,
    until told to exit (or the benchmark goes away)."""
    control = Control(conn)
    try:
        while conn.poll(3600):
            job = conn.recv()
            if job == "exit":
                return
            kind, endpoint, spec = job
            try:
                if kind == "publish":
                    result = asyncio.run(publish_job(control, endpoint, spec))
                else:
                    result = asyncio.run(subscribe_job(control, endpoint, spec))
                conn.send(("done", result))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, OSError, KeyboardInterrupt):
        return


class Worker:
    """The benchmark's end of a client process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.process: SpawnProcess | None = None
        self.conn: Connection | None = None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child,), name=self.name, daemon=True)
        self.process.start()
        child.close()
        self.conn = parent

    def submit(self, kind: str, endpoint: Endpoint, job: PublishJob | SubscribeJob) -> None:
        assert self.conn is not None
        self.conn.send((kind, endpoint, job))

    def send(self, message: str) -> None:
        assert self.conn is not None
        self.conn.send(message)

    def expect(self, what: str, timeout: float) -> Any:
        assert self.conn is not None and self.process is not None
        if not self.conn.poll(timeout):
            raise PeerError(f"the {self.name} process said nothing for {timeout:.0f} s")
        message = self.conn.recv()
        if message[0] == "error":
            raise PeerError(f"the {self.name} process failed:\n{message[1]}")
        if message[0] != what:
            raise PeerError(f"the {self.name} process said {message[0]!r}, not {what!r}")
        return message[1] if len(message) > 1 else None

    def stop(self) -> None:
        if self.process is None or self.conn is None:
            return
        with contextlib.suppress(OSError):
            self.conn.send("exit")
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.conn.close()
        self.process = self.conn = None

    def restart(self) -> None:
        self.stop()
        self.start()


# ---------------------------------------------------------------------------- the nasdaq server


def nasdaq_server_main(conn: Connection) -> None:
    """The nasdaq-protocols server process: serves a fresh in-memory log (filled with
    ``prefill`` messages) for each ``("serve", prefill, size)``, until ``"stop"``."""
    control = Control(conn)
    try:
        while conn.poll(3600):
            order = conn.recv()
            if order == "exit":
                return
            try:
                asyncio.run(serve_nasdaq(control, order[1], order[2]))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, OSError, KeyboardInterrupt):
        return


async def serve_nasdaq(control: Control, prefill: int, size: int) -> None:
    log: list[bytes] = payloads(0, prefill, size)
    streaming: list[Any] = []
    sessions: list[Any] = []

    class LogSession(soup.SoupServerSession):  # type: ignore[misc]
        """One client: sends the log from the number asked for, then each new message;
        appends what the client sends (tickertape's publishing convention: acknowledged
        with ``ACK count session seq``)."""

        def __init__(self, **options: Any) -> None:
            self.sent = 0
            self.acked = 0
            super().__init__(**options)

        async def on_login(self, msg: Any) -> Any:
            asked = int(msg.sequence)
            if asked == NO_STREAM:  # a publisher: it wants no messages
                return soup.LoginAccepted(NASDAQ_SESSION, len(log) + 1)
            following = len(log) + 1 if asked == 0 else min(max(asked, 1), len(log) + 1)
            self.sent = following - 1
            asyncio.get_running_loop().call_soon(self.start_streaming)
            return soup.LoginAccepted(NASDAQ_SESSION, following)

        def start_streaming(self) -> None:  # after Login Accepted has gone
            if self.is_active():
                self.catch_up()
                streaming.append(self)

        def catch_up(self) -> None:
            for data in log[self.sent :]:
                self.send_seq_msg(data)
            self.sent = len(log)

        async def on_unsequenced(self, msg: Any) -> None:
            log.append(msg.data)
            for session in streaming:
                if session.is_active():
                    session.catch_up()
            self.acked += 1
            ack = Ack(self.acked, NASDAQ_SESSION, len(log)).encode()
            self.send_msg(soup.UnSequencedData(ack))

    def connect() -> Any:
        # Heartbeats after a second without sending, as SoupBinTCP asks; what a client
        # sent but the server has not read yet is dropped when its connection goes
        # (SoupBinTCP's unsequenced messages may be lost so), not worked through first.
        session = LogSession(client_heartbeat_interval=1, graceful_shutdown=False)
        sessions.append(session)
        return session

    server, serving = await common.start_server((HOST, 0), connect)
    try:
        control.send("port", server.sockets[0].getsockname()[1])
        order = await control.receive(24 * 3600)
        if order != "stop":
            raise PeerError(f"expected stop, got {order!r}")
    finally:
        server.close()
        for session in sessions:
            if session._transport is not None:
                session._transport.abort()
            await session.close()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    control.send("stopped")


# ---------------------------------------------------------------------------- servers


class Daemon:
    """A server in a subprocess: its output kept (the last lines), a line waited for."""

    def __init__(self, name: str, command: Sequence[str], ready: str) -> None:
        self.name = name
        self.command = list(command)
        self.ready = re.compile(ready)
        self.lines: list[str] = []
        self.match: re.Match[str] | None = None
        self._seen = threading.Condition()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> re.Match[str]:
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while True:
            with self._seen:
                if self.match is not None:
                    return self.match
                left = deadline - time.monotonic()
                if self._process.poll() is None and left > 0:
                    self._seen.wait(min(left, 0.5))
                    continue
                tail = "\n".join(self.lines[-15:])
            self.stop()
            command = shlex.join(self.command)
            raise PeerError(f"{self.name} did not start in {timeout:.0f} s ({command}):\n{tail}")

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip()
            with self._seen:
                self.lines.append(line)
                del self.lines[:-200]
                if self.match is None:
                    self.match = self.ready.search(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._thread is not None:
            self._thread.join(5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def create_nats_stream(port: int) -> None:
    nc = await nats.connect(f"nats://{HOST}:{port}", max_reconnect_attempts=0)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(
                name=NATS_STREAM,
                subjects=[NATS_SUBJECT],
                storage=StorageType.FILE,
                num_replicas=1,
            )
        )
    finally:
        await nc.close()


class NasdaqServer:
    """The benchmark's end of the nasdaq-protocols server process."""

    def __init__(self) -> None:
        self.worker = Worker("nasdaq-protocols server")

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=nasdaq_server_main, args=(child,), daemon=True)
        process.start()
        child.close()
        self.worker.process, self.worker.conn = process, parent

    @contextlib.contextmanager
    def serving(self, prefill: int, size: int, timeout: float) -> Iterator[int]:
        assert self.worker.conn is not None
        self.worker.conn.send(("serve", prefill, size))
        port = int(self.worker.expect("port", timeout))
        try:
            yield port
        finally:
            self.worker.send("stop")
            self.worker.expect("stopped", 60)


@dataclass(slots=True)
class Clients:
    """The three client processes every peer is measured from, and the nasdaq server."""

    publisher: Worker = field(default_factory=lambda: Worker("publisher"))
    subscriber: Worker = field(default_factory=lambda: Worker("subscriber"))
    background: Worker = field(default_factory=lambda: Worker("background publisher"))
    nasdaq: NasdaqServer = field(default_factory=NasdaqServer)

    def workers(self) -> list[Worker]:
        return [self.publisher, self.subscriber, self.background]

    def start(self) -> None:
        for worker in self.workers():
            worker.start()
        self.nasdaq.start()

    def reset(self) -> None:
        """After a failure: fresh processes, so that nothing stale is read later."""
        for worker in self.workers():
            worker.restart()
        self.nasdaq.worker.stop()
        self.nasdaq.start()

    def stop(self) -> None:
        for worker in [*self.workers(), self.nasdaq.worker]:
            worker.stop()


def start_tickertape(scratch: str, durability: str) -> tuple[Daemon, int]:
    daemon = Daemon(
        "tickertape serve",
        [
            *(sys.executable, "-m", "tickertape", "serve", "--host", HOST, "--port", "0"),
            *("--data", scratch, "--durability", durability),
        ],
        r"SoupBinTCP listening on \S+?:(\d+)",
    )
    return daemon, int(daemon.start(60).group(1))


def start_nats(scratch: str) -> tuple[Daemon, int]:
    daemon = Daemon(
        "nats-server",
        [binary("nats-server") or "nats-server", "-a", HOST, "-p", "-1", "-js", "-sd", scratch],
        r"Listening for client connections on \S+?:(\d+)",
    )
    port = int(daemon.start(30).group(1))
    try:
        asyncio.run(asyncio.wait_for(create_nats_stream(port), 30))
    except BaseException:
        daemon.stop()
        raise
    return daemon, port


def start_redis(scratch: str, durability: str) -> tuple[Daemon, int]:
    for attempt in range(3):  # the free port may be taken before redis binds it
        port = free_port()
        daemon = Daemon(
            "redis-server",
            [
                binary("redis-server") or "redis-server",
                *("--bind", HOST, "--port", str(port), "--dir", scratch),
                *("--appendonly", "yes", "--appendfsync", REDIS_APPENDFSYNC[durability]),
                *("--save", "", "--logfile", "", "--daemonize", "no"),
            ],
            r"Ready to accept connections",
        )
        try:
            daemon.start(30)
        except PeerError:
            if attempt == 2:
                raise
            continue
        return daemon, port
    raise AssertionError("unreachable")


@contextlib.contextmanager
def peer_server(
    peer: str, durability: str, settings: Settings, clients: Clients, prefill: int = 0
) -> Iterator[Endpoint]:
    """The peer's server, fresh, on 127.0.0.1 with its data in a temporary directory.
    ``prefill`` is for the nasdaq server only (its log is filled in its own process)."""
    if peer == "nasdaq":
        with clients.nasdaq.serving(prefill, settings.payload_size, 60) as port:
            yield Endpoint(peer, port)
        return
    with tempfile.TemporaryDirectory(prefix=f"tickertape-peers-{peer}-") as scratch:
        if peer == "tickertape":
            daemon, port = start_tickertape(scratch, durability)
        elif peer == "jetstream":
            daemon, port = start_nats(scratch)
        elif peer == "redis":
            daemon, port = start_redis(scratch, durability)
        else:
            raise PeerError(f"unknown peer {peer!r}")
        try:
            yield Endpoint(peer, port)
        finally:
            daemon.stop()


def peer_setting(peer: str, durability: str) -> str:
    """What durability a peer ran with, in words."""
    if peer == "tickertape":
        return f"--durability {durability}"
    if peer == "redis":
        return f"appendfsync {REDIS_APPENDFSYNC[durability]}"
    if peer == "jetstream":
        return "file storage (acknowledged once written, fsync every 2 min)"
    return "in memory (a Python list)"


# ---------------------------------------------------------------------------- measurements


@dataclass(slots=True)
class Figure:
    """One peer's result in one workload."""

    value: float | None
    unit: str
    complete: bool = True
    detail: str = ""
    setting: str = ""
    error: str | None = None
    latency: dict[str, float] | None = None
    delivered: list[list[bytes]] | None = None
    """What each subscription received (``Settings.keep`` only; not saved)."""
    published: list[bytes] | None = None
    """What the publisher sent (stamped latency messages; ``Settings.keep`` only)."""


@dataclass(slots=True)
class Results:
    settings: Settings
    rows: dict[str, dict[str, Figure]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def put(self, row: str, peer: str, figure: Figure) -> None:
        self.rows.setdefault(row, {})[peer] = figure


def throughput(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


def subscription_errors(result: dict[str, Any]) -> list[str]:
    return [
        f"subscription {n + 1}: {sub['error']}"
        for n, sub in enumerate(result["subscriptions"])
        if sub["error"] is not None
    ]


def bulk_publish(
    clients: Clients, endpoint: Endpoint, settings: Settings, first: int, count: int
) -> dict[str, Any]:
    publisher = clients.publisher
    publisher.submit(
        "publish",
        endpoint,
        PublishJob(
            "bulk", count, settings.payload_size, settings.batch, settings.time_limit, first
        ),
    )
    publisher.expect("ready", 60)
    publisher.send("go")
    result: dict[str, Any] = publisher.expect("done", settings.time_limit + 90)
    return result


def measure_publish(
    clients: Clients, endpoint: Endpoint, settings: Settings, setting: str
) -> Figure:
    count = settings.messages
    result = bulk_publish(clients, endpoint, settings, 0, count)
    seconds = result["finished"] - result["started"]
    acked = result["acked"]
    value = throughput(acked, seconds)
    detail = f"{acked:,} acknowledged in {seconds:.2f} s"
    if not result["complete"]:
        detail += f" (STOPPED at the {settings.time_limit:.0f} s limit; {count:,} asked)"
    say(f"  publish: {value:,.0f} msg/s, {detail}")
    return Figure(value, "msg/s", bool(result["complete"]), detail, setting)


def measure_replay(
    clients: Clients, endpoint: Endpoint, settings: Settings, setting: str, filled: bool
) -> Figure:
    count = settings.messages
    if not filled:
        say(f"  replay: filling the stream with {count:,} messages first (not timed)")
        fill = bulk_publish(clients, endpoint, settings, 0, count)
        if not fill["complete"]:
            raise PeerError(f"could not fill the stream: {fill['acked']:,} of {count:,} in time")
    background, subscriber = clients.background, clients.subscriber
    background.submit(
        "publish",
        endpoint,
        PublishJob(
            "paced",
            int(settings.background_rate * (settings.time_limit + 60)) + 1,
            settings.payload_size,
            settings.batch,
            settings.time_limit + 60,
            first=count,
            rate=settings.background_rate,
        ),
    )
    background.expect("ready", 60)
    subscriber.submit(
        "subscribe",
        endpoint,
        SubscribeJob(
            1, count, settings.payload_size, settings.time_limit, on_go=True, keep=settings.keep
        ),
    )
    subscriber.expect("ready", 60)
    background.send("go")
    subscriber.send("go")
    result = subscriber.expect("done", settings.time_limit + 90)
    background.send("stop")
    published = background.expect("done", 120)
    sub = result["subscriptions"][0]
    errors = subscription_errors(result)
    if errors:
        raise PeerError("; ".join(errors))
    complete = sub["finished"] is not None
    end = sub["finished"] if complete else sub["last"]
    seconds = end - result["started"] if not math.isnan(end) else math.nan
    value = throughput(sub["count"], seconds)
    detail = (
        f"{sub['count']:,} caught up in {seconds:.2f} s while {published['handed']:,} more "
        f"were published ({settings.background_rate:,}/s asked)"
    )
    if not complete:
        detail += f" (STOPPED at the {settings.time_limit:.0f} s limit; {count:,} asked)"
    say(f"  replay: {value:,.0f} msg/s, {detail}")
    return Figure(value, "msg/s", complete, detail, setting, delivered=kept_lists(result))


def kept_lists(result: dict[str, Any]) -> list[list[bytes]] | None:
    kept = [sub["kept"] for sub in result["subscriptions"]]
    return None if any(k is None for k in kept) else kept


def measure_fanout(
    clients: Clients, endpoint: Endpoint, settings: Settings, setting: str
) -> Figure:
    count, subscriptions = settings.fanout_messages, settings.subscribers
    subscriber = clients.subscriber
    subscriber.submit(
        "subscribe",
        endpoint,
        SubscribeJob(
            subscriptions, count, settings.payload_size, settings.time_limit, keep=settings.keep
        ),
    )
    subscriber.expect("ready", 120)
    published = bulk_publish(clients, endpoint, settings, 0, count)
    result = subscriber.expect("done", settings.time_limit + 90)
    errors = subscription_errors(result)
    if errors:
        raise PeerError("; ".join(errors))
    subs = result["subscriptions"]
    complete = all(sub["finished"] is not None for sub in subs)
    ends = [sub["finished"] if sub["finished"] is not None else sub["last"] for sub in subs]
    ends = [end for end in ends if not math.isnan(end)]
    seconds = (max(ends) - published["started"]) if ends else math.nan
    deliveries = sum(sub["count"] for sub in subs)
    value = throughput(deliveries, seconds)
    detail = (
        f"{deliveries:,} deliveries in {seconds:.2f} s (the publisher's last acknowledgement "
        f"after {published['finished'] - published['started']:.2f} s)"
    )
    if not complete:
        detail += (
            f" (STOPPED at the {settings.time_limit:.0f} s limit; {count * subscriptions:,} asked)"
        )
    say(f"  fanout: {value:,.0f} deliveries/s, {detail}")
    return Figure(value, "deliveries/s", complete, detail, setting, delivered=kept_lists(result))


def percentiles(samples: array[int]) -> dict[str, float]:
    """p50 ... p99.9 and max, in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return {}
    found = {
        name: ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] / 1e6
        for name, q in PERCENTILES
    }
    found["max"] = ordered[-1] / 1e6
    return found


def measure_latency(
    clients: Clients, endpoint: Endpoint, settings: Settings, setting: str
) -> Figure:
    total = settings.latency_total
    subscriber, publisher = clients.subscriber, clients.publisher
    wait = settings.latency_seconds + min(settings.time_limit, 30.0)
    subscriber.submit(
        "subscribe",
        endpoint,
        SubscribeJob(1, total, settings.payload_size, wait, stamp=True, keep=settings.keep),
    )
    subscriber.expect("ready", 120)
    publisher.submit(
        "publish",
        endpoint,
        PublishJob(
            "stamped",
            total,
            settings.payload_size,
            settings.batch,
            wait,
            rate=settings.latency_rate,
            keep=settings.keep,
        ),
    )
    publisher.expect("ready", 60)
    publisher.send("go")
    published = publisher.expect("done", wait + 90)
    result = subscriber.expect("done", wait + 90)
    errors = subscription_errors(result)
    if errors:
        raise PeerError("; ".join(errors))
    sub = result["subscriptions"][0]
    skip = int(settings.latency_rate * settings.latency_warmup)
    handed, due = array("q"), array("q")
    handed.frombytes(sub["handed"])
    due.frombytes(sub["due"])
    stats = percentiles(due[skip:] if len(due) > skip else due)
    handed_stats = percentiles(handed[skip:] if len(handed) > skip else handed)
    complete = sub["count"] >= total
    detail = f"{sub['count']:,} of {total:,} received; from hand-over to the client library: " + (
        f"p50 {handed_stats['p50']:.2f} / p99 {handed_stats['p99']:.2f} ms" if handed_stats else "-"
    )
    late = published["handed_at"] - published["started"] - settings.latency_seconds
    if late > 0.1:
        detail += (
            f"; the publisher could not keep the rate: it handed its last message over "
            f"{late:.1f} s after it was due"
        )
    if not complete:
        detail += f" (fell behind: {total - sub['count']:,} NOT received in {wait:.0f} s)"
    say(f"  latency: {show_latency(stats)}; {detail}")
    kept = kept_lists(result)
    return Figure(
        stats.get("p99"),
        "ms",
        complete,
        detail,
        setting,
        latency=stats or None,
        delivered=kept,
        published=published["sent"] if settings.keep else None,
    )


def show_latency(stats: dict[str, float] | None) -> str:
    if not stats:
        return "no samples"
    return " / ".join(f"{name} {stats[name]:.2f}" for name in ("p50", "p99", "p99.9")) + " ms"


PER_DURABILITY: Final = ("publish", "latency")
"""Workloads run once per tickertape durability policy (and its Redis counterpart)."""


def row_name(workload: str, durability: str) -> str:
    return f"{workload}:{durability}" if workload in PER_DURABILITY else workload


def failed(results: Results, row: str, peer: str, exc: BaseException, setting: str) -> None:
    message = str(exc).strip()
    say(f"  {row} FAILED for {peer}: {message}")
    results.put(row, peer, Figure(None, "", False, "", setting, error=message))


def bench_peer(peer: str, settings: Settings, clients: Clients, results: Results) -> None:
    """Every selected workload against one peer, each on a fresh server (the late joiner
    reuses the first publish run's server when that published everything). Publishing
    and latency are measured once per durability policy for tickertape and Redis, once
    for the others (their one figure stands in each row)."""
    main = settings.durability
    workloads = settings.workloads
    durabilities = settings.durabilities if peer in ("tickertape", "redis") else (main,)
    measures = {"fanout": measure_fanout, "latency": measure_latency}
    for workload in ("publish", "replay", "fanout", "latency"):
        if workload not in workloads:
            continue
        if workload == "replay":
            if peer not in results.rows.get("replay", {}):
                replay(peer, settings, clients, results, None)
            continue
        for durability in durabilities if workload in PER_DURABILITY else (main,):
            row, setting = row_name(workload, durability), peer_setting(peer, durability)
            say(f"{PEER_NAMES[peer]}: {workload} ({setting})")
            try:
                with peer_server(peer, durability, settings, clients) as endpoint:
                    if workload != "publish":
                        results.put(
                            row, peer, measures[workload](clients, endpoint, settings, setting)
                        )
                        continue
                    figure = measure_publish(clients, endpoint, settings, setting)
                    results.put(row, peer, figure)
                    if durability == main and "replay" in workloads and figure.complete:
                        replay(peer, settings, clients, results, endpoint)
            except (PeerError, OSError) as exc:
                failed(results, row, peer, exc, setting)
                clients.reset()
        if workload in PER_DURABILITY:  # one figure for every row of a one-policy peer
            measured = results.rows[row_name(workload, main)][peer]
            for durability in settings.durabilities:
                results.rows.setdefault(row_name(workload, durability), {}).setdefault(
                    peer, measured
                )


def replay(
    peer: str, settings: Settings, clients: Clients, results: Results, endpoint: Endpoint | None
) -> None:
    setting = peer_setting(peer, settings.durability)
    say(f"{PEER_NAMES[peer]}: replay ({setting})")
    try:
        if endpoint is not None:
            figure = measure_replay(clients, endpoint, settings, setting, filled=True)
        else:
            # The nasdaq server's log is filled in its own process: publishing a million
            # messages to it over the network would take a quarter of an hour.
            prefill = settings.messages if peer == "nasdaq" else 0
            with peer_server(peer, settings.durability, settings, clients, prefill) as fresh:
                figure = measure_replay(clients, fresh, settings, setting, filled=prefill > 0)
        results.put("replay", peer, figure)
    except (PeerError, OSError) as exc:
        failed(results, "replay", peer, exc, setting)
        clients.reset()


def run(settings: Settings) -> Results:
    """Every selected workload against every selected peer."""
    missing = check_peers_installed(settings.peers)
    if missing:
        raise PeerError(f"{', '.join(missing)} not installed: run {INSTALL_PEERS}")
    results = Results(settings)
    results.meta = machine()
    clients = Clients()
    clients.start()
    try:
        for peer in settings.peers:
            bench_peer(peer, settings, clients, results)
    finally:
        clients.stop()
    results.meta["load_after"] = load()
    return results


# ---------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mib": memory,
        "system": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "tree": source_tree(),
        "versions": versions(),
        "load_before": load(),
        "command": shlex.join(["python", *sys.argv]),
    }


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, command in (
        ("nats-server", [binary("nats-server") or "nats-server", "--version"]),
        ("redis-server", [binary("redis-server") or "redis-server", "--version"]),
    ):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
            out = done.stdout
            match = re.search(r"v=?(\d[\w.]*)", out)
            if match:
                found[name] = match.group(1)
    for package in ("nats-py", "redis", "hiredis", "nasdaq-protocols", "tickertape"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    return found


def load() -> str:
    """The 1-minute load average and how much of the last 10 s tasks waited for a CPU."""
    text = f"load average {os.getloadavg()[0]:.2f}"
    with contextlib.suppress(OSError, IndexError, ValueError):
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        text += f", CPU pressure {float(line.split()[1].split('=')[1]):.0f}%"
    return text


def source_tree() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + (" with uncommitted changes in src/" if changed else "")


# ---------------------------------------------------------------------------- saving


def to_json(results: Results) -> dict[str, Any]:
    rows = {
        row: {
            peer: {k: v for k, v in asdict(figure).items() if k not in ("delivered", "published")}
            for peer, figure in figures.items()
        }
        for row, figures in results.rows.items()
    }
    return {"settings": asdict(results.settings), "meta": results.meta, "rows": rows}


def from_json(data: dict[str, Any]) -> Results:
    raw = dict(data["settings"])
    for name in ("peers", "workloads", "durabilities"):
        raw[name] = tuple(raw[name])
    results = Results(Settings(**raw), meta=data["meta"])
    for row, figures in data["rows"].items():
        for peer, figure in figures.items():
            results.put(row, peer, Figure(**figure))
    return results


# ---------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        description="Measure tickertape against NATS JetStream, Redis Streams and a "
        "nasdaq-protocols SoupBinTCP server: the same workloads, the same client "
        "processes, one run. Prints a table; rewrites the section 'Against the "
        "alternatives' of docs/benchmarks.md and its plots (not with --quick).",
    )
    defaults = Settings()

    def names(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
        def parse(text: str) -> tuple[str, ...]:
            chosen = tuple(name.strip() for name in text.split(",") if name.strip())
            unknown = [name for name in chosen if name not in choices]
            if unknown or not chosen:
                raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
            return chosen

        return parse

    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--peers", type=names(PEERS), default=PEERS, help=",".join(PEERS))
    parser.add_argument(
        "--only", type=names(WORKLOADS), default=WORKLOADS, help=",".join(WORKLOADS)
    )
    parser.add_argument(
        "--durability",
        type=names(DURABILITIES),
        default=defaults.durabilities,
        help="tickertape durability policies for the publish workload, the first for the "
        "others too (batch,none)",
    )
    parser.add_argument("--messages", type=int, metavar="N", help="publish and replay (1,000,000)")
    parser.add_argument("--fanout-messages", type=int, metavar="N", help="(200,000)")
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers, metavar="N")
    parser.add_argument("--payload-size", type=int, default=defaults.payload_size, metavar="B")
    parser.add_argument("--batch", type=int, default=defaults.batch, metavar="N")
    parser.add_argument("--background-rate", type=int, metavar="N", help="msg/s (10,000)")
    parser.add_argument("--latency-rate", type=int, metavar="N", help="msg/s (50,000)")
    parser.add_argument("--latency-seconds", type=float, metavar="S", help="(10)")
    parser.add_argument("--time-limit", type=float, metavar="S", help="per measurement (120)")
    parser.add_argument(
        "--docs",
        type=Path,
        metavar="FILE",
        help=f"the Markdown file whose section is rewritten ({DOCS.relative_to(ROOT)}; "
        "with --quick, only if given)",
    )
    parser.add_argument(
        "--no-docs", action="store_true", help="print the table only; write no docs or plots"
    )
    parser.add_argument(
        "--replot",
        nargs="?",
        const=RESULTS,
        type=Path,
        metavar="JSON",
        help="run nothing: rewrite the section and plots from saved figures (%(const)s)",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="do not run bench/install-peers if needed"
    )
    args = parser.parse_args(argv)
    if args.payload_size < STAMP_SIZE + NUMBER_SIZE:
        parser.error(f"--payload-size must be at least {STAMP_SIZE + NUMBER_SIZE}")

    def pick(value: int | float | None, full: int | float, quick: int | float) -> Any:
        chosen = value if value is not None else (quick if args.quick else full)
        if chosen <= 0:
            parser.error("counts, rates and times must be positive")
        return chosen

    settings = Settings(
        peers=args.peers,
        workloads=args.only,
        durabilities=args.durability,
        messages=pick(args.messages, defaults.messages, 20_000),
        fanout_messages=pick(args.fanout_messages, defaults.fanout_messages, 5_000),
        subscribers=args.subscribers,
        payload_size=args.payload_size,
        batch=args.batch,
        background_rate=pick(args.background_rate, defaults.background_rate, 2_000),
        latency_rate=pick(args.latency_rate, defaults.latency_rate, 5_000),
        latency_seconds=pick(args.latency_seconds, defaults.latency_seconds, 1.0),
        latency_warmup=0.2 if args.quick else defaults.latency_warmup,
        time_limit=pick(args.time_limit, defaults.time_limit, 20.0),
    )
    return args, settings


def main(argv: Sequence[str] | None = None) -> int:
    args, settings = parse_args(argv)
    if args.replot is not None:
        results = from_json(json.loads(args.replot.read_text()))
    else:
        try:
            if check_peers_installed(settings.peers) and not args.no_install:
                install_peers()
            results = run(settings)
        except PeerError as exc:
            print(f"peers.py: {exc}", file=sys.stderr)
            return 2
    docs = None if args.no_docs or (args.quick and args.docs is None) else args.docs or DOCS
    if docs is not None and args.replot is None:
        saved = docs.parent / RESULTS.name
        saved.write_text(json.dumps(to_json(results), indent=1) + "\n")
        say(f"figures saved to {saved}")
    print(peers_report.table(results))
    if docs is not None:
        written = peers_report.write_docs(results, docs)
        say("wrote " + ", ".join(str(path) for path in written))
    return 1 if any(f.error for figures in results.rows.values() for f in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
