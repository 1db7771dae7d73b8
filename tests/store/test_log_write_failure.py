"""A session log whose writes fail: a full disk, a file-size limit, an I/O error.

Every failed append must leave the log and its index exactly as they were, raise a
:class:`StoreError` that says what happened (its cause the ``OSError``), move nothing in
memory, and let a later append succeed once the disk has room again. If even cutting the
files back fails, what the log serves must still be only what was appended, and the
next start must cut the failed batch rather than take it in.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import Durability, SessionLog
from tickertape.store.opening import verify
from tickertape.wire.soupbintcp import encode_sequenced_many

RECORD_SIZE = 32

BEFORE = [[b"first"], [b"second", b"third"], [b"x" * 200]]
"""What the log holds when the disk fills: three batches, four messages."""

FAILING = [b"lost one", b"lost two" * 10, b"lost three"]
"""The batch whose append fails."""

AFTER = [b"after", b"the disk", b"had room again"]


def payloads_served(session_log: SessionLog) -> list[bytes]:
    """Every message the log serves, parsed from what :meth:`SessionLog.read` returns."""
    data, count = session_log.read(1, 1 << 20)
    found = []
    position = 0
    while position < len(data):
        length = int.from_bytes(data[position : position + 2], "big")
        assert data[position + 2] == ord("S")
        found.append(data[position + 3 : position + 2 + length])
        position += 2 + length
    assert len(found) == count
    return found


def files(directory: Path) -> tuple[bytes, bytes]:
    return (directory / LOG_FILE).read_bytes(), (directory / INDEX_FILE).read_bytes()


def append(session_log: SessionLog, batch: list[bytes]) -> None:
    session_log.append(encode_sequenced_many(batch), len(batch))


class Disk:
    """``os.write`` to the log and index of ``directory`` as on a disk with ``room``
    bytes left (None: plenty): a write that does not fit is written in part, as far as
    the room goes, and the next one fails with ``error``, as the kernel does."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, directory: Path, error: int = errno.ENOSPC
    ) -> None:
        self.room: int | None = None
        self.error = error
        self._inodes = {(directory / name).stat().st_ino for name in (LOG_FILE, INDEX_FILE)}
        self._write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.room is None or os.fstat(fd).st_ino not in self._inodes:
            return self._write(fd, data)
        if self.room == 0:
            raise OSError(self.error, os.strerror(self.error))
        written = self._write(fd, data[: self.room])
        self.room -= written
        return written


@pytest.fixture(params=[Durability.NONE, Durability.BATCH, Durability.ALWAYS])
def durability(request: pytest.FixtureRequest) -> Durability:
    assert isinstance(request.param, Durability)
    return request.param


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EFBIG, "file too large (over the file-size limit)"),
        (errno.EDQUOT, "disk quota exceeded"),
    ],
)
def test_a_disk_that_fills_anywhere_in_a_batch_leaves_the_log_as_it_was(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    durability: Durability,
    error: int,
    said: str,
) -> None:
    """The disk fills after every possible number of bytes of the batch and its index
    record: each time the append fails, saying why, and nothing changes."""
    batch = encode_sequenced_many(FAILING)
    with SessionLog.open(tmp_path, durability=durability, create=True) as session_log:
        for earlier in BEFORE:
            append(session_log, earlier)
        before = files(tmp_path)
        next_seq, end = session_log.next_seq, session_log.end_offset
        disk = Disk(monkeypatch, tmp_path, error)
        for room in range(len(batch) + RECORD_SIZE):
            disk.room = room
            which = LOG_FILE if room < len(batch) else INDEX_FILE
            with pytest.raises(StoreError) as failed:
                append(session_log, FAILING)
            assert str(failed.value) == f"{said} writing session {tmp_path.name}'s {which}"
            assert isinstance(failed.value.__cause__, OSError)
            assert failed.value.__cause__.errno == error
            assert files(tmp_path) == before, f"changed by a failure after {room} bytes"
            assert (session_log.next_seq, session_log.end_offset) == (next_seq, end)
            assert payloads_served(session_log) == [p for b in BEFORE for p in b]
        disk.room = None  # space again
        append(session_log, AFTER)
        assert payloads_served(session_log) == [p for b in [*BEFORE, AFTER] for p in b]
    monkeypatch.undo()
    recovery = verify(tmp_path)
    assert recovery.clean, recovery.problems
    with SessionLog.open(tmp_path, durability=durability) as reopened:
        assert reopened.recovery.clean, reopened.recovery.problems
        assert payloads_served(reopened) == [p for b in [*BEFORE, AFTER] for p in b]


