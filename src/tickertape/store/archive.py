"""Archiving a closed session: its log and index compressed into one file, ``log.zst``
(whose format, and reading, are :mod:`tickertape.store.archived`).

Archiving is crash-safe. The archive is written to ``log.zst.tmp``, synced, read back
and verified, renamed to ``log.zst`` (the commit point), the directory synced, and only
then are ``log`` and ``index`` removed. Whatever the moment of a crash, the directory
holds the intact original, or a complete archive, or both:

- ``log.zst.tmp`` is never trusted; the next archiving run overwrites it.
- ``log.zst`` beside ``log`` is an archive whose clean-up was interrupted:
  :func:`~tickertape.store.opening.open_session_log` (``finish_archiving=True``)
  verifies the archive and finishes the removal.

This module writes archives only; when to archive is :mod:`tickertape.store.retention`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import zlib
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import zstandard

from tickertape.errors import CorruptLogError, StoreError
from tickertape.store.archived import (
    CHUNK,
    HEADER,
    MAGIC,
    TRAILER_BODY,
    VERSION,
    ArchivedLog,
    Chunk,
)
from tickertape.store.layout import (
    ARCHIVE_FILE,
    ARCHIVE_TMP_FILE,
    ENDED_MARKER,
    LOG_FILE,
    fsync_directory,
)
from tickertape.store.log import SessionLog
from tickertape.store.opening import open_session_log, remove_originals, set_tail_aside
from tickertape.store.recovery import has_tail
from tickertape.text import plural
from tickertape.wire.framing import packet_offsets
from tickertape.wire.soupbintcp import MAX_PACKET_LENGTH

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES: Final = 1 << 20
DEFAULT_LEVEL: Final = 3
MAX_CHUNK_BYTES: Final = 1 << 30
_MAX_PACKET: Final = 2 + MAX_PACKET_LENGTH  # u16 length, then that many bytes


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """What :func:`archive_session` wrote."""

    directory: Path
    messages: int
    chunks: int
    original_bytes: int
    archived_bytes: int

    @property
    def ratio(self) -> float:
        """Archived size over original size (smaller is better)."""
        return self.archived_bytes / self.original_bytes if self.original_bytes else 1.0


def archive_session(
    directory: Path, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES, level: int = DEFAULT_LEVEL
) -> ArchiveResult:
    """Compress the closed session in ``directory`` into ``log.zst`` and remove its
    ``log`` and ``index``.

    Refuses (:class:`StoreError`) a session that has not ended, one that is already
    archived, and one whose log fails its checks (:class:`CorruptLogError`): an archive
    holds exactly what the log served, and a damaged log must be looked at first.
    """
    if not 1 <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise StoreError(f"chunk size {chunk_bytes} must be from 1 to {MAX_CHUNK_BYTES} bytes")
    if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise StoreError(
            f"compression level {level} must be from 1 to {zstandard.MAX_COMPRESSION_LEVEL}"
        )
    name = directory.name
    archive_path = directory / ARCHIVE_FILE
    if archive_path.exists():
        # Perhaps an interrupted run: finish it (or set a damaged archive aside).
        open_session_log(directory, finish_archiving=True).close()
        if archive_path.exists():
            raise StoreError(f"session {name} is already archived ({archive_path})")
    if not (directory / LOG_FILE).exists():
        raise StoreError(f"no session log at {directory / LOG_FILE}")
    if not (directory / ENDED_MARKER).exists():
        raise StoreError(
            f"session {name} has not ended (no {ENDED_MARKER!r} marker in {directory}): "
            "only a closed session can be archived; end it first"
        )

    if has_tail(directory):
        # Bytes past the last index record (never acknowledged) would be left out of
        # the archive and lost with the log: set them aside first, as a start does.
        set_tail_aside(directory)
    tmp_path = directory / ARCHIVE_TMP_FILE
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"session {name} is being archived by another process") from None
        try:
            # A leftover from a crashed run is overwritten: it was never the archive.
            os.ftruncate(fd, 0)
            with SessionLog.open(directory, writable=False) as session_log:
                if not session_log.recovery.clean:
                    raise CorruptLogError(
                        f"session {name} will not be archived: its log fails its checks ("
                        + "; ".join(session_log.recovery.problems)
                        + "). Only a log that passes them is archived; the session is left "
                        "as it is, and its intact part is still served"
                    )
                chunks = _write_archive(fd, session_log, chunk_bytes, level)
                messages = session_log.next_seq - 1
                original_bytes = session_log.end_offset
            os.fsync(fd)
            # Read back what reached the file before it replaces anything.
            with ArchivedLog.open(directory, path=tmp_path) as written:
                problems = written.verify().problems
            if problems:
                raise CorruptLogError(
                    f"the archive of session {name} failed its check after writing: "
                    + "; ".join(problems)
                )
            os.replace(tmp_path, archive_path)  # the commit point
        except Exception:
            tmp_path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)  # releases the lock
    fsync_directory(directory)
    archived_bytes = archive_path.stat().st_size
    remove_originals(directory)
    log.info(
        "session %s archived: %s, %d bytes into %d bytes (%s)",
        name,
        plural(messages, "message"),
        original_bytes,
        archived_bytes,
        plural(len(chunks), "chunk"),
    )
    return ArchiveResult(directory, messages, len(chunks), original_bytes, archived_bytes)


def _write_archive(fd: int, session_log: SessionLog, chunk_bytes: int, level: int) -> list[Chunk]:
    """Write the whole archive of ``session_log`` to ``fd``; return its chunks."""
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    source = session_log.fileno()
    end = session_log.end_offset
    chunks: list[Chunk] = []
    at = _write_all(fd, HEADER.pack(MAGIC, VERSION, 0), 0)
    position = 0
    seq = 1
    while position < end:
        block = os.pread(source, min(chunk_bytes + _MAX_PACKET, end - position), position)
        found = packet_offsets(block)
        # The first packet boundary at or past chunk_bytes; a packet is never split.
        cut = min(bisect_left(found, chunk_bytes), len(found) - 1)
        if cut == 0:
            raise CorruptLogError(
                f"session {session_log.directory.name}: no whole packet at offset {position} "
                "of the log, which its checks passed; was it changed while being archived?"
            )
        data = block[: found[cut]]
        compressed = compressor.compress(data)
        chunks.append(
            Chunk(
                seq,
                cut,
                position,
                len(data),
                at,
                len(compressed),
                zlib.crc32(data),
                zlib.crc32(compressed),
            )
        )
        at = _write_all(fd, compressed, at)
        position += len(data)
        seq += cut
    if seq != session_log.next_seq:
        raise CorruptLogError(
            f"session {session_log.directory.name}: the log holds "
            f"{plural(seq - 1, 'message')} but its index says {session_log.next_seq - 1}"
        )
    index = b"".join(
        CHUNK.pack(c.first_seq, c.count, c.offset, c.length, c.at, c.size, c.crc, c.compressed_crc)
        for c in chunks
    )
    index_at = at
    at = _write_all(fd, index, at)
    body = TRAILER_BODY.pack(MAGIC, VERSION, len(chunks), index_at, seq - 1, end, zlib.crc32(index))
    _write_all(fd, body + zlib.crc32(body).to_bytes(4, "little"), at)
    return chunks


def _write_all(fd: int, data: bytes, at: int) -> int:
    """Write ``data`` at the end of ``fd`` (which is at ``at``); return the new end."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    return at + len(data)


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_LEVEL",
    "MAX_CHUNK_BYTES",
    "ArchiveResult",
    "archive_session",
]
