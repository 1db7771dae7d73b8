"""Reading an archived session: a closed session's log, compressed, still readable from
any message. The file format is defined here; writing it is :mod:`tickertape.store.archive`.

Archiving replaces a closed session's ``log`` and ``index`` with one file, ``log.zst``::

    header   8s magic "TTLOGZST", u32 version, u32 reserved (0)        16 bytes
    chunk 0  a zstandard frame: whole packets of the log, about chunk_bytes of them
    chunk 1  ...
    index    one 44-byte record per chunk:
               u64 first sequence number, u32 message count,
               u64 offset in the original log, u32 length in the original log,
               u64 offset in this file, u32 compressed length,
               u32 CRC-32 of the uncompressed bytes, u32 CRC-32 of the compressed bytes
    trailer  8s magic, u32 version, u32 chunk count, u64 index offset,        48 bytes
             u64 messages, u64 size of the original log,
             u32 CRC-32 of the index, u32 CRC-32 of the trailer's first 44 bytes

Integers are little-endian, like the index of a live log. Each chunk is compressed on its
own and never splits a packet, so a reader finds message *n* by a binary search of the
chunk index and decompresses one chunk; the bytes it serves are exactly the original
log's, so a pull from an archived session is byte for byte the pull it replaces. A chunk
that fails a CRC is never served (:class:`~tickertape.errors.CorruptLogError`). Both
CRCs are checked: the compressed one catches a flipped bit that zstandard would ignore (in
a reserved header bit, say), so that :meth:`ArchivedLog.verify` finds damage anywhere in the
file; the uncompressed one vouches for the bytes served.

This module does not write archives, nor finish an archiving run a crash interrupted
(:func:`tickertape.store.opening.open_session_log` does).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import zstandard

from tickertape.errors import CorruptLogError, StoreError
from tickertape.store.layout import ARCHIVE_FILE, lost_note
from tickertape.store.recovery import Recovery
from tickertape.wire.framing import packet_offsets
from tickertape.wire.soupbintcp import MAX_PACKET_LENGTH

log = logging.getLogger(__name__)

DEFAULT_CACHE_CHUNKS: Final = 8

MAGIC: Final = b"TTLOGZST"
VERSION: Final = 1
HEADER: Final = struct.Struct("<8sII")  # magic, version, reserved
CHUNK: Final = struct.Struct("<QIQIQIII")  # first_seq, count, offset, length, at, size,
# crc32 of the uncompressed bytes, crc32 of the compressed bytes
TRAILER_BODY: Final = struct.Struct("<8sIIQQQI")  # magic, version, chunks, index_at, ...
TRAILER_SIZE: Final = TRAILER_BODY.size + 4  # + crc32 of the body
_MAX_PACKET: Final = 2 + MAX_PACKET_LENGTH  # u16 length, then that many bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of an archive, as its index record describes it."""

    first_seq: int
    count: int
    offset: int
    length: int
    at: int
    size: int
    crc: int
    compressed_crc: int


