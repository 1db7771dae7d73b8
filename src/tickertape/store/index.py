"""The index codec: one 32-byte record per batch appended to a session's log.

A record holds the batch's first sequence number, its byte offset and length in the
log, its message count, the CRC-32 of its bytes (``<QQIII``, little-endian), then the
CRC-32 of those 28 bytes. The wire format has no room for checksums; the index holds
them, so that a flipped bit or a truncation anywhere is detected.

This module packs, checks and unpacks records, and puts right a record with one flipped
bit. It does not read or write files: recovery (:mod:`tickertape.store.recovery`), the
writable log (:mod:`tickertape.store.log`) and following (:mod:`tickertape.store.follow`)
do.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Final

_BODY: Final = struct.Struct("<QQIII")  # first_seq, offset, length, count, crc32(batch)
RECORD_SIZE: Final = _BODY.size + 4  # + crc32 of the record itself
"""The size of one index record, in bytes."""

unpack_record: Final[Callable[[bytes], tuple[int, int, int, int, int]]] = _BODY.unpack_from
"""``(first_seq, offset, length, count, crc)`` of a record (its own check not made)."""


def pack_record(first_seq: int, offset: int, length: int, count: int, crc: int) -> bytes:
    """The record of a batch of ``count`` messages from ``first_seq``, ``length`` bytes
    at ``offset`` of the log, whose bytes have CRC-32 ``crc``."""
    body = _BODY.pack(first_seq, offset, length, count, crc)
    return body + zlib.crc32(body).to_bytes(4, "little")


def record_ok(record: bytes) -> bool:
    """Whether ``record`` (:data:`RECORD_SIZE` bytes) passes its own check."""
    return zlib.crc32(record[: _BODY.size]) == int.from_bytes(record[_BODY.size :], "little")


def corrected(record: bytes) -> bytes | None:
    """``record``, which fails its own check, with the one flipped bit that explains it
    put back; None if no single bit does. CRC-32 tells every single-bit error in a
    32-byte record apart (no two, or three, flipped bits look like one), so the
    correction is unique, and a record with more bits flipped is never "corrected"."""
    body = bytearray(record[: _BODY.size])
    stored = int.from_bytes(record[_BODY.size :], "little")
    actual = zlib.crc32(body)
    if (actual ^ stored).bit_count() == 1:  # the flipped bit is in the stored CRC
        return bytes(body) + actual.to_bytes(4, "little")
    for bit in range(len(body) * 8):
        body[bit >> 3] ^= 1 << (bit & 7)
        if zlib.crc32(body) == stored:
            return bytes(body) + record[_BODY.size :]
        body[bit >> 3] ^= 1 << (bit & 7)
    return None


__all__ = ["RECORD_SIZE", "corrected", "pack_record", "record_ok", "unpack_record"]
