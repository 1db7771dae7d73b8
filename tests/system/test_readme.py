"""The README says what is true: each Python snippet runs, saved as a script, against a
real server, and does what the text around it says; the terminal session it shows for
``tickertape users add`` is what a terminal shows."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from support import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_PORTS = re.compile(r"\b(7300|7400)\b")
"""The ports the snippets name: in a test each becomes a free one."""


def snippets(language: str) -> list[str]:
    """The README's fenced blocks of ``language``, in order."""
    text = README.read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def snippet(marker: str) -> str:
    """The one Python snippet that contains ``marker``."""
    found = [code for code in snippets("python") if marker in code]
    assert len(found) == 1, f"{len(found)} README Python snippets contain {marker!r}"
    return found[0]


def save(code: str, path: Path, port: int) -> Path:
    path.write_text(README_PORTS.sub(str(port), code))
    return path


def run_script(path: Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tickertape(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------------- each snippet


def check_subscribe(tmp_path: Path) -> None:
    """The subscriber prints what is published and ends at End of Session."""
    with ServerProcess(tmp_path / "data") as server:
        script = save(snippet("subscribe("), tmp_path / "subscriber.py", server.port)
        reader = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            server.wait_for_log("from sequence 1")  # its login
            published = tickertape(
                "publish", "--port", str(server.port), "--end-session", stdin="hello\nworld\n"
            )
            assert published.returncode == 0, published.stderr
            out, err = reader.communicate(timeout=60)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.communicate()
    assert reader.returncode == 0, err
    assert out == "1 b'hello'\n2 b'world'\n"


def check_source(tmp_path: Path) -> None:
    """Both plug-ins publish what the comments say, run as the comments say."""
    feed = save(snippet("def quotes"), tmp_path / "feed.py", 0)
    assert run_script(feed, tmp_path).returncode == 0  # a module that runs as a script too
    with ServerProcess(tmp_path / "q", "--source", f"python:{feed}:quotes") as server:
        first = server.wait_for_log(" open at ").split("session ")[1].split()[0]
        done = tickertape("tail", "--port", str(server.port), "--session", first)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 AAPL 189.50\n2 MSFT 402.10\n3 CLOSE\n"  # then END_SESSION
    assert f"session {first} ended at sequence 3" in done.stderr
    with ServerProcess(
        tmp_path / "t", "--source", f"python:{feed}:tick", "--source-rate", "100"
    ) as server:
        done = tickertape("tail", "--port", str(server.port), "--count", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1 tick\n2 tick\n3 tick\n"


def check_embedding(tmp_path: Path) -> None:
    """The embedded server publishes, ends its session, and leaves it on disk."""
    port = free_port()
    script = save(snippet("Tickertape("), tmp_path / "embedded.py", port)
    assert f"port={port}" in script.read_text()
    done = run_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    printed = re.fullmatch(r"(\d+) (\[.*\]) (\d{10})\n", done.stdout)
    assert printed is not None, done.stdout
    seq, seqs, next_session = printed.groups()
    assert (seq, seqs) == ("1", "[2, 3]")
    sessions = sorted(p.name for p in (tmp_path / "data").iterdir() if p.name[0].isdigit())
    assert sessions[-1] == next_session
    listed = tickertape("sessions", "show", sessions[0], "--data", str(tmp_path / "data"))
    assert re.search(r"^messages:\s+3$", listed.stdout, flags=re.M), listed.stdout
    assert re.search(r"^state:\s+ended$", listed.stdout, flags=re.M), listed.stdout


CHECKS: dict[str, Callable[[Path], None]] = {
    "subscribe(": check_subscribe,
    "def quotes": check_source,
    "Tickertape(": check_embedding,
}


def test_every_python_snippet_has_its_check() -> None:
    found = snippets("python")
    assert found
    for code in found:
        assert [marker for marker in CHECKS if marker in code] != [], code


@pytest.mark.parametrize("number", range(len(snippets("python"))))
def test_each_python_snippet_is_a_whole_program(number: int) -> None:
    code = snippets("python")[number]
    compile(code, f"README.md python snippet {number + 1}", "exec")  # SyntaxError if not


@pytest.mark.parametrize("marker", list(CHECKS))
def test_python_snippet_runs_as_a_script(marker: str, tmp_path: Path) -> None:
    CHECKS[marker](tmp_path)


def test_the_embedding_snippet_does_not_take_the_servers_port() -> None:
    assert "port=7300" not in snippet("Tickertape(")


# ---------------------------------------------------------------------------- users add


def terminal_transcript(argv: list[str], cwd: Path, answers: list[tuple[str, str]]) -> str:
    """What a terminal shows for ``argv``, typing each answer after its prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command, on the terminal
        os.chdir(cwd)
        os.execv(sys.executable, [sys.executable, *argv])
    seen = b""
    deadline = time.monotonic() + 60
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            if pending and seen.decode(errors="replace").endswith(pending[0][0]):
                os.write(fd, pending.pop(0)[1].encode() + b"\n")
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    return seen.decode().replace("\r\n", "\n")


def test_the_users_add_session_is_what_a_terminal_shows(tmp_path: Path) -> None:
    block = next(code for code in snippets("console") if "users add alice" in code)
    command, *shown = block.split("\n$ ")[0].splitlines()
    argv = command.removeprefix("$ .venv/bin/tickertape ").split()
    transcript = terminal_transcript(
        ["-m", "tickertape", *argv],
        tmp_path,
        [("password for alice: ", "Secret1"), ("password for alice (again): ", "Secret1")],
    )
    assert [line.rstrip() for line in transcript.splitlines()] == shown
