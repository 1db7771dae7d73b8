"""Following a session's log that another process is appending to, read-only.

:class:`FollowedLog` is a read-only :class:`~tickertape.store.log.SessionLog` that serves
only batches whose index record is written and whose checksums pass (bytes past the last
record are a batch being appended, not damage), and whose :meth:`FollowedLog.refresh`
picks up the batches appended since. Nothing on disk is changed.

This module holds the log side of following only; watching a data directory and
serving it (``tickertape serve --follow``) is :mod:`tickertape.sources.follow`.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import Final

from tickertape.errors import StoreError
from tickertape.store.index import RECORD_SIZE, record_ok, unpack_record
from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import Appended, SessionLog
from tickertape.store.recovery import Recovered, recover

log = logging.getLogger(__name__)

DEFAULT_REFRESH_BYTES: Final = 8 << 20
"""About how many bytes of new batches one :meth:`FollowedLog.refresh` reads (at least
one batch): it bounds the memory a follower holds between two deliveries."""
_REFRESH_INDEX_CHUNK: Final = RECORD_SIZE * 4096


class _Held:
    """An index record of a batch a followed log already holds."""


_HELD: Final = _Held()


class FollowedLog(SessionLog):
    """A session's log that another process may be appending to, read-only. Open with
    :meth:`follow`; take new batches with :meth:`refresh` (from one thread only)."""

    def __init__(self, directory: Path, log_fd: int, recovered: Recovered) -> None:
        super().__init__(directory, log_fd, recovered)
        # The index as last opened (its inode and descriptor), where its next unread
        # record is (None: to be found), and the problem that holds the follower back.
        self._index: tuple[int, int] | None = None
        self._position: int | None = None
        self._problem: str | None = None

    @classmethod
    def follow(cls, directory: Path) -> FollowedLog:
        """Open the log in ``directory`` to follow it: checked as a read-only open is,
        but packets past the last index record are a batch being appended (not yet
        served, not reported as damage). Raises :class:`StoreError` if there is no log."""
        log_path = directory / LOG_FILE
        if not log_path.exists():
            raise StoreError(f"no session log at {log_path}")
        log_fd = os.open(log_path, os.O_RDONLY)
        try:
            recovered = recover(directory, log_fd, writable=False, follow=True)
        except BaseException:
            os.close(log_fd)
            raise
        return cls(directory, log_fd, recovered)

    @property
    def follow_problem(self) -> str | None:
        """Why :meth:`refresh` cannot go on, if it cannot: a damaged record or batch."""
        return self._problem

    @property
    def damage(self) -> str | None:
        """As :attr:`SessionLog.damage`, and a followed log that stopped at a damaged
        batch is not whole either."""
        if self._problem is not None:
            return self._problem
        return super().damage

    def refresh(self, max_bytes: int = DEFAULT_REFRESH_BYTES) -> list[tuple[Appended, bytes]]:
        """Take the batches another process appended since the log was opened or last
        refreshed, in order: about ``max_bytes`` of them (at least one); call again for
        more. Returns each with its bytes. Called from one thread only; nothing on disk
        is changed.

        A batch is taken only once its index record is whole, passes its checksum and
        follows on from the previous batch, and its bytes pass the checksum the record
        holds. The writer appends a batch, then its record: a batch being appended, or a
        record being written, is simply not taken yet. A record or batch that fails its
        checksum stops the refresh there (it is never served) and is logged once, as
        :attr:`follow_problem`. When the index is replaced (a writer restarting rewrites
        it), the new one is read from the start, skipping the batches already taken.
        """
        if self.closed:
            raise StoreError(f"session log {self.directory} is closed")
        index_path = self.directory / INDEX_FILE
        try:
            status = os.stat(index_path)
        except FileNotFoundError:
            return []  # the writer has not made it yet
        if self._index is None or self._index[0] != status.st_ino:
            try:
                fd = os.open(index_path, os.O_RDONLY)
            except FileNotFoundError:
                return []  # replaced between the two calls: the next refresh opens it
            if self._index is not None:
                os.close(self._index[1])
                self._position = 0  # a new index: read it all, skip what we hold
            self._index = (os.fstat(fd).st_ino, fd)
        fd = self._index[1]
        size = os.fstat(fd).st_size
        position = self._position
        if position is None:
            position = self._first_index_position(fd, size)
        elif size < position:
            # Records were taken back: the writer's append failed after its record was
            # written. Read the index again from the start.
            log.warning(
                "session %s: its index shrank from %d to %d bytes while followed",
                self.directory.name,
                position,
                size,
            )
            position = 0
        taken: list[tuple[Appended, bytes]] = []
        taken_bytes = 0
        while position + RECORD_SIZE <= size and taken_bytes < max_bytes:
            chunk = os.pread(fd, min(size - position, _REFRESH_INDEX_CHUNK), position)
            chunk = chunk[: len(chunk) - len(chunk) % RECORD_SIZE]
            if not chunk:
                break
            for start in range(0, len(chunk), RECORD_SIZE):
                batch = self._take_record(chunk[start : start + RECORD_SIZE], position)
                if batch is None:
                    self._position = position
                    return taken
                position += RECORD_SIZE
                if not isinstance(batch, _Held):
                    taken.append(batch)
                    taken_bytes += len(batch[1])
                    if taken_bytes >= max_bytes:
                        break
        self._position = position
        if taken:
            self._problem = None
        return taken

    def _first_index_position(self, fd: int, size: int) -> int:
        """Where the record after the last batch held is: one record per batch in an
        index the writer recovered (the usual case), else found by reading from 0."""
        held = self.batch_count
        position = held * RECORD_SIZE
        last = self.last_batch
        if last is None:
            return 0
        if position > size:
            return 0
        record = os.pread(fd, RECORD_SIZE, position - RECORD_SIZE)
        if len(record) == RECORD_SIZE and record_ok(record):
            first_seq, offset, _, _, _ = unpack_record(record)
            if (first_seq, offset) == last:
                return position
        return 0

    def _take_record(self, record: bytes, position: int) -> tuple[Appended, bytes] | _Held | None:
        """Check one index record and take its batch: the batch and its bytes; ``_HELD``
        for a batch already held; None to stop here (not yet whole, or damaged)."""
        if not record_ok(record):
            self._stall(f"index record at byte {position} fails its checksum")
            return None
        first_seq, offset, length, count, crc = unpack_record(record)
        next_seq, end_offset = self.next_seq, self.end_offset
        if count and first_seq + count <= next_seq:
            return _HELD
        if first_seq != next_seq or offset != end_offset or not count:
            self._stall(
                f"index record at byte {position} (sequence {first_seq}, offset {offset}) "
                f"does not follow on (expected sequence {next_seq} at offset {end_offset})"
            )
            return None
        data = self.read_range(offset, length)
        if len(data) < length:
            return None  # cannot happen (the log is written first); try again later
        if zlib.crc32(data) != crc:
            self._stall(
                f"batch at offset {offset} (sequence {first_seq}..{first_seq + count - 1}) "
                "fails its checksum: not served"
            )
            return None
        appended = Appended(first_seq, count, offset, length)
        self.add_batch(appended)
        return appended, data

    def _stall(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.error("session %s: %s; following stops there", self.directory.name, problem)

    def close(self) -> None:
        if self._index is not None:
            os.close(self._index[1])
            self._index = None
        super().close()

    def __enter__(self) -> FollowedLog:
        return self


__all__ = ["DEFAULT_REFRESH_BYTES", "FollowedLog"]