class ArchivedLog:
    """A read-only view of an archived session, with the reading interface of
    :class:`~tickertape.store.log.SessionLog`: offsets and bytes are those of the
    original log. Open with :meth:`open`. Any thread may read."""

    def __init__(
        self,
        directory: Path,
        path: Path,
        fd: int,
        chunks: list[Chunk],
        messages: int,
        size: int,
        cache_chunks: int,
    ) -> None:
        self.directory = directory
        self.path = path
        self._fd = fd
        self._chunks = chunks
        self._first_seqs = array("Q", (c.first_seq for c in chunks))
        self._offsets = array("Q", (c.offset for c in chunks))
        self._next_seq = messages + 1
        self._end_offset = size
        self.recovery = Recovery(messages=messages, batches=len(chunks))
        """What opening checked: the trailer and the chunk index. Chunks are checked
        as they are read, and all at once by :meth:`verify`."""
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        path: Path | None = None,
        cache_chunks: int = DEFAULT_CACHE_CHUNKS,
    ) -> ArchivedLog:
        """Open the archive in ``directory`` (its ``log.zst``, or the file at ``path``:
        one being written), checking its trailer and chunk index. Raises
        :class:`StoreError` if there is none, :class:`CorruptLogError` if either fails
        its checks."""
        if path is None:
            path = directory / ARCHIVE_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(f"no session archive at {path}") from None
        try:
            chunks, messages, size = _read_index(fd, path)
            return cls(directory, path, fd, chunks, messages, size, max(cache_chunks, 1))
        except BaseException:
            os.close(fd)
            raise

    @property
    def next_seq(self) -> int:
        """One past the last message."""
        return self._next_seq

    @property
    def end_offset(self) -> int:
        """The size of the original log."""
        return self._end_offset

    @property
    def chunks(self) -> int:
        return len(self._chunks)

    def offset_of(self, seq: int) -> int:
        """The offset of message ``seq`` in the original log; ``next_seq`` maps to its end."""
        if seq == self._next_seq:
            return self._end_offset
        if not 1 <= seq < self._next_seq:
            raise StoreError(
                f"sequence {seq} is not in {self.directory.name} (1..{self._next_seq - 1})"
            )
        number = bisect_right(self._first_seqs, seq) - 1
        chunk = self._chunks[number]
        skip = seq - chunk.first_seq
        if skip == 0:
            return chunk.offset
        data = self._chunk_data(number)
        position = 0
        for _ in range(skip):
            position += 2 + ((data[position] << 8) | data[position + 1])
        return chunk.offset + position

    def span(self, seq: int, max_bytes: int, limit_seq: int) -> tuple[int, int, int]:
        """A byte range to send from message ``seq``: about ``max_bytes``, ending on a
        chunk boundary or at ``limit_seq``. Returns ``(start, end_seq, end_offset)``."""
        start = self.offset_of(seq)
        # At least one byte: a span is never empty short of the limit (even at max_bytes 0).
        number = bisect_left(self._offsets, start + max(max_bytes, 1))
        if number < len(self._offsets) and self._first_seqs[number] < limit_seq:
            return start, self._first_seqs[number], self._offsets[number]
        return start, limit_seq, self.offset_of(limit_seq)

    def sendfile_source(self) -> BinaryIO | None:
        """None: the bytes are compressed; :meth:`read_range` serves them."""
        return None

    @property
    def damage(self) -> str | None:
        """What the session lost before it was archived (see
        :data:`~tickertape.store.layout.LOST_FILE`), or None: an archive opens only if its
        index and trailer pass their checks, and then holds what the log held. A chunk
        that fails its check when it is read raises :class:`CorruptLogError` then."""
        return lost_note(self.directory)

    def read_range(self, offset: int, count: int) -> bytes:
        """``count`` bytes of the original log from ``offset``, decompressing only the
        chunks they lie in. Raises :class:`CorruptLogError` if one fails its check."""
        stop = offset + count
        if offset < 0 or count < 0 or stop > self._end_offset:
            raise StoreError(
                f"bytes {offset}..{stop} are not in {self.directory.name} (0..{self._end_offset})"
            )
        if count == 0:
            return b""
        number = bisect_right(self._offsets, offset) - 1
        chunk = self._chunks[number]
        if stop <= chunk.offset + chunk.length:  # within one chunk
            data = self._chunk_data(number)
            if count == chunk.length:
                return data
            return data[offset - chunk.offset : stop - chunk.offset]
        pieces: list[memoryview] = []
        position = offset
        while position < stop:
            chunk = self._chunks[number]
            view = memoryview(self._chunk_data(number))
            pieces.append(view[position - chunk.offset : stop - chunk.offset])
            position = chunk.offset + chunk.length
            number += 1
        return b"".join(pieces)

    def read(self, seq: int, max_bytes: int, limit_seq: int | None = None) -> tuple[bytes, int]:
        """Whole packets from ``seq`` on, at most ``max_bytes`` (but at least one packet),
        stopping before ``limit_seq``. Returns the bytes and the number of packets."""
        limit = self._next_seq if limit_seq is None else min(limit_seq, self._next_seq)
        if seq >= limit:
            return b"", 0
        start = self.offset_of(seq)
        stop = self.offset_of(limit)
        if stop - start <= max_bytes:
            return self.read_range(start, stop - start), limit - seq
        block = self.read_range(start, min(stop - start, max(max_bytes, _MAX_PACKET)))
        found = packet_offsets(block)
        count = max(bisect_right(found, max_bytes) - 1, 1)
        return block[: found[count]], count

    def verify(self) -> Recovery:
        """Decompress and check every chunk (its CRC and its packets) without keeping
        any. ``messages`` counts the messages before the first damaged chunk."""
        problems: list[str] = []
        intact = self._next_seq - 1
        for number, chunk in enumerate(self._chunks):
            try:
                data = self._decompress(number)
            except CorruptLogError as exc:
                problems.append(str(exc))
            else:
                found = packet_offsets(data)
                if len(found) - 1 == chunk.count and found[-1] == chunk.length:
                    continue
                problems.append(
                    f"{self._where(number)} holds {len(found) - 1} whole packets in "
                    f"{found[-1]} bytes, not {chunk.count} in {chunk.length}"
                )
            intact = min(intact, chunk.first_seq - 1)
        for problem in problems:
            log.warning("session %s: %s", self.directory.name, problem)
        return Recovery(messages=intact, batches=len(self._chunks), problems=tuple(problems))

    def _chunk_data(self, number: int) -> bytes:
        """Chunk ``number``, uncompressed and checked, from the cache if it is there."""
        with self._lock:
            data = self._cache.get(number)
            if data is not None:
                self._cache.move_to_end(number)
                return data
        data = self._decompress(number)  # outside the lock: zstandard releases the GIL
        with self._lock:
            self._cache[number] = data
            while len(self._cache) > self._cache_chunks:
                self._cache.popitem(last=False)
        return data

    def _decompress(self, number: int) -> bytes:
        chunk = self._chunks[number]
        compressed = os.pread(self._fd, chunk.size, chunk.at)
        if zlib.crc32(compressed) != chunk.compressed_crc:
            raise CorruptLogError(f"{self._where(number)} fails its checksum; it is not served")
        try:
            data = zstandard.ZstdDecompressor().decompress(compressed, max_output_size=chunk.length)
        except zstandard.ZstdError as exc:
            raise CorruptLogError(
                f"{self._where(number)} cannot be decompressed ({exc}); it is not served"
            ) from None
        if len(data) != chunk.length or zlib.crc32(data) != chunk.crc:
            raise CorruptLogError(f"{self._where(number)} fails its checksum; it is not served")
        return data

    def _where(self, number: int) -> str:
        chunk = self._chunks[number]
        return (
            f"chunk {number} of {self.path} (sequence {chunk.first_seq}.."
            f"{chunk.first_seq + chunk.count - 1}, log offset {chunk.offset})"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self._fd)
        with self._lock:
            self._cache.clear()

    def __enter__(self) -> ArchivedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_index(fd: int, path: Path) -> tuple[list[Chunk], int, int]:
    """The chunks, message count and original size recorded in the archive at ``fd``,
    after checking that they describe one contiguous log and fit the file."""
    file_size = os.fstat(fd).st_size

    def damaged(what: str) -> CorruptLogError:
        return CorruptLogError(f"session archive {path} is damaged: {what}")

    if file_size < HEADER.size + TRAILER_SIZE:
        raise damaged(f"{file_size} bytes is too short for an archive")
    magic, version, reserved = HEADER.unpack(os.pread(fd, HEADER.size, 0))
    if magic != MAGIC:
        raise damaged(f"it does not start with {MAGIC!r}")
    header_version = version
    trailer = os.pread(fd, TRAILER_SIZE, file_size - TRAILER_SIZE)
    body = trailer[: TRAILER_BODY.size]
    if zlib.crc32(body) != int.from_bytes(trailer[TRAILER_BODY.size :], "little"):
        raise damaged("its trailer fails its checksum (a torn or partial file?)")
    magic, version, count, index_at, messages, size, index_crc = TRAILER_BODY.unpack(body)
    if magic != MAGIC:
        raise damaged(f"its trailer does not start with {MAGIC!r}")
    if (header_version, reserved) != (version, 0):
        raise damaged("its header and trailer disagree")
    if version != VERSION:
        raise StoreError(
            f"session archive {path} has format version {version}; this tickertape reads "
            f"version {VERSION} only"
        )
    if index_at + count * CHUNK.size != file_size - TRAILER_SIZE:
        raise damaged(f"its index ({count} chunks at {index_at}) does not end at the trailer")
    index = os.pread(fd, count * CHUNK.size, index_at)
    if zlib.crc32(index) != index_crc:
        raise damaged("its chunk index fails its checksum")
    chunks = [Chunk(*fields) for fields in CHUNK.iter_unpack(index)]
    seq, offset, at = 1, 0, HEADER.size
    for number, chunk in enumerate(chunks):
        if (chunk.first_seq, chunk.offset, chunk.at) != (seq, offset, at) or not chunk.count:
            raise damaged(f"chunk {number} does not follow on from the one before")
        seq += chunk.count
        offset += chunk.length
        at += chunk.size
    if (seq - 1, offset, at) != (messages, size, index_at):
        raise damaged("its chunks do not add up to the totals in its trailer")
    return chunks, messages, size


__all__ = ["CHUNK", "HEADER", "MAGIC", "TRAILER_BODY", "VERSION", "ArchivedLog", "Chunk"]
