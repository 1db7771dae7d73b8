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

This module is what a plug-in sees and how one is loaded: :data:`END_SESSION`,
:class:`SourceContext`, :func:`load_source` and :func:`as_source`. Running one is
:func:`tickertape.sources.plugin_runner.run_source`; gathering what it makes into batches
is :class:`tickertape.sources.batcher.Batcher`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from tickertape.errors import ConfigError
from tickertape.server.engine import Engine
from tickertape.text import article

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
            f"{where}: that is {article(type(function).__name__)}, not a function: name an async "
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


# ---------------------------------------------------------------------------- context


class SourceRun(Protocol):
    """What a :class:`SourceContext` needs of the run of its source (the runner of
    :mod:`tickertape.sources.plugin_runner`)."""

    @property
    def source(self) -> Source: ...

    @property
    def stopped(self) -> bool:
        """Whether the source has stopped: it is told of no more sessions."""
        ...

    def end(self) -> asyncio.Future[str]:
        """End the active session after what the source made so far."""
        ...


class SourceContext:
    """What a source is handed: the active session, and a way to end it."""

    def __init__(self, engine: Engine, runner: SourceRun) -> None:
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
