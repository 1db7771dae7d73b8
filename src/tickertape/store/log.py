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
recovers it: an index record that fails its own check has a single flipped bit put right
(CRC-32 tells every single-bit error in a record apart) and is otherwise dropped, as is
one that does not follow on from the previous one; each batch's checksum is verified.
A message is served only if a checksum vouches for its bytes. Bytes in the log past the
last record (the *tail*: a batch being appended, or one whose record a crash kept from
being written) are not damage: the writer acknowledges a batch only once its record is
written (and synced, unless the policy is ``none``), so they were never acknowledged.
Bytes that cannot be trusted are never served; a writable open moves them, and the tail,
aside to ``log.cut-OFFSET`` and the log continues from the vouched-for prefix.

Only one thread appends (the session writer); any thread may read what was appended.

Another process may *follow* a log that a server is appending to: opened with
``follow=True`` it is read-only, serves only batches whose index record is written and
whose checksums pass (bytes past the last record are a batch being appended, not damage),
and :meth:`SessionLog.refresh` picks up the batches appended since.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from tickertape.errors import StoreError
from tickertape.text import plural

log = logging.getLogger(__name__)

LOG_FILE: Final = "log"
INDEX_FILE: Final = "index"
LOST_FILE: Final = "lost"
"""In the directory of a session ended because messages its index vouched for were lost
(start-up found them damaged and cut them): which ones. What is left of the log is
clean, but the session cannot be served whole: pulls end with a Debug packet saying so."""

_RECORD: Final = struct.Struct("<QQIII")  # first_seq, offset, length, count, crc32(batch)
_RECORD_SIZE: Final = _RECORD.size + 4  # + crc32 of the record itself
_PACKET_HEADER: Final = 3
_SEQUENCED: Final = 0x53
_VERIFY_CHUNK: Final = 8 << 20
DEFAULT_REFRESH_BYTES: Final = 8 << 20
"""About how many bytes of new batches one :meth:`SessionLog.refresh` reads (at least one
batch): it bounds the memory a follower holds between two deliveries."""
_REFRESH_INDEX_CHUNK: Final = _RECORD_SIZE * 4096


