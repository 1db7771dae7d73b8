"""Tests of archiving a session (:mod:`tickertape.store.archive`): what is archived and
what refused, one run at a time, and crash safety of the archiving step (with
:func:`~tickertape.store.opening.open_session_log` finishing an interrupted run).

Everything runs on real files. Each archive is compared with the bytes of the log it
replaced, copied before archiving, and its layout is parsed independently of
:mod:`tickertape.store.archived` (``parse_archive`` in tests/store_archives.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from store_archives import (
    HEADER,
    SMALL_CHUNK,
    files,
    flip_bit,
    make_session,
    packet_starts,
    parse_archive,
    serves,
    varied_batches,
)
from tickertape.errors import CorruptLogError, StoreError
from tickertape.sources.demo import demo_payload
from tickertape.store.archive import archive_session
from tickertape.store.archived import ArchivedLog
from tickertape.store.layout import (
    ARCHIVE_FILE,
    ARCHIVE_TMP_FILE,
    ENDED_MARKER,
    INDEX_FILE,
    LOG_FILE,
)
from tickertape.store.log import SessionLog
from tickertape.store.opening import open_session_log

# ---------------------------------------------------------------------------- archiving


def test_archive_replaces_log_and_index(tmp_path: Path) -> None:
    batches = varied_batches(seed=2, batches=30)
    original = make_session(tmp_path, batches)
    messages = sum(map(len, batches))

    result = archive_session(tmp_path, chunk_bytes=SMALL_CHUNK)

    assert files(tmp_path) == {ARCHIVE_FILE, ENDED_MARKER}
    assert result.directory == tmp_path
    assert result.messages == messages
    assert result.original_bytes == len(original)
    assert result.archived_bytes == (tmp_path / ARCHIVE_FILE).stat().st_size
    parsed = parse_archive(tmp_path / ARCHIVE_FILE)
    assert (parsed.messages, parsed.size, len(parsed.chunks)) == (
        messages,
        len(original),
        result.chunks,
    )


def test_empty_session(tmp_path: Path) -> None:
    make_session(tmp_path, [])
    result = archive_session(tmp_path)
    assert (result.messages, result.chunks, result.original_bytes) == (0, 0, 0)
    with ArchivedLog.open(tmp_path) as archived:
        assert archived.next_seq == 1
        assert archived.offset_of(1) == 0
        assert archived.read_range(0, 0) == b""
        assert archived.read(1, 100) == (b"", 0)
        assert archived.span(1, 100, 1) == (0, 1, 0)
        assert archived.verify().clean
        with pytest.raises(StoreError, match="sequence 2 is not in"):
            archived.offset_of(2)


def test_compressible_data_gets_smaller(tmp_path: Path) -> None:
    payloads = [demo_payload(seq, "2026-11-29T09:30:00.000123Z", 100) for seq in range(1, 20_001)]
    original = make_session(tmp_path, [payloads[i : i + 1000] for i in range(0, 20_000, 1000)])
    result = archive_session(tmp_path)
    assert result.archived_bytes < len(original) / 4
    assert result.ratio == result.archived_bytes / len(original)
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert serves(session_log) == original


def test_refuses_a_session_that_has_not_ended(tmp_path: Path) -> None:
    original = make_session(tmp_path, varied_batches(seed=3, batches=3), ended=False)
    with pytest.raises(StoreError, match="has not ended"):
        archive_session(tmp_path)
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE}
    assert (tmp_path / LOG_FILE).read_bytes() == original


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: flip_bit(d / LOG_FILE, 100), "fails its checksum"),
        (lambda d: flip_bit(d / INDEX_FILE, 3), "index record 0 fails its checksum"),
        (lambda d: (d / INDEX_FILE).unlink(), "the index is missing"),
    ],
)
def test_refuses_a_damaged_session(
    tmp_path: Path, damage: Callable[[Path], object], problem: str
) -> None:
    make_session(tmp_path, varied_batches(seed=4, batches=5))
    damage(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in files(tmp_path)}
    with pytest.raises(CorruptLogError, match=f"will not be archived.*{problem}"):
        archive_session(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in files(tmp_path)} == before


def test_sets_a_tail_aside_then_archives(tmp_path: Path) -> None:
    """Bytes past the last index record (a batch whose record was never written: never
    acknowledged) are not archived, and not lost with the log: they go to log.cut-N."""
    original = make_session(tmp_path, varied_batches(seed=4, batches=5))
    size = (tmp_path / LOG_FILE).stat().st_size
    with (tmp_path / LOG_FILE).open("ab") as log_file:
        log_file.write(b"\x00\x04Sabc\x00\x05S12")
    archive_session(tmp_path)
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert serves(session_log) == original
    assert (tmp_path / f"{LOG_FILE}.cut-{size}").read_bytes() == b"\x00\x04Sabc\x00\x05S12"


def test_refuses_an_archived_session(tmp_path: Path) -> None:
    make_session(tmp_path, varied_batches(seed=5, batches=3))
    archive_session(tmp_path)
    with pytest.raises(StoreError, match="already archived"):
        archive_session(tmp_path)


def test_refuses_a_missing_session(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no session log"):
        archive_session(tmp_path)
    with pytest.raises(StoreError, match="no session log"):
        open_session_log(tmp_path, finish_archiving=True)


def test_refuses_bad_settings(tmp_path: Path) -> None:
    make_session(tmp_path, varied_batches(seed=5, batches=3))
    with pytest.raises(StoreError, match="chunk size 0"):
        archive_session(tmp_path, chunk_bytes=0)
    with pytest.raises(StoreError, match="compression level 23"):
        archive_session(tmp_path, level=23)
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}


def test_one_archiving_run_at_a_time(tmp_path: Path) -> None:
    original = make_session(tmp_path, varied_batches(seed=6, batches=3))
    with open(tmp_path / ARCHIVE_TMP_FILE, "wb") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="being archived by another process"):
            archive_session(tmp_path)
        with open_session_log(
            tmp_path, finish_archiving=True
        ) as session_log:  # leaves the run's file alone
            assert serves(session_log) == original
        assert (tmp_path / ARCHIVE_TMP_FILE).exists()
    archive_session(tmp_path)  # the lock went with its holder: the leftover is overwritten
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert serves(session_log) == original


# ---------------------------------------------------------------------------- crashes


class Crash(BaseException):
    """The process dies here: no ``except Exception`` clean-up runs."""


ALLOWED_STATES = [
    {LOG_FILE, INDEX_FILE, ENDED_MARKER},  # nothing happened, or only the garbage remains
    {LOG_FILE, INDEX_FILE, ENDED_MARKER, ARCHIVE_TMP_FILE},
    {LOG_FILE, INDEX_FILE, ENDED_MARKER, ARCHIVE_FILE},  # committed, not cleaned up
    {LOG_FILE, ENDED_MARKER, ARCHIVE_FILE},
    {ENDED_MARKER, ARCHIVE_FILE},  # done
]


def inject(
    monkeypatch: pytest.MonkeyPatch, root: Path, fail_at: int, error: Callable[[], BaseException]
) -> list[str]:
    """Make the ``fail_at``-th write, sync, truncation, rename or removal of a file under
    ``root`` raise ``error()``. Returns the list of such steps taken, which grows."""
    steps: list[str] = []

    def wrap(name: str) -> None:
        real = getattr(os, name)

        def faulty(*args: object, **kwargs: object) -> object:
            target = args[0]
            path = Path(
                os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else str(target)
            )
            if path.is_relative_to(root):
                steps.append(f"{name} {path.name}")
                if len(steps) - 1 == fail_at:
                    raise error()
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, faulty)

    for name in ("write", "fsync", "ftruncate", "replace", "rename", "unlink"):
        wrap(name)
    return steps


def check_after_crash(directory: Path, original: bytes) -> None:
    """Whatever happened, the session serves exactly the original, and archiving it
    again completes."""
    assert files(directory) in ALLOWED_STATES
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert serves(session_log) == original
        assert session_log.next_seq == len(packet_starts(original))
        if isinstance(session_log, ArchivedLog):
            assert files(directory) == {ENDED_MARKER, ARCHIVE_FILE}
            assert session_log.verify().clean
        else:
            assert files(directory) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}
    if (directory / ARCHIVE_FILE).exists():
        with pytest.raises(StoreError, match="already archived"):
            archive_session(directory, chunk_bytes=1000)
    else:
        archive_session(directory, chunk_bytes=1000)
    assert files(directory) == {ENDED_MARKER, ARCHIVE_FILE}
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert isinstance(session_log, ArchivedLog)
        assert serves(session_log) == original


def test_crash_at_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process crash at each write, sync, rename and removal. (A power loss can undo
    an unsynced step as well; each state that leaves is one of these.)"""
    batches = [[demo_payload(seq, "stamp", 50 + seq % 7)] for seq in range(1, 61)]
    template = tmp_path / "template"
    original = make_session(template, batches)

    dry = tmp_path / "dry"
    shutil.copytree(template, dry)
    with monkeypatch.context() as patch:
        all_steps = inject(patch, dry, -1, Crash)
        archive_session(dry, chunk_bytes=1000)
    assert any(step.startswith("replace") for step in all_steps)
    assert all_steps[-3:] == ["unlink index", "unlink log", "fsync " + dry.name]
    assert len(all_steps) > 10

    for fail_at in range(len(all_steps)):
        directory = tmp_path / f"crash-{fail_at}"
        shutil.copytree(template, directory)
        with monkeypatch.context() as patch:
            steps = inject(patch, directory, fail_at, Crash)
            with pytest.raises(Crash):
                archive_session(directory, chunk_bytes=1000)
        assert len(steps) == fail_at + 1
        check_after_crash(directory, original)


