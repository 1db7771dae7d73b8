"""Plug-in sources for the tests: each is what a user would name with ``--source``.

Counts come from the environment (``EXAMPLE_COUNT``, default 5), so that a test can run
them through ``tickertape serve`` unchanged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from tickertape.errors import StoreError
from tickertape.sources.plugin import END_SESSION, EndSession, SourceContext

COUNT = int(os.environ.get("EXAMPLE_COUNT", "5"))

seen_sessions: list[str] = []
"""What :func:`tagged` was told, in order."""


async def count_then_end(ctx: SourceContext) -> AsyncIterator[bytes | EndSession]:
    """COUNT messages tagged with their session, END_SESSION, then one more message in
    the next session; then it waits for ever."""
    for n in range(1, COUNT + 1):
        yield f"{ctx.session_id} {n}".encode()
    yield END_SESSION
    yield f"{ctx.session_id} after".encode()
    await asyncio.Event().wait()


async def finite(ctx: SourceContext) -> AsyncIterator[bytes]:
    """COUNT messages, then the input is over."""
    for n in range(1, COUNT + 1):
        yield b"finite %d" % n


async def many(ctx: SourceContext) -> AsyncIterator[bytes | list[bytes]]:
    """COUNT messages as fast as they can be made, some in lists, then over."""
    n = 0
    while n < COUNT:
        if n % 3 == 0 and n + 2 <= COUNT:
            yield [b"m %d" % (n + 1), b"m %d" % (n + 2)]
            n += 2
        else:
            n += 1
            yield b"m %d" % n


_calls = 0


def ticker(ctx: SourceContext) -> bytes | EndSession:
    """Called at a rate: a message a call; every COUNT + 1th call ends the session."""
    global _calls
    _calls += 1
    if _calls % (COUNT + 1) == 0:
        return END_SESSION
    return f"{ctx.session_id} tick {_calls}".encode()


async def async_ticker(ctx: SourceContext) -> list[bytes] | None:
    """Called at a rate, async: two messages every other call, nothing in between."""
    await asyncio.sleep(0)
    global _calls
    _calls += 1
    if _calls % 2:
        return None
    return [b"pair %d a" % _calls, b"pair %d b" % _calls]


async def broken(ctx: SourceContext) -> AsyncIterator[bytes]:
    """Three messages, then an exception."""
    for n in range(1, 4):
        yield b"broken %d" % n
    raise RuntimeError("the example source broke")


async def wrong_type(ctx: SourceContext) -> AsyncIterator[object]:
    """A message, then a str where bytes belong."""
    yield b"fine"
    yield "not bytes"


async def tagged(ctx: SourceContext) -> AsyncIterator[bytes]:
    """Records each session it is told about; ends the session through the context."""
    ctx.on_session(seen_sessions.append)
    yield b"one"
    following = await ctx.end_session()
    assert following == ctx.session_id
    yield f"two in {following}".encode()
    yield f"three in {await ctx.next_session()}".encode()


def plain(ctx: SourceContext) -> bytes:
    """A plain function: a source only with --source-rate."""
    return b"plain"


def sync_generator(ctx: SourceContext) -> Iterator[bytes]:
    """A (not async) generator: not a source."""
    yield b"no"


async def no_argument() -> AsyncIterator[bytes]:
    """Takes no context: not a source."""
    yield b"no"


NOT_CALLABLE = 42


async def end_in_a_loop(ctx: SourceContext) -> AsyncIterator[bytes | EndSession]:
    """A message and END_SESSION, again and again: past the day's last session (99)."""
    while True:
        yield f"{ctx.session_id} one".encode()
        yield END_SESSION


async def end_when_triggered(ctx: SourceContext) -> AsyncIterator[bytes | EndSession]:
    """Ends the session each time the file EXAMPLE_TRIGGER appears (and removes it); a
    roll that fails is caught, and said in a message in the session that goes on."""
    trigger = os.environ["EXAMPLE_TRIGGER"]
    while True:
        while not os.path.exists(trigger):  # noqa: ASYNC240 (a test's trigger)
            await asyncio.sleep(0.02)
        os.unlink(trigger)
        try:
            yield END_SESSION
        except StoreError as exc:
            yield f"not ended: {exc}".encode()
        else:
            yield f"{ctx.session_id} opened".encode()


def stuck_first_call(ctx: SourceContext) -> bytes:
    """Called at a rate: the first call blocks (writes EXAMPLE_TRIGGER.blocked, then
    waits until EXAMPLE_TRIGGER exists, at most 60 s); every call returns a message."""
    global _calls
    _calls += 1
    if _calls == 1:
        trigger = Path(os.environ["EXAMPLE_TRIGGER"])
        trigger.with_suffix(".blocked").touch()
        deadline = time.monotonic() + 60
        while not trigger.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # a plain function that blocks, as some will
    return b"call %d" % _calls
