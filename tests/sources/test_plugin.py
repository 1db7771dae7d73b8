"""Plug-in sources: loading them from a --source spec (and what ``tickertape serve`` says
of a spec it cannot load)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tickertape.errors import ConfigError
from tickertape.sources.plugin import (
    SourceContext,
    as_source,
    load_source,
)

EXAMPLES = Path(__file__).with_name("example_sources.py")


def spec(function: str) -> str:
    return f"python:{EXAMPLES}:{function}"


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
