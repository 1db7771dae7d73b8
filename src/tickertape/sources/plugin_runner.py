"""Runs a plug-in source into the engine: the design's MessageGenerator (an async
generator, its own pace) and MessageGeneratorTask (a function called at a rate).

:func:`run_source` drives a loaded :class:`~tickertape.sources.plugin.Source` and hands
what it makes to a :class:`~tickertape.sources.batcher.Batcher`, which publishes it in
batches while the source makes the next. An async generator is iterated on the event
loop; after it yields ``END_SESSION`` it resumes only once the next session is open. A
function called at a rate is called as often as its rate says, catching up in bursts of
at most a batch: a plain function on a thread of its own (one call at a time, in order;
a daemon, so a call that never returns does not hold up the process's exit), an
``async def`` on the event loop. A source that raises, or makes something that is not a
payload, is logged with its traceback and stopped; what it made before is published.

Loading a source and what a source sees (:class:`~tickertape.sources.plugin.SourceContext`)
are :mod:`tickertape.sources.plugin`'s; batching and publishing are the batcher's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar, cast

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.sources.batcher import Batcher
from tickertape.sources.plugin import END_SESSION, Source, SourceContext
from tickertape.text import article, plural

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _Worker:
    """A thread of its own on which a source's plain function is called, so that a call
    that blocks holds up only the source. A daemon: a call that never returns does not
    hold up the process's exit."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def call(self, work: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def settle(result: _T | None, error: BaseException | None) -> None:
            if future.done():
                return  # the caller was cancelled
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(cast("_T", result))

        def job() -> None:
            try:
                result = work()
            except BaseException as exc:  # handed to the caller, on the event loop
                outcome: tuple[_T | None, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            with contextlib.suppress(RuntimeError):  # the event loop has closed
                loop.call_soon_threadsafe(settle, *outcome)

        self._jobs.put(job)
        return await future

    def close(self) -> None:
        self._jobs.put(None)


async def run_source(engine: Engine, source: Source) -> None:
    """Run ``source`` into ``engine``'s active session until it finishes (an async
    generator that returns: the session is ended), fails (logged; it is stopped), or
    this is cancelled. Raises only what publishing raises (the engine stopped)."""
    await _Runner(engine, source).run()


class _Runner:
    """A producer (the source, driven by its kind) fills the batcher; the batcher
    publishes what it holds with one call while the producer fills it again."""

    def __init__(self, engine: Engine, source: Source) -> None:
        self.engine = engine
        self.source = source
        self.batcher = Batcher(engine, f"source {source.name}")
        self.stopped = False
        self.failure: Exception | None = None
        self.context = SourceContext(engine, self)

    # -------------------------------------------------------------- the producer's side

    def put(self, item: object) -> asyncio.Future[str] | None:
        """Hand what the source made to the batcher; the future of the end of session
        in it, if any."""
        batcher = self.batcher
        if type(item) is bytes:
            batcher.add(item)
            return None
        if item is END_SESSION:
            return batcher.end_session()
        if isinstance(item, list | tuple):
            ending = None
            for part in item:
                if part is END_SESSION:
                    ending = batcher.end_session()
                else:
                    batcher.add(_as_bytes(part))
            return ending
        if item is None and self.source.kind == "called":
            return None
        batcher.add(_as_bytes(item))
        return None

    def end(self) -> asyncio.Future[str]:
        if self.stopped:
            log.warning("source %s has stopped: its end_session() is ignored", self.source.name)
            ignored: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            ignored.cancel()
            return ignored
        return self.batcher.end_session()

    async def _produce(self) -> None:
        try:
            if self.source.kind == "generator":
                await self._iterate()
            else:
                await self._call_at_rate()
        except Exception as exc:
            self.failure = exc
        finally:
            self.batcher.finish()

    async def _iterate(self) -> None:
        made = self.source.function(self.context)
        if not isinstance(made, AsyncIterator):
            raise TypeError(f"it returned {article(type(made).__name__)}, not an async iterator")
        failed: StoreError | None = None
        try:
            while True:
                try:
                    if failed is None:
                        item = await anext(made)
                    else:
                        # The end of session failed: raised at the generator's yield.
                        thrower = getattr(made, "athrow", None)
                        if thrower is None:
                            raise failed
                        item = await thrower(failed)
                        failed = None
                except StopAsyncIteration:
                    break
                ending = self.put(item)
                if ending is not None:
                    # Resume the generator in the next session: what it makes from
                    # here on is tagged with, and lands in, the new session.
                    try:
                        await ending
                    except StoreError as exc:
                        failed = exc
                elif self.batcher.full:
                    await self.batcher.wait_for_room()
        finally:
            aclose = getattr(made, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("source %s: closing it failed", self.source.name)

    async def _call_at_rate(self) -> None:
        assert self.source.rate is not None
        rate = self.source.rate
        function = self.source.function
        context = self.context
        loop = asyncio.get_running_loop()
        worker = None if _is_async(function) else _Worker(f"source {self.source.name}")
        started = loop.time()
        calls = 0
        try:
            while True:
                due = int((loop.time() - started) * rate) - calls
                if due <= 0:
                    await asyncio.sleep(max((calls + 1) / rate - (loop.time() - started), 0.0))
                    continue
                count = min(due, self.engine.config.max_batch_messages)
                failure: Exception | None = None
                if worker is None:  # an async function: called and awaited one by one
                    for _ in range(count):
                        made = function(context)
                        if inspect.isawaitable(made):
                            made = await made
                        calls += 1
                        if await self._take(made):
                            started, calls = loop.time(), 0  # no burst for the roll's time
                            break
                else:
                    results, failure = await worker.call(
                        functools.partial(_call_many, function, context, count)
                    )
                    calls += len(results)
                    for result in results:
                        made = await result if inspect.isawaitable(result) else result
                        if await self._take(made):
                            started, calls = loop.time(), 0  # no burst for the roll's time
                if failure is not None:
                    raise failure
        finally:
            if worker is not None:
                worker.close()

    async def _take(self, made: object) -> bool:
        """Buffer what a called function made; whether it ended the session (then the
        end has been tried: the calls go on in the next session, or, if it failed, the
        same one)."""
        ending = self.put(made)
        if ending is not None:
            with contextlib.suppress(StoreError):  # the batcher said why
                await ending
            return True
        if self.batcher.full:
            await self.batcher.wait_for_room()
        return False

    # -------------------------------------------------------------- the consumer's side

    async def run(self) -> None:
        source = self.source
        if source.kind == "generator":
            log.info("source %s: an async generator, publishing as it yields", source.name)
        else:
            log.info("source %s: called %g times a second", source.name, source.rate)
        producer = asyncio.create_task(self._produce(), name=f"source {source.name}")
        try:
            ended_last = await self.batcher.run()
        except BaseException:
            self.batcher.cancel_endings()
            raise
        finally:
            self.stopped = True
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        if self.failure is not None:
            log.error(
                "source %s failed after %s, and is stopped (the server keeps serving): %s: %s",
                source.name,
                plural(self.batcher.published, "message"),
                type(self.failure).__name__,
                self.failure,
                exc_info=self.failure,
            )
            return
        if ended_last:
            log.info(
                "source %s finished after %s",
                source.name,
                plural(self.batcher.published, "message"),
            )
            return
        ending = self.engine.session_id
        log.info(
            "source %s finished after %s: its input is over, ending session %s",
            source.name,
            plural(self.batcher.published, "message"),
            ending,
        )
        with contextlib.suppress(StoreError):  # the engine logged why; nothing more to tell
            await self.engine.end_session()


def _is_async(function: Callable[..., object]) -> bool:
    """Whether calling ``function`` makes a coroutine (it runs on the event loop)."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 (an object with an async __call__)
    )


def _ends(made: object) -> bool:
    """Whether what a called function returned ends the session."""
    if made is END_SESSION:
        return True
    return isinstance(made, list | tuple) and any(part is END_SESSION for part in made)


def _call_many(
    function: Callable[[SourceContext], object], context: SourceContext, count: int
) -> tuple[list[object], Exception | None]:
    """Up to ``count`` calls of a plain function, on its worker thread: what they made,
    up to the first that ends the session; and the exception a call raised, if one did
    (what was made before it is still published)."""
    made: list[object] = []
    try:
        for _ in range(count):
            made.append(function(context))
            if _ends(made[-1]):
                break
    except Exception as exc:
        return made, exc
    return made, None


def _as_bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    what = article(type(item).__name__)
    hint = ": encode it (a message is bytes)" if isinstance(item, str) else ""
    raise TypeError(f"it made {what}{hint}; a source makes bytes, a list of bytes, or END_SESSION")


__all__ = ["run_source"]
