"""Plug-in sources: loading them from a --source spec, running them into the engine, and
``tickertape serve --source`` as a user runs it."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from tickertape.client.soupbintcp import Message, subscribe
from tickertape.errors import ConfigError, StoreError
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.sources.plugin import (
    END_SESSION,
    EndSession,
    Source,
    SourceContext,
    as_source,
    load_source,
    run_source,
)
from tickertape.text import plural

from support import ServerProcess, running_server, until

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


def payloads(messages: Sequence[Message]) -> list[bytes]:
    return [message.payload for message in messages]


def next_id(session: str, rolls: int = 1) -> str:
    return session[:-2] + f"{int(session[-2:]) + rolls:02d}"


# ---------------------------------------------------------------------------- loading


def test_a_module_on_the_path_and_a_file_both_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES.parent))
    by_module = load_source("python:example_sources:count_then_end")
    assert by_module.kind == "generator"
    assert by_module.rate is None
    assert by_module.name == "python:example_sources:count_then_end"
    by_file = load_source(spec("ticker"), 50)
    assert by_file.kind == "called"
    assert by_file.rate == 50
    assert load_source(spec("async_ticker"), 0.5).kind == "called"


def test_a_module_in_the_current_directory_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here_source.py").write_text("async def gen(ctx):\n    yield b'x'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert load_source("python:here_source:gen").kind == "generator"


@pytest.mark.parametrize(
    ("given", "rate", "message"),
    [
        ("example_sources:count_then_end", None, "unknown source 'example_sources'"),
        ("stdin", None, "unknown source 'stdin'; expected python:MODULE:FUNCTION or"),
        ("python:example_sources", None, "expected python:MODULE:FUNCTION or"),
        ("python::gen", None, "expected python:MODULE:FUNCTION or"),
        ("python:mod:not-a-name", None, "'not-a-name' is not a Python name"),
        ("python:no_such_module_xyz:gen", None, "no module named 'no_such_module_xyz'"),
        ("python:/no/such/file.py:gen", None, "no file /no/such/file.py"),
        (spec("missing"), None, "has no attribute 'missing' (it defines async_ticker, broken"),
        (spec("NOT_CALLABLE"), None, "that is an int, not a function"),
        (spec("plain"), None, "give --source-rate N"),
        (spec("count_then_end"), 10, "an async generator sets its own pace"),
        (spec("sync_generator"), None, "that is a generator (def with yield)"),
        (spec("sync_generator"), 10, "that is a generator (def with yield)"),
        (spec("no_argument"), None, "it must take one argument, the SourceContext"),
    ],
)
def test_bad_specs_are_told_clearly(given: str, rate: float | None, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_source(given, rate)
    assert message in str(raised.value)
    assert str(raised.value).startswith("--source ")


def test_a_module_that_fails_to_import_is_told(tmp_path: Path) -> None:
    broken_import = tmp_path / "needs_more.py"
    broken_import.write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ConfigError, match=r"importing .* failed: .*no_such_dependency_xyz"):
        load_source(f"python:{broken_import}:gen")
    broken_syntax = tmp_path / "bad_syntax.py"
    broken_syntax.write_text("async def gen(ctx)\n    yield b'x'\n")
    with pytest.raises(ConfigError, match=r"importing .* failed: SyntaxError"):
        load_source(f"python:{broken_syntax}:gen")


def test_as_source_takes_callables_of_the_application() -> None:
    async def gen(ctx: SourceContext) -> AsyncIterator[bytes]:
        yield b"x"

    assert as_source(gen).kind == "generator"
    assert as_source(lambda ctx: b"x", 5).kind == "called"
    with pytest.raises(ConfigError, match="not a positive number"):
        as_source(lambda ctx: b"x", 0)


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
        await until(lambda: engine.live_count == 1)
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


def tickertape(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--source", "python:no_such_module_xyz:gen"], "no module named 'no_such_module_xyz'"),
        (["--source", spec("missing")], "has no attribute 'missing'"),
        (["--source", spec("NOT_CALLABLE")], "that is an int, not a function"),
        (["--source", spec("plain")], "give --source-rate N"),
        (["--source", "stdin"], "unknown source 'stdin'"),
        (["--source-rate", "5"], "--source-rate needs --source"),
    ],
)
def test_serve_tells_what_is_wrong_with_a_source(
    tmp_path: Path, options: list[str], message: str
) -> None:
    done = tickertape("serve", "--data", str(tmp_path), "--port", "0", *options)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("tickertape: "), done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


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
