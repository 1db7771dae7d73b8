"""Cutting a byte stream into SoupBinTCP packets.

:class:`Framer` takes bytes however they were read and hands out whole frames (packets
without their length field), or a run of same-type payloads at once; a length above
the endpoint's limit is the peer's fault (:class:`PacketTooLong`).
:func:`packet_offsets` finds where each packet starts in a stretch of a session's log.
What the packets mean is :mod:`tickertape.wire.soupbintcp`'s business.
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Iterator
from typing import Final

from tickertape.errors import RemoteProtocolError
from tickertape.wire.soupbintcp import MAX_PACKET_LENGTH

_SEQUENCED: Final = ord("S")
_JOIN_AT_ONCE: Final = 4096
"""A Framer joins at most this many unread bytes to the next read at once; more (a long
packet trickling in, packets held back) wait in its side buffer instead."""


def packet_offsets(data: bytes | memoryview, base: int = 0) -> list[int]:
    """Offsets (from ``base``) of every whole Sequenced Data packet at the start of
    ``data`` (a stretch of a session's log), then the offset where the whole packets
    end. Stops at the first packet that is torn or is not Sequenced Data."""
    offsets: list[int] = []
    position = 0
    size = len(data)
    while position + 3 <= size:
        length = (data[position] << 8) | data[position + 1]
        if length == 0 or data[position + 2] != _SEQUENCED or position + 2 + length > size:
            break
        offsets.append(base + position)
        position += 2 + length
    offsets.append(base + position)
    return offsets


class PacketTooLong(RemoteProtocolError):
    """A packet's length field is above what the endpoint accepts."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"packet length {length}: this endpoint accepts at most {limit}")
        self.length = length
        self.limit = limit


@functools.lru_cache(maxsize=64)
def _records(length: int) -> struct.Struct:  # a packet of this length: header, payload
    return struct.Struct(f"3x{length - 1}s")


_FIRST: Final = operator.itemgetter(0)


class Framer:
    """Splits a byte stream into frames (packets without their length field).

    Feed it bytes however they were chunked; it hands out each complete frame once
    (iterating), or, for the hot paths, the payloads of a run of packets of one type
    (:meth:`run`): one ``bytes`` slice per payload, cut straight from what was fed.
    Many bytes fed while earlier ones are unread (a long packet trickling in, packets
    held back) wait in a side buffer, joined once there is a whole packet.

    A length field of 0, or one above ``max_length``, raises :class:`RemoteProtocolError`
    (the stream cannot be resynchronised after that).
    """

    __slots__ = ("_data", "_max_length", "_position", "_tail")

    def __init__(self, max_length: int = MAX_PACKET_LENGTH) -> None:
        self._data = b""  # what is being handed out, from _position
        self._position = 0
        self._tail = bytearray()  # fed after _data, not yet joined to it
        self._max_length = max_length

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes."""
        rest = len(self._data) - self._position
        if self._tail or rest > _JOIN_AT_ONCE:
            self._tail += data  # joined once a packet is whole (see _ready)
        elif rest:  # a packet cut by the read
            self._data, self._position = self._data[self._position :] + data, 0
        else:
            self._data, self._position = data if type(data) is bytes else bytes(data), 0

    def _ready(self) -> bytes:
        """The unread bytes (from ``_position``), the side buffer joined once it completes
        a packet, or a length field cut in two (one too long is refused at once)."""
        data = self._data
        tail = self._tail
        if tail:
            position = self._position
            rest = len(data) - position
            need = 2 + ((data[position] << 8) | data[position + 1]) - rest if rest >= 2 else 0
            if rest < 2 or 0 < need <= len(tail):
                data = self._data = data[position:] + tail
                self._position = 0
                tail.clear()
        return data

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        """The next complete frame; ``StopIteration`` when more bytes are needed."""
        data = self._ready()
        position = self._position
        if len(data) - position < 2:
            raise StopIteration
        length = (data[position] << 8) | data[position + 1]
        if length == 0:
            raise RemoteProtocolError(
                f"packet length {length}: every packet has at least its 1-byte type"
            )
        if length > self._max_length:
            raise PacketTooLong(length, self._max_length)
        end = position + 2 + length
        if end > len(data):
            raise StopIteration
        self._position = end
        return data[position + 2 : end]

    def run(self, packet_type: int) -> list[bytes]:
        """The payloads of the whole packets of type ``packet_type`` at the front, in order
        (a receiver's hot path); stops before a packet of another type, an incomplete one
        or a bad length field (which iterating then hands out or raises)."""
        data = self._ready()
        position = self._position
        size = len(data)
        limit = self._max_length
        payloads: list[bytes] = []
        if size - position < 3:
            return payloads
        length = (data[position] << 8) | data[position + 1]
        step = length + 2
        count = (size - position) // step
        if count > 8 and 0 < length <= limit and data[position + 2] == packet_type:
            # Packets of one size: check every header at once (strided slices), then cut.
            end = position + count * step
            if (
                data[position:end:step].count(data[position]) == count
                and data[position + 1 : end : step].count(data[position + 1]) == count
                and data[position + 2 : end : step].count(packet_type) == count
            ):
                records = _records(length).iter_unpack(memoryview(data)[position:end])
                payloads = list(map(_FIRST, records))  # no Python loop per packet
                position = end
        append = payloads.append
        while size - position >= 3:
            length = (data[position] << 8) | data[position + 1]
            end = position + 2 + length
            if end > size or data[position + 2] != packet_type or not 0 < length <= limit:
                break
            append(data[position + 3 : end])
            position = end
        self._position = position
        return payloads

    @property
    def max_length(self) -> int:
        """The longest packet accepted; it may change between packets (after a login)."""
        return self._max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self._max_length = value

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as frames."""
        return len(self._data) - self._position + len(self._tail)
