"""Tests of the index codec (:mod:`tickertape.store.index`), on its own: the layout of a
record, its check, and putting right one flipped bit. Recovery's use of it (a damaged
index on disk) is tested in test_recovery.py."""

from __future__ import annotations

import struct
import zlib

import pytest

from tickertape.store.index import RECORD_SIZE, corrected, pack_record, record_ok, unpack_record

FIELDS = (12345, 1 << 40, 70000, 17, 0xDEADBEEF)


def test_a_record_is_its_fields_then_their_crc() -> None:
    record = pack_record(*FIELDS)
    body = struct.pack("<QQIII", *FIELDS)
    assert RECORD_SIZE == 32
    assert record == body + zlib.crc32(body).to_bytes(4, "little")
    assert record_ok(record)
    assert unpack_record(record) == FIELDS


@pytest.mark.parametrize("bit", range(RECORD_SIZE * 8))
def test_one_flipped_bit_anywhere_is_found_and_put_right(bit: int) -> None:
    record = pack_record(*FIELDS)
    flipped = bytearray(record)
    flipped[bit >> 3] ^= 1 << (bit & 7)
    assert not record_ok(bytes(flipped))
    assert corrected(bytes(flipped)) == record


def test_two_flipped_bits_are_never_put_right() -> None:
    record = pack_record(*FIELDS)
    for first, second in [(0, 1), (3, 200), (100, 255), (224, 231), (17, 250)]:
        flipped = bytearray(record)
        for bit in (first, second):
            flipped[bit >> 3] ^= 1 << (bit & 7)
        assert not record_ok(bytes(flipped))
        assert corrected(bytes(flipped)) is None
