"""A session's log: SoupBinTCP Sequenced Data packets exactly as they go on the wire.

Two files live in a session's directory:

``log``
    The packets, ``u16 length, 'S', payload``, back to back. Catching a subscriber up is
    ``sendfile`` of a byte range of this file.
``index``
    One 32-byte record per appended batch: the batch's first sequence number, its byte
    offset and length in the log, its message count, the CRC-32 of its bytes, and the
    CRC-32 of the record itself. The wire format has no room for checksums; the index
    holds them, so that a flipped bit or a truncation anywhere is detected.

Appends come in batches and are made durable by :class:`Durability`. Opening a log
recovers it: index records that fail their own check or do not follow on from the
previous one are dropped; each batch's checksum is verified; packets in the log past the
last good record are re-indexed if whole and well formed; a torn last packet (a crash in
the middle of a write) is cut off. Bytes that cannot be trusted are never served: they
are moved aside to ``log.cut-OFFSET`` and the log continues from the intact prefix.

Only one thread appends (the session writer); any thread may read what was appended.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from tickertape.errors import StoreError

log = logging.getLogger(__name__)

LOG_FILE: Final = "log"
INDEX_FILE: Final = "index"

_RECORD: Final = struct.Struct("<QQIII")  # first_seq, offset, length, count, crc32(batch)
_RECORD_SIZE: Final = _RECORD.size + 4  # + crc32 of the record itself
_PACKET_HEADER: Final = 3
_SEQUENCED: Final = 0x53
_VERIFY_CHUNK: Final = 8 << 20


class Durability(enum.Enum):
    """When an appended batch is forced to stable storage.

    ``none``
        Never: the page cache decides. A process crash loses nothing that was
        appended; an operating-system crash or power loss can lose recent batches.
    ``batch``
        One ``fdatasync`` of the log per batch (group commit: a batch holds everything
        published while the previous one was being synced). The index is rebuilt from
        the log if a crash leaves it behind.
    ``always``
        Every publish call is written and synced on its own, log and index both, before
        the next is written: no coalescing across calls.
    """

    NONE = "none"
    BATCH = "batch"
    ALWAYS = "always"


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening a log found and did."""

    messages: int
    batches: int
    reindexed_messages: int = 0
    cut_bytes: int = 0
    cut_to: Path | None = None
    problems: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an appended batch landed."""

    first_seq: int
    count: int
    offset: int
    length: int


def _pack_record(first_seq: int, offset: int, length: int, count: int, crc: int) -> bytes:
    body = _RECORD.pack(first_seq, offset, length, count, crc)
    return body + zlib.crc32(body).to_bytes(4, "little")


def packet_offsets(data: bytes | memoryview, base: int = 0) -> list[int]:
    """Offsets (from ``base``) of every whole Sequenced Data packet at the start of
    ``data``, then the offset where the whole packets end. Stops at the first packet
    that is torn or is not Sequenced Data."""
    offsets: list[int] = []
    position = 0
    size = len(data)
    while position + _PACKET_HEADER <= size:
        length = (data[position] << 8) | data[position + 1]
        if length == 0 or data[position + 2] != _SEQUENCED or position + 2 + length > size:
            break
        offsets.append(base + position)
        position += 2 + length
    offsets.append(base + position)
    return offsets


class SessionLog:
    """One session's log and index. Open with :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        log_fd: int,
        index_fd: int | None,
        durability: Durability,
        first_seqs: array[int],
        offsets: array[int],
        end_offset: int,
        next_seq: int,
        recovery: Recovery,
    ) -> None:
        self.directory = directory
        self.durability = durability
        self.recovery = recovery
        self._log_fd = log_fd
        self._index_fd = index_fd
        self._first_seqs = first_seqs
        self._offsets = offsets
        self._end_offset = end_offset
        self._next_seq = next_seq
        self._reader = open(directory / LOG_FILE, "rb")  # noqa: SIM115 - lives as long as the log
        self._closed = False

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        durability: Durability = Durability.BATCH,
        writable: bool = True,
        create: bool = False,
    ) -> SessionLog:
        """Open (and with ``create``, make) the log in ``directory``, recovering it.

        A read-only log is checked the same way but nothing on disk is changed: damaged
        or unindexed bytes are simply not served.
        """
        log_path = directory / LOG_FILE
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        elif not log_path.exists():
            raise StoreError(f"no session log at {log_path}")
        if writable:
            log_fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            index_fd: int | None = os.open(
                directory / INDEX_FILE, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644
            )
            if create:
                _fsync_directory(directory)
        else:
            log_fd = os.open(log_path, os.O_RDONLY)
            index_fd = None
        try:
            return cls._recover(directory, log_fd, index_fd, durability, writable)
        except BaseException:
            os.close(log_fd)
            if index_fd is not None:
                os.close(index_fd)
            raise

    @classmethod
    def _recover(
        cls,
        directory: Path,
        log_fd: int,
        index_fd: int | None,
        durability: Durability,
        writable: bool,
    ) -> SessionLog:
        problems: list[str] = []
        index_path = directory / INDEX_FILE
        raw_index = index_path.read_bytes() if index_path.exists() else b""
        log_size = os.fstat(log_fd).st_size
        first_seqs = array("Q")
        offsets = array("Q")
        next_seq = 1
        end = 0
        rewrite_index = False

        if len(raw_index) % _RECORD_SIZE:
            problems.append(
                f"index ends in a partial record ({len(raw_index) % _RECORD_SIZE} bytes)"
            )
            rewrite_index = True
        records = len(raw_index) // _RECORD_SIZE
        for number in range(records):
            record = raw_index[number * _RECORD_SIZE : (number + 1) * _RECORD_SIZE]
            body = record[: _RECORD.size]
            if zlib.crc32(body) != int.from_bytes(record[_RECORD.size :], "little"):
                problems.append(f"index record {number} fails its checksum")
                rewrite_index = True
                break
            first_seq, offset, length, count, crc = _RECORD.unpack(body)
            if first_seq != next_seq or offset != end or count == 0:
                problems.append(
                    f"index record {number} does not follow on (sequence {first_seq}, "
                    f"offset {offset}; expected {next_seq}, {end})"
                )
                rewrite_index = True
                break
            if offset + length > log_size:
                problems.append(
                    f"log is shorter ({log_size} bytes) than the index says "
                    f"({offset + length}); sequence {first_seq} on is missing"
                )
                rewrite_index = True
                break
            if zlib.crc32(os.pread(log_fd, length, offset)) != crc:
                problems.append(
                    f"batch at offset {offset} (sequence {first_seq}..{first_seq + count - 1})"
                    " fails its checksum"
                )
                rewrite_index = True
                log_size = offset  # never serve this batch or anything after it
                break
            first_seqs.append(first_seq)
            offsets.append(offset)
            next_seq += count
            end = offset + length

        # Packets past the last good index record: appended but not indexed before a
        # crash. Whole, well-formed packets are kept; a torn or foreign tail is cut.
        reindexed = 0
        new_records: list[bytes] = []
        position = end
        while position < log_size:
            chunk = os.pread(log_fd, min(_VERIFY_CHUNK, log_size - position), position)
            found = packet_offsets(chunk, position)
            count = len(found) - 1
            if count == 0:
                break  # a torn or foreign packet at `position`: everything from it is cut
            length = found[-1] - position
            new_records.append(
                _pack_record(next_seq, position, length, count, zlib.crc32(chunk[:length]))
            )
            first_seqs.append(next_seq)
            offsets.append(position)
            next_seq += count
            reindexed += count
            position += length
        end = position
        if reindexed:
            problems.append(f"re-indexed {reindexed} messages written after the last index record")
            rewrite_index = True

        actual_size = os.fstat(log_fd).st_size
        cut_bytes = actual_size - end
        cut_to: Path | None = None
        if cut_bytes:
            problems.append(
                f"cut {cut_bytes} bytes after offset {end} (sequence {next_seq} on): "
                "a torn or damaged tail"
            )
            if writable:
                cut_to = _unused_path(directory / f"{LOG_FILE}.cut-{end}")
                with open(cut_to, "xb") as aside:
                    position = end
                    while position < actual_size:
                        block = os.pread(
                            log_fd, min(_VERIFY_CHUNK, actual_size - position), position
                        )
                        aside.write(block)
                        position += len(block)
                    aside.flush()
                    os.fsync(aside.fileno())
                os.ftruncate(log_fd, end)
                os.fsync(log_fd)
        if writable and rewrite_index and index_fd is not None:
            kept = len(first_seqs) - len(new_records)
            good = raw_index[: kept * _RECORD_SIZE] + b"".join(new_records)
            os.ftruncate(index_fd, 0)
            os.write(index_fd, good)
            os.fsync(index_fd)

        recovery = Recovery(
            messages=next_seq - 1,
            batches=len(first_seqs),
            reindexed_messages=reindexed,
            cut_bytes=cut_bytes,
            cut_to=cut_to,
            problems=tuple(problems),
        )
        for problem in problems:
            log.warning("session %s: %s", directory.name, problem)
        return cls(
            directory, log_fd, index_fd, durability, first_seqs, offsets, end, next_seq, recovery
        )

    # ------------------------------------------------------------------ writing

    def append(self, batch: bytes, count: int) -> Appended:
        """Append ``count`` encoded Sequenced Data packets and make them durable per the
        policy. Called from one thread only. Raises ``OSError`` when the write fails; the
        log and index are then truncated back to where they were, so they never hold a
        partial batch."""
        if self._index_fd is None:
            raise StoreError(f"session log {self.directory} is open read-only")
        first_seq = self._next_seq
        offset = self._end_offset
        record = _pack_record(first_seq, offset, len(batch), count, zlib.crc32(batch))
        try:
            written = os.write(self._log_fd, batch)
            if written != len(batch):
                raise OSError(f"short write: {written} of {len(batch)} bytes")
            if self.durability is not Durability.NONE:
                os.fdatasync(self._log_fd)
            os.write(self._index_fd, record)
            if self.durability is Durability.ALWAYS:
                os.fdatasync(self._index_fd)
        except OSError:
            os.ftruncate(self._log_fd, offset)
            # The record may already be in the index (a failed index sync): drop it too,
            # or the next batch lands at the same offset under a stale record and the
            # next recovery cuts it as damaged. The index holds one record per batch.
            os.ftruncate(self._index_fd, len(self._first_seqs) * _RECORD_SIZE)
            raise
        self._first_seqs.append(first_seq)
        self._offsets.append(offset)
        self._end_offset = offset + len(batch)
        self._next_seq = first_seq + count
        return Appended(first_seq, count, offset, len(batch))

    # ------------------------------------------------------------------ reading

    @property
    def next_seq(self) -> int:
        """One past the last message appended: the number the next message will get."""
        return self._next_seq

    @property
    def end_offset(self) -> int:
        return self._end_offset

    @property
    def reader(self) -> BinaryIO:
        """A binary file object over the log, for ``loop.sendfile``."""
        return self._reader

    def fileno(self) -> int:
        return self._reader.fileno()

    def offset_of(self, seq: int) -> int:
        """The byte offset of message ``seq``; ``next_seq`` maps to the end of the log."""
        if seq == self._next_seq:
            return self._end_offset
        if not 1 <= seq < self._next_seq:
            raise StoreError(
                f"sequence {seq} is not in {self.directory.name} (1..{self._next_seq - 1})"
            )
        batch = bisect_right(self._first_seqs, seq) - 1
        offset = self._offsets[batch]
        skip = seq - self._first_seqs[batch]
        if skip == 0:
            return offset
        limit = self._batch_end(batch)
        block = os.pread(self._reader.fileno(), limit - offset, offset)
        position = 0
        for _ in range(skip):
            position += 2 + ((block[position] << 8) | block[position + 1])
        return offset + position

    def span(self, seq: int, max_bytes: int, limit_seq: int) -> tuple[int, int, int]:
        """A byte range to send from message ``seq``: about ``max_bytes``, ending on a
        batch boundary or at ``limit_seq``. Returns ``(start, end_seq, end_offset)``."""
        start = self.offset_of(seq)
        batch = bisect_left(self._offsets, start + max_bytes)
        if batch < len(self._offsets) and self._first_seqs[batch] < limit_seq:
            return start, self._first_seqs[batch], self._offsets[batch]
        return start, limit_seq, self.offset_of(limit_seq)

    def read(self, seq: int, max_bytes: int, limit_seq: int | None = None) -> tuple[bytes, int]:
        """Whole packets from ``seq`` on, at most ``max_bytes`` (but at least one packet),
        stopping before ``limit_seq``. Returns the bytes and the number of packets."""
        limit = self._next_seq if limit_seq is None else min(limit_seq, self._next_seq)
        if seq >= limit:
            return b"", 0
        start = self.offset_of(seq)
        stop = self.offset_of(limit)
        if stop - start <= max_bytes:
            return os.pread(self._reader.fileno(), stop - start, start), limit - seq
        block = os.pread(self._reader.fileno(), min(stop - start, max(max_bytes, 65537)), start)
        found = packet_offsets(block)
        count = max(bisect_right(found, max_bytes) - 1, 1)
        return block[: found[count]], count

    def _batch_end(self, batch: int) -> int:
        if batch + 1 < len(self._offsets):
            return self._offsets[batch + 1]
        return self._end_offset

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        os.close(self._log_fd)
        if self._index_fd is not None:
            os.close(self._index_fd)

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify(directory: Path) -> Recovery:
    """Check a session's log and index without changing anything."""
    with SessionLog.open(directory, writable=False) as session_log:
        return session_log.recovery


def _unused_path(path: Path) -> Path:
    """``path``, or ``path.N`` for the first N that does not exist: bytes moved aside by
    an earlier recovery cut at the same offset must not be overwritten."""
    candidate = path
    number = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{number}")
        number += 1
    return candidate


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "Appended",
    "Durability",
    "Recovery",
    "SessionLog",
    "packet_offsets",
    "verify",
]
