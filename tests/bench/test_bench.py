"""``bench/bench.py`` as a user runs it: what it needs is in its --help, and a workload
that cannot run in this environment is skipped with a note, not reported as failed."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent.parent / "bench" / "bench.py"

WITHOUT_TRUSTME = """
import runpy, sys
sys.modules["trustme"] = None  # as in a venv made with the first README command
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_help_says_what_the_benchmark_needs() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "replay-tls also needs trustme, a test extra (pip install -e '.[test]')" in text
    assert "mold needs root and iproute2" in text
    assert "cluster needs nats-py and nats-server 2.11 or later, the cluster extra" in text


def test_replay_tls_without_trustme_is_skipped_not_failed(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_TRUSTME,
            str(BENCH),
            "--quick",
            "--only",
            "replay-tls",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| replay-tls")]
    assert len(rows) == 1
    assert [cell.strip() for cell in rows[0].strip("|").split("|")][:2] == [
        "replay-tls",
        "skipped",
    ]
    assert "FAILED" not in done.stdout
    assert "- replay-tls was skipped: it needs trustme, a test extra" in done.stdout
    assert not list(tmp_path.glob("replay-*"))  # skipped before the session was built


def running_under(directory: Path) -> list[str]:
    """The command lines of the processes that name ``directory`` (its nats-servers'
    configuration files, its nodes' data directories are in it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if str(directory).encode() in command:
            found.append(command.replace(b"\0", b" ").decode(errors="replace"))
    return found


@pytest.mark.system  # three nats-servers and four tickertape servers
@pytest.mark.timeout(300)
def test_cluster_quick_run_gives_every_row_and_leaves_nothing_running(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--only",
            "cluster",
            "--cluster-messages",
            "5000",
            "--jetstream-messages",
            "1000",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| cluster")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [row[0].split(" ")[1] for row in cells] == ["publish", "publish", "late", "publishing"]
    assert all(row[1].endswith("msg/s") for row in cells[:3]), rows
    assert cells[3][1].startswith("median "), rows
    assert cells[0][4].startswith(">= 200 k/s: "), rows
    assert "FAILED" not in done.stdout
    assert "- cluster JetStream direct: nats-py publish_async" in done.stdout
    assert running_under(tmp_path) == []


@pytest.mark.system  # three nats-servers and four tickertape servers
@pytest.mark.timeout(300)
def test_cluster_run_interrupted_leaves_nothing_running(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--only", "cluster", "--work-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in process.stderr or ():
            lines.put(line)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while "is the sequencer" not in lines.get(timeout=max(0.0, deadline - time.monotonic())):
            pass
        assert running_under(tmp_path) != []  # the servers it started
        process.send_signal(signal.SIGINT)  # as Ctrl-C, but to the benchmark alone
        process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(10)
    assert process.returncode != 0
    assert running_under(tmp_path) == []
