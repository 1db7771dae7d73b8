"""``tickertape sessions list/show/verify/export`` on the data directory of a server that
is running under load, and of one left by SIGKILL; ``serve --follow`` on a live writer.

Bytes past the last index record are a batch being written (or, after a kill, one never
acknowledged, which the next start sets aside): not damage. The commands name them and
exit 0; only real damage (here: a flipped byte in an indexed batch) makes ``verify`` exit
1, naming it.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from tickertape.wire.soupbintcp import encode_sequenced_many

from support import ServerProcess, paused, until_sync

DEMO = ("--demo", "20000", "--durability", "batch")
RECORD = struct.Struct("<QQIII4x")
TAIL_WORDS = "past the last index record"
TRIES = 300
"""At most this many pauses of the writer to catch it between a log write and its index
record (it spends much of its time there, in the log's fdatasync)."""


def tickertape(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def offline(data: Path, session: str) -> dict[str, subprocess.CompletedProcess[str]]:
    where = ("--data", str(data))
    return {
        "list": tickertape("sessions", "list", "--json", *where),
        "show": tickertape("sessions", "show", session, *where),
        "verify": tickertape("sessions", "verify", session, *where),
        "export": tickertape("sessions", "export", session, *where, "--to", "50"),
    }


def assert_not_damaged(done: dict[str, subprocess.CompletedProcess[str]]) -> None:
    for name, result in done.items():
        said = result.stdout + result.stderr if name != "export" else result.stderr
        assert result.returncode == 0, (name, said)
        for word in ("DAMAGED", "fails its checks", "damaged", "intact messages only"):
            assert word not in said, (name, said)
    assert [row["problems"] for row in json.loads(done["list"].stdout)] == [0]
    assert done["verify"].stdout.split(": ")[1] == "clean"
    assert len(done["export"].stdout.splitlines()) == 50


def assert_tail_named(done: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert TAIL_WORDS in done["list"].stderr, done["list"].stderr
    assert TAIL_WORDS in done["show"].stdout, done["show"].stdout
    assert TAIL_WORDS in done["verify"].stdout, done["verify"].stdout
    assert TAIL_WORDS in done["export"].stderr, done["export"].stderr
    assert "never acknowledged if the writer stopped" in done["verify"].stdout


def has_tail(directory: Path) -> bool:
    """Whether the log holds bytes past the batch of its last index record."""
    index = (directory / "index").read_bytes()
    size = (directory / "log").stat().st_size
    if len(index) < RECORD.size:
        return size > 0
    last = len(index) - len(index) % RECORD.size - RECORD.size
    _, offset, length, _, _ = RECORD.unpack_from(index, last)
    return bool(size > offset + length)


def opened_session(server: ServerProcess) -> str:
    return server.wait_for_log(" open at ").split("session ")[1].split()[0]


def wait_for_messages(directory: Path, count: int, timeout: float = 30.0) -> None:
    """Until the session's index vouches for ``count`` messages (polled, bounded)."""

    def published() -> bool:
        index = (directory / "index").read_bytes()
        whole = len(index) - len(index) % RECORD.size
        if whole:
            first, _, _, messages, _ = RECORD.unpack_from(index, whole - RECORD.size)
            return bool(first + messages > count)
        return False

    until_sync(published, f"the server publishing {count} messages", timeout, 0.01)


def test_offline_commands_on_a_running_server_under_load(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, *DEMO) as server:
        session = opened_session(server)
        directory = tmp_path / session
        wait_for_messages(directory, 1000)
        for _ in range(3):  # as the writer writes
            assert_not_damaged(offline(tmp_path, session))
        # With the writer stopped between a batch's log write and its index record.
        for _ in range(TRIES):
            with paused(server):
                if has_tail(directory):
                    done = offline(tmp_path, session)
                    break
        else:
            raise AssertionError(f"the writer was never caught with a tail in {TRIES} tries")
    assert_not_damaged(done)
    assert_tail_named(done)
    assert "being written" in done["verify"].stdout


def test_serve_follow_on_a_live_writer_logs_no_warning(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, *DEMO) as server:
        session = opened_session(server)
        wait_for_messages(tmp_path / session, 1000)
        for _ in range(4):
            with ServerProcess(tmp_path, follow=True) as follower:
                follower.wait_for_log(f"following session {session}")
            noisy = [line for line in follower.lines if " WARNING " in line or " ERROR " in line]
            assert noisy == [], noisy


def test_offline_commands_after_sigkill_and_on_real_damage(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, *DEMO) as server:
        session = opened_session(server)
        directory = tmp_path / session
        wait_for_messages(directory, 1000)
        server.kill()
    # The kill may or may not have caught a batch between its log write and its index
    # record; make sure one did: whole packets past the last record, never acknowledged.
    with (directory / "log").open("ab") as log:
        log.write(encode_sequenced_many([b"whole", b"packets", b"with no record"]))
    done = offline(tmp_path, session)
    assert_not_damaged(done)
    assert_tail_named(done)

    # Real damage: a flipped byte inside the first indexed batch.
    index = (directory / "index").read_bytes()
    _, offset, length, count, _ = RECORD.unpack_from(index, 0)
    data = bytearray((directory / "log").read_bytes())
    data[offset + length // 2] ^= 0x01
    (directory / "log").write_bytes(bytes(data))
    verified = tickertape("sessions", "verify", session, "--data", str(tmp_path))
    assert verified.returncode == 1, verified.stdout
    assert verified.stdout.startswith(f"session {session}: DAMAGED: ")
    assert f"batch at offset {offset} (sequence 1..{count}) fails its checksum" in verified.stdout
    shown = tickertape("sessions", "show", session, "--data", str(tmp_path))
    assert "fails its checksum" in shown.stdout
    listed = tickertape("sessions", "list", "--data", str(tmp_path))
    assert f"session {session} fails its checks" in listed.stderr
