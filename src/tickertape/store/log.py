"""A session's log, to append to and read from: SoupBinTCP Sequenced Data packets
exactly as they go on the wire.

Two files live in a session's directory (:mod:`tickertape.store.layout`):

``log``
    The packets, ``u16 length, 'S', payload``, back to back. Catching a subscriber up is
    ``sendfile`` of a byte range of this file.
``index``
    One record per appended batch (:mod:`tickertape.store.index`), with the checksums
    that vouch for its bytes.

Appends come in batches and are made durable by :class:`Durability`. Opening a log
recovers it (:mod:`tickertape.store.recovery`): only what a checksum vouches for is
served, and a writable open sets the rest aside.

Only one thread appends (the session writer); any thread may read what was appended.

This module holds :class:`SessionLog` (open, append, read) and the :class:`ReadableLog`
interface that serving needs (also met by an archived log,
:class:`~tickertape.store.archived.ArchivedLog`). Following a log another process
appends to is :mod:`tickertape.store.follow`; opening a session's log whatever its state
is, checking one, and setting its tail aside are :mod:`tickertape.store.opening`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from tickertape.errors import StoreError
from tickertape.store.index import RECORD_SIZE, pack_record
from tickertape.store.layout import INDEX_FILE, LOG_FILE, fsync_directory, lost_note
from tickertape.store.recovery import Recovered, Recovery, recover
from tickertape.wire.framing import packet_offsets
from tickertape.wire.soupbintcp import MAX_PACKET_LENGTH

log = logging.getLogger(__name__)

_MAX_PACKET: Final = 2 + MAX_PACKET_LENGTH  # u16 length, then that many bytes


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
class Appended:
    """Where an appended batch landed."""

    first_seq: int
    count: int
    offset: int
    length: int


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


class SessionLog:
    """One session's log and index. Open with :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        log_fd: int,
        recovered: Recovered,
        durability: Durability = Durability.BATCH,
    ) -> None:
        self.directory = directory
        self.durability = durability
        self.recovery = recovered.recovery
        self._log_fd = log_fd
        self._index_fd = recovered.index_fd
        self._first_seqs = recovered.first_seqs
        self._offsets = recovered.offsets
        # (next_seq, end_offset), replaced as one object: a reader on another thread
        # never sees one updated without the other.
        self._tail = (recovered.next_seq, recovered.end_offset)
        self._reader = open(directory / LOG_FILE, "rb")  # noqa: SIM115 - lives as long as the log
        self._walked: tuple[int, list[int]] | None = None
        self._closed = False
        # (log size, index size) to cut the files back to before the next append: set
        # when cutting back after a failed append failed too.
        self._cut_back_to: tuple[int, int] | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        durability: Durability = Durability.BATCH,
        writable: bool = True,
        create: bool = False,
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
        """
        log_path = directory / LOG_FILE
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        elif not log_path.exists():
            raise StoreError(f"no session log at {log_path}")
        if writable:
            log_fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            if create:
                fsync_directory(directory)
        else:
            log_fd = os.open(log_path, os.O_RDONLY)
        try:
            recovered = recover(directory, log_fd, writable=writable, before_repair=before_repair)
        except BaseException:
            os.close(log_fd)
            raise
        return cls(directory, log_fd, recovered, durability)

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
        record = pack_record(first_seq, offset, len(batch), count, crc)
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
        index_size = len(self._first_seqs) * RECORD_SIZE
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
        it, a torn packet, garbage), is not whole. A writable log was repaired at
        opening: what it holds is the session (what was cut had never been published,
        or the session was ended)."""
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
        size = min(stop - start, max(max_bytes, _MAX_PACKET))
        block = os.pread(self._reader.fileno(), size, start)
        found = packet_offsets(block)
        count = max(bisect_right(found, max_bytes) - 1, 1)
        return block[: found[count]], count

    # ------------------------------------------------------------------ batches held

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def batch_count(self) -> int:
        """How many batches the log holds."""
        return len(self._first_seqs)

    @property
    def last_batch(self) -> tuple[int, int] | None:
        """``(first_seq, offset)`` of the last batch held; None if there is none."""
        if not self._first_seqs:
            return None
        return self._first_seqs[-1], self._offsets[-1]

    def add_batch(self, appended: Appended) -> None:
        """Hold a batch that another process appended to this log, checked by the
        caller (:class:`~tickertape.store.follow.FollowedLog`): it must follow on from
        the last one held. Nothing on disk is changed."""
        next_seq, end_offset = self._tail
        if appended.first_seq != next_seq or appended.offset != end_offset:
            raise StoreError(
                f"session log {self.directory}: a batch at sequence {appended.first_seq}, "
                f"offset {appended.offset} does not follow on (expected sequence {next_seq} "
                f"at offset {end_offset})"
            )
        self._first_seqs.append(appended.first_seq)
        self._offsets.append(appended.offset)
        self._tail = (appended.first_seq + appended.count, appended.offset + appended.length)

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

    def __enter__(self) -> SessionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


__all__ = [
    "Appended",
    "Durability",
    "ReadableLog",
    "SessionLog",
]