def test_a_write_cut_short_by_a_signal_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that stops part way but did not fail (a signal arrived) is continued."""
    with SessionLog.open(tmp_path, create=True) as session_log:
        append(session_log, BEFORE[0])
        real_write = os.write
        cut: list[int] = []

        def once_short(fd: int, data: bytes | memoryview) -> int:
            if not cut:
                cut.append(len(data) // 3)
                return real_write(fd, data[: cut[0]])
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", once_short)
        append(session_log, FAILING)
        monkeypatch.undo()
        assert cut
        assert payloads_served(session_log) == [*BEFORE[0], *FAILING]
    assert verify(tmp_path).clean


@pytest.mark.parametrize("where", [LOG_FILE, INDEX_FILE])
def test_a_failed_sync_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    with SessionLog.open(tmp_path, durability=Durability.ALWAYS, create=True) as session_log:
        for earlier in BEFORE:
            append(session_log, earlier)
        before = files(tmp_path)
        inode = (tmp_path / where).stat().st_ino
        real_sync = os.fdatasync

        def failing_sync(fd: int) -> None:
            if os.fstat(fd).st_ino == inode:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_sync(fd)

        monkeypatch.setattr(os, "fdatasync", failing_sync)
        with pytest.raises(
            StoreError, match=f"^input/output error syncing session {tmp_path.name}'s {where}$"
        ):
            append(session_log, FAILING)
        monkeypatch.undo()
        assert files(tmp_path) == before
        append(session_log, AFTER)
    with SessionLog.open(tmp_path) as reopened:
        assert reopened.recovery.clean, reopened.recovery.problems
        assert payloads_served(reopened) == [p for b in [*BEFORE, AFTER] for p in b]


class BrokenTruncate:
    """``os.ftruncate`` failing with EIO while ``broken``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.broken = True
        self.calls = 0
        self._truncate = os.ftruncate
        monkeypatch.setattr(os, "ftruncate", self.ftruncate)

    def ftruncate(self, fd: int, length: int) -> None:
        self.calls += 1
        if self.broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self._truncate(fd, length)


@pytest.mark.parametrize(
    "failure",
    ["log sync", "index write", "torn log write"],
)
def test_when_the_log_cannot_be_cut_back_a_restart_cuts_the_failed_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The batch is in the log (whole, or torn by a full disk), and cutting it off fails
    too: the log serves only what came before, refuses appends while the failed batch
    is still there, and a restart cuts it (whole packets of it are not taken in as
    messages: their publishers were told they were not published)."""
    batch = encode_sequenced_many(FAILING)
    with SessionLog.open(tmp_path, durability=Durability.BATCH, create=True) as session_log:
        for earlier in BEFORE:
            append(session_log, earlier)
        log_before, index_before = files(tmp_path)
        next_seq, end = session_log.next_seq, session_log.end_offset
        disk = Disk(monkeypatch, tmp_path)
        if failure == "log sync":
            real_sync = os.fdatasync

            def failing_sync(fd: int) -> None:
                raise OSError(errno.EIO, os.strerror(errno.EIO))

            monkeypatch.setattr(os, "fdatasync", failing_sync)
        else:
            disk.room = len(batch) if failure == "index write" else len(batch) - 5
        BrokenTruncate(monkeypatch)
        with pytest.raises(
            StoreError, match=r"cutting the log back to \d+ bytes failed too"
        ) as failed:
            append(session_log, FAILING)
        assert "a restart cuts what is past sequence 4" in str(failed.value)
        if failure == "log sync":
            monkeypatch.setattr(os, "fdatasync", real_sync)
        disk.room = None
        assert (session_log.next_seq, session_log.end_offset) == (next_seq, end)
        assert payloads_served(session_log) == [p for b in BEFORE for p in b]
        log_now, _ = files(tmp_path)
        assert log_now.startswith(log_before)
        assert len(log_now) > len(log_before)  # the failed batch is still there...
        assert log_now[len(log_before) : len(log_before) + 2] == b"\x00\x00"  # ...spoiled
        # Appending is refused while the failed batch cannot be cut off.
        with pytest.raises(StoreError, match="still holds a batch whose append failed"):
            append(session_log, AFTER)
        assert payloads_served(session_log) == [p for b in BEFORE for p in b]
    monkeypatch.undo()  # as after a restart on a disk that works again

    recovery = verify(tmp_path)  # read-only: says what a restart will do
    assert recovery.messages == next_seq - 1
    assert recovery.tail_bytes == len(log_now) - len(log_before)
    with SessionLog.open(tmp_path, durability=Durability.BATCH) as reopened:
        assert reopened.recovery.messages == next_seq - 1
        assert reopened.recovery.tail_bytes == len(log_now) - len(log_before)
        assert reopened.recovery.cut_to is not None
        assert files(tmp_path) == (log_before, index_before)
        assert payloads_served(reopened) == [p for b in BEFORE for p in b]
        append(reopened, AFTER)
        assert reopened.next_seq == next_seq + len(AFTER)
    assert verify(tmp_path).clean


def test_a_cut_back_that_failed_is_made_before_the_next_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SessionLog.open(tmp_path, create=True) as session_log:
        for earlier in BEFORE:
            append(session_log, earlier)
        before = files(tmp_path)
        disk = Disk(monkeypatch, tmp_path)
        disk.room = 7
        truncate = BrokenTruncate(monkeypatch)
        with pytest.raises(StoreError, match=r"no space left on device writing .* failed too"):
            append(session_log, FAILING)
        disk.room = None
        truncate.broken = False  # the disk works again: the next append cuts, then appends
        append(session_log, AFTER)
        assert payloads_served(session_log) == [p for b in [*BEFORE, AFTER] for p in b]
        log_now, index_now = files(tmp_path)
        assert log_now.startswith(before[0])
        assert index_now.startswith(before[1])
        assert len(index_now) == len(before[1]) + RECORD_SIZE
    monkeypatch.undo()
    recovery = verify(tmp_path)
    assert recovery.clean, recovery.problems
    assert recovery.messages == 4 + len(AFTER)
