"""Plug-in sources: a Python callable, named on the command line, that makes messages.

``tickertape serve --source python:MODULE:FUNCTION`` (or ``python:path/to/file.py:FUNCTION``;
``FUNCTION`` may be dotted, ``Class.method``) imports the callable and runs it from
start-up, publishing what it makes into the active session. A module is looked up in the
current directory first, then on the Python path. The callable gets a
:class:`SourceContext` and is one of two kinds, after the design notes' MessageGenerator
and MessageGeneratorTask:

- **an async generator** (``async def gen(ctx): ... yield ...``), which sets its own
  pace. It yields payloads (``bytes``, or a list of them) and may yield
  :data:`END_SESSION` to end the session: everything yielded before it is published in
  the ending session, the next session opens, and the generator resumes only then, so
  ``ctx.session_id`` already names the new session. When the generator *returns* (a
  finite input) the session it was publishing into is ended too, unless the last thing
  it yielded was ``END_SESSION``. A generator that raises ends nothing.

- **a function called at a rate** (``def make(ctx)``, or ``async def``), with
  ``--source-rate N``: called N times a second, it returns a payload, a list of them,
  ``None`` (nothing this time) or :data:`END_SESSION`; the calls go on in the next
  session. A plain function is called on a thread of its own (one at a time, in
  order), so one that blocks (reading a socket, a file, a lock) holds up only itself,
  never the server's heartbeats and clients: it then simply falls behind its rate.
  There it ends the session by returning :data:`END_SESSION` (``ctx.end_session()`` is
  for the event loop). An async function runs on the event loop and is awaited: it must
  not block.

What a source makes is gathered while the previous batch is being persisted, then
published with one :meth:`~tickertape.server.engine.Engine.publish_many` call (group
commit): a fast source is published in batches of thousands, a slow one message by
message. A source that is faster than the disk is held back, never dropped.

The source is told the active session (``ctx.session_id``, ``ctx.on_session(callback)``,
``await ctx.next_session()``) when it starts and at every roll, whoever rolls (the
schedule, the admin API, the source itself). A message made after a roll, or while one
is under way, lands in the new session.

A source that raises, or yields something that is not a payload, is logged with its
traceback and stopped; what it made before is published and the server keeps serving.

An end of session that fails (no room on the disk for the next session, or the day's
99th session already open) ends nothing: the session goes on, the log says why, and the
source is told. An async generator has the :class:`~tickertape.errors.StoreError`
raised at the ``yield END_SESSION`` (catch it to go on in the same session; if it is not
caught, the source stops, as any failing source does); the future
``ctx.end_session()`` returned raises it; a function called at a rate goes on being
called, in the same session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import inspect
import logging
import os
import queue
import re
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

from tickertape.errors import ConfigError, StoreError
from tickertape.server.engine import Engine
from tickertape.sources.persist import publish_until_persisted
from tickertape.text import plural
from tickertape.wire.soupbintcp import MAX_PAYLOAD

log = logging.getLogger(__name__)

PREFIX: Final = "python:"
SPEC_FORMS: Final = "python:MODULE:FUNCTION or python:FILE.py:FUNCTION"


class EndSession:
    """The type of :data:`END_SESSION`: there is one instance."""

    _instance: EndSession | None = None

    def __new__(cls) -> EndSession:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "END_SESSION"


END_SESSION: Final = EndSession()
"""Yield it (or return it, or put it in a returned list) to end the active session after
everything made before it; the next session opens."""


Kind = Literal["generator", "called"]


@dataclass(frozen=True, slots=True)
class Source:
    """A callable that makes messages, checked and ready to run."""

    name: str
    """How it is named in the log: the ``--source`` spec, or the callable's name."""
    function: Callable[[SourceContext], Any]
    kind: Kind
    """``generator``: an async generator, its own pace; ``called``: a function called
    ``rate`` times a second."""
    rate: float | None = None


# ---------------------------------------------------------------------------- loading