class Durability(enum.Enum):
    """When an appended batch is forced to stable storage.

    ``none``
        Never: the page cache decides. A process crash loses nothing that was
        appended; an operating-system crash or power loss can lose recent batches.
    ``batch``
        Per batch, one ``fdatasync`` of the log, then one of the index, before the batch
        is published (group commit: a batch holds everything published while the
        previous one was being synced). Every acknowledged message has its bytes and the
        checksum that vouches for them on stable storage.
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
    cut_bytes: int = 0
    """Bytes not served because they are damaged or follow damage (a problem)."""
    cut_to: Path | None = None
    """Where a writable open moved the bytes past the last good batch (damaged, or the
    tail), ``log.cut-OFFSET``; None if it moved none."""
    problems: tuple[str, ...] = ()
    vouched: int = 0
    """The highest sequence number an index record (one that passes its own check, or
    was put right) vouches for; 0 if none does. The writer writes a batch's record only
    once the batch is in the log, and publishes the batch only after that."""
    tail_bytes: int = 0
    """Bytes past the last index record, with no damage before them: a batch being
    appended, or, if the writer stopped, one whose record was never written. No checksum
    vouches for them, so they are never served; the writer acknowledges a batch only
    once its record is written (and synced, under ``batch`` and ``always``), so they were
    never acknowledged. Not damage: a writable open moves them aside."""
    tail_messages: int = 0
    """Whole packets at the start of the tail (what its length prefixes say)."""

    @property
    def clean(self) -> bool:
        """Whether nothing is damaged. A tail (:attr:`tail_bytes`) is not damage."""
        return not self.problems

    def tail_summary(self) -> str:
        """The tail in a few words: ``3 messages (1236 bytes) past the last index
        record, from sequence 58``."""
        bytes_ = f"{self.tail_bytes} byte{'s' if self.tail_bytes != 1 else ''}"
        what = (
            f"{self.tail_messages} message{'s' if self.tail_messages != 1 else ''} ({bytes_})"
            if self.tail_messages
            else bytes_
        )
        return f"{what} past the last index record, from sequence {self.messages + 1}"

    def tail_note(self) -> str | None:
        """What the tail is, for a person reading the log of a session that may still be
        written; None if there is none."""
        if not self.tail_bytes:
            return None
        return (
            f"{self.tail_summary()}: being written, or never acknowledged if the writer "
            "stopped (not served; the next start of a server sets them aside)"
        )

    @property
    def lost_vouched(self) -> bool:
        """Whether messages the index vouched for are not kept (:attr:`messages` is
        below :attr:`vouched`): they had been published, and numbering on from
        :attr:`messages` would give their numbers to other messages. A torn or unindexed
        tail (a crash before the index was written) was never published: it is not."""
        return self.vouched > self.messages


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


def _corrected(record: bytes) -> bytes | None:
    """``record``, which fails its own check, with the one flipped bit that explains it
    put back; None if no single bit does. CRC-32 tells every single-bit error in a
    32-byte record apart (no two, or three, flipped bits look like one), so the
    correction is unique, and a record with more bits flipped is never "corrected"."""
    body = bytearray(record[: _RECORD.size])
    stored = int.from_bytes(record[_RECORD.size :], "little")
    actual = zlib.crc32(body)
    if (actual ^ stored).bit_count() == 1:  # the flipped bit is in the stored CRC
        return bytes(body) + actual.to_bytes(4, "little")
    for bit in range(len(body) * 8):
        body[bit >> 3] ^= 1 << (bit & 7)
        if zlib.crc32(body) == stored:
            return bytes(body) + record[_RECORD.size :]
        body[bit >> 3] ^= 1 << (bit & 7)
    return None


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


class ReadableLog(Protocol):
    """What serving a session needs of its log, archived or not."""

    @property
    def next_seq(self) -> int: ...

    def offset_of(self, seq: int) -> int: ...

    def span(self, seq: int, max_bytes: int, limit_seq: int) -> tuple[int, int, int]: ...

    def read_range(self, offset: int, count: int) -> bytes: ...

    def sendfile_source(self) -> BinaryIO | None:
        """A file whose bytes are the log's, for ``sendfile``; None if there is none
        (an archived log is compressed): then :meth:`read_range` serves."""
        ...

    @property
    def damage(self) -> str | None:
        """Why the session cannot be served past :attr:`next_seq` although it holds
        more (damaged messages, or bytes that cannot be read as messages); None if what
        is served is the whole of it, as far as can be told."""
        ...

    def close(self) -> None: ...


class _Held:
    """An index record of a batch a followed log already holds."""


_HELD: Final = _Held()


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
        # (next_seq, end_offset), replaced as one object: a reader on another thread
        # never sees one updated without the other.
        self._tail = (next_seq, end_offset)
        self._reader = open(directory / LOG_FILE, "rb")  # noqa: SIM115 - lives as long as the log
        self._walked: tuple[int, list[int]] | None = None
        self._closed = False
        # (log size, index size) to cut the files back to before the next append: set
        # when cutting back after a failed append failed too.
        self._cut_back_to: tuple[int, int] | None = None
        # Following another process's appends (``open(..., follow=True)``): the index as
        # last opened (its inode and descriptor), where its next unread record is (None:
        # to be found), and the problem that holds the follower back, if any.
        self._following = False
        self._follow_index: tuple[int, int] | None = None
        self._follow_position: int | None = None
        self._follow_problem: str | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        durability: Durability = Durability.BATCH,
        writable: bool = True,
        create: bool = False,
        follow: bool = False,
        before_repair: Callable[[Recovery], None] | None = None,
    ) -> SessionLog:
        """Open (and with ``create``, make) the log in ``directory``, recovering it.

        A read-only log is checked the same way but nothing on disk is changed: damaged
        or unindexed bytes are simply not served.

        A writable open about to change the files (cut the log, write a mended index)
        first calls ``before_repair`` with what it found (``cut_to`` not yet set): a
        caller may persist a decision that rests on it, which the repair would otherwise
        leave no trace of after a crash. If it raises, nothing is changed and the open
        fails.

        ``follow`` opens, read-only, a log that another process may be appending to:
        packets past the last index record are a batch being appended (not yet served,
        not reported as damage), and :meth:`refresh` takes batches as their records
        appear.
        """
        if follow and writable:
            raise StoreError("a followed log is read-only: open it with writable=False")
        log_path = directory / LOG_FILE
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        elif not log_path.exists():
            raise StoreError(f"no session log at {log_path}")
        if writable:
            log_fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if create:
                _fsync_directory(directory)
        else:
            log_fd = os.open(log_path, os.O_RDONLY)
        try:
            opened = cls._recover(directory, log_fd, durability, writable, follow, before_repair)
        except BaseException:
            os.close(log_fd)
            raise
        opened._following = follow
        return opened

    @classmethod
    def _recover(
        cls,
        directory: Path,
        log_fd: int,
        durability: Durability,
        writable: bool,
        follow: bool = False,
        before_repair: Callable[[Recovery], None] | None = None,
    ) -> SessionLog:
        index_path = directory / INDEX_FILE
        raw_index = index_path.read_bytes() if index_path.exists() else b""
        # The log's size once, after the index was read: the writer appends a batch to
        # the log before its record, so every record read has its batch within it, and
        # bytes appended after this are simply not looked at.
        log_size = os.fstat(log_fd).st_size
        problems: list[str] = []

        # The index's tail: a partial last record (one being written, or torn by a
        # crash) and whole records of zeros at the end (appended, but their page never
        # reached the disk) were never synced, so never acknowledged: not damage.
        whole = len(raw_index) - len(raw_index) % _RECORD_SIZE
        nonzero = len(raw_index[:whole].rstrip(b"\0"))
        index_records = -(-nonzero // _RECORD_SIZE)

        # Every index record that passes its own check (or has its one flipped bit put
        # right), by the offset of its batch. A record that cannot be put right leaves
        # its batch with no checksum to vouch for it: the walk below stops there.
        valid: list[bytes] = []
        reported: list[bytes] = []
        known: dict[int, bytes] = {}
        unreadable = 0
        for number in range(index_records):
            record = raw_index[number * _RECORD_SIZE : (number + 1) * _RECORD_SIZE]
            if zlib.crc32(record[: _RECORD.size]) != int.from_bytes(
                record[_RECORD.size :], "little"
            ):
                corrected = _corrected(record)
                if corrected is None:
                    problems.append(f"index record {number} fails its checksum")
                    unreadable += 1
                    continue
                problems.append(
                    f"index record {number} fails its checksum: one bit was flipped, and "
                    "put right (its batch is checked against the corrected record)"
                )
                record = corrected
            valid.append(record)
            known[_RECORD.unpack_from(record)[1]] = record
        starts = sorted(known)

        # Walk the log batch by batch, each vouched for by its record's checksum. A
        # message is served only if a checksum vouches for its bytes: the walk stops at
        # the first byte none does. Past the last record that is the tail (a batch being
        # appended, or one whose record was never written: never acknowledged, since the
        # writer acknowledges a batch only once its record is written, and synced under
        # ``batch`` and ``always``); anywhere else it is damage.
        records: list[bytes] = []
        first_seqs = array("Q")
        offsets = array("Q")
        next_seq = 1
        position = 0
        damaged = False
        while position < log_size:
            found_record = known.get(position)
            if found_record is None:
                if bisect_right(starts, position) < len(starts):
                    damaged = True
                    problems.append(
                        f"the log from offset {position} (sequence {next_seq} on) has no "
                        "index record, but later batches have: no checksum vouches for it"
                    )
                break  # else the tail
            first_seq, _, length, count, crc = _RECORD.unpack_from(found_record)
            if first_seq == next_seq and count and position + length <= log_size:
                if zlib.crc32(os.pread(log_fd, length, position)) != crc:
                    problems.append(
                        f"batch at offset {position} (sequence {first_seq}.."
                        f"{first_seq + count - 1}) fails its checksum"
                    )
                    damaged = True
                    break  # never serve this batch or anything after it
                records.append(found_record)
                first_seqs.append(first_seq)
                offsets.append(position)
                next_seq += count
                position += length
                continue
            reported.append(found_record)  # said here; not again as stray below
            damaged = True
            if first_seq == next_seq and position + length > log_size:
                problems.append(
                    f"log is shorter ({log_size} bytes) than the index says "
                    f"({position + length}); the batch from sequence {first_seq} is incomplete"
                )
            else:
                problems.append(
                    f"index record for offset {position} (sequence {first_seq}) does not "
                    f"follow on (expected sequence {next_seq})"
                )
            break
        # Good records the walk did not use, for messages it kept: duplicated or out of
        # place. (Unused records past the kept messages are reported as missing below.)
        unused = Counter(records)
        unused.update(reported)
        stray = 0
        for record in valid:
            if unused[record] > 0:
                unused[record] -= 1
            elif _RECORD.unpack_from(record)[0] < next_seq:
                stray += 1
        if stray > 0:
            problems.append(
                f"dropped {stray} index records that match no batch of the log "
                "(duplicated or out of place)"
            )
        promised = max(
            (
                first + count - 1
                for first, _, _, count, _ in map(_RECORD.unpack_from, known.values())
            ),
            default=0,
        )
        if promised >= next_seq:
            damaged = True
            problems.append(
                f"the index lists messages up to sequence {promised} but the log holds only "
                f"up to {next_seq - 1}: {plural(promised - next_seq + 1, 'message')} "
                + ("is" if promised == next_seq else "are")
                + " missing"
            )

        if unreadable and not damaged and position < log_size:
            # The bytes past the last good record may be the batch of a damaged record:
            # written, synced and acknowledged. They are not served (nothing vouches
            # for them), and they count as published, so that their numbers are never
            # given to other messages.
            damaged = True
            promised = max(promised, _published_at_least(log_fd, position, log_size, next_seq))
        if not index_path.exists() and log_size:
            # An index is made with its log, before the first append: the log had one.
            damaged = True
            problems.append(
                f"the index is missing: no checksum vouches for the log's {log_size} bytes"
            )
            promised = max(promised, _published_at_least(log_fd, 0, log_size, next_seq))
        end = position
        cut_bytes = log_size - end if damaged else 0
        tail_bytes = 0 if damaged else log_size - end
        tail_messages = _count_packets(log_fd, end, log_size) if tail_bytes else 0
        if cut_bytes:
            problems.append(
                f"{plural(cut_bytes, 'byte')} from offset {end} (sequence {next_seq} on) not "
                "served: damaged, or following damage"
            )
        recovery = Recovery(
            messages=next_seq - 1,
            batches=len(first_seqs),
            cut_bytes=cut_bytes,
            problems=tuple(problems),
            vouched=promised,
            tail_bytes=tail_bytes,
            tail_messages=tail_messages,
        )
        for problem in problems:
            log.warning("session %s: %s", directory.name, problem)
        good_index = b"".join(records)
        index_fd: int | None = None
        if writable:
            rewrite = good_index != raw_index or not index_path.exists()
            actual_size = os.fstat(log_fd).st_size
            if before_repair is not None and (actual_size > end or rewrite):
                before_repair(recovery)
            if actual_size > end:
                cut_to = _move_aside(directory, log_fd, end, actual_size)
                recovery = replace(recovery, cut_to=cut_to)
                if tail_bytes:
                    log.warning(
                        "session %s: dropped %s: %s; the bytes are kept in %s",
                        directory.name,
                        recovery.tail_summary(),
                        "no checksum vouches for them, and they were never acknowledged",
                        cut_to,
                    )
                else:
                    log.warning(
                        "session %s: the %d bytes cut (sequence %d on) are kept in %s",
                        directory.name,
                        cut_bytes,
                        next_seq,
                        cut_to,
                    )
            if rewrite:
                _replace_file(index_path, good_index)
            index_fd = os.open(index_path, os.O_WRONLY | os.O_APPEND)
        elif cut_bytes:
            log.warning(
                "session %s: the %d damaged bytes after offset %d (sequence %d on) are not "
                "served; nothing on disk is changed (opened read-only)",
                directory.name,
                cut_bytes,
                end,
                next_seq,
            )
        elif tail_bytes and not follow:
            log.info("session %s: %s", directory.name, recovery.tail_note())
        return cls(
            directory, log_fd, index_fd, durability, first_seqs, offsets, end, next_seq, recovery
        )

    # ------------------------------------------------------------------ writing

    def append(self, batch: bytes, count: int, crc: int | None = None) -> Appended:
        """Append ``count`` encoded Sequenced Data packets and make them durable per the
        policy; ``crc`` is the batch's CRC-32 if the caller has it. Called from one thread
        only.

        A write or sync that fails (a full disk, a file-size limit, an I/O error) raises
        :class:`StoreError` saying so, its cause the ``OSError``. The log and the index
        are then cut back to where they were, so they never hold a partial batch, and
        nothing here moves: the batch was not appended. Should cutting back fail too,
        the first bytes of the failed batch are overwritten (recovery sets them aside in
        any case: no record vouches for them), every later append first tries the cut
        again and is refused until it works, and what this log serves is still only what
        was appended before."""
        if self._index_fd is None:
            raise StoreError(f"session log {self.directory} is open read-only")
        if count <= 0:
            raise StoreError(f"a batch holds at least one message, not {count}")
        if self._cut_back_to is not None:
            self._retry_cut_back()
        first_seq, offset = self._tail
        if crc is None:
            crc = zlib.crc32(batch)
        record = _pack_record(first_seq, offset, len(batch), count, crc)
        doing, where = "writing", LOG_FILE
        try:
            _write_all(self._log_fd, batch)
            if self.durability is not Durability.NONE:
                doing = "syncing"
                os.fdatasync(self._log_fd)
            # The record after the batch is durable: a record on disk always vouches for
            # bytes that are. Then the record is synced too, before the caller publishes
            # and acknowledges the batch: recovery serves only what a record vouches for.
            doing, where = "writing", INDEX_FILE
            _write_all(self._index_fd, record)
            if self.durability is not Durability.NONE:
                doing = "syncing"
                os.fdatasync(self._index_fd)
        except OSError as exc:
            raise self._append_failed(
                exc, f"{doing} session {self.directory.name}'s {where}"
            ) from exc
        self._first_seqs.append(first_seq)
        self._offsets.append(offset)
        self._tail = (first_seq + count, offset + len(batch))
        return Appended(first_seq, count, offset, len(batch))

    def sync(self) -> None:
        """Force the log and the index to stable storage, whatever the durability
        policy: what ending a session promises before its ``ended`` marker is written.
        Raises :class:`StoreError` if a sync fails."""
        if self._index_fd is None:
            raise StoreError(f"session log {self.directory} is open read-only")
        try:
            os.fdatasync(self._log_fd)
            os.fdatasync(self._index_fd)
        except OSError as exc:
            raise StoreError(
                f"{_reason(exc)} syncing session {self.directory.name}'s log and index"
            ) from exc

    def _append_failed(self, exc: OSError, doing: str) -> StoreError:
        """Cut the log and index back to before the failed batch; the error to raise."""
        offset = self._tail[1]
        # The index holds one record per batch: a record of the failed batch already
        # written (a failed index sync) goes too, or the next batch would land at the
        # same offset under a stale record and the next recovery would cut it.
        index_size = len(self._first_seqs) * _RECORD_SIZE
        message = f"{_reason(exc)} {doing}"
        try:
            self._cut_back(offset, index_size)
        except OSError as cut_exc:
            self._cut_back_to = (offset, index_size)
            spoiled = _spoil_packet(self.directory / LOG_FILE, offset)
            message += (
                f"; cutting the log back to {offset} bytes failed too ({_reason(cut_exc)}): "
                "the next append tries again first"
                + (
                    f", and a restart cuts what is past sequence {self._tail[0] - 1}"
                    if spoiled
                    else ""
                )
            )
            log.error("session %s: %s", self.directory.name, message)
        return StoreError(message)

    def _cut_back(self, offset: int, index_size: int) -> None:
        assert self._index_fd is not None
        os.ftruncate(self._log_fd, offset)
        os.ftruncate(self._index_fd, index_size)
        self._cut_back_to = None
        if self.durability is not Durability.NONE:
            # Best effort: the cut was made in memory; a crash before it reaches the disk
            # leaves bytes past the last good batch, which recovery deals with.
            with contextlib.suppress(OSError):
                os.fsync(self._log_fd)

    def _retry_cut_back(self) -> None:
        assert self._cut_back_to is not None
        offset, index_size = self._cut_back_to
        try:
            self._cut_back(offset, index_size)
        except OSError as exc:
            raise StoreError(
                f"session {self.directory.name}'s log still holds a batch whose append "
                f"failed, and cutting it back to {offset} bytes fails: {_reason(exc)}"
            ) from exc
        log.info("session %s: the failed batch was cut back at last", self.directory.name)

    # ------------------------------------------------------------------ reading

    @property
    def next_seq(self) -> int:
        """One past the last message appended: the number the next message will get."""
        return self._tail[0]

    @property
    def end_offset(self) -> int:
        return self._tail[1]

    @property
    def reader(self) -> BinaryIO:
        """A binary file object over the log, for ``loop.sendfile``."""
        return self._reader

    def sendfile_source(self) -> BinaryIO | None:
        """The file to ``sendfile`` byte ranges from (:meth:`span` gives them)."""
        return self._reader

    def read_range(self, offset: int, count: int) -> bytes:
        """``count`` bytes of the log from ``offset``: each read names its offset, so
        readers on any thread never disturb each other."""
        return os.pread(self._reader.fileno(), count, offset)

    @property
    def damage(self) -> str | None:
        """Why the session cannot be served past :attr:`next_seq` although it holds
        more; None if what is served is the whole of it, as far as can be told.

        A log opened read-only (a closed session) that lost messages its index vouched
        for, or that holds bytes past its intact part (a damaged batch and what follows
        it, a torn packet, garbage), is not whole; nor is a followed log that stopped at
        a damaged batch. A writable log was repaired at opening: what it holds is the
        session (what was cut had never been published, or the session was ended)."""
        if self._follow_problem is not None:
            return self._follow_problem
        if self._index_fd is not None:
            return None
        lost = lost_note(self.directory)
        if lost is not None:
            return lost
        recovery = self.recovery
        if not (recovery.lost_vouched or recovery.cut_bytes):
            return None
        return "; ".join(recovery.problems[:3])

    def fileno(self) -> int:
        return self._reader.fileno()

    def offset_of(self, seq: int) -> int:
        """The byte offset of message ``seq``; ``next_seq`` maps to the end of the log."""
        next_seq, end_offset = self._tail
        if seq == next_seq:
            return end_offset
        if not 1 <= seq < next_seq:
            raise StoreError(f"sequence {seq} is not in {self.directory.name} (1..{next_seq - 1})")
        batch = bisect_right(self._first_seqs, seq) - 1
        offset = self._offsets[batch]
        skip = seq - self._first_seqs[batch]
        if skip == 0:
            return offset
        # Where each message of the batch starts, worked out once and kept for the last
        # batch asked about: gap fills and re-requests ask for one batch over and over.
        walked = self._walked
        if walked is None or walked[0] != offset:
            limit = self._batch_end(batch)
            block = os.pread(self._reader.fileno(), limit - offset, offset)
            walked = (offset, packet_offsets(block, offset))
            self._walked = walked  # one assignment: safe for readers on other threads
        return walked[1][skip]

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
        next_seq = self._tail[0]
        limit = next_seq if limit_seq is None else min(limit_seq, next_seq)
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

    # ------------------------------------------------------------------ following

    @property
    def following(self) -> bool:
        """Whether this log was opened to follow another process's appends."""
        return self._following

    @property
    def follow_problem(self) -> str | None:
        """Why :meth:`refresh` cannot go on, if it cannot: a damaged record or batch."""
        return self._follow_problem

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
        if not self._following:
            raise StoreError(f"session log {self.directory} was not opened to follow")
        if self._closed:
            raise StoreError(f"session log {self.directory} is closed")
        index_path = self.directory / INDEX_FILE
        try:
            status = os.stat(index_path)
        except FileNotFoundError:
            return []  # the writer has not made it yet
        if self._follow_index is None or self._follow_index[0] != status.st_ino:
            try:
                fd = os.open(index_path, os.O_RDONLY)
            except FileNotFoundError:
                return []  # replaced between the two calls: the next refresh opens it
            if self._follow_index is not None:
                os.close(self._follow_index[1])
                self._follow_position = 0  # a new index: read it all, skip what we hold
            self._follow_index = (os.fstat(fd).st_ino, fd)
        fd = self._follow_index[1]
        size = os.fstat(fd).st_size
        position = self._follow_position
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
        while position + _RECORD_SIZE <= size and taken_bytes < max_bytes:
            chunk = os.pread(fd, min(size - position, _REFRESH_INDEX_CHUNK), position)
            chunk = chunk[: len(chunk) - len(chunk) % _RECORD_SIZE]
            if not chunk:
                break
            for start in range(0, len(chunk), _RECORD_SIZE):
                batch = self._take_record(chunk[start : start + _RECORD_SIZE], position)
                if batch is None:
                    self._follow_position = position
                    return taken
                position += _RECORD_SIZE
                if not isinstance(batch, _Held):
                    taken.append(batch)
                    taken_bytes += len(batch[1])
                    if taken_bytes >= max_bytes:
                        break
        self._follow_position = position
        if taken:
            self._follow_problem = None
        return taken

    def _first_index_position(self, fd: int, size: int) -> int:
        """Where the record after the last batch held is: one record per batch in an
        index the writer recovered (the usual case), else found by reading from 0."""
        held = len(self._first_seqs)
        position = held * _RECORD_SIZE
        if held == 0:
            return 0
        if position > size:
            return 0
        record = os.pread(fd, _RECORD_SIZE, position - _RECORD_SIZE)
        if len(record) == _RECORD_SIZE and zlib.crc32(record[: _RECORD.size]) == int.from_bytes(
            record[_RECORD.size :], "little"
        ):
            first_seq, offset, _, _, _ = _RECORD.unpack_from(record)
            if first_seq == self._first_seqs[-1] and offset == self._offsets[-1]:
                return position
        return 0

    def _take_record(self, record: bytes, position: int) -> tuple[Appended, bytes] | _Held | None:
        """Check one index record and take its batch: the batch and its bytes; ``_HELD``
        for a batch already held; None to stop here (not yet whole, or damaged)."""
        if zlib.crc32(record[: _RECORD.size]) != int.from_bytes(record[_RECORD.size :], "little"):
            self._stall(f"index record at byte {position} fails its checksum")
            return None
        first_seq, offset, length, count, crc = _RECORD.unpack_from(record)
        next_seq, end_offset = self._tail
        if count and first_seq + count <= next_seq:
            return _HELD
        if first_seq != next_seq or offset != end_offset or not count:
            self._stall(
                f"index record at byte {position} (sequence {first_seq}, offset {offset}) "
                f"does not follow on (expected sequence {next_seq} at offset {end_offset})"
            )
            return None
        data = os.pread(self._log_fd, length, offset)
        if len(data) < length:
            return None  # cannot happen (the log is written first); try again later
        if zlib.crc32(data) != crc:
            self._stall(
                f"batch at offset {offset} (sequence {first_seq}..{first_seq + count - 1}) "
                "fails its checksum: not served"
            )
            return None
        self._first_seqs.append(first_seq)
        self._offsets.append(offset)
        self._tail = (first_seq + count, offset + length)
        return Appended(first_seq, count, offset, length), data

    def _stall(self, problem: str) -> None:
        if problem != self._follow_problem:
            self._follow_problem = problem
            log.error("session %s: %s; following stops there", self.directory.name, problem)

    def _batch_end(self, batch: int) -> int:
        if batch + 1 < len(self._offsets):
            return self._offsets[batch + 1]
        return self._tail[1]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reader.close()
        os.close(self._log_fd)
        if self._index_fd is not None:
            os.close(self._index_fd)
        if self._follow_index is not None:
            os.close(self._follow_index[1])
            self._follow_index = None

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify(directory: Path) -> Recovery:
    """Check a session's log and index without changing anything."""
    with SessionLog.open(directory, writable=False) as session_log:
        return session_log.recovery


