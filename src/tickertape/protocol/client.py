"""The client side of a SoupBinTCP connection, sans I/O.

:class:`ClientConnection` queues its Login Request when it is made, then takes the bytes
the server sent (:meth:`~ClientConnection.receive_data`) and the time (``now``, in
monotonic seconds), and hands back events (:meth:`~ClientConnection.events_received`) and
the bytes to send (:meth:`~ClientConnection.data_to_send`). It counts sequence numbers,
sends heartbeats and notices a silent server. Nothing here reads a clock or touches a
socket.

Receiving Sequenced Data is the hot path: a run of such packets becomes one
:class:`Messages` event, its payloads cut straight from the bytes received, and never
goes through the general decoder. The state, event and output queue machinery is
:class:`tickertape.protocol.connection.Connection`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from tickertape.errors import ConfigError, RemoteProtocolError
from tickertape.protocol.connection import Connection, ConnectionLost, State
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    SequencedData,
    ServerHeartbeat,
    UnsequencedData,
    decode_server_packet,
)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_SERVER_TIMEOUT",
    "Accepted",
    "ClientConnection",
    "ConnectionLost",
    "DebugReceived",
    "Event",
    "Messages",
    "Rejected",
    "SessionEnded",
    "State",
    "Unsequenced",
]

DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
"""Send a Client Heartbeat after this many seconds of sending nothing (spec 4.1, 1.3)."""
DEFAULT_SERVER_TIMEOUT: Final = 15.0
"""Give up on a server that sent nothing for this long."""

_SEQUENCED: Final = 0x53  # "S"
_CLIENT_HEARTBEAT: Final = ClientHeartbeat().encode()
_LOGOUT_REQUEST: Final = LogoutRequest().encode()
_TLS_RECORDS: Final = frozenset({0x15, 0x16})
"""The first byte of a TLS alert or handshake record; the second is 3 (the version)."""


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Accepted:
    """Login Accepted: ``sequence`` is the number of the next Sequenced Data packet."""

    session: str
    sequence: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """Login Rejected: ``reason`` is ``"A"`` (not authorized) or ``"S"`` (no such session);
    ``text``, what the last Debug packet before it said (a tickertape server sends the
    reason that way, as the packet has only a code), blank if none came."""

    reason: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Messages:
    """Sequenced Data packets that arrived one after another: their payloads, the first
    numbered ``first_sequence`` (counting from Login Accepted), the others following.
    One event for many, so that a client receiving a million messages a second makes a
    million payloads, not a million events."""

    first_sequence: int
    payloads: list[bytes]

    @property
    def next_sequence(self) -> int:
        """The number after the last of them."""
        return self.first_sequence + len(self.payloads)


@dataclass(frozen=True, slots=True)
class Unsequenced:
    """An Unsequenced Data packet from the server; it has no sequence number."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class DebugReceived:
    """A Debug packet: human-readable text, for logs only (spec 4.1, 2.1)."""

    text: str


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """End of Session: no more messages in this session; the server closes the connection."""


Event = Accepted | Rejected | Messages | Unsequenced | DebugReceived | SessionEnded | ConnectionLost


# ---------------------------------------------------------------------------- connection


