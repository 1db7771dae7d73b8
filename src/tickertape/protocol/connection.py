"""What the server and client sides of a SoupBinTCP connection share, sans I/O.

:class:`Connection` holds the connection's :class:`State`, the events parsed and not yet
read, the packets queued and not yet sent, the time something was last sent, and the way
a connection fails (:class:`ConnectionLost`, a Debug packet telling the peer why). The
two sides (:mod:`tickertape.protocol.server`, :mod:`tickertape.protocol.client`) add
what differs: which packets they accept, logins, timers. Nothing here parses a packet,
reads a clock or touches a socket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

from tickertape.wire.soupbintcp import Debug

__all__ = ["Connection", "ConnectionLost", "State", "debug_packet"]


class State(enum.Enum):
    """Where a SoupBinTCP connection is in its life."""

    AWAITING_LOGIN = enum.auto()
    LOGGED_IN = enum.auto()
    CLOSED = enum.auto()


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The connection is over because of a timeout or a protocol violation.

    ``data_to_send()`` holds a Debug packet telling the peer why; send it, then close.
    """

    reason: str


E = TypeVar("E")


class Connection(Generic[E]):
    """One SoupBinTCP connection, either side: its state, events and output queue."""

    __slots__ = ("_events", "_last_sent", "_outgoing", "_state")

    def __init__(self, now: float) -> None:
        self._state = State.AWAITING_LOGIN
        self._last_sent = now
        self._events: list[E | ConnectionLost] = []
        self._outgoing: list[bytes] = []

    @property
    def state(self) -> State:
        return self._state

    def events_received(self) -> list[E | ConnectionLost]:
        """The events parsed since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        """The bytes queued since the last call, to write to the transport."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def _queue(self, packet: bytes, now: float) -> None:
        self._outgoing.append(packet)
        self._last_sent = now

    def _fail(self, reason: str, now: float) -> None:
        """Queue a Debug packet saying why, report :class:`ConnectionLost`, close."""
        self._queue(debug_packet(reason), now)
        self._events.append(ConnectionLost(reason))
        self._state = State.CLOSED


def debug_packet(text: str) -> bytes:
    """An encoded Debug packet (spec 4.1, 2.1) saying ``text``."""
    return Debug(text.encode("ascii", "backslashreplace")).encode()