class _Damaged(Exception):
    """Raised to stop a repair that would change a damaged log."""


def has_tail(directory: Path) -> bool:
    """Whether the log in ``directory`` may hold bytes past its last index record (or
    the index a partial record): a quick look at the last record and the sizes, not a
    check of any checksum. False if there is no log."""
    try:
        log_size = (directory / LOG_FILE).stat().st_size
        with open(directory / INDEX_FILE, "rb") as index:
            size = os.fstat(index.fileno()).st_size
            if size % _RECORD_SIZE:
                return True
            if size == 0:
                return log_size > 0
            record = os.pread(index.fileno(), _RECORD_SIZE, size - _RECORD_SIZE)
    except FileNotFoundError:
        return (directory / LOG_FILE).exists()
    if zlib.crc32(record[: _RECORD.size]) != int.from_bytes(record[_RECORD.size :], "little"):
        return True
    _, offset, length, _, _ = _RECORD.unpack_from(record)
    return bool(offset + length != log_size)


def set_tail_aside(directory: Path) -> Recovery | None:
    """Move the tail of a closed session's log (:attr:`Recovery.tail_bytes`: bytes past
    its last index record, which no checksum vouches for) aside to ``log.cut-OFFSET``,
    and drop a partial or zeroed last index record, so that the log passes every check
    and can be archived. A log with a problem (damage) is left as it is. Returns what
    the open found (``cut_to`` set if it moved bytes), or None if the log was damaged
    and nothing was changed."""

    def refuse_damage(found: Recovery) -> None:
        if found.problems:
            raise _Damaged

    try:
        with SessionLog.open(directory, before_repair=refuse_damage) as repaired:
            return repaired.recovery
    except _Damaged:
        return None


