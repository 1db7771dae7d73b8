"""Publishing over SoupBinTCP: tickertape's convention, its constants and its codec.

SoupBinTCP lets a client send Unsequenced Data packets and leaves their meaning to the
application. tickertape reads each one from a logged-in client as a message to publish
into the active session:

- A publisher logs in to the active session (blank session field) at sequence number
  :data:`NO_STREAM`, the largest the field holds: the server accepts it and, since that
  number never exists, sends it no messages. (Logged in at any other number, a
  connection both publishes and receives the stream.)
- The server numbers a publisher's messages in arrival order. Once a batch of them is
  durable (per the server's durability policy), it answers with an Unsequenced Data
  packet ``ACK <count> <session> <seq>``: how many of this connection's messages are
  durable so far, and the sequence number of the last of them.
- An Unsequenced Data packet holding exactly :data:`END_OF_SESSION_MARKER` ends the
  active session once everything sent before it is published; the acknowledgement
  carries sequence number 0.
- If the connection drops, every acknowledged message is in the session; messages sent
  after the last acknowledgement may or may not be.
- A node of a cluster that is not its sequencer rejects a publisher's login (``J``,
  session not available) after a Debug packet that says where to publish instead
  (:func:`redirect_text`: ``... publish to HOST:PORT``), or that no node takes
  publishers yet; the client tries that address (:func:`redirect_address`).

This module holds the bytes only (the marker, :class:`Ack`'s encoding). What either side
does with them, sans I/O, is :mod:`tickertape.protocol.publishing`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tickertape.errors import RemoteProtocolError

__all__ = ["END_OF_SESSION_MARKER", "NO_STREAM", "Ack", "redirect_address", "redirect_text"]

NO_STREAM: Final = 10**20 - 1
"""The sequence number a publisher logs in at: it never exists, so nothing is sent."""

END_OF_SESSION_MARKER: Final = b"\x1bEND OF SESSION"
"""Sent as a message, ends the active session after what was sent before it."""


@dataclass(frozen=True, slots=True)
class Ack:
    """``count`` of a publisher's messages are durable; the last is ``seq`` of ``session``
    (0: the publisher's end of that session took effect)."""

    count: int
    session: str
    seq: int

    def encode(self) -> bytes:
        return b"ACK %d %s %d" % (self.count, self.session.encode("ascii"), self.seq)

    @classmethod
    def decode(cls, payload: bytes) -> Ack:
        fields = payload.split()
        if len(fields) != 4 or fields[0] != b"ACK" or not fields[1].isdigit():
            raise RemoteProtocolError(f"not an acknowledgement: {payload[:80]!r}")
        if not fields[3].isdigit():
            raise RemoteProtocolError(f"not an acknowledgement: {payload[:80]!r}")
        return cls(int(fields[1]), fields[2].decode("ascii", "replace"), int(fields[3]))


_REDIRECT = re.compile(r"publish to (\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})\b")


def redirect_text(address: str | None) -> str:
    """What a cluster node that is not the sequencer says to a publisher (in a Debug
    packet, before Login Rejected): where the sequencer takes publishers (``host:port``,
    ``[v6]:port``), or that none does now."""
    if address is None:
        return (
            "this node is not the cluster's sequencer, and no node is at the moment: "
            "try again shortly"
        )
    return f"this node is not the cluster's sequencer: publish to {address}"


def redirect_address(text: str) -> tuple[str, int] | None:
    """The host and port a Debug packet's ``text`` sends a publisher to, if any."""
    found = _REDIRECT.search(text)
    if found is None:
        return None
    return found[1].strip("[]"), int(found[2])
