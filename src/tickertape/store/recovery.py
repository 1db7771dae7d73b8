"""Recovery at opening: what of a session's log a checksum vouches for, and the rest.

Opening a log recovers it: an index record that fails its own check has a single flipped
bit put right (CRC-32 tells every single-bit error in a record apart) and is otherwise
dropped, as is one that does not follow on from the previous one; each batch's checksum
is verified. A message is served only if a checksum vouches for its bytes. Bytes in the
log past the last record (the *tail*: a batch being appended, or one whose record a crash
kept from being written) are not damage: the writer acknowledges a batch only once its
record is written (and synced, unless the policy is ``none``), so they were never
acknowledged. Bytes that cannot be trusted are never served; a writable open moves them,
and the tail, aside to ``log.cut-OFFSET`` and the log continues from the vouched-for
prefix.

This module holds :class:`Recovery` (what an open found and did), :func:`recover` (the
walk of the log against its index, and the repair of a writable open) and
:func:`has_tail`. It does not append, serve or follow: :class:`~tickertape.store.log.
SessionLog` and :class:`~tickertape.store.follow.FollowedLog` are built on what it
returns.
"""

from __future__ import annotations

import logging
import os
import zlib
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from tickertape.store.index import RECORD_SIZE, corrected, record_ok, unpack_record
from tickertape.store.layout import (
    INDEX_FILE,
    LOG_FILE,
    fsync_directory,
    replace_file,
    unused_path,
)
from tickertape.text import plural
from tickertape.wire.framing import packet_offsets

log = logging.getLogger(__name__)

_VERIFY_CHUNK: Final = 8 << 20


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
class Recovered:
    """A log as :func:`recover` left it: the batches a checksum vouches for, where
    they end, and (for a writable open) the index opened to append to."""

    first_seqs: array[int]
    offsets: array[int]
    end_offset: int
    next_seq: int
    recovery: Recovery
    index_fd: int | None


def recover(
    directory: Path,
    log_fd: int,
    *,
    writable: bool,
    follow: bool = False,
    before_repair: Callable[[Recovery], None] | None = None,
) -> Recovered:
    """Recover the log open at ``log_fd`` in ``directory`` against its index.

    A read-only open changes nothing on disk: damaged or unindexed bytes are simply not
    served. A writable one about to change the files (cut the log, write a mended
    index) first calls ``before_repair`` with what it found (``cut_to`` not yet set),
    then moves the bytes past the vouched-for prefix aside, rewrites the index if it
    changed, and opens it to append to. ``follow``: another process may be appending,
    so a tail is not worth a word in the log.
    """
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
    whole = len(raw_index) - len(raw_index) % RECORD_SIZE
    nonzero = len(raw_index[:whole].rstrip(b"\0"))
    index_records = -(-nonzero // RECORD_SIZE)

    # Every index record that passes its own check (or has its one flipped bit put
    # right), by the offset of its batch. A record that cannot be put right leaves
    # its batch with no checksum to vouch for it: the walk below stops there.
    valid: list[bytes] = []
    reported: list[bytes] = []
    known: dict[int, bytes] = {}
    unreadable = 0
    for number in range(index_records):
        record = raw_index[number * RECORD_SIZE : (number + 1) * RECORD_SIZE]
        if not record_ok(record):
            put_right = corrected(record)
            if put_right is None:
                problems.append(f"index record {number} fails its checksum")
                unreadable += 1
                continue
            problems.append(
                f"index record {number} fails its checksum: one bit was flipped, and "
                "put right (its batch is checked against the corrected record)"
            )
            record = put_right
        valid.append(record)
        known[unpack_record(record)[1]] = record
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
        first_seq, _, length, count, crc = unpack_record(found_record)
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
        elif unpack_record(record)[0] < next_seq:
            stray += 1
    if stray > 0:
        problems.append(
            f"dropped {stray} index records that match no batch of the log "
            "(duplicated or out of place)"
        )
    promised = max(
        (first + count - 1 for first, _, _, count, _ in map(unpack_record, known.values())),
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
        problems.append(f"the index is missing: no checksum vouches for the log's {log_size} bytes")
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
            cut_to = move_aside(directory, log_fd, end, actual_size)
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
            replace_file(index_path, good_index)
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
    return Recovered(first_seqs, offsets, end, next_seq, recovery, index_fd)


def has_tail(directory: Path) -> bool:
    """Whether the log in ``directory`` may hold bytes past its last index record (or
    the index a partial record): a quick look at the last record and the sizes, not a
    check of any checksum. False if there is no log."""
    try:
        log_size = (directory / LOG_FILE).stat().st_size
        with open(directory / INDEX_FILE, "rb") as index:
            size = os.fstat(index.fileno()).st_size
            if size % RECORD_SIZE:
                return True
            if size == 0:
                return log_size > 0
            record = os.pread(index.fileno(), RECORD_SIZE, size - RECORD_SIZE)
    except FileNotFoundError:
        return (directory / LOG_FILE).exists()
    if not record_ok(record):
        return True
    _, offset, length, _, _ = unpack_record(record)
    return bool(offset + length != log_size)


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


def move_aside(directory: Path, log_fd: int, start: int, stop: int) -> Path:
    """Copy the log's bytes ``start..stop`` to ``log.cut-START`` (durably), then cut them
    off the log. Returns where they went."""
    aside_path = unused_path(directory / f"{LOG_FILE}.cut-{start}")
    with open(aside_path, "xb") as aside:
        position = start
        while position < stop:
            block = os.pread(log_fd, min(_VERIFY_CHUNK, stop - position), position)
            aside.write(block)
            position += len(block)
        aside.flush()
        os.fsync(aside.fileno())
    fsync_directory(directory)
    os.ftruncate(log_fd, start)
    os.fsync(log_fd)
    return aside_path
