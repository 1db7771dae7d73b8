"""Tests of :func:`tickertape.wire.soupbintcp.packet_offsets`: where the whole Sequenced
Data packets of a stretch of a session's log begin (moved from tests/store/test_log.py
with the function)."""

from __future__ import annotations

from tickertape.wire.framing import packet_offsets
from tickertape.wire.soupbintcp import encode_sequenced_many


def test_packet_offsets() -> None:
    data = encode_sequenced_many([b"ab", b"", b"cdef"])
    assert packet_offsets(data) == [0, 5, 8, 15]
    assert packet_offsets(data, base=100) == [100, 105, 108, 115]
    assert packet_offsets(b"") == [0]
    # Stops at a torn packet, a torn header, a zero length or a type other than 'S'.
    assert packet_offsets(data[:-1]) == [0, 5, 8]
    assert packet_offsets(data + b"\x00") == [0, 5, 8, 15]
    assert packet_offsets(data + b"\x00\x05") == [0, 5, 8, 15]
    assert packet_offsets(data + b"\x00\x00S") == [0, 5, 8, 15]
    assert packet_offsets(data + b"\x00\x01U" + data) == [0, 5, 8, 15]
    assert packet_offsets(memoryview(data)) == [0, 5, 8, 15]
