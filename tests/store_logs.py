"""Helpers for the tests of a session's log and its recovery (tests/store/test_log.py and
tests/store/test_recovery.py): a standard log, an independent parse of the log file and
of the index, and ways to damage them. Nothing here goes through the store's own codec
but to make a log.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import Appended, Durability, SessionLog
from tickertape.text import plural
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import SequencedData, decode_server_packet, encode_sequenced_many

RECORD_SIZE = 32
"""One index record: first_seq, offset (u64), length, count, crc (u32), crc of the record."""

BATCHES: list[list[bytes]] = [
    [b"a"],
    [b"bb", b"", b"ccc"],
    [b"x" * 300, b"y"],
    [b"z" * 17, b"zz" * 9, b"", b"q"],
    [b"m1", b"m22", b"m333"],
]
"""The standard log: five batches, thirteen messages (two of them empty)."""

ALL: list[bytes] = [p for batch in BATCHES for p in batch]


# ---------------------------------------------------------------------------- helpers


def missing(count: int) -> str:
    """How recovery words ``count`` messages the index lists but the log lacks."""
    return f"{plural(count, 'message')} {'is' if count == 1 else 'are'} missing"


def size(payload: bytes) -> int:
    """Bytes a message takes in the log: u16 length, 'S', payload."""
    return 3 + len(payload)


def ends(payloads: Sequence[bytes]) -> list[int]:
    """Offset of every message, then the end: ``result[seq - 1]`` is where ``seq`` starts."""
    return [0, *itertools.accumulate(size(p) for p in payloads)]


def parse_log(data: bytes) -> list[bytes]:
    """The payloads of a log file, parsed by the wire framer. Fails on a torn packet or
    anything that is not Sequenced Data."""
    framer = Framer()
    framer.feed(data)
    payloads = []
    for frame in framer:
        packet = decode_server_packet(frame)
        assert isinstance(packet, SequencedData), packet
        payloads.append(packet.payload)
    assert framer.buffered == 0, f"the log ends in a torn packet ({framer.buffered} bytes)"
    return payloads


def append_batches(session_log: SessionLog, batches: Sequence[Sequence[bytes]]) -> list[Appended]:
    return [session_log.append(encode_sequenced_many(b), len(b)) for b in batches]


def make_log(
    directory: Path,
    batches: Sequence[Sequence[bytes]] = BATCHES,
    durability: Durability = Durability.BATCH,
) -> list[Appended]:
    """A closed, clean log in ``directory`` holding ``batches``."""
    with SessionLog.open(directory, durability=durability, create=True) as session_log:
        return append_batches(session_log, batches)


def logged(directory: Path) -> list[bytes]:
    return parse_log((directory / LOG_FILE).read_bytes())


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def flip_record_bits(directory: Path, record: int, *bits: int) -> None:
    """Flip ``bits`` (numbered from the record's first byte) of index record ``record``."""
    for bit in bits:
        flip_bit(directory / INDEX_FILE, record * RECORD_SIZE + bit // 8, bit % 8)


def corrected(record: int) -> str:
    """The problem a single flipped bit in index record ``record`` is reported as."""
    return (
        f"index record {record} fails its checksum: one bit was flipped, and put right "
        "(its batch is checked against the corrected record)"
    )


def truncate(path: Path, length: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(length)


def add_to_log(directory: Path, data: bytes) -> None:
    """Bytes written to the log with no index record: a crash before the index write."""
    with open(directory / LOG_FILE, "ab") as f:
        f.write(data)


def reopen(
    directory: Path, *, durability: Durability = Durability.BATCH, writable: bool = True
) -> SessionLog:
    return SessionLog.open(directory, durability=durability, writable=writable)


def check_serves(session_log: SessionLog, payloads: Sequence[bytes]) -> None:
    """``session_log`` serves exactly ``payloads``, from every sequence number."""
    offsets = ends(payloads)
    assert session_log.next_seq == len(payloads) + 1
    assert session_log.end_offset == offsets[-1]
    for seq in range(1, len(payloads) + 2):
        assert session_log.offset_of(seq) == offsets[seq - 1]
    data, count = session_log.read(1, 1 << 30)
    assert count == len(payloads)
    assert parse_log(data) == list(payloads)
    assert data == (session_log.directory / LOG_FILE).read_bytes()


def batch_ends(batches: Sequence[Sequence[bytes]]) -> list[int]:
    """Where each batch of a log made of ``batches`` ends."""
    found: list[int] = []
    for batch in batches:
        found.append((found[-1] if found else 0) + sum(map(size, batch)))
    return found


def index_records(directory: Path) -> int:
    raw = (directory / INDEX_FILE).read_bytes()
    assert len(raw) % RECORD_SIZE == 0
    return len(raw) // RECORD_SIZE


def pack_record(first_seq: int, offset: int, length: int, count: int, crc: int) -> bytes:
    """An index record with a correct checksum of its own, built independently of the
    store (the layout :func:`test_index_checksums_cover_every_batch` checks)."""
    body = struct.pack("<QQIII", first_seq, offset, length, count, crc)
    return body + zlib.crc32(body).to_bytes(4, "little")


def index_entries(directory: Path) -> list[tuple[int, int, int, int]]:
    """``(first_seq, offset, length, count)`` of every index record, each of which must
    pass its own checksum and the checksum of its batch in the log."""
    raw = (directory / INDEX_FILE).read_bytes()
    log_bytes = (directory / LOG_FILE).read_bytes()
    assert len(raw) % RECORD_SIZE == 0
    entries = []
    for number in range(len(raw) // RECORD_SIZE):
        record = raw[number * RECORD_SIZE : (number + 1) * RECORD_SIZE]
        assert zlib.crc32(record[:28]) == int.from_bytes(record[28:], "little"), number
        first_seq, offset, length, count, crc = struct.unpack("<QQIII", record[:28])
        assert zlib.crc32(log_bytes[offset : offset + length]) == crc, number
        entries.append((first_seq, offset, length, count))
    return entries


def batch_entries(appended: Sequence[Appended]) -> list[tuple[int, int, int, int]]:
    return [(a.first_seq, a.offset, a.length, a.count) for a in appended]
