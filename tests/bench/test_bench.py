"""``bench/bench.py`` as a user runs it: what it needs is in its --help, and a workload
that cannot run in this environment is skipped with a note, not reported as failed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
