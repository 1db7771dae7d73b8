"""``tickertape bench``: a load test against a running server, in the manner of ``nats bench``.

N publishers (tickertape's :class:`~tickertape.client.publisher.Publisher`, ``send_many`` of
``--batch`` messages at a time) publish ``--count`` messages between them, or publish for
``--duration`` seconds; M subscribers (:class:`~tickertape.client.soupbintcp.Subscription`,
``batches()``) log in live (``--from 0``, before anyone publishes) or from a sequence
number (``--from 1``: the session from its first message, replayed, then live). Each client
runs in a process of its own (``--processes`` caps how many), so that the clients do not
share one core; they report to this process over pipes.

Every bench message is ``--size`` bytes and starts with a 27-byte header: this run's random
8-byte tag, the publisher's number, a flag on each publisher's last message, the message's
number among its publisher's (from 0), and ``CLOCK_MONOTONIC`` in nanoseconds when its
batch was handed to the client library (the clock is the machine's, the same in every
process). Each subscriber checks that the sequence numbers it is given follow on with no
gap, that every publisher's messages arrive in their order with none missing or repeated,
and that it got every publisher's last message; it takes the publish-to-receive latency of
each message from the time its batch came out of ``batches()``. Messages of the session that
this run did not publish (earlier ones, replayed with ``--from 1``, or another publisher's)
are counted and otherwise left alone.

Published: messages acknowledged as durable, from the first publisher's start to the last
acknowledgement. Delivered: bench messages received, summed over the subscribers, from the
first publisher's start to the last one received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import secrets
import signal
import ssl
import struct
import sys
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription, TLSRefused, active_session
from tickertape.errors import ConfigError, LoginRejected, ProtocolError
from tickertape.server.soupbintcp import DEFAULT_HOST, DEFAULT_PORT
from tickertape.tls import client_context
from tickertape.wire.soupbintcp import MAX_PAYLOAD

HEADER: Final = struct.Struct("<8sHBQQ")  # at offsets 0, 8, 10, 11 and 19
"""Run tag, publisher (from 0), flags, number (from 0), send time (monotonic ns)."""
LAST: Final = 1
"""The flag on each publisher's last message."""
DEFAULT_COUNT: Final = 100_000
DEFAULT_SIZE: Final = 128
DEFAULT_BATCH: Final = 1000
DEFAULT_TIMEOUT: Final = 30.0
MAX_PROCESSES: Final = 64
PROGRESS_EVERY: Final = 0.2
"""Seconds between a worker's progress reports (and the terminal's progress redraws)."""
PROGRESS_LINE_EVERY: Final = 5.0
"""Seconds between progress lines when stderr is not a terminal."""
PERCENTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
MAX_ERRORS: Final = 5
"""Errors kept per subscriber (the rest are counted)."""

EXAMPLE: Final = """\
example, against a server started with `tickertape serve --port 7411`:

  $ tickertape bench --port 7411 --publishers 2 --subscribers 4 --count 500000
  (a table: published and delivered messages a second, per publisher and per
  subscriber, and the publish-to-receive latency: p50, p90, p99, p99.9, max)

  $ tickertape bench --duration 10 --rate 50000 --subscribers 1 --json

Exits 1 if a subscriber missed a message, got one twice or out of order, or anything
failed; 2 for options that do not go together.
"""


