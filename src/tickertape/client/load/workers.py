"""The load test's worker processes, and what the calling process hears from them.

Each worker runs its share of the clients (:mod:`tickertape.client.load.clients`) in an
event loop of its own and reports over a pipe: ready, progress, each client's result or
failure. The calling process starts them (:func:`start_workers`), waits until they are
ready (:func:`wait_ready`), says go, reads them into a :class:`Run` (:func:`gather`) and
stops them (:func:`stop_workers`). :func:`probe` logs in once first, so that an
unreachable server is one clear error.

Not here: the report (:mod:`tickertape.client.load.report`), printing and options
(``tickertape.cli.bench``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
import ssl
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Final

from tickertape.client.load.clients import BenchError, LoadPublisher, LoadSubscriber, Plan, Target
from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import TLSRefused, active_session
from tickertape.errors import ConfigError, LoginRejected, ProtocolError

PROGRESS_EVERY: Final = 0.2
"""Seconds between a worker's progress reports (and the terminal's progress redraws)."""


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
    publishers = [LoadPublisher(plan, index) for index in job.publishers]
    subscribers = [LoadSubscriber(plan, index) for index in job.subscribers]
    live = plan.seq == 0  # live subscribers log in before anyone publishes

    def failed(kind: str, index: int, exc: BaseException) -> None:
        control.send("failed", kind, index, failure_reason(exc, plan.target))

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
        clients: list[LoadPublisher | LoadSubscriber] = [*publishers, *subscribers]
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


async def _start(
    subscribers: Sequence[LoadSubscriber],
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


def failure_reason(exc: BaseException, target: Target) -> str:
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


async def probe(plan: Plan, within: float) -> str:
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
        reason = failure_reason(exc, target)
        if type(exc) is ConnectionError and not target.tls and "TLS" not in reason:
            reason += " (if it serves TLS, give --tls)"
        raise BenchError(reason) from None
    return session


@dataclass
class Run:
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


@dataclass(frozen=True, slots=True)
class Worker:
    process: BaseProcess
    conn: Connection
    clients: tuple[tuple[str, int], ...]


def start_workers(plan: Plan, processes: int, timeout: float) -> list[Worker]:
    clients = [("publisher", i) for i in range(plan.publishers)] + [
        ("subscriber", i) for i in range(plan.subscribers)
    ]
    # Forked (no thread is running here, and no event loop): a worker starts at once,
    # with what this process has imported; spawned where fork is not offered.
    forking = "fork" in mp.get_all_start_methods()
    context = mp.get_context("fork") if forking else mp.get_context("spawn")
    workers: list[Worker] = []
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
        workers.append(Worker(process, ours, tuple(share)))
    return workers


def stop_workers(workers: Sequence[Worker]) -> None:
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


def wait_ready(run: Run, workers: Sequence[Worker], timeout: float) -> None:
    """Read the workers' messages until each is ready (its clients connected, live
    subscribers logged in) or one failed, for at most ``timeout`` seconds and 30 more for
    the processes to start; a failure goes to ``run.failures``."""
    ready = 0
    open_conns = [worker.conn for worker in workers]
    deadline = time.monotonic() + timeout + 30  # process start-up included
    while ready < len(workers) and not run.failures:
        if time.monotonic() > deadline:
            run.failures.append(f"the clients were not ready within {timeout:g} s")
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


def go(
    run: Run,
    workers: Sequence[Worker],
    timeout: float,
    on_progress: Callable[[Run], None] | None = None,
) -> None:
    """Tell every (ready) worker to start, then :func:`gather` until every client has
    its result, one failed, or nothing moved for ``timeout`` seconds."""
    for worker in workers:
        worker.conn.send("go")
    clients = run.plan.publishers + run.plan.subscribers
    gather(
        run,
        workers,
        lambda run: len(run.results) == clients,
        timeout,
        on_progress,
        "stalled",
    )


def gather(
    run: Run,
    workers: Sequence[Worker],
    until: Callable[[Run], bool],
    timeout: float,
    on_progress: Callable[[Run], None] | None,
    what: str,
) -> None:
    """Read the workers' messages until ``until(run)``, a failure, or ``timeout`` seconds
    with no progress; a stall or a worker that died is a failure. ``on_progress(run)``
    after each read (at least every :data:`PROGRESS_EVERY` seconds)."""
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
        if on_progress is not None:
            on_progress(run)


def _stalled(run: Run) -> str:
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
