"""What a cluster's journal holds, and how each record travels as a JetStream message.

Three kinds of record, applied by every node in the journal's order:

- :class:`Batch`: one group-commit batch of the active session, its bytes exactly the
  SoupBinTCP Sequenced Data packets that go into the session's ``log``;
- :class:`Roll`: the active session ends and the next one opens;
- :class:`Fence`: a node took the lease and is the sequencer from here on. It is the
  first thing a new sequencer appends, so that an append prepared by the one before it
  (which expects the journal to end where it last saw it) is refused.

A record is a message with an empty-or-not payload and ``Tickertape-*`` headers. This
module only encodes and decodes them (checking what it can: every header present and
well formed, the batch's checksum); it does no I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tickertape.errors import TickertapeError

KIND: Final = "Tickertape-Kind"
SESSION: Final = "Tickertape-Session"
FIRST: Final = "Tickertape-First"
COUNT: Final = "Tickertape-Count"
CHECKSUM: Final = "Tickertape-Checksum"
NEXT: Final = "Tickertape-Next"
NODE: Final = "Tickertape-Node"
ADDRESS: Final = "Tickertape-Address"
TERM: Final = "Tickertape-Term"


class CorruptRecord(TickertapeError):
    """A journal message that is not a well-formed tickertape record."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Messages ``first`` to ``first + count - 1`` of ``session``, as the packets of its log."""

    session: str
    first: int
    count: int
    data: bytes

    @property
    def next(self) -> int:
        """The sequence number after this batch's last message."""
        return self.first + self.count


@dataclass(frozen=True, slots=True)
class Roll:
    """Session ``ended`` ends; session ``next`` opens, its first message numbered 1."""

    ended: str
    next: str


@dataclass(frozen=True, slots=True)
class Fence:
    """Node ``node`` holds the lease in ``term`` and takes publishers at ``address``."""

    node: str
    address: str
    term: int


Record = Batch | Roll | Fence


def encode(record: Record) -> tuple[dict[str, str], bytes]:
    """The headers and payload of the message that carries ``record``."""
    match record:
        case Batch(session, first, count, data):
            headers = {
                KIND: "batch",
                SESSION: session,
                FIRST: str(first),
                COUNT: str(count),
                CHECKSUM: f"{zlib.crc32(data):08x}",
            }
            return headers, data
        case Roll(ended, next_session):
            return {KIND: "roll", SESSION: ended, NEXT: next_session}, b""
        case Fence(node, address, term):
            return {KIND: "fence", NODE: node, ADDRESS: address, TERM: str(term)}, b""


def decode(headers: Mapping[str, str] | None, payload: bytes) -> Record:
    """The record a message carries; :class:`CorruptRecord` if it is not one."""
    fields = headers or {}
    kind = fields.get(KIND)
    if kind == "batch":
        first, count = _number(fields, FIRST), _number(fields, COUNT)
        if first < 1 or count < 1:
            raise CorruptRecord(f"a batch numbered from {first}, of {count} messages")
        checksum = _field(fields, CHECKSUM)
        if f"{zlib.crc32(payload):08x}" != checksum:
            raise CorruptRecord(
                f"batch {first}..{first + count - 1} of session {_field(fields, SESSION)}: "
                f"checksum {zlib.crc32(payload):08x} does not match {checksum}"
            )
        return Batch(_field(fields, SESSION), first, count, payload)
    if kind == "roll":
        return Roll(_field(fields, SESSION), _field(fields, NEXT))
    if kind == "fence":
        return Fence(_field(fields, NODE), _field(fields, ADDRESS), _number(fields, TERM))
    raise CorruptRecord(f"not a tickertape record ({KIND}: {kind!r})")


def _field(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name)
    if not value:
        raise CorruptRecord(f"a record without its {name} header")
    return value


def _number(fields: Mapping[str, str], name: str) -> int:
    value = _field(fields, name)
    if not value.isdigit():
        raise CorruptRecord(f"{name} is {value!r}, not a number")
    return int(value)