def _published_at_least(log_fd: int, start: int, stop: int, next_seq: int) -> int:
    """The last sequence number that may have been published, for bytes from ``start``
    whose record was lost to damage: one per whole packet there (at least one)."""
    return next_seq - 1 + max(1, _count_packets(log_fd, start, stop))


def _count_packets(log_fd: int, start: int, stop: int) -> int:
    """How many whole packets the log's bytes ``start..stop`` begin with."""
    count = 0
    position = start
    while position < stop:
        chunk = os.pread(log_fd, min(_VERIFY_CHUNK, stop - position), position)
        found = packet_offsets(chunk, position)
        if len(found) == 1:
            break
        count += len(found) - 1
        position = found[-1]
    return count


def _unused_path(path: Path) -> Path:
    """``path``, or ``path.N`` for the first N that does not exist: bytes moved aside by
    an earlier recovery cut at the same offset must not be overwritten."""
    candidate = path
    number = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{number}")
        number += 1
    return candidate


def _move_aside(directory: Path, log_fd: int, start: int, stop: int) -> Path:
    """Copy the log's bytes ``start..stop`` to ``log.cut-START`` (durably), then cut them
    off the log. Returns where they went."""
    aside_path = _unused_path(directory / f"{LOG_FILE}.cut-{start}")
    with open(aside_path, "xb") as aside:
        position = start
        while position < stop:
            block = os.pread(log_fd, min(_VERIFY_CHUNK, stop - position), position)
            aside.write(block)
            position += len(block)
        aside.flush()
        os.fsync(aside.fileno())
    _fsync_directory(directory)
    os.ftruncate(log_fd, start)
    os.fsync(log_fd)
    return aside_path


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``. A regular file takes a write whole unless something stops
    it part way (the disk filled, the file-size limit, a signal): then the rest is
    written, and the write that cannot make progress raises, saying why."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)
    while written < len(data):
        more = os.write(fd, view[written:])
        if more <= 0:
            raise OSError(f"short write: {written} of {len(data)} bytes written")
        written += more