def test_crash_while_finishing_an_interrupted_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "template"
    original = make_session(template, varied_batches(seed=7, batches=5))
    shutil.copytree(template, tmp_path / "archived")
    archive_session(tmp_path / "archived", chunk_bytes=1000)
    shutil.copy(
        tmp_path / "archived" / ARCHIVE_FILE, template / ARCHIVE_FILE
    )  # commit, no clean-up
    for fail_at in range(3):
        directory = tmp_path / f"crash-{fail_at}"
        shutil.copytree(template, directory)
        with monkeypatch.context() as patch:
            inject(patch, directory, fail_at, Crash)
            with pytest.raises(Crash):
                open_session_log(directory, finish_archiving=True)
        check_after_crash(directory, original)


def test_failed_write_leaves_the_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = make_session(tmp_path, varied_batches(seed=8, batches=10))
    with monkeypatch.context() as patch:
        inject(patch, tmp_path, 5, lambda: OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(OSError, match="No space left"):
            archive_session(tmp_path, chunk_bytes=1000)
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}
    assert (tmp_path / LOG_FILE).read_bytes() == original
    check_after_crash(tmp_path, original)


def test_leftover_tmp_is_removed_on_open(tmp_path: Path) -> None:
    original = make_session(tmp_path, varied_batches(seed=9, batches=3))
    (tmp_path / ARCHIVE_TMP_FILE).write_bytes(b"half an archive")
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert isinstance(session_log, SessionLog)
        assert serves(session_log) == original
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_archive_beside_the_original_is_set_aside(tmp_path: Path, damage: str) -> None:
    """A committed archive that fails its check while the original is still there (damage
    after the commit point): the original is served, and can be archived again."""
    directory = tmp_path / "session"
    original = make_session(directory, varied_batches(seed=10, batches=5))
    shutil.copytree(directory, tmp_path / "copy")
    archive_session(directory, chunk_bytes=1000)
    for name in (LOG_FILE, INDEX_FILE):  # as if the clean-up had not run
        shutil.copy(tmp_path / "copy" / name, directory / name)
    archive_path = directory / ARCHIVE_FILE
    if damage == "flip":
        flip_bit(archive_path, HEADER.size + 5)
    else:
        archive_path.write_bytes(archive_path.read_bytes()[:-1])
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert isinstance(session_log, SessionLog)
        assert serves(session_log) == original
    assert files(directory) == {LOG_FILE, INDEX_FILE, ENDED_MARKER, ARCHIVE_FILE + ".damaged"}
    archive_session(directory, chunk_bytes=1000)
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert isinstance(session_log, ArchivedLog)
        assert serves(session_log) == original


_ARCHIVER = """
import sys
from pathlib import Path
from tickertape.store.archive import archive_session
print("start", flush=True)
archive_session(Path(sys.argv[1]), chunk_bytes=4096, level=19)
"""


@pytest.mark.parametrize("kill_after", [0.0, 0.03, 0.06, 0.1, 0.15, 1.0])
def test_sigkill_while_archiving_loses_nothing(tmp_path: Path, kill_after: float) -> None:
    """A real process, killed outright at a moment in the middle of archiving (or after
    it finished): the session still serves exactly its messages."""
    rng = random.Random(kill_after)
    batches = [[rng.randbytes(rng.randrange(0, 3000)) for _ in range(50)] for _ in range(60)]
    original = make_session(tmp_path, batches)
    archiver = subprocess.Popen(
        [sys.executable, "-c", _ARCHIVER, str(tmp_path)], stdout=subprocess.PIPE
    )
    assert archiver.stdout is not None
    assert archiver.stdout.readline() == b"start\n"
    try:
        archiver.wait(kill_after)
    except subprocess.TimeoutExpired:
        archiver.send_signal(signal.SIGKILL)
        archiver.wait(10)
    check_after_crash(tmp_path, original)
