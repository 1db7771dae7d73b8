"""Helpers for the tests of archives (tests/store/test_archive.py, writing, and
tests/store/test_archived.py, reading): varied sessions to archive, and a parser of the
archive layout written independently of :mod:`tickertape.store.archived`.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tickertape.sources.demo import demo_payload
from tickertape.store.archived import ArchivedLog
from tickertape.store.layout import (
    ENDED_MARKER,
    LOG_FILE,
)
from tickertape.store.log import SessionLog
from tickertape.wire.framing import packet_offsets
from tickertape.wire.soupbintcp import encode_sequenced_many

HEADER = struct.Struct("<8sII")
"""magic, version, reserved: the first 16 bytes of an archive."""
CHUNK = struct.Struct("<QIQIQIII")
"""first_seq, count, offset, length (original log), offset, length (archive),
crc32 (uncompressed), crc32 (compressed)."""
TRAILER = struct.Struct("<8sIIQQQII")
"""magic, version, chunks, index offset, messages, original size, crc32(index),
crc32(the trailer's first 44 bytes)."""

SMALL_CHUNK = 4096


def varied_batches(seed: int, batches: int) -> list[list[bytes]]:
    """Batches of 1..40 messages: mostly demo-like text, some empty, some random bytes,
    and now and then one near the 64 KiB limit of a SoupBinTCP packet."""
    rng = random.Random(seed)
    out: list[list[bytes]] = []
    seq = 1
    for _ in range(batches):
        batch = []
        for _ in range(rng.randint(1, 40)):
            kind = rng.random()
            if kind < 0.1:
                payload = b""
            elif kind < 0.2:
                payload = rng.randbytes(rng.randint(1, 300))
            elif kind < 0.23:
                payload = rng.randbytes(1) * rng.randint(65_000, 65_534)
            else:
                payload = demo_payload(seq, "2026-11-29T09:30:00.000123Z", rng.randint(20, 200))
            batch.append(payload)
            seq += 1
        out.append(batch)
    return out


def make_session(
    directory: Path, batches: Sequence[Sequence[bytes]], *, ended: bool = True
) -> bytes:
    """A session in ``directory`` holding ``batches``; returns its log's bytes."""
    with SessionLog.open(directory, create=True) as session_log:
        for batch in batches:
            session_log.append(encode_sequenced_many(batch), len(batch))
    if ended:
        (directory / ENDED_MARKER).touch()
    return (directory / LOG_FILE).read_bytes()


def packet_starts(data: bytes) -> list[int]:
    """Where each message of a log starts, then where the log ends: ``[seq - 1]``."""
    found = packet_offsets(data)
    assert found[-1] == len(data)
    return found


@dataclass
class Parsed:
    chunks: list[tuple[int, int, int, int, int, int, int, int]]
    messages: int
    size: int


def parse_archive(path: Path) -> Parsed:
    """An archive parsed from the layout in the module's docstring, every field checked."""
    data = path.read_bytes()
    magic, version, reserved = HEADER.unpack_from(data)
    assert (magic, version, reserved) == (b"TTLOGZST", 1, 0)
    trailer = data[-TRAILER.size :]
    magic, version, count, index_at, messages, size, index_crc, crc = TRAILER.unpack(trailer)
    assert (magic, version) == (b"TTLOGZST", 1)
    assert crc == zlib.crc32(trailer[:-4])
    index = data[index_at : len(data) - TRAILER.size]
    assert len(index) == count * CHUNK.size
    assert zlib.crc32(index) == index_crc
    chunks = list(CHUNK.iter_unpack(index))
    at, offset, seq = HEADER.size, 0, 1
    for first_seq, n, chunk_offset, length, chunk_at, chunk_size, _, _ in chunks:
        assert (first_seq, chunk_offset, chunk_at) == (seq, offset, at)
        seq, offset, at = seq + n, offset + length, at + chunk_size
    assert (seq - 1, offset, at) == (messages, size, index_at)
    return Parsed(chunks, messages, size)


def serves(session_log: SessionLog | ArchivedLog) -> bytes:
    """Every byte the log serves, read the way a pull reads it."""
    if isinstance(session_log, ArchivedLog):
        return session_log.read_range(0, session_log.end_offset)
    return os.pread(session_log.fileno(), session_log.end_offset, 0)


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def files(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


@dataclass
class Archived:
    """An archived session, the bytes of its original log, and an unarchived twin."""

    directory: Path
    twin: Path
    original: bytes
    starts: list[int]