class ClientConnection(
    Connection[Accepted | Rejected | Messages | Unsequenced | DebugReceived | SessionEnded]
):
    """A SoupBinTCP connection to a server, as seen by the client.

    ``session`` is the session named by Login Accepted (blank before it), and
    ``next_sequence`` the number the next Sequenced Data packet will carry (0 before it).
    A server that answers the Login Request with TLS (a TLS port) is recognised: the
    connection is lost, saying so.
    """

    __slots__ = (
        "_framer",
        "_heard_anything",
        "_heartbeat_interval",
        "_last_heard",
        "_server_timeout",
        "last_debug",
        "next_sequence",
        "session",
    )

    def __init__(
        self,
        request: LoginRequest,
        now: float,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        server_timeout: float = DEFAULT_SERVER_TIMEOUT,
    ) -> None:
        for name, value in (
            ("heartbeat_interval", heartbeat_interval),
            ("server_timeout", server_timeout),
        ):
            if not value > 0 or value == math.inf:
                raise ConfigError(f"{name} is {value!r}; it must be a positive number of seconds")
        super().__init__(now)
        self._heartbeat_interval = heartbeat_interval
        self._server_timeout = server_timeout
        self._framer = Framer()
        self._last_heard = now
        self._outgoing.append(request.encode())
        self.session = ""
        self.next_sequence = 0
        self.last_debug = ""
        """The text of the last Debug packet received (blank if none): the server's last
        word, worth showing when it closes the connection."""
        self._heard_anything = False

    @property
    def heard_anything(self) -> bool:
        """Whether the server has sent a single byte."""
        return self._heard_anything

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float) -> None:
        """Take bytes received from the server; they may split or join packets anyhow."""
        state = self._state  # a local: self._state changes under _handle()
        if state is State.CLOSED:
            return
        if not self._heard_anything and data:
            self._heard_anything = True
            if data[0] in _TLS_RECORDS and data[1:2] == b"\x03":
                self._fail("the server answered in TLS: connect with TLS (--tls)", now)
                return
        framer = self._framer
        framer.feed(data)
        pending = framer.buffered
        try:
            while True:
                if self._state is State.LOGGED_IN:
                    # The hot path: a run of Sequenced Data, one event, no decoding.
                    payloads = framer.run(_SEQUENCED)
                    if payloads:
                        self._events.append(Messages(self.next_sequence, payloads))
                        self.next_sequence += len(payloads)
                frame = next(framer, None)
                if frame is None:
                    break
                self._handle(frame)
                if self._state is State.CLOSED:
                    break
        except RemoteProtocolError as error:
            self._fail(str(error), now)
        if framer.buffered != pending:  # at least one whole packet arrived
            self._last_heard = now

    def _handle(self, frame: bytes) -> None:
        logged_in = self._state is State.LOGGED_IN
        packet = decode_server_packet(frame)
        match packet:
            case ServerHeartbeat():
                pass
            case Debug(text=text):
                self.last_debug = text.decode("ascii", "backslashreplace").strip()
                self._events.append(DebugReceived(self.last_debug))
            case UnsequencedData(payload=payload) if logged_in:
                self._events.append(Unsequenced(payload))
            case EndOfSession() if logged_in:
                self._state = State.CLOSED
                self._events.append(SessionEnded())
            case LoginAccepted(session=session, sequence=sequence) if not logged_in:
                self._state = State.LOGGED_IN
                self.session = session
                self.next_sequence = sequence
                self._events.append(Accepted(session, sequence))
            case LoginRejected(reason=reason) if not logged_in:
                self._state = State.CLOSED
                self._events.append(Rejected(reason, self.last_debug))
            case LoginAccepted() | LoginRejected():
                raise RemoteProtocolError(f"{_NAMES[type(packet)]} on a logged-in connection")
            case SequencedData() | UnsequencedData() | EndOfSession():
                # Spec 4.1, 2.2.1: Login Accepted "will always be the first non-debug packet".
                raise RemoteProtocolError(f"{_NAMES[type(packet)]} before Login Accepted")

    # ------------------------------------------------------------------ output

    def heard(self, now: float) -> None:
        """The application knows the server is alive (bytes wait unread while its
        consumer is busy): no silence timeout before ``server_timeout`` from now."""
        self._last_heard = now

    def logout(self, now: float) -> None:
        """Queue a Logout Request (spec 4.1, 2.3.4); the connection is then CLOSED."""
        if self._state is not State.CLOSED:
            self._queue(_LOGOUT_REQUEST, now)
            self._state = State.CLOSED

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: a heartbeat, or giving up on a silent server."""
        state = self._state
        if state is State.CLOSED:
            return
        if now >= self._last_heard + self._server_timeout:
            self._fail(
                f"server silent for {self._server_timeout} s"
                if state is State.LOGGED_IN
                else f"server did not answer the Login Request within {self._server_timeout} s",
                now,
            )
        # Spec 4.1, 1.3: "once logged in, the client must send a Client Heartbeat packet".
        elif state is State.LOGGED_IN and now >= self._last_sent + self._heartbeat_interval:
            self._queue(_CLIENT_HEARTBEAT, now)

    def next_deadline(self) -> float:
        """The earliest ``now`` at which :meth:`tick` has something to do."""
        state = self._state
        if state is State.LOGGED_IN:
            return min(
                self._last_heard + self._server_timeout,
                self._last_sent + self._heartbeat_interval,
            )
        if state is State.AWAITING_LOGIN:
            return self._last_heard + self._server_timeout
        return math.inf


_NAMES: Final[dict[type, str]] = {
    LoginAccepted: "Login Accepted",
    LoginRejected: "Login Rejected",
    SequencedData: "Sequenced Data",
    UnsequencedData: "Unsequenced Data",
    EndOfSession: "End of Session",
}