def load_source(spec: str, rate: float | None = None) -> Source:
    """Import the callable a ``--source`` spec names and check that it can be a source
    (see :func:`as_source`). Every problem is a :class:`ConfigError` saying what is
    wrong with the spec."""
    if not spec.startswith(PREFIX):
        kind = spec.partition(":")[0] if ":" in spec else spec
        raise ConfigError(f"--source {spec}: unknown source {kind!r}; expected {SPEC_FORMS}")
    target, sep, attribute = spec[len(PREFIX) :].rpartition(":")
    if not sep or not target or not attribute:
        raise ConfigError(f"--source {spec}: expected {SPEC_FORMS}")
    if not all(part.isidentifier() for part in attribute.split(".")):
        raise ConfigError(f"--source {spec}: {attribute!r} is not a Python name")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _import_file(spec, Path(target))
    else:
        module = _import_module(spec, target)
    function: Any = module
    for depth, part in enumerate(attribute.split(".")):
        try:
            function = getattr(function, part)
        except AttributeError:
            where = f"module {module.__name__!r}" if depth == 0 else repr(attribute.split(".")[0])
            found = _callables(module) if depth == 0 else []
            hint = f" (it defines {', '.join(found)})" if found else ""
            raise ConfigError(f"--source {spec}: {where} has no attribute {part!r}{hint}") from None
    return as_source(function, rate, name=spec)


def as_source(function: Any, rate: float | None = None, *, name: str | None = None) -> Source:
    """Check that ``function`` can be a source: an async generator function taking the
    :class:`SourceContext` (then no ``rate``), or a function taking it, called ``rate``
    times a second. Raises :class:`ConfigError` if not."""
    name = name or getattr(function, "__qualname__", None) or repr(function)
    where = f"--source {name}" if name.startswith(PREFIX) else f"source {name}"
    if not callable(function):
        raise ConfigError(
            f"{where}: that is {_a(type(function).__name__)}, not a function: name an async "
            "generator function, or a function to call at --source-rate"
        )
    if rate is not None and not rate > 0:
        raise ConfigError(f"{where}: --source-rate {rate} is not a positive number")
    if inspect.isgeneratorfunction(function):
        raise ConfigError(
            f"{where}: that is a generator (def with yield); make it an async generator "
            "(async def with yield), or a function that returns one message a call, called "
            "--source-rate times a second"
        )
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        raise ConfigError(
            f"{where}: it must take one argument, the SourceContext "
            f"(its signature is {inspect.signature(function)})"
        ) from None
    except ValueError:
        pass  # no signature to check (some builtins): find out when it is called
    if inspect.isasyncgenfunction(function):
        if rate is not None:
            raise ConfigError(
                f"{where}: an async generator sets its own pace, so --source-rate does not "
                "apply; drop --source-rate, or make it a function that returns a message a call"
            )
        return Source(name, function, "generator")
    if rate is None:
        raise ConfigError(
            f"{where}: that is a function, not an async generator: give --source-rate N to "
            "have it called N times a second, or make it an async generator (async def "
            "with yield)"
        )
    return Source(name, function, "called", rate)


def _import_module(spec: str, name: str) -> Any:
    if not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"--source {spec}: {name!r} is not a module name nor a .py file")
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)  # as `python -m` does: a module in the current directory
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(
                f"--source {spec}: no module named {exc.name!r} (looked in the current "
                "directory and on the Python path)"
            ) from None
        raise ConfigError(f"--source {spec}: importing {name} failed: {exc}") from None
    except Exception as exc:
        raise ConfigError(
            f"--source {spec}: importing {name} failed: {type(exc).__name__}: {exc}"
        ) from None


def _import_file(spec: str, path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"--source {spec}: no file {path}")
    name = "tickertape_source_" + re.sub(r"\W", "_", path.stem)
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"--source {spec}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(
            f"--source {spec}: importing {path} failed: {type(exc).__name__}: {exc}"
        ) from None
    return module


