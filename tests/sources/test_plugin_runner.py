"""Plug-in sources run into the engine: async generators, functions called at a rate, the
ends of session they ask for (and those that fail), sources that fail, and ``tickertape
serve --source`` as a user runs it."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from tickertape.client.soupbintcp import Message, subscribe
from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.sources.plugin import (
    END_SESSION,
    EndSession,
    Source,
    SourceContext,
    as_source,
    load_source,
)
from tickertape.sources.plugin_runner import run_source
from tickertape.text import plural

from support import ServerProcess, running_server

EXAMPLES = Path(__file__).with_name("example_sources.py")
TIMEOUT = 20.0


def spec(function: str) -> str:
    return f"python:{EXAMPLES}:{function}"


def run(tmp_path: Path, scenario: Callable[[Engine, SoupBinTCPServer], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            await scenario(engine, server)

    asyncio.run(asyncio.wait_for(main(), 60))


async def whole_session(port: int, session: str = "", seq: int = 1) -> list[Message]:
    """Every message from ``seq`` up to End of Session (a dropped connection fails)."""

    async def read() -> list[Message]:
        async with subscribe("127.0.0.1", port, session, seq, reconnect=False) as messages:
            return [message async for message in messages]

    return await asyncio.wait_for(read(), TIMEOUT)


async def until(condition: Callable[[], bool]) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), TIMEOUT)


def payloads(messages: Sequence[Message]) -> list[bytes]:
    return [message.payload for message in messages]


def next_id(session: str, rolls: int = 1) -> str:
    return session[:-2] + f"{int(session[-2:]) + rolls:02d}"


def example(source: Source, name: str) -> object:
    """A module-level variable of the example module a source was loaded from."""
    return getattr(inspect.getmodule(source.function), name)


# ---------------------------------------------------------------------------- async generators


def test_end_session_from_a_generator_ends_it_and_the_rest_goes_to_the_next(
    tmp_path: Path,
) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        live = asyncio.ensure_future(whole_session(server.port))
        await until(lambda: engine.stream.live_count == 1)
        task = asyncio.create_task(run_source(engine, load_source(spec("count_then_end"))))
        got = await live  # the five messages, then End of Session
        assert payloads(got) == [f"{first} {n}".encode() for n in range(1, 6)]
        assert {m.session for m in got} == {first}
        second = next_id(first)
        await until(lambda: engine.session_id == second and engine.next_seq == 2)
        async with subscribe("127.0.0.1", server.port, seq=1) as messages:
            async for message in messages:
                assert (message.session, message.payload) == (second, f"{second} after".encode())
                break
        assert not task.done()  # the generator waits for more
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.session_id == second  # cancelling ends nothing

    run(tmp_path, scenario)


def test_a_finite_generator_ends_its_session_when_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        await run_source(engine, load_source(spec("finite")))
        assert engine.session_id == next_id(first)
        got = await whole_session(server.port, first)
        assert payloads(got) == [b"finite %d" % n for n in range(1, 8)]

    monkeypatch.setenv("EXAMPLE_COUNT", "7")
    run(tmp_path, scenario)


def test_a_generator_that_ends_its_session_last_ends_only_that_one(tmp_path: Path) -> None:
    async def gen(ctx: SourceContext) -> AsyncIterator[bytes | EndSession]:
        yield b"only"
        yield END_SESSION

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        await run_source(engine, as_source(gen))
        assert engine.session_id == next_id(first)
        assert engine.next_seq == 1

    run(tmp_path, scenario)


def test_a_fast_generator_is_published_in_large_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = 100_000
    calls: list[int] = []

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        publish_many = engine.publish_many

        async def counting(messages: Sequence[bytes]) -> int:
            calls.append(len(messages))
            return await publish_many(messages)

        monkeypatch.setattr(engine, "publish_many", counting)
        first = engine.session_id
        await run_source(engine, load_source(spec("many")))
        got = await whole_session(server.port, first)
        assert payloads(got) == [b"m %d" % n for n in range(1, count + 1)]

    monkeypatch.setenv("EXAMPLE_COUNT", str(count))
    run(tmp_path, scenario)
    assert sum(calls) == count
    assert len(calls) < 50, calls


def test_a_generator_learns_each_session_and_may_end_one_through_its_context(
    tmp_path: Path,
) -> None:
    source = load_source(spec("tagged"))

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        second, third = next_id(first), next_id(first, 2)
        task = asyncio.create_task(run_source(engine, source))
        await until(lambda: engine.session_id == second and engine.next_seq == 2)
        assert await engine.roll() == third  # a roll from elsewhere: the source is told
        await task  # "three", then its input is over: the third session ends too
        assert engine.session_id == next_id(first, 3)
        assert payloads(await whole_session(server.port, first)) == [b"one"]
        assert payloads(await whole_session(server.port, second)) == [f"two in {second}".encode()]
        assert payloads(await whole_session(server.port, third)) == [f"three in {third}".encode()]
        assert example(source, "seen_sessions") == [first, second, third]

    run(tmp_path, scenario)


def test_cancelling_a_source_closes_its_generator(tmp_path: Path) -> None:
    closed = asyncio.Event()

    async def gen(ctx: SourceContext) -> AsyncIterator[bytes]:
        try:
            yield b"x"
            await asyncio.Event().wait()
        finally:
            closed.set()

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        task = asyncio.create_task(run_source(engine, as_source(gen)))
        await until(lambda: engine.next_seq == 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed.is_set()

    run(tmp_path, scenario)


# ---------------------------------------------------------------------------- called at a rate


def test_a_function_is_called_at_its_rate_and_may_end_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        second, third = next_id(first), next_id(first, 2)
        task = asyncio.create_task(run_source(engine, load_source(spec("ticker"), 200)))
        await until(lambda: engine.session_id == third)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # calls 1..5 are messages, call 6 ends the session, 7..11 messages, 12 ends it
        got = await whole_session(server.port, first)
        assert payloads(got) == [f"{first} tick {n}".encode() for n in range(1, 6)]
        got = await whole_session(server.port, second)
        assert payloads(got) == [f"{second} tick {n}".encode() for n in range(7, 12)]

    monkeypatch.setenv("EXAMPLE_COUNT", "5")
    run(tmp_path, scenario)


def test_the_rate_is_kept_and_an_async_function_may_return_lists_or_nothing(
    tmp_path: Path,
) -> None:
    rate = 400.0

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(run_source(engine, load_source(spec("async_ticker"), rate)))
        started = loop.time()
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = loop.time() - started
        published = engine.next_seq - 1
        assert published % 2 == 0
        calls = published  # one call in two returns two messages
        assert rate * elapsed * 0.5 <= calls <= rate * elapsed + 2
        got = await first_messages(server.port, published)
        pairs = [got[i : i + 2] for i in range(0, published, 2)]
        assert all(re.fullmatch(rb"pair (\d+) a", a) for a, _ in pairs)
        assert all(b == a[:-1] + b"b" for a, b in pairs)

    run(tmp_path, scenario)


async def first_messages(port: int, count: int) -> list[bytes]:
    async def read() -> list[bytes]:
        got: list[bytes] = []
        async with subscribe("127.0.0.1", port, seq=1) as messages:
            async for message in messages:
                got.append(message.payload)
                if len(got) == count:
                    break
        return got

    return await asyncio.wait_for(read(), TIMEOUT)


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("name", "published", "error"),
    [
        ("broken", 3, "RuntimeError: the example source broke"),
        ("wrong_type", 1, "TypeError: it made a str: encode it (a message is bytes)"),
    ],
)
def test_a_source_that_fails_is_logged_and_stopped_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, published: int, error: str
) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        await run_source(engine, load_source(spec(name)))  # returns: nothing raised here
        assert engine.session_id == first  # a failure ends nothing
        assert engine.next_seq == published + 1
        assert await engine.publish(b"later") == published + 1
        got = await first_messages(server.port, published + 1)
        assert got[-1] == b"later"

    with caplog.at_level(logging.INFO, logger="tickertape"):
        run(tmp_path, scenario)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert (
        f"failed after {plural(published, 'message')}, and is stopped" in failures[0].getMessage()
    )
    assert error in failures[0].getMessage()
    assert failures[0].exc_info is not None  # with its traceback


def test_a_message_too_long_for_soupbintcp_fails_the_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def gen(ctx: SourceContext) -> AsyncIterator[bytes]:
        yield b"x" * 70_000

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        await run_source(engine, as_source(gen))
        assert engine.next_seq == 1

    run(tmp_path, scenario)
    assert "SoupBinTCP carries at most" in caplog.text


# ---------------------------------------------------------------------------- the command


def test_serve_runs_a_source_that_ends_its_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXAMPLE_COUNT", "4")
    with ServerProcess(tmp_path, "--source", spec("count_then_end")) as server:
        line = server.wait_for_log("ended after 4 messages")
        ended = re.search(r"session (\d{10}) ended", line)
        assert ended is not None
        first = ended.group(1)
        second = next_id(first)
        pulled = asyncio.run(whole_session(server.port, first))
        assert payloads(pulled) == [f"{first} {n}".encode() for n in range(1, 5)]
        live = asyncio.run(first_messages(server.port, 1))
        assert live == [f"{second} after".encode()]
        assert server.stop() == 0


def test_serve_keeps_serving_when_its_source_fails(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--source", spec("broken")) as server:
        line = server.wait_for_log("failed after 3 messages")
        assert "RuntimeError: the example source broke" in line
        server.wait_for_log("Traceback")
        got = asyncio.run(first_messages(server.port, 3))
        assert got == [b"broken 1", b"broken 2", b"broken 3"]
        assert server.stop() == 0


def test_serve_calls_a_function_at_its_rate(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--source", spec("ticker"), "--source-rate", "100") as server:
        got = asyncio.run(first_messages(server.port, 3))
        assert [message.split()[1:] for message in got] == [
            [b"tick", b"1"],
            [b"tick", b"2"],
            [b"tick", b"3"],
        ]
        assert server.stop() == 0


# ---------------------------------------------------------------------------- failed ends


def no_room(*args: object) -> None:
    raise OSError(28, "No space left on device")


def test_a_failed_end_is_told_to_the_source_and_the_session_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    told: list[str] = []

    async def gen(ctx: SourceContext) -> AsyncIterator[bytes | EndSession]:
        yield b"one"
        try:
            yield END_SESSION
        except StoreError as exc:
            told.append(str(exc))
        yield b"two"
        try:
            await ctx.end_session()
        except StoreError as exc:
            told.append(str(exc))
        yield b"three"
        yield END_SESSION  # not caught: the source stops

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        monkeypatch.setattr(engine.catalogue, "open_next", no_room)
        await run_source(engine, as_source(gen))  # returns: nothing raised here
        assert engine.session_id == first
        assert await first_messages(server.port, 3) == [b"one", b"two", b"three"]
        assert await engine.publish(b"later") == 4  # the server serves on

    with caplog.at_level(logging.INFO, logger="tickertape"):
        run(tmp_path, scenario)
    assert len(told) == 2
    assert all("No space left on device" in reason for reason in told)
    assert "ending session" in caplog.text and "failed, so it goes on" in caplog.text
    assert "is stopped (the server keeps serving): StoreError: rolling session" in caplog.text


def test_a_function_whose_end_fails_goes_on_being_called_in_the_same_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        first = engine.session_id
        monkeypatch.setattr(engine.catalogue, "open_next", no_room)
        task = asyncio.create_task(run_source(engine, load_source(spec("ticker"), 200)))
        await until(lambda: engine.next_seq > 12)  # calls 6 and 12 failed to end it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.session_id == first
        got = await first_messages(server.port, 12)
        assert got[:5] == [f"{first} tick {n}".encode() for n in range(1, 6)]
        assert got[5:10] == [f"{first} tick {n}".encode() for n in range(7, 12)]

    monkeypatch.setenv("EXAMPLE_COUNT", "5")
    run(tmp_path, scenario)


def test_a_plain_function_runs_off_the_event_loop_and_is_told_to_return_end_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    threads: list[str] = []

    def make(ctx: SourceContext) -> bytes:
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            ctx.end_session()  # refused: it runs on a thread
        return b"made"

    async def scenario(engine: Engine, server: SoupBinTCPServer) -> None:
        await run_source(engine, as_source(make, 100))
        assert engine.next_seq == 2  # the first call's message; the second raised

    run(tmp_path, scenario)
    assert threading.main_thread().name not in threads
    assert "a plain function, which runs on a thread of its own, returns END_SESSION" in (
        caplog.text
    )
