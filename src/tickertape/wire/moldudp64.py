"""MoldUDP64 1.00 packets: pure encode and decode (layout: ``shared/specs/moldudp64-notes.md``).

A downstream packet is ``Session`` (10 bytes, ASCII, padded on the right with spaces),
``Sequence Number`` (u64, the number of its first message), ``Message Count`` (u16), then
that many message blocks, each ``u16 length`` and the message. Count 0 is a heartbeat
(the sequence number is the next one the sender will use); count ``0xFFFF`` is End of
Session (the sequence number is one past the last message). A request packet is the same
first 20 bytes: the first message wanted and how many. All numbers are big-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from tickertape.errors import LocalProtocolError, RemoteProtocolError

SESSION_LENGTH: Final = 10
HEADER: Final = struct.Struct(">10sQH")
"""Session, sequence number, message count: 20 bytes, the same in both directions."""
BLOCK_HEADER: Final = struct.Struct(">H")

MAX_DATAGRAM: Final = 1472
"""UDP payload that fits one unfragmented datagram on a 1500-byte MTU."""
MAX_MESSAGE: Final = MAX_DATAGRAM - HEADER.size - BLOCK_HEADER.size
"""The largest message that fits a packet alone: 1450 bytes."""

HEARTBEAT_COUNT: Final = 0
END_OF_SESSION_COUNT: Final = 0xFFFF
MAX_MESSAGES: Final = 0xFFFE
"""Count 0xFFFF is reserved for End of Session."""

SOUPBINTCP_SEQUENCED_HEADER: Final = 3
"""What precedes a payload in a SoupBinTCP Sequenced Data packet (``u16 length``, ``'S'``),
the framing of a log and of the engine's batches: a MoldUDP64 block has one byte less."""


def _session_field(session: str) -> bytes:
    try:
        raw = session.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"session {session!r} is not ASCII") from None
    if len(raw) > SESSION_LENGTH:
        raise LocalProtocolError(
            f"session {session!r} is {len(raw)} characters; MoldUDP64 allows {SESSION_LENGTH}"
        )
    return raw.ljust(SESSION_LENGTH)


def _session_text(raw: bytes) -> str:
    try:
        return raw.rstrip(b" \x00").decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"session {raw!r} is not ASCII") from None


@dataclass(frozen=True, slots=True)
class Downstream:
    """A downstream packet: messages ``sequence``, ``sequence + 1``, ...; or, with no
    messages, a heartbeat; or End of Session."""

    session: str
    sequence: int
    messages: tuple[bytes, ...] = ()
    end_of_session: bool = False

    @property
    def heartbeat(self) -> bool:
        return not self.messages and not self.end_of_session

    @property
    def next_sequence(self) -> int:
        """The number of the message after this packet's last."""
        return self.sequence + len(self.messages)

    def encode(self) -> bytes:
        if self.end_of_session and self.messages:
            raise LocalProtocolError("an End of Session packet carries no messages")
        if len(self.messages) > MAX_MESSAGES:
            raise LocalProtocolError(
                f"{len(self.messages)} messages in one packet; at most {MAX_MESSAGES}"
            )
        if not 0 <= self.sequence < 1 << 64:
            raise LocalProtocolError(f"sequence number {self.sequence} does not fit in a u64")
        count = END_OF_SESSION_COUNT if self.end_of_session else len(self.messages)
        parts = [HEADER.pack(_session_field(self.session), self.sequence, count)]
        for message in self.messages:
            if len(message) > 0xFFFF:
                raise LocalProtocolError(
                    f"a message of {len(message)} bytes does not fit a MoldUDP64 block"
                )
            parts.append(BLOCK_HEADER.pack(len(message)))
            parts.append(message)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Downstream:
        """Raises :class:`RemoteProtocolError` for a packet that is short, whose blocks
        overrun it, or that has bytes after its last block."""
        if len(data) < HEADER.size:
            raise RemoteProtocolError(
                f"a MoldUDP64 packet of {len(data)} bytes; the header alone is {HEADER.size}"
            )
        raw_session, sequence, count = HEADER.unpack_from(data)
        session = _session_text(raw_session)
        if count == END_OF_SESSION_COUNT:
            if len(data) != HEADER.size:
                raise RemoteProtocolError("an End of Session packet with bytes after its header")
            return cls(session, sequence, (), end_of_session=True)
        if not isinstance(data, bytes):
            data = bytes(data)
        messages: list[bytes] = []
        append = messages.append
        size = len(data)
        position = HEADER.size
        for number in range(count):
            if position + 2 > size:
                raise RemoteProtocolError(f"packet says {count} messages but ends after {number}")
            end = position + 2 + ((data[position] << 8) | data[position + 1])
            if end > size:
                raise RemoteProtocolError(
                    f"message {number} of {end - position - 2} bytes overruns the packet"
                )
            append(data[position + 2 : end])
            position = end
        if position != size:
            raise RemoteProtocolError(
                f"{len(data) - position} bytes after the packet's {count} messages"
            )
        return cls(session, sequence, tuple(messages))