class BenchError(Exception):
    """The bench cannot run, or a client failed: a one-line reason."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the clients connect, and as whom."""

    host: str
    port: int
    user: str = ""
    password: str = ""
    tls: bool = False
    ca: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        return client_context(self.ca) if self.tls else None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What every client is told."""

    target: Target
    tag: bytes
    publishers: int
    subscribers: int
    size: int
    count: int | None
    duration: float | None
    seq: int
    batch: int
    rate: float | None

    def share(self, publisher: int) -> int | None:
        """How many messages ``publisher`` publishes (None: for ``duration``)."""
        if self.count is None:
            return None
        return self.count // self.publishers + (publisher < self.count % self.publishers)


# ---------------------------------------------------------------------------- the clients


class _Publisher:
    def __init__(self, plan: Plan, index: int) -> None:
        self.plan = plan
        self.index = index
        self.client: Publisher | None = None
        self.started_ns = 0
        self.finished_ns = 0

    @property
    def sent(self) -> int:
        return self.client.sent if self.client is not None else 0

    @property
    def acked(self) -> int:
        return self.client.acked if self.client is not None else 0

    def progress(self) -> tuple[int, int]:
        return self.sent, self.acked

    async def connect(self) -> None:
        target = self.plan.target
        self.client = await Publisher.connect(
            target.host,
            target.port,
            username=target.user,
            password=target.password,
            ssl=target.ssl_context(),
        )

    async def run(self) -> dict[str, Any]:
        assert self.client is not None
        plan, client, index = self.plan, self.client, self.index
        pack, tag = HEADER.pack, plan.tag
        filler = bytes(plan.size - HEADER.size)
        share = plan.share(index)
        per_second = plan.rate / plan.publishers if plan.rate else None
        self.started_ns = time.monotonic_ns()
        started = time.monotonic()
        deadline = started + plan.duration if plan.duration is not None else math.inf
        number = 0
        while True:
            size = plan.batch if share is None else min(plan.batch, share - number)
            if per_second is not None:  # the messages due by now, at the steady rate
                due = int((time.monotonic() - started) * per_second)
                while due <= number:
                    await asyncio.sleep(
                        max(0.001, (number + 1) / per_second - (time.monotonic() - started))
                    )
                    due = int((time.monotonic() - started) * per_second)
                size = min(size, due - number)
            final = number + size >= share if share is not None else time.monotonic() >= deadline
            end = number + size
            sent_ns = time.monotonic_ns()
            payloads = [pack(tag, index, 0, n, sent_ns) + filler for n in range(number, end)]
            if final:
                payloads[-1] = pack(tag, index, LAST, end - 1, sent_ns) + filler
            await client.send_many(payloads)
            number += size
            if final:
                break
        await client.flush()
        self.finished_ns = time.monotonic_ns()
        return {
            "messages": client.acked,
            "sent": client.sent,
            "started_ns": self.started_ns,
            "finished_ns": self.finished_ns,
            "session": client.session,
        }

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class _Subscriber:
    def __init__(self, plan: Plan, index: int) -> None:
        self.plan = plan
        self.index = index
        target = plan.target
        self.subscription = Subscription(
            target.host,
            target.port,
            "",
            plan.seq,
            username=target.user,
            password=target.password,
            reconnect=False,
            ssl=target.ssl_context(),
        )
        self.received = 0
        """Every message received, the bench's and others."""
        self.delivered = 0
        """Bench messages received."""
        self.other = 0
        self.expected = [0] * plan.publishers
        self.lasts = 0
        self.next_seq: int | None = plan.seq if plan.seq > 0 else None
        self.latency: Counter[int] = Counter()
        self.errors: list[str] = []
        self.error_count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.task: asyncio.Task[None] | None = None

    def progress(self) -> tuple[int, int]:
        return self.received, self.delivered

    async def start(self, within: float) -> None:
        """Log in and start taking messages; return once the login is accepted."""
        self.task = asyncio.create_task(self._consume())
        deadline = time.monotonic() + within
        # The client says nothing when its login is accepted, but counts logins.
        while self.subscription.logins == 0 and not self.task.done():
            if time.monotonic() > deadline:
                raise BenchError(f"the login was not accepted within {within:g} s")
            await asyncio.sleep(0.002)
        if self.task.done():
            self.task.result()

    async def run(self) -> dict[str, Any]:
        assert self.task is not None
        await self.task
        return {
            "received": self.received,
            "messages": self.delivered,
            "other_messages": self.other,
            "per_publisher": list(self.expected),
            "complete": self.lasts == self.plan.publishers,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latency_us": dict(self.latency),
            "errors": self.errors,
            "error_count": self.error_count,
            "session": self.subscription.session,
        }

    def _error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    async def _consume(self) -> None:
        try:
            async for batch in self.subscription.batches():
                self._take(batch.first_seq, batch.payloads, time.monotonic_ns())
                if self.lasts == self.plan.publishers:
                    return
        except (OSError, ProtocolError, LoginRejected) as exc:
            raise BenchError(f"{exc} (after {self.received:,} messages)") from None
        raise BenchError(
            f"the session ended (End of Session) after {self.received:,} messages, before "
            "every publisher's last message arrived"
        )

    def _take(self, first_seq: int, payloads: list[bytes], now_ns: int) -> None:
        if self.next_seq is not None and first_seq != self.next_seq:
            self._error(
                f"sequence numbers jump from {self.next_seq - 1} to {first_seq}"
                if first_seq > self.next_seq
                else f"sequence number {first_seq} came again (expected {self.next_seq})"
            )
        self.next_seq = first_seq + len(payloads)
        self.received += len(payloads)
        if not self.first_ns:
            self.first_ns = now_ns
        if not self._take_all_in_order(payloads, now_ns):
            self._take_one_by_one(first_seq, payloads, now_ns)

    def _take_all_in_order(self, payloads: list[bytes], now_ns: int) -> bool:
        """The common case, checked without a Python step per message: every message is
        the bench's and each publisher's follow on from the last. False (nothing taken)
        if not: :meth:`_take_one_by_one` then says what is wrong."""
        tag, size, count = self.plan.tag, self.plan.size, len(payloads)
        joined = b"".join(payloads)
        if not count or len(joined) != size * count:
            return False  # not every message is `size` bytes long
        # The messages as columns (a strided slice per byte of a field, in C): the tag's
        # bytes, and each field of the header made into an array.
        if any(joined[i::size] != tag[i : i + 1] * count for i in range(len(tag))):
            return False
        publishers = _column(joined, 8, "H", size)
        flags = joined[10::size]
        numbers = _column(joined, 11, "Q", size)
        sent = _column(joined, 19, "Q", size)
        expected = self.expected
        if max(publishers) >= len(expected):
            return False
        ranges: list[tuple[int, int]] = []
        for publisher in set(publishers):
            mine = (
                array("Q", compress(numbers, map(publisher.__eq__, publishers)))
                if ranges or publishers.count(publisher) != count
                else numbers
            )
            first = expected[publisher]
            if mine != array("Q", range(first, first + len(mine))):
                return False
            ranges.append((publisher, first + len(mine)))
        for publisher, following in ranges:
            expected[publisher] = following
        self.lasts += flags.count(LAST)
        latency = self.latency
        for sent_ns, messages in Counter(sent).items():  # a batch shares its send time
            latency[(now_ns - sent_ns) // 1000] += messages
        self.delivered += count
        self.last_ns = now_ns
        return True

    def _take_one_by_one(self, first_seq: int, payloads: list[bytes], now_ns: int) -> None:
        tag, size, unpack = self.plan.tag, self.plan.size, HEADER.unpack_from
        expected, publishers = self.expected, self.plan.publishers
        latencies: list[int] = []
        delivered = 0
        for seq, payload in enumerate(payloads, first_seq):
            if not payload.startswith(tag):
                self.other += 1
                continue
            if len(payload) != size:
                self._error(f"message {seq} is {len(payload)} bytes, not {size}")
                continue
            _, publisher, flags, number, sent_ns = unpack(payload)
            delivered += 1
            if publisher >= publishers:
                self._error(f"message {seq} names publisher {publisher + 1} of {publishers}")
                continue
            if number != expected[publisher]:
                want = expected[publisher]
                self._error(
                    f"message {seq}: publisher {publisher + 1}'s message {number + 1} arrived "
                    + (
                        f"where {want + 1} was due: {number - want:,} missing"
                        if number > want
                        else f"again or out of order (after its message {want})"
                    )
                )
            expected[publisher] = number + 1
            if flags & LAST:
                self.lasts += 1
            latencies.append((now_ns - sent_ns) // 1000)
        if delivered:
            self.delivered += delivered
            self.last_ns = now_ns
            self.latency.update(latencies)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.subscription.close()


def _column(joined: bytes, offset: int, typecode: str, size: int) -> array[int]:
    """The little-endian field at ``offset`` of each ``size``-byte record of ``joined``."""
    column = array(typecode)
    width = column.itemsize
    packed = bytearray(width * (len(joined) // size))
    for i in range(width):
        packed[i::width] = joined[offset + i :: size]
    column.frombytes(packed)
    if sys.byteorder != "little":
        column.byteswap()
    return column


# ---------------------------------------------------------------------------- a worker process


@dataclass(frozen=True, slots=True)
class _Job:
    plan: Plan
    publishers: tuple[int, ...]
    subscribers: tuple[int, ...]
    timeout: float


class _Control:
    """The worker's end of its pipe, read without blocking the event loop."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, *message: object) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(message)

    async def receive(self) -> Any:
        if not self.conn.poll():
            loop = asyncio.get_running_loop()
            readable = asyncio.Event()
            loop.add_reader(self.conn.fileno(), readable.set)
            try:
                await readable.wait()
            finally:
                loop.remove_reader(self.conn.fileno())
        try:
            return self.conn.recv()
        except EOFError:
            return "stop"


def _worker_main(conn: Connection, job: _Job) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench process decides when to stop
    control = _Control(conn)
    try:
        asyncio.run(_work(control, job))
    except Exception:
        control.send("crashed", traceback.format_exc())
    finally:
        conn.close()


async def _work(control: _Control, job: _Job) -> None:
    plan = job.plan
    publishers = [_Publisher(plan, index) for index in job.publishers]
    subscribers = [_Subscriber(plan, index) for index in job.subscribers]
    live = plan.seq == 0  # live subscribers log in before anyone publishes

    def failed(kind: str, index: int, exc: BaseException) -> None:
        control.send("failed", kind, index, _reason(exc, plan.target))

    running: list[asyncio.Task[Any]] = []
    try:
        for publisher in publishers:
            try:
                await asyncio.wait_for(publisher.connect(), job.timeout)
            except Exception as exc:
                failed("publisher", publisher.index, exc)
                return
        if live and not await _start(subscribers, job.timeout, failed):
            return
        control.send("ready")
        if await control.receive() != "go":
            return
        if not live and not await _start(subscribers, job.timeout, failed):
            return
        tasks: dict[asyncio.Task[dict[str, Any]], tuple[str, int]] = {}
        for publisher in publishers:
            tasks[asyncio.create_task(publisher.run())] = ("publisher", publisher.index)
        for subscriber in subscribers:
            tasks[asyncio.create_task(subscriber.run())] = ("subscriber", subscriber.index)
        stop = asyncio.create_task(control.receive())
        running += [*tasks, stop]
        pending: set[asyncio.Task[Any]] = {*tasks, stop}
        while tasks.keys() & pending:
            done, pending = await asyncio.wait(
                pending, timeout=PROGRESS_EVERY, return_when=asyncio.FIRST_COMPLETED
            )
            control.send(
                "progress",
                {("publisher", p.index): p.progress() for p in publishers}
                | {("subscriber", s.index): s.progress() for s in subscribers},
            )
            for task in done:
                if task is stop:
                    return  # told to stop (or the bench went away)
                kind, index = tasks[task]
                error = task.exception()
                if error is None:
                    control.send("done", kind, index, task.result())
                else:
                    failed(kind, index, error)
    finally:
        for task in running:  # told to stop: what is left ends here, quietly
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        clients: list[_Publisher | _Subscriber] = [*publishers, *subscribers]
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


async def _start(
    subscribers: Sequence[_Subscriber],
    within: float,
    failed: Callable[[str, int, BaseException], None],
) -> bool:
    """Log the subscribers in; False (said) if one could not."""
    for subscriber in subscribers:
        try:
            await subscriber.start(within)
        except Exception as exc:
            failed("subscriber", subscriber.index, exc)
            return False
    return True


def _reason(exc: BaseException, target: Target) -> str:
    """What went wrong, in one line."""
    if isinstance(exc, BenchError | TLSRefused):
        return str(exc)
    if isinstance(exc, LoginRejected):
        text = str(exc).split(" rejected: ", 1)[-1]  # the server's reason
        who = f"user {target.user!r}" if target.user else "an anonymous login"
        return f"{target.where} rejected the login ({who}): {text}"
    if isinstance(exc, TimeoutError):
        return f"{target.where} did not answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot reach {target.where}: connection refused (is tickertape serve running?)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {target.where} failed: {exc.reason or exc} (is it serving TLS?)"
    if isinstance(exc, OSError):
        return f"{target.where}: {exc.strerror or exc}"
    if isinstance(exc, ProtocolError | ConfigError):
        return str(exc)
    return "".join(traceback.format_exception_only(exc)).strip()


# ---------------------------------------------------------------------------- the bench process


async def _probe(plan: Plan, within: float) -> str:
    """Log in once as a publisher (and as a subscriber, if there are any), so that an
    unreachable server or a refused login is one clear error; the active session's id."""
    target = plan.target
    try:
        async with asyncio.timeout(within):
            publisher = await Publisher.connect(
                target.host,
                target.port,
                username=target.user,
                password=target.password,
                ssl=target.ssl_context(),
                server_timeout=within,
            )
            session = publisher.session
            await publisher.close()
            if plan.subscribers:
                session = await active_session(
                    target.host,
                    target.port,
                    username=target.user,
                    password=target.password,
                    ssl=target.ssl_context(),
                    server_timeout=within,
                )
    except (OSError, TimeoutError, LoginRejected, ProtocolError) as exc:
        reason = _reason(exc, target)
        if type(exc) is ConnectionError and not target.tls and "TLS" not in reason:
            reason += " (if it serves TLS, give --tls)"
        raise BenchError(reason) from None
    return session


@dataclass
class _Run:
    """What the workers said."""

    plan: Plan
    results: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    progress: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def moved(self) -> int:
        return sum(a + b for a, b in self.progress.values())

    def take(self, message: Any) -> None:
        word = message[0]
        if word == "progress":
            self.progress.update(message[1])
        elif word == "done":
            self.results[(message[1], message[2])] = message[3]
        elif word == "failed":
            self.failures.append(f"{message[1]} {message[2] + 1}: {message[3]}")
        elif word == "crashed":
            self.failures.append(f"a bench process failed:\n{message[1]}")


class _Progress:
    """A progress line on stderr: redrawn in place on a terminal, else now and then."""

    def __init__(self, plan: Plan, started: float) -> None:
        self.plan = plan
        self.started = started
        self.tty = sys.stderr.isatty()
        self.shown = started
        self.drawn = False

    def show(self, run: _Run, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown < (PROGRESS_EVERY if self.tty else PROGRESS_LINE_EVERY):
            return
        self.shown = now
        plan = self.plan
        sent = sum(v[0] for k, v in run.progress.items() if k[0] == "publisher")
        acked = sum(v[1] for k, v in run.progress.items() if k[0] == "publisher")
        delivered = sum(v[1] for k, v in run.progress.items() if k[0] == "subscriber")
        of = f" of {plan.count:,}" if plan.count is not None else ""
        line = f"bench: {now - self.started:5.1f} s  published {acked:,}{of} (sent {sent:,})"
        if plan.subscribers:
            of = f" of {plan.count * plan.subscribers:,}" if plan.count is not None else ""
            line += f"  delivered {delivered:,}{of}"
        if self.tty:
            sys.stderr.write(f"\r{line}\x1b[K")
            self.drawn = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass(frozen=True, slots=True)
class _Worker:
    process: BaseProcess
    conn: Connection
    clients: tuple[tuple[str, int], ...]


def _start_workers(plan: Plan, processes: int, timeout: float) -> list[_Worker]:
    clients = [("publisher", i) for i in range(plan.publishers)] + [
        ("subscriber", i) for i in range(plan.subscribers)
    ]
    # Forked (no thread is running here, and no event loop): a worker starts at once,
    # with what this process has imported; spawned where fork is not offered.
    forking = "fork" in mp.get_all_start_methods()
    context = mp.get_context("fork") if forking else mp.get_context("spawn")
    workers: list[_Worker] = []
    for share in (clients[k::processes] for k in range(processes)):
        job = _Job(
            plan,
            tuple(i for kind, i in share if kind == "publisher"),
            tuple(i for kind, i in share if kind == "subscriber"),
            timeout,
        )
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_worker_main, args=(theirs, job), name="tickertape-bench", daemon=True
        )
        process.start()
        theirs.close()
        workers.append(_Worker(process, ours, tuple(share)))
    return workers


def _stop_workers(workers: Sequence[_Worker]) -> None:
    for worker in workers:
        with contextlib.suppress(OSError):
            worker.conn.send("stop")
    deadline = time.monotonic() + 5
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(5)
        worker.conn.close()


def _gather(
    run: _Run,
    workers: Sequence[_Worker],
    until: Callable[[_Run], bool],
    timeout: float,
    progress: _Progress | None,
    what: str,
) -> None:
    """Read the workers' messages until ``until(run)``, a failure, or ``timeout`` seconds
    with no progress; a stall or a worker that died is a failure."""
    open_conns = {worker.conn: worker for worker in workers}
    moved, last_move = run.moved(), time.monotonic()
    while not until(run) and not run.failures:
        if not open_conns:
            run.failures.append("the bench processes ended before finishing")
            return
        for conn in wait(list(open_conns), PROGRESS_EVERY):
            assert isinstance(conn, Connection)
            try:
                run.take(conn.recv())
            except (EOFError, OSError):
                worker = open_conns.pop(conn)
                if not all(client in run.results for client in worker.clients):
                    worker.process.join(1)
                    run.failures.append(
                        "a bench process ended unexpectedly "
                        f"(exit status {worker.process.exitcode})"
                    )
        now = time.monotonic()
        if run.moved() != moved:
            moved, last_move = run.moved(), now
        elif now - last_move > timeout:
            run.failures.append(f"{what}: nothing moved for {timeout:g} s ({_stalled(run)})")
            return
        if progress is not None:
            progress.show(run)


def _stalled(run: _Run) -> str:
    plan = run.plan
    parts = []
    for index in range(plan.publishers):
        if ("publisher", index) not in run.results:
            sent, acked = run.progress.get(("publisher", index), (0, 0))
            parts.append(f"publisher {index + 1}: {acked:,} of {sent:,} sent acknowledged")
    for index in range(plan.subscribers):
        if ("subscriber", index) not in run.results:
            _, delivered = run.progress.get(("subscriber", index), (0, 0))
            parts.append(f"subscriber {index + 1}: {delivered:,} received")
    return "; ".join(parts) or "every client had finished"


def run_bench(args: argparse.Namespace) -> int:
    """``tickertape bench``: the exit status."""
    try:
        plan = _plan(args)
    except ConfigError as exc:
        args.subparser.error(str(exc))
    try:
        session = asyncio.run(_probe(plan, args.timeout))
    except BenchError as exc:
        print(f"tickertape bench: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a CA file that does not load
        print(f"tickertape bench: {exc}", file=sys.stderr)
        return 1
    processes = min(args.processes or MAX_PROCESSES, plan.publishers + plan.subscribers)
    run = _Run(plan)
    workers = _start_workers(plan, processes, args.timeout)
    progress: _Progress | None = None
    try:
        ready = 0
        open_conns = [worker.conn for worker in workers]
        deadline = time.monotonic() + args.timeout + 30  # process start-up included
        while ready < len(workers) and not run.failures:
            if time.monotonic() > deadline:
                run.failures.append(f"the clients were not ready within {args.timeout:g} s")
                break
            for conn in wait(open_conns, 0.5):
                assert isinstance(conn, Connection)
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    run.failures.append("a bench process ended before it was ready")
                    break
                if message[0] == "ready":
                    ready += 1
                else:
                    run.take(message)
        if not run.failures:
            for worker in workers:
                worker.conn.send("go")
            progress = _Progress(plan, time.monotonic())
            clients = plan.publishers + plan.subscribers
            _gather(
                run,
                workers,
                lambda run: len(run.results) == clients,
                args.timeout,
                progress,
                "stalled",
            )
            progress.show(run, force=True)
            progress.end()
    except KeyboardInterrupt:
        if progress is not None:
            progress.end()
        print("tickertape bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still clean up
        _stop_workers(workers)
    report = _report(plan, session, run)
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["published"]["messages"] or not run.failures:
        print(_table(report))
    for error in report["errors"]:
        print(f"tickertape bench: {error}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _plan(args: argparse.Namespace) -> Plan:
    if args.publishers < 1:
        raise ConfigError("--publishers must be 1 or more")
    if args.subscribers < 0:
        raise ConfigError("--subscribers cannot be negative")
    if not HEADER.size <= args.size <= MAX_PAYLOAD:
        raise ConfigError(
            f"--size must be {HEADER.size} to {MAX_PAYLOAD} bytes (each message carries a "
            f"{HEADER.size}-byte header: the run, its publisher and number, the send time)"
        )
    if args.count is not None and args.count < args.publishers:
        raise ConfigError("--count must be at least --publishers (each publishes one or more)")
    if args.duration is not None and not args.duration > 0:
        raise ConfigError("--duration must be more than 0 seconds")
    if args.batch < 1:
        raise ConfigError("--batch must be 1 or more")
    if args.rate is not None and not args.rate > 0:
        raise ConfigError("--rate must be more than 0")
    if args.seq < 0:
        raise ConfigError("--from must be 0 (live) or a sequence number")
    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes must be 1 or more")
    if not args.timeout > 0:
        raise ConfigError("--timeout must be more than 0 seconds")
    if args.ca is not None and not args.tls:
        raise ConfigError("--ca needs --tls")
    count = DEFAULT_COUNT if args.count is None and args.duration is None else args.count
    return Plan(
        target=Target(args.host, args.port, args.user, args.password, args.tls, args.ca),
        tag=secrets.token_bytes(8),
        publishers=args.publishers,
        subscribers=args.subscribers,
        size=args.size,
        count=count,
        duration=args.duration,
        seq=args.seq,
        batch=args.batch,
        rate=args.rate,
    )


def _percentiles(latency: Counter[int]) -> dict[str, Any]:
    samples = sum(latency.values())
    out: dict[str, Any] = {"samples": samples}
    if not samples:
        return out | {name: None for name, _ in PERCENTILES} | {"max": None}
    ordered = sorted(latency.items())
    for name, q in PERCENTILES:
        rank, seen = math.ceil(q * samples), 0  # nearest rank
        for value, count in ordered:
            seen += count
            if seen >= rank:
                out[name] = value / 1000
                break
    out["max"] = ordered[-1][0] / 1000
    return out


def _rate(messages: int, nanoseconds: int, size: int) -> dict[str, Any]:
    seconds = max(0, nanoseconds) / 1e9
    per_second = messages / seconds if seconds > 0 else 0.0
    return {
        "messages": messages,
        "seconds": round(seconds, 4),
        "rate": round(per_second, 1),
        "mb_per_second": round(per_second * size / 1e6, 2),
    }


def _report(plan: Plan, session: str, run: _Run) -> dict[str, Any]:
    pubs = [run.results.get(("publisher", i)) for i in range(plan.publishers)]
    subs = [run.results.get(("subscriber", i)) for i in range(plan.subscribers)]
    errors = list(run.failures)
    done_pubs = [p for p in pubs if p is not None]
    start = min((p["started_ns"] for p in done_pubs), default=0)
    published = sum(p["messages"] for p in done_pubs)
    publish_end = max((p["finished_ns"] for p in done_pubs), default=start)
    each_pub = [
        None if p is None else _rate(p["messages"], p["finished_ns"] - p["started_ns"], plan.size)
        for p in pubs
    ]
    sent = [p["sent"] if p is not None else None for p in pubs]
    latency: Counter[int] = Counter()
    each_sub: list[dict[str, Any] | None] = []
    for index, s in enumerate(subs):
        if s is None:
            each_sub.append(None)
            continue
        latency.update({int(k): v for k, v in s["latency_us"].items()})
        entry = _rate(s["messages"], s["last_ns"] - start, plan.size)
        entry["other_messages"] = s["other_messages"]
        entry["errors"] = s["error_count"]
        each_sub.append(entry)
        name = f"subscriber {index + 1}"
        errors.extend(f"{name}: {text}" for text in s["errors"])
        if s["error_count"] > len(s["errors"]):
            errors.append(f"{name}: and {s['error_count'] - len(s['errors'])} more errors")
        for pub, (got, want) in enumerate(zip(s["per_publisher"], sent, strict=True)):
            if want is not None and got != want and not s["error_count"]:
                errors.append(f"{name}: {got:,} of publisher {pub + 1}'s {want:,} messages")
    for index, p in enumerate(pubs):
        if p is not None and p["messages"] != p["sent"]:
            errors.append(
                f"publisher {index + 1}: {p['sent'] - p['messages']:,} of {p['sent']:,} "
                "messages were not acknowledged"
            )
    done_subs = [s for s in subs if s is not None]
    delivered = sum(s["messages"] for s in done_subs)
    deliver_end = max((s["last_ns"] for s in done_subs), default=start)
    return {
        "server": plan.target.where,
        "session": session,
        "publishers": plan.publishers,
        "subscribers": plan.subscribers,
        "from": plan.seq,
        "size": plan.size,
        "batch": plan.batch,
        "count": plan.count,
        "duration": plan.duration,
        "rate": plan.rate,
        "published": _rate(published, publish_end - start, plan.size) | {"each": each_pub},
        "delivered": _rate(delivered, deliver_end - start, plan.size)
        | {
            "other_messages": sum(s["other_messages"] for s in done_subs),
            "each": each_sub,
        },
        "latency_ms": _percentiles(latency),
        "errors": errors,
        "ok": not errors,
    }


def _table(report: dict[str, Any]) -> str:
    how = (
        f"{report['count']:,} messages of {report['size']} bytes"
        if report["count"] is not None
        else f"messages of {report['size']} bytes for {report['duration']:g} s"
    )
    if report["rate"]:
        how += f" at {report['rate']:,.0f} a second"
    start = "live" if report["from"] == 0 else f"from {report['from']}"
    lines = [
        f"tickertape bench: {report['server']}, session {report['session']}",
        f"{_count(report['publishers'], 'publisher')}, "
        f"{_count(report['subscribers'], 'subscriber')} ({start}), "
        f"{how}, in batches of up to {report['batch']:,}",
        "",
        f"{'':16}{'messages':>12}{'seconds':>10}{'messages/s':>13}{'MB/s':>9}",
    ]

    def row(name: str, entry: dict[str, Any] | None) -> str:
        if entry is None:
            return f"{name:16}{'(failed)':>12}"
        return (
            f"{name:16}{entry['messages']:>12,}{entry['seconds']:>10.2f}"
            f"{entry['rate']:>13,.0f}{entry['mb_per_second']:>9.1f}"
        )

    lines.append(row("published", report["published"]))
    if report["publishers"] > 1:
        lines += [row(f"  publisher {i + 1}", e) for i, e in enumerate(report["published"]["each"])]
    if report["subscribers"]:
        lines.append(row("delivered", report["delivered"]))
        if report["subscribers"] > 1:
            lines += [
                row(f"  subscriber {i + 1}", e) for i, e in enumerate(report["delivered"]["each"])
            ]
        latency = report["latency_ms"]
        lines += [
            "",
            f"latency, publish to receive, ms ({latency['samples']:,} messages):",
            "".join(f"{name:>10}" for name, _ in PERCENTILES) + f"{'max':>10}",
        ]
        if latency["samples"]:
            lines.append(
                "".join(f"{latency[name]:>10.3f}" for name, _ in PERCENTILES)
                + f"{latency['max']:>10.3f}"
            )
        other = report["delivered"]["other_messages"]
        if other:
            lines.append(
                f"(and {other:,} messages of the session that this bench did not publish, "
                "summed over the subscribers: earlier ones, or another publisher's)"
            )
    lines.append("")
    if report["ok"]:
        if report["subscribers"]:
            lines.append(
                f"ok: each subscriber received all {report['published']['messages']:,} "
                "messages, in order, with no gap and no duplicate"
            )
        else:
            lines.append(f"ok: all {report['published']['messages']:,} messages acknowledged")
    else:
        lines.append(f"FAILED: {len(report['errors'])} errors (on stderr)")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


# ---------------------------------------------------------------------------- the command line


def add_bench_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` verb to the ``tickertape`` parser's subparsers; run the parsed
    arguments with :func:`run_bench`."""
    bench: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="load-test a running server: publish and subscribe rates, latency",
        description="Load-test a running tickertape server: N publishers publish (each "
        "message durable before it counts) while M subscribers receive, each client in a "
        "process of its own. Prints the publish rate, the delivery rate and the "
        "publish-to-receive latency (each message carries its send time); every subscriber "
        "checks that it received every message, in order, with no gap. Progress goes to "
        "stderr, the table (or --json) to stdout.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--host", default=DEFAULT_HOST, help="server address (%(default)s)")
    bench.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")
    bench.add_argument("--user", default="", metavar="NAME", help="username (for every client)")
    bench.add_argument("--password", default="", help="password")
    bench.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS, checking the server's certificate (against --ca if given)",
    )
    bench.add_argument(
        "--ca", type=Path, metavar="FILE", help="with --tls, trust only the CAs in this PEM file"
    )
    bench.add_argument(
        "--publishers", type=int, default=1, metavar="N", help="publishers (%(default)s)"
    )
    bench.add_argument(
        "--subscribers", type=int, default=1, metavar="M", help="subscribers (%(default)s)"
    )
    bench.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        metavar="BYTES",
        help=f"message size, {HEADER.size} or more (%(default)s)",
    )
    amount = bench.add_mutually_exclusive_group()
    amount.add_argument(
        "--count",
        type=int,
        metavar="N",
        help=f"messages to publish, shared among the publishers ({DEFAULT_COUNT:,})",
    )
    amount.add_argument(
        "--duration", type=float, metavar="S", help="publish for S seconds instead of --count"
    )
    bench.add_argument(
        "--from",
        dest="seq",
        type=int,
        default=0,
        metavar="N",
        help="where subscribers start: 0, live, logged in before anyone publishes "
        "(%(default)s); 1, the session from its first message (replayed, then live), "
        "logged in as publishing starts",
    )
    bench.add_argument(
        "--rate",
        type=float,
        metavar="N",
        help="publish N messages a second in all, at a steady pace (default: as fast as "
        "the server takes them; latency is then mostly queueing)",
    )
    bench.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        metavar="N",
        help="messages per send_many call (%(default)s)",
    )
    bench.add_argument(
        "--processes",
        type=int,
        metavar="P",
        help="run the clients in at most P processes (default: one per client, "
        f"up to {MAX_PROCESSES})",
    )
    bench.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="give up when nothing moves for S seconds (%(default)s)",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(subparser=bench)
    return bench
