"""The server side of a SoupBinTCP connection, sans I/O.

:class:`ServerConnection` takes the bytes a client sent (:meth:`~ServerConnection.receive_data`)
and the time (every method that depends on it takes ``now``, in monotonic seconds), and
hands back events (:meth:`~ServerConnection.events_received`) and the bytes to send
(:meth:`~ServerConnection.data_to_send`). It owns the login handshake, heartbeats in both
directions and the connection state; the application decides whom to accept and what
data to send. Nothing here reads a clock, touches a socket or awaits.

States::

    AWAITING_LOGIN ──accept()──> LOGGED_IN
          │                          │
          └──reject(), Logout, timeout, protocol violation, end_session()──> CLOSED

Once a Login Request has arrived, the connection stops parsing until the application
calls :meth:`~ServerConnection.accept` or :meth:`~ServerConnection.reject`, so that
nothing a client pipelines after its login is acted upon before the login is decided
(authentication may take a while). ``accept()`` then parses what was buffered: read
:meth:`~ServerConnection.events_received` after it.

Receiving Unsequenced Data is the hot path (a publisher's messages): a run of such
packets becomes one :class:`MessagesReceived` event holding their payloads, as the client
side hands out one event per run of Sequenced Data. The state, event and output queue
machinery is :class:`tickertape.protocol.connection.Connection`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from tickertape.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from tickertape.protocol.connection import Connection, ConnectionLost, State, debug_packet
from tickertape.wire.framing import Framer, PacketTooLong
from tickertape.wire.soupbintcp import (
    LOGIN_REQUEST_410_LENGTH,
    MAX_PACKET_LENGTH,
    ClientHeartbeat,
    ClientPacket,
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    ServerHeartbeat,
    UnsequencedData,
    decode_client_packet,
)

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LOGIN_TIMEOUT",
    "DEFAULT_MAX_PACKET_LENGTH",
    "MAX_LOGIN_PACKET_LENGTH",
    "MAX_PENDING_BYTES",
    "ConnectionLost",
    "Event",
    "LoginRequested",
    "LogoutRequested",
    "MessagesReceived",
    "ServerConnection",
    "ServerTimers",
    "State",
]

DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
"""Send a Server Heartbeat after this many seconds of sending nothing (spec 4.1, 1.3)."""
DEFAULT_IDLE_TIMEOUT: Final = 15.0
"""Drop a logged-in client that sent nothing for this long, unless its 4.10 login asks otherwise."""
DEFAULT_LOGIN_TIMEOUT: Final = 30.0
"""Drop a connection whose login is not done this long after it opened."""
DEFAULT_MAX_PACKET_LENGTH: Final = MAX_PACKET_LENGTH
"""The largest packet accepted from a logged-in client unless :meth:`ServerConnection.accept`
says otherwise: any size, since publishers send Unsequenced Data."""
MAX_LOGIN_PACKET_LENGTH: Final = LOGIN_REQUEST_410_LENGTH
"""The largest packet accepted before a login: a client never needs more than a Login
Request, so a longer length field closes the connection before its bytes are buffered."""
MAX_PENDING_BYTES: Final = 1 << 20
"""Bytes a client may send after its Login Request while the login is being decided;
more closes the connection (a server should also stop reading from it meanwhile)."""

_UNSEQUENCED: Final = 0x55  # "U"
_SERVER_HEARTBEAT: Final = ServerHeartbeat().encode()
_END_OF_SESSION: Final = EndOfSession().encode()


@dataclass(frozen=True, slots=True)
class ServerTimers:
    """Timeouts and limits of one server connection. Times are in seconds."""

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    login_timeout: float = DEFAULT_LOGIN_TIMEOUT
    max_packet_length: int = DEFAULT_MAX_PACKET_LENGTH

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval", "idle_timeout", "login_timeout"):
            value = getattr(self, name)
            if not value > 0 or value == math.inf:
                raise ConfigError(f"{name} is {value!r}; it must be a positive number of seconds")
        if not LOGIN_REQUEST_410_LENGTH <= self.max_packet_length <= MAX_PACKET_LENGTH:
            raise ConfigError(
                f"max_packet_length is {self.max_packet_length}; it must be between "
                f"{LOGIN_REQUEST_410_LENGTH} (a 4.10 Login Request) and {MAX_PACKET_LENGTH}"
            )


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """The client asked to log in: call :meth:`ServerConnection.accept` or ``reject``."""

    request: LoginRequest


@dataclass(frozen=True, slots=True)
class MessagesReceived:
    """Unsequenced Data packets that arrived one after another (spec 4.1, 2.3.2): their
    payloads, in order. One event for many, so that a publisher sending a million
    messages a second makes a million payloads, not a million events."""

    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class LogoutRequested:
    """The client asked to log out: close the transport once ``data_to_send()`` is sent."""


Event = LoginRequested | MessagesReceived | LogoutRequested | ConnectionLost


# ---------------------------------------------------------------------------- connection


class ServerConnection(Connection[LoginRequested | MessagesReceived | LogoutRequested]):
    """One client's SoupBinTCP connection, as seen by the server."""

    __slots__ = (
        "_created",
        "_framer",
        "_idle_timeout",
        "_last_heard",
        "_limit_reason",
        "_request",
        "_timers",
    )

    def __init__(self, now: float, timers: ServerTimers = ServerTimers()) -> None:
        super().__init__(now)
        self._timers = timers
        self._framer = Framer(MAX_LOGIN_PACKET_LENGTH)
        self._created = now
        self._last_heard = now
        self._idle_timeout = timers.idle_timeout
        self._request: LoginRequest | None = None
        self._limit_reason = ""

    @property
    def request(self) -> LoginRequest | None:
        """The client's Login Request, once it has arrived."""
        return self._request

    @property
    def idle_timeout(self) -> float:
        """Seconds of client silence after which the connection is dropped."""
        return self._idle_timeout

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float) -> None:
        """Take bytes received from the client; they may split or join packets anyhow."""
        if self._state is State.CLOSED:
            return
        self._framer.feed(data)
        if not self._awaiting_decision():
            self._parse(now)
        if self._awaiting_decision() and self._framer.buffered > MAX_PENDING_BYTES:
            self._fail(
                f"more than {MAX_PENDING_BYTES} bytes sent before the login was answered", now
            )

    def _parse(self, now: float) -> None:
        framer = self._framer
        try:
            while True:
                if self._state is State.LOGGED_IN:
                    # The publishing hot path: a run of messages, one event, no decoding.
                    payloads = framer.run(_UNSEQUENCED)
                    if payloads:
                        self._last_heard = now
                        self._events.append(MessagesReceived(payloads))
                frame = next(framer, None)
                if frame is None:
                    return
                self._last_heard = now
                self._handle(decode_client_packet(frame))
                if self._state is State.CLOSED or self._awaiting_decision():
                    return
        except PacketTooLong as error:
            if self._state is State.LOGGED_IN and self._limit_reason:
                self._fail(f"a message of {error.length - 1} bytes: {self._limit_reason}", now)
            else:
                self._fail(str(error), now)
        except RemoteProtocolError as error:
            self._fail(str(error), now)

    def _awaiting_decision(self) -> bool:
        # What follows a Login Request waits in the framer until accept() or reject().
        return self._state is State.AWAITING_LOGIN and self._request is not None

    def _handle(self, packet: ClientPacket) -> None:
        logged_in = self._state is State.LOGGED_IN
        match packet:
            case UnsequencedData(payload=payload) if logged_in:
                self._events.append(MessagesReceived([payload]))
            case ClientHeartbeat() if logged_in:
                pass
            case Debug():
                pass  # spec 4.1, 2.1: "Debug Packets should be ignored"
            case LoginRequest() if not logged_in:
                self._request = packet
                self._events.append(LoginRequested(packet))
            case LoginRequest():
                raise RemoteProtocolError("a second Login Request on a logged-in connection")
            case LogoutRequest():
                self._state = State.CLOSED
                self._events.append(LogoutRequested())
            case UnsequencedData():
                raise RemoteProtocolError("expected a Login Request first, got Unsequenced Data")
            case ClientHeartbeat():
                raise RemoteProtocolError("expected a Login Request first, got a Client Heartbeat")

    # ------------------------------------------------------------------ decisions

    def accept(
        self,
        session: str,
        sequence: int,
        now: float,
        *,
        max_packet_length: int | None = None,
        limit_reason: str = "",
    ) -> None:
        """Accept the pending login: queue Login Accepted naming ``session`` and ``sequence``.

        ``sequence`` is the number of the next Sequenced Data packet that will be sent.
        ``max_packet_length`` is the longest packet this client may send from now on
        (default: the timers'); a client that may not publish needs only a few bytes.
        ``limit_reason`` says why, to a client that sends a longer one (it is told "a
        message of N bytes: " and the reason before the connection closes).
        Packets the client sent after its login are parsed now; read ``events_received()``.
        Does nothing if the connection closed meanwhile (a timeout while authenticating).
        """
        if self._state is State.CLOSED:
            return
        request = self._pending_request("accept")
        limit = self._timers.max_packet_length if max_packet_length is None else max_packet_length
        if not 1 <= limit <= MAX_PACKET_LENGTH:
            raise LocalProtocolError(
                f"max_packet_length is {limit}; it must be 1 to {MAX_PACKET_LENGTH}"
            )
        self._framer.max_length = limit
        self._limit_reason = limit_reason
        self._queue(LoginAccepted(session, sequence).encode(), now)
        self._state = State.LOGGED_IN
        timeout_ms = request.heartbeat_timeout_ms
        if timeout_ms:  # SoupBinTCP 4.10 (spec 4.1, 2.3.1); 0 or absent: our default
            self._idle_timeout = timeout_ms / 1000
        # The client's silence is counted from its login being accepted.
        self._last_heard = max(self._last_heard, now)
        self._parse(now)

    def reject(self, reason: str, now: float) -> None:
        """Refuse the pending login with reason code ``"A"`` or ``"S"``; then close.

        Does nothing if the connection closed meanwhile.
        """
        if self._state is State.CLOSED:
            return
        self._pending_request("reject")
        self._queue(LoginRejected(reason).encode(), now)
        self._state = State.CLOSED

    def _pending_request(self, action: str) -> LoginRequest:
        if self._state is not State.AWAITING_LOGIN or self._request is None:
            raise LocalProtocolError(
                f"cannot {action} a login: "
                + (
                    "the connection is already logged in"
                    if self._state is State.LOGGED_IN
                    else "no Login Request has arrived (wait for LoginRequested)"
                )
            )
        return self._request

    # ------------------------------------------------------------------ output

    def heard(self, now: float) -> None:
        """The application knows the client is alive though nothing was read from it
        (it stopped reading from the client itself): no idle timeout before then."""
        self._last_heard = now

    def send_unsequenced(self, payload: bytes, now: float) -> None:
        """Queue an Unsequenced Data packet (spec 4.1, 2.2.4), once logged in."""
        if self._state is State.LOGGED_IN:
            self._queue(UnsequencedData(payload).encode(), now)

    def send_debug(self, text: str, now: float) -> None:
        """Queue a Debug packet (spec 4.1, 2.1); allowed in any state but CLOSED."""
        if self._state is not State.CLOSED:
            self._queue(debug_packet(text), now)

    def end_session(self, now: float) -> None:
        """Queue End of Session (spec 4.1, 2.2.6); the connection is then CLOSED."""
        if self._state is State.CLOSED:
            return
        if self._state is not State.LOGGED_IN:
            raise LocalProtocolError("cannot end the session of a connection not logged in")
        self._queue(_END_OF_SESSION, now)
        self._state = State.CLOSED

    def sent(self, now: float) -> None:
        """The application sent Sequenced Data itself: no heartbeat is due before a second."""
        self._last_sent = now

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: a heartbeat, or dropping a silent connection."""
        state = self._state
        if state is State.LOGGED_IN:
            if now >= self._last_heard + self._idle_timeout:
                self._fail(f"client silent for {self._idle_timeout} s", now)
            elif now >= self._last_sent + self._timers.heartbeat_interval:
                self._queue(_SERVER_HEARTBEAT, now)
        elif state is State.AWAITING_LOGIN and now >= self._created + self._timers.login_timeout:
            timeout = self._timers.login_timeout
            self._fail(
                f"no Login Request within {timeout} s"
                if self._request is None
                else f"Login Request not answered within {timeout} s",
                now,
            )

    def next_deadline(self) -> float:
        """The earliest ``now`` at which :meth:`tick` has something to do."""
        state = self._state
        if state is State.LOGGED_IN:
            return min(
                self._last_heard + self._idle_timeout,
                self._last_sent + self._timers.heartbeat_interval,
            )
        if state is State.AWAITING_LOGIN:
            return self._created + self._timers.login_timeout
        return math.inf