@dataclass(frozen=True, slots=True)
class Request:
    """A re-request: ``count`` messages of ``session`` from ``sequence`` on."""

    session: str
    sequence: int
    count: int

    def encode(self) -> bytes:
        if not 0 < self.count <= 0xFFFF:
            raise LocalProtocolError(f"a request for {self.count} messages; 1 to 65535")
        return HEADER.pack(_session_field(self.session), self.sequence, self.count)

    @classmethod
    def decode(cls, data: bytes) -> Request:
        """Raises :class:`RemoteProtocolError` unless ``data`` is exactly 20 bytes."""
        if len(data) != HEADER.size:
            raise RemoteProtocolError(
                f"a request of {len(data)} bytes; a MoldUDP64 request is {HEADER.size}"
            )
        raw_session, sequence, count = HEADER.unpack(data)
        return cls(_session_text(raw_session), sequence, count)


def heartbeat(session: str, next_sequence: int) -> bytes:
    return Downstream(session, next_sequence).encode()


def end_of_session(session: str, next_sequence: int) -> bytes:
    return Downstream(session, next_sequence, end_of_session=True).encode()


def pack(
    session: str, first_sequence: int, messages: Sequence[bytes], max_datagram: int = MAX_DATAGRAM
) -> Iterator[bytes]:
    """Downstream packets holding ``messages`` (numbered from ``first_sequence``), as
    many to a packet as fit in ``max_datagram`` bytes. A message too large to fit a
    packet alone raises :class:`LocalProtocolError`: MoldUDP64 does not fragment."""
    field = _session_field(session)
    sequence = first_sequence
    parts: list[bytes] = []
    count = 0
    size = HEADER.size
    for message in messages:
        block = BLOCK_HEADER.size + len(message)
        if HEADER.size + block > max_datagram:
            raise LocalProtocolError(
                f"a message of {len(message)} bytes does not fit a MoldUDP64 packet of "
                f"{max_datagram} bytes (at most {max_datagram - HEADER.size - 2} a message)"
            )
        if size + block > max_datagram or count == MAX_MESSAGES:
            yield HEADER.pack(field, sequence, count) + b"".join(parts)
            sequence += count
            parts, count, size = [], 0, HEADER.size
        parts.append(BLOCK_HEADER.pack(len(message)))
        parts.append(message)
        count += 1
        size += block
    if count:
        yield HEADER.pack(field, sequence, count) + b"".join(parts)


def blocks_from_soupbintcp(
    data: bytes | memoryview, offsets: Sequence[int], count: int
) -> tuple[bytes, list[int]]:
    """The first ``count`` SoupBinTCP Sequenced Data packets of ``data`` (packet ``n``
    from ``offsets[n]`` to ``offsets[n + 1]``) as MoldUDP64 message blocks, and where each
    block starts in them (one more offset than blocks: where the last one ends). Each
    message is one byte shorter as a block: the SoupBinTCP length counts the ``'S'``."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for number in range(count):
        start, end = offsets[number], offsets[number + 1]
        parts.append((end - start - SOUPBINTCP_SEQUENCED_HEADER).to_bytes(2, "big"))
        parts.append(view[start + SOUPBINTCP_SEQUENCED_HEADER : end])
    return b"".join(parts), [offsets[n] - offsets[0] - n for n in range(count + 1)]