def _callables(module: Any) -> list[str]:
    """The public callables defined in ``module`` itself, to suggest."""
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", None) == module.__name__
    )


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


# ---------------------------------------------------------------------------- context


class SourceContext:
    """What a source is handed: the active session, and a way to end it."""

    def __init__(self, engine: Engine, runner: _Runner) -> None:
        self._engine = engine
        self._runner = runner
        self._callbacks: list[Callable[[str], object]] = []
        self._waiters: list[asyncio.Future[str]] = []
        self._loop = asyncio.get_running_loop()
        engine.on_roll(self._rolled)

    @property
    def session_id(self) -> str:
        """The active session's id (``YYYYMMDDNN``): where a message made now lands."""
        return self._engine.session_id

    @property
    def rate(self) -> float | None:
        """Calls a second (``--source-rate``) for a called source, else None."""
        return self._runner.source.rate

    def on_session(self, callback: Callable[[str], object]) -> None:
        """Call ``callback(session_id)`` now, with the active session, and with the new
        session's id after every roll. It runs on the event loop: keep it short. An
        exception it raises is logged."""
        self._callbacks.append(callback)
        self._call(callback, self.session_id)

    async def next_session(self) -> str:
        """Wait for the next roll; the new session's id."""
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def end_session(self) -> asyncio.Future[str]:
        """End the active session after everything this source made so far (what it
        makes from now on goes into the next session). Returns a future of the next
        session's id, which may be awaited or ignored; from a plain function, returning
        :data:`END_SESSION` does the same (and is the only way from a plain function,
        which runs on a thread of its own). If the end fails, the future raises the
        :class:`~tickertape.errors.StoreError` saying why, and the session goes on."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if not on_loop:
            raise RuntimeError(
                "ctx.end_session() is called on the event loop only: a plain function, "
                "which runs on a thread of its own, returns END_SESSION instead"
            )
        return self._runner.end()

    def _rolled(self, ended: str, ended_log: object, following: str) -> None:
        if self._runner.stopped:
            return
        for callback in self._callbacks:
            self._call(callback, following)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(following)

    def _call(self, callback: Callable[[str], object], session: str) -> None:
        try:
            callback(session)
        except Exception:
            log.exception("source %s: its session callback failed", self._runner.source.name)


# ---------------------------------------------------------------------------- running


def _new_done() -> asyncio.Future[str]:
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    # A failed end that nobody awaits is not "never retrieved": the log said why.
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    return done


@dataclass(slots=True)
class _Ending:
    """An end of session in a source's output, and who waits for it."""

    done: asyncio.Future[str] = field(default_factory=_new_done)


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
    """A producer (the source, driven by its kind) fills a buffer; a consumer publishes
    whatever the buffer holds with one call while the producer fills it again."""

    def __init__(self, engine: Engine, source: Source) -> None:
        self.engine = engine
        self.source = source
        self.buffer: list[bytes | _Ending] = []
        self.buffered_bytes = 0
        self.endings = 0
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.finished = False
        self.stopped = False
        self.failure: Exception | None = None
        self.in_hand: list[bytes | _Ending] = []
        self.published = 0
        self.context = SourceContext(engine, self)

    # -------------------------------------------------------------- the producer's side

    @property
    def full(self) -> bool:
        return (
            len(self.buffer) >= self.engine.config.max_batch_messages
            or self.buffered_bytes >= self.engine.config.max_batch_bytes
        )

    def put(self, item: object) -> _Ending | None:
        """Add what the source made to the buffer; the ending in it, if any."""
        if type(item) is bytes:
            self._payload(item)
            return None
        if item is END_SESSION:
            return self.end_marker()
        if isinstance(item, list | tuple):
            ending = None
            for part in item:
                if part is END_SESSION:
                    ending = self.end_marker()
                else:
                    self._payload(_as_bytes(part))
            return ending
        if item is None and self.source.kind == "called":
            return None
        self._payload(_as_bytes(item))
        return None

    def _payload(self, payload: bytes) -> None:
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(
                f"a message of {len(payload)} bytes: SoupBinTCP carries at most "
                f"{MAX_PAYLOAD} bytes a message"
            )
        self.buffer.append(payload)
        self.buffered_bytes += len(payload)
        self.ready.set()

    def end_marker(self) -> _Ending:
        ending = _Ending()
        self.buffer.append(ending)
        self.endings += 1
        self.ready.set()
        return ending

    def end(self) -> asyncio.Future[str]:
        if self.stopped:
            log.warning("source %s has stopped: its end_session() is ignored", self.source.name)
            ignored: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            ignored.cancel()
            return ignored
        return self.end_marker().done

    async def wait_for_room(self) -> None:
        while self.full:
            self.room.clear()
            await self.room.wait()

    async def _produce(self) -> None:
        try:
            if self.source.kind == "generator":
                await self._iterate()
            else:
                await self._call_at_rate()
        except Exception as exc:
            self.failure = exc
        finally:
            self.finished = True
            self.ready.set()

    async def _iterate(self) -> None:
        made = self.source.function(self.context)
        if not isinstance(made, AsyncIterator):
            raise TypeError(f"it returned {_a(type(made).__name__)}, not an async iterator")
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
                        await ending.done
                    except StoreError as exc:
                        failed = exc
                elif self.full:
                    await self.wait_for_room()
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
            with contextlib.suppress(StoreError):  # the consumer said why
                await ending.done
            return True
        if self.full:
            await self.wait_for_room()
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
            ended_last = await self._consume()
        except BaseException:
            self._cancel_endings()
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
                plural(self.published, "message"),
                type(self.failure).__name__,
                self.failure,
                exc_info=self.failure,
            )
            return
        if ended_last:
            log.info("source %s finished after %s", source.name, plural(self.published, "message"))
            return
        ending = self.engine.session_id
        log.info(
            "source %s finished after %s: its input is over, ending session %s",
            source.name,
            plural(self.published, "message"),
            ending,
        )
        with contextlib.suppress(StoreError):  # the engine logged why; nothing more to tell
            await self.engine.end_session()

    async def _consume(self) -> bool:
        """Publish until the producer has finished and everything it made is published;
        whether the last thing it made was an end of session."""
        ended_last = False
        while True:
            if not self.buffer:
                if self.finished:
                    return ended_last
                self.ready.clear()
                await self.ready.wait()
                continue
            taken, self.buffer = self.buffer, []
            self.in_hand = taken
            endings, self.endings = self.endings, 0
            self.buffered_bytes = 0
            self.room.set()
            if not endings:
                await self._publish(cast("list[bytes]", taken))  # no ending: only bytes
                ended_last = False
                continue
            payloads: list[bytes] = []
            for entry in taken:
                if isinstance(entry, bytes):
                    payloads.append(entry)
                    continue
                if payloads:
                    await self._publish(payloads)
                    payloads = []
                ending = self.engine.session_id
                try:
                    following = await self.engine.end_session()
                except StoreError as exc:
                    log.error(
                        "source %s: ending session %s failed, so it goes on (the source is "
                        "told): %s",
                        self.source.name,
                        ending,
                        exc,
                    )
                    if not entry.done.done():
                        entry.done.set_exception(exc)
                else:
                    if not entry.done.done():
                        entry.done.set_result(following)
                ended_last = True
            if payloads:
                await self._publish(payloads)
                ended_last = False

    async def _publish(self, payloads: list[bytes]) -> None:
        await publish_until_persisted(self.engine, payloads, f"source {self.source.name}")
        self.published += len(payloads)

    def _cancel_endings(self) -> None:
        for entry in (*self.in_hand, *self.buffer):
            if isinstance(entry, _Ending):
                entry.done.cancel()


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
    what = _a(type(item).__name__)
    hint = ": encode it (a message is bytes)" if isinstance(item, str) else ""
    raise TypeError(f"it made {what}{hint}; a source makes bytes, a list of bytes, or END_SESSION")