_REASONS: Final = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (over the file-size limit)",
}


def _reason(exc: OSError) -> str:
    """Why an operation failed, in words that fit in a sentence."""
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


def _spoil_packet(log_path: Path, offset: int) -> bool:
    """Zero the length of the packet at ``offset`` of a log that could not be cut back
    there after a failed append: recovery then finds no whole packet there (it sets
    the bytes aside in any case, since no index record vouches for them).
    Best effort (an overwrite needs no new space on most file systems): whether the log
    now ends at ``offset`` as recovery sees it."""
    try:
        fd = os.open(log_path, os.O_WRONLY)  # not O_APPEND: pwrite writes where it is told
        try:
            size = os.fstat(fd).st_size
            if size <= offset + 1:
                return True  # nothing there, or a torn header: recovery cuts it
            os.pwrite(fd, b"\x00\x00", offset)
            with contextlib.suppress(OSError):  # as good as the cut: a crash may lose it
                os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error(
            "%s: could not mark the failed batch at offset %d as not appended either: %s",
            log_path,
            offset,
            _reason(exc),
        )
        return False
    return True


def lost_note(directory: Path) -> str | None:
    """What the session in ``directory`` lost (its :data:`LOST_FILE`), if anything."""
    try:
        text = (directory / LOST_FILE).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    return text or "messages were lost"


def write_lost_note(directory: Path, text: str) -> None:
    """Record in ``directory`` that the session lost messages (see :data:`LOST_FILE`);
    synced, the directory too."""
    _replace_file(directory / LOST_FILE, text.encode() + b"\n")


def _replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a crash leaves the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "LOST_FILE",
    "Appended",
    "Durability",
    "ReadableLog",
    "Recovery",
    "SessionLog",
    "has_tail",
    "lost_note",
    "packet_offsets",
    "set_tail_aside",
    "verify",
    "write_lost_note",
]
