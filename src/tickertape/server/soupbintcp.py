"""The SoupBinTCP endpoint: asyncio glue between sockets, the session logic and the engine.

This layer never parses: bytes go to :class:`~tickertape.protocol.server.ServerConnection`,
which returns events and bytes to send. A login is classified here:

- blank session, or the active session's id: subscribe to the active session, from the
  requested sequence number (0: the next message published; 1..next: replay, then live;
  above next: accepted, and sent from that number once it exists);
- the id of another session on disk: a pull, the messages from the requested number to
  the end, then End of Session;
- anything else: Login Rejected ``S``.

Who may log in and do what is decided by :class:`~tickertape.server.access.Access`: wrong
credentials get Login Rejected ``A`` after a delay that grows with each failure from the
same address; a session the user may not read gets ``S``. Every Login Rejected follows a
Debug packet saying why (``J`` has only a code). Publishing without the ``publisher``
role closes the connection with a Debug packet saying why. The limits of
:class:`ServerConfig` (connections in all and per address, packet sizes, the login
timeout, the write buffer) close a connection that passes them the same way: a Debug
packet, then the close.

A close never throws output away: whatever is queued is sent (a catch-up stops at the end
of the packet it is sending), then End of Session or the Debug packet saying why, then
the sending side is shut (FIN), and what the client still sends is read and discarded
until it closes its side, so that the kernel never resets the connection (closing a
socket whose input is unread does, discarding what was queued for sending). A client
that does not take what is queued, or does not close, within :data:`CLOSE_GRACE`
seconds is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import socket
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Final

from tickertape.errors import ConfigError, SessionNotFound, StoreError
from tickertape.protocol.server import (
    ConnectionLost,
    LoginRequested,
    LogoutRequested,
    MessagesReceived,
    ServerConnection,
    ServerTimers,
    State,
)
from tickertape.server.access import (
    ANONYMOUS,
    DEFAULT_LOGIN_DELAY,
    DEFAULT_MAX_LOGIN_DELAY,
    Access,
    Credentials,
    LoginThrottle,
    OneAtATime,
    Principal,
    is_loopback,
    may_not_read,
)
from tickertape.server.metrics import metrics_of
from tickertape.server.session_source import SessionSource
from tickertape.server.subscriber import DEFAULT_CATCH_UP_CHUNK, Subscriber
from tickertape.sources.publisher import PublisherInput
from tickertape.store.log import ReadableLog, SessionLog
from tickertape.text import plural
from tickertape.tls import TLSGate, is_client_hello
from tickertape.users import Role, Users
from tickertape.wire.publishing import NO_STREAM
from tickertape.wire.soupbintcp import (
    MAX_PACKET_LENGTH,
    REJECT_NOT_AUTHORIZED,
    REJECT_SESSION_NOT_AVAILABLE,
    Debug,
    LoginRequest,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_CLIENT_PACKET",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE",
    "DEFAULT_PORT",
    "Credentials",
    "ServerConfig",
    "SoupBinTCPServer",
    "SubscriberInfo",
]

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7300
DEFAULT_WRITE_BUFFER_HIGH: Final = 4 << 20
"""A live subscriber whose unsent bytes pass this stops taking live batches and reads
the log once they drain: with one batch on top, its memory bound."""

DEFAULT_MAX_CONNECTIONS: Final = 10_000
"""Connections open at once, in all; one more gets a Debug packet and is closed."""
DEFAULT_MAX_CONNECTIONS_PER_SOURCE: Final = 100
"""Connections open at once from one IP address."""
CLOSE_GRACE: Final = 5.0
"""Seconds a closing connection has to take what is queued for it (a Debug packet
saying why, End of Session) and close its side before it is cut off. The server's own
shutdown waits as long, at most, for its connections to close."""
_SHUTDOWN_POLL: Final = 0.01
"""Seconds between looks, while the server shuts down, at which connections' clients have
received everything."""
DEFAULT_MAX_CLIENT_PACKET: Final = 1024
"""The longest packet a logged-in client that may not publish can send (it needs only
heartbeats and a logout: 1 byte each). Before its login a client may send at most a
Login Request; a publisher may send messages as long as the engine accepts."""


DEFAULT_MAX_UNPUBLISHED_BYTES: Final = 16 << 20
"""...or this many bytes of them."""

DEFAULT_MAX_UNPUBLISHED: Final = 65_536
"""Messages a publisher may have sent that are not yet handed to the writer; past this
the server stops reading from it until the writer catches up."""


@dataclass(frozen=True, slots=True)
class SubscriberInfo:
    """One logged-in connection, as the status view shows it."""

    address: str
    user: str
    session: str
    next_seq: int
    """The next sequence number it will be sent."""
    lag: int
    """Messages published in its session that it has not been sent yet."""
    live: bool
    """At the tail, taking each batch as it is published (else reading the log)."""
    state: str = ""
    """live, catching up, blocked (its write buffer is full) or closed session."""
    since: float = 0.0
    """When it logged in (UNIX time)."""
    tls: bool = False
    """Connected over TLS."""


@dataclass(frozen=True, slots=True)
class PublisherInfo:
    """A connection publishing, as the status view shows it."""

    address: str
    user: str
    published: int
    """Messages it sent that were published (acknowledged)."""
    since: float
    """When it logged in (UNIX time)."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how the SoupBinTCP endpoint listens."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    users: Users | None = None
    """Who may log in (``serve --users FILE``)."""
    credentials: Credentials | None = None
    """The one account accepted, with every role (``serve --user NAME:PASSWORD``)."""
    allow_anonymous: bool = False
    """Accept anonymous subscribers even on an address other machines can reach. With
    neither ``users`` nor ``credentials``, a server on a loopback address accepts anyone
    to subscribe and to publish; elsewhere it refuses to start without this."""
    timers: ServerTimers = field(default_factory=ServerTimers)
    write_buffer_high: int = DEFAULT_WRITE_BUFFER_HIGH
    catch_up_chunk: int = DEFAULT_CATCH_UP_CHUNK
    max_unpublished: int = DEFAULT_MAX_UNPUBLISHED
    max_unpublished_bytes: int = DEFAULT_MAX_UNPUBLISHED_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    max_client_packet: int = DEFAULT_MAX_CLIENT_PACKET
    login_delay: float = DEFAULT_LOGIN_DELAY
    """Seconds before answering a failed login, doubled by each further failure from the
    same address (up to ``max_login_delay``)."""
    max_login_delay: float = DEFAULT_MAX_LOGIN_DELAY
    ssl: SSLContext | None = None
    """Serve over TLS with this context (see :func:`tickertape.tls.server_context`).
    Catching up cannot use ``sendfile`` then: the log is read and written in large ranges."""

    def __post_init__(self) -> None:
        if self.users is not None and self.credentials is not None:
            raise ConfigError("give a users file or one --user account, not both")
        for name in ("max_connections", "max_connections_per_source"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; it must be at least 1")
        if not 1 <= self.max_client_packet <= MAX_PACKET_LENGTH:
            raise ConfigError(
                f"max_client_packet is {self.max_client_packet}; it must be 1 to "
                f"{MAX_PACKET_LENGTH}"
            )
        if not 0 <= self.login_delay <= self.max_login_delay:
            raise ConfigError("login_delay must be between 0 and max_login_delay")
        self.anonymous_roles()  # refuses anonymous logins from other machines unless allowed

    def anonymous_roles(self) -> frozenset[Role] | None:
        """What an anonymous login may do (None: it is refused); raises ConfigError if
        the server would be open to anonymous logins from other machines without
        ``allow_anonymous``."""
        if self.users is None and self.credentials is None:
            if is_loopback(self.host):
                return frozenset({Role.SUBSCRIBER, Role.PUBLISHER})
            if not self.allow_anonymous:
                raise ConfigError(
                    f"listening on {self.host or 'every address'} with no users file would let "
                    "anyone who can reach it log in: give --users FILE (see 'tickertape users "
                    "add --help'), or --allow-anonymous to serve anonymous subscribers anyway"
                )
        return frozenset({Role.SUBSCRIBER}) if self.allow_anonymous else None

    def access(self) -> Access:
        """Who may log in under this configuration."""
        return Access(
            users=self.users, credentials=self.credentials, anonymous=self.anonymous_roles()
        )


class SoupBinTCPServer:
    """Serves the engine's sessions to SoupBinTCP clients."""

    def __init__(self, engine: SessionSource, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.access = self.config.access()
        self._throttle = LoginThrottle(self.config.login_delay, self.config.max_login_delay)
        self._server: asyncio.Server | None = None
        self._gate: TLSGate | None = None
        self._connections: set[_Connection] = set()
        self._per_source: dict[str, int] = {}
        self._refused = 0
        # Password checks: one at a time per address (a failure's delay included, so
        # that guessing in parallel is no faster than in turn), and no more at once in
        # all than the machine has cores.
        self._checking = OneAtATime()
        self._check_slots = asyncio.Semaphore(os.cpu_count() or 2)
        self._closed_logs: dict[str, asyncio.Future[ReadableLog]] = {}
        self._readers: dict[ReadableLog, int] = {}
        self._all_closed: asyncio.Future[None] | None = None  # set while closing
        self.metrics = metrics_of(engine)
        engine.on_roll(self._rolled)

    def _rolled(self, ended: str, ended_log: SessionLog, following: str) -> None:
        """The engine ended a session: its log, still open, serves pulls from now on,
        until no subscriber reads it."""
        handed: asyncio.Future[ReadableLog] = asyncio.get_running_loop().create_future()
        handed.set_result(ended_log)
        self._closed_logs[ended] = handed
        self._release(ended, ended_log, 0)

    def reload_users(self, users: Users) -> None:
        """Use a users file read again (on SIGHUP): for logins from now on. (The caller
        says what changed.)"""
        self.access.replace_users(users)

    @property
    def login_throttle(self) -> LoginThrottle:
        """Failed logins per source address (the admin API counts its own in too)."""
        return self._throttle

    @property
    def refused_connections(self) -> int:
        """Connections closed at once because a connection limit was reached."""
        return self._refused

    def _admit(self, connection: _Connection, source: str) -> str | None:
        """Count a new connection in; or say why it is refused."""
        config = self.config
        if len(self._connections) >= config.max_connections:
            self.metrics.connections_refused.labels("total").inc()
            return f"too many connections (this server takes at most {config.max_connections})"
        count = self._per_source.get(source, 0)
        if count >= config.max_connections_per_source:
            self.metrics.connections_refused.labels("per_address").inc()
            return (
                f"too many connections from {source} (at most "
                f"{config.max_connections_per_source} from one address)"
            )
        self._per_source[source] = count + 1
        self._connections.add(connection)
        return None

    def _forget(self, connection: _Connection, source: str) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            left = self._per_source.get(source, 0) - 1
            if left > 0:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)
        closing = self._all_closed
        if not self._connections and closing is not None and not closing.done():
            closing.set_result(None)

    def _acquire(self, session_log: ReadableLog) -> None:
        self._readers[session_log] = self._readers.get(session_log, 0) + 1

    def _release(self, session: str, session_log: ReadableLog, count: int = 1) -> None:
        """A subscriber stopped reading ``session_log``. A closed session's log nobody
        reads is closed, so that archiving or deleting it frees its space; the next
        pull opens it again."""
        left = self._readers.get(session_log, 0) - count
        if left > 0:
            self._readers[session_log] = left
            return
        self._readers.pop(session_log, None)
        if self.engine.is_active(session_log):
            return
        cached = self._closed_logs.get(session)
        if (
            cached is not None
            and cached.done()
            and not cached.cancelled()
            and cached.exception() is None
            and cached.result() is session_log
        ):
            del self._closed_logs[session]
        session_log.close()

    async def start(self, *, serving: bool = True) -> None:
        """Bind the port (an ``OSError`` if it is taken) and, unless ``serving`` is
        False, accept connections. With False, :meth:`start_serving` accepts them: a
        server binds before it opens its session, so that a taken port changes nothing."""
        loop = asyncio.get_running_loop()
        tls = self.config.ssl

        def connection() -> asyncio.Protocol:
            return _Connection(self)

        factory: Callable[[], asyncio.Protocol] = connection
        if tls is not None:
            # A client that never finishes the handshake is dropped as one that never logs
            # in; one that speaks plain text is told, in a Debug packet, to use TLS.
            self._gate = TLSGate(
                factory, tls, self.config.timers.login_timeout, _PLAIN_ON_TLS_PORT, log
            )
            factory = self._gate.factory
        self._server = await loop.create_server(
            factory,
            self.config.host,
            self.config.port,
            reuse_address=True,
            start_serving=serving,
        )
        if serving:
            self._listening()

    async def start_serving(self) -> None:
        """Accept connections on the port :meth:`start` bound with ``serving=False``."""
        assert self._server is not None, "start() binds the port first"
        await self._server.start_serving()
        self._listening()

    def _listening(self) -> None:
        assert self._server is not None
        tls = " (TLS)" if self.config.ssl else ""
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("SoupBinTCP listening on %s:%d%s", host, port, tls)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        return len(self._connections)

    def subscribers(self) -> list[SubscriberInfo]:
        """Every logged-in connection: who, where, which session, how far behind."""
        found = []
        for connection in self._connections:
            info = connection.info()
            if info is not None:
                found.append(info)
        return sorted(found, key=lambda info: info.address)

    def publishers(self) -> list[PublisherInfo]:
        """Every connection publishing (see _Connection.publishing), and how much."""
        found = [c.publisher_info() for c in self._connections if c.publishing]
        return sorted(found, key=lambda info: info.address)

    async def close(self) -> None:
        """Stop listening, and close every connection in order (what is queued, then a
        Debug packet saying why); wait until they are closed (at most about
        :data:`CLOSE_GRACE` seconds: the clients that do not close are cut off then)."""
        if self._server is not None:
            self._server.close()
        if self._gate is not None:
            self._gate.close()
        for connection in list(self._connections):
            connection.close("the server is shutting down")
        if self._server is not None:
            await self._server.wait_closed()
        # A client that has received everything, the end included, need not close its
        # side first: its connection is closed at once (_Connection.close_if_delivered).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE + 1
        while self._connections and loop.time() < deadline:
            self._all_closed = loop.create_future()
            for connection in list(self._connections):
                connection.close_if_delivered()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), _SHUTDOWN_POLL)
            self._all_closed = None
        for opening in self._closed_logs.values():
            if opening.done() and opening.exception() is None:
                opening.result().close()
        self._closed_logs.clear()

    async def closed_session(self, session: str) -> ReadableLog:
        """The log of a session that is not the active one, opened once and kept.

        Opening checks every batch's checksum, so it runs off the event loop; logins
        for the same session meanwhile wait for the same opening.
        """
        opening = self._closed_logs.get(session)
        if opening is None:
            loop = asyncio.get_running_loop()
            opening = loop.run_in_executor(None, self.engine.catalogue.open_closed, session)
            self._closed_logs[session] = opening
        try:
            return await asyncio.shield(opening)
        except Exception:
            self._closed_logs.pop(session, None)  # failed: ask the disk again next time
            raise


class _Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: SoupBinTCPServer) -> None:
        self._server = server
        self._engine = server.engine
        self._transport: asyncio.Transport | None = None
        self._session: ServerConnection | None = None
        self._subscriber: Subscriber | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self._pull: asyncio.Task[None] | None = None
        self._may_publish = False
        self._input: PublisherInput | None = None  # once logged in, if it may publish
        self._session_name: str | None = None
        self._principal: Principal | None = None
        self._peer = "?"
        self._source = "?"
        self._admitted = False
        self._heard = False  # anything from the client yet
        self._stuck: tuple[int, float] | None = None  # a sendfile not moving: (bytes, since)
        self._closing = False  # the server closes it: nothing more is read or written
        self._eof_written = False  # write_eof was called: the FIN follows what is queued
        self._released = False  # the subscriber's log was released
        self._lost = False  # connection_lost was called
        self._grace: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._since = 0.0  # when it logged in (UNIX time)

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self._source = str(peer[0]) if peer else "?"
        refused = self._server._admit(self, self._source)
        if refused is not None:
            self._refuse(transport, refused)
            return
        self._admitted = True
        transport.set_write_buffer_limits(high=self._server.config.write_buffer_high)
        self._session = ServerConnection(self._loop.time(), self._server.config.timers)
        self._schedule()

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        server = self._server
        server._refused += 1
        if server._refused == 1 or server._refused % 1000 == 0:
            log.warning(
                "refusing %s: %s (%d connections refused so far)",
                self._peer,
                reason,
                server._refused,
            )
        self._closing = True
        transport.write(Debug(reason.encode()).encode())
        self._close_in_order(transport)

    def data_received(self, data: bytes) -> None:
        session = self._session
        if session is None or self._closing:
            return  # closing: what the client still sends is read and discarded
        if not self._heard:
            self._heard = True
            if self._server.config.ssl is None and is_client_hello(data):
                log.warning(
                    "%s began a TLS handshake on this plain-text port: closed (it must "
                    "connect without TLS, or the server be started with --tls-cert)",
                    self._peer,
                )
                self.close("this port speaks plain SoupBinTCP, not TLS: connect without TLS")
                return
        session.receive_data(data, self._loop.time())
        self._handle_events()

    def eof_received(self) -> bool:
        return False  # the client closed its side: close (once what is queued is sent)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._grace is not None:
            self._grace.cancel()
        if not self._admitted:
            return
        self._release_log()
        self._server._forget(self, self._source)
        if self._timer is not None:
            self._timer.cancel()
        if self._pull is not None:
            self._pull.cancel()
        if self._input is not None:
            self._input.stop()  # what it handed the engine is published anyway
        # A subscriber closing its socket (a ``tail --count`` done) is routine: DEBUG;
        # a publisher going away is not.
        publishing = self.publishing
        routine = not publishing and (
            exc is None or isinstance(exc, ConnectionResetError | BrokenPipeError)
        )
        if self._subscriber is not None:
            self._subscriber.stop()
            log.log(
                logging.DEBUG if routine else logging.INFO,
                "%s disconnected at sequence %d%s",
                self._peer,
                self._subscriber.next_seq,
                f": {exc}" if exc else "",
                extra={"client": self._peer, "sequence": self._subscriber.next_seq},
            )
        elif publishing:
            log.info(
                "%s disconnected (a publisher: %s acknowledged)%s",
                self._peer,
                plural(self.publisher_info().published, "message"),
                f": {exc}" if exc else "",
                extra={"client": self._peer},
            )

    def pause_writing(self) -> None:
        if self._subscriber is not None:
            self._subscriber.pause_writing()

    def resume_writing(self) -> None:
        if self._subscriber is not None:
            self._subscriber.resume_writing()

    # ------------------------------------------------------------------ session logic

    def _handle_events(self) -> None:
        session = self._session
        assert session is not None
        # Accepting a login lets the session parse what the client sent after it, which
        # can raise more events: drain until there are none.
        while events := session.events_received():
            for event in events:
                if isinstance(event, LoginRequested):
                    self._login(event.request)
                elif isinstance(event, MessagesReceived):
                    if not self._received(event.payloads):
                        return
                elif isinstance(event, LogoutRequested):
                    log.info("%s logged out", self._peer)
                    self._close_in_turn()
                    return
                elif isinstance(event, ConnectionLost):  # the client's doing: a bad
                    # packet, no login in time, silence past the idle timeout
                    log.warning(
                        "dropping %s: %s", self._peer, event.reason, extra={"client": self._peer}
                    )
                    self._close_in_turn()
                    return
        self._flush()
        if session.state is State.CLOSED:  # Login Rejected: close once it is sent
            self._close_in_turn()
        elif session.next_deadline() < self._timer_when:
            self._schedule()  # e.g. a login: heartbeats and the idle timeout start now

    def _login(self, request: LoginRequest) -> None:
        access = self._server.access
        if access.slow:
            # Checking a password hash takes tens of milliseconds: off the event loop.
            # The session logic holds back whatever the client sends meanwhile, and we
            # stop reading from it until the login is decided.
            assert self._transport is not None
            self._transport.pause_reading()
            self._pull = self._loop.create_task(self._authenticate(request))
            return
        self._authorize(request, access.authenticate(request.username, request.password))

    async def _authenticate(self, request: LoginRequest) -> None:
        """Check a password off the event loop; logins from one address are checked one
        after the other, each failure holding the next back for its delay."""
        server = self._server
        async with server._checking.checking(self._source):
            async with server._check_slots:
                principal = await self._loop.run_in_executor(
                    None, server.access.authenticate, request.username, request.password
                )
            if principal is None:
                await asyncio.sleep(self._failed())
                self._reject(REJECT_NOT_AUTHORIZED, self._bad_credentials())
                return
        self._authorize(request, principal)
        self._handle_events()

    def _failed(self) -> float:
        """Count a failed login from this address and say so; the delay before answering."""
        throttle = self._server._throttle
        now = self._loop.time()
        delay = throttle.failed(self._source, now)
        self._server.metrics.logins_rejected.labels("bad_credentials").inc()
        log.warning(
            "login of %r from %s rejected: bad username or password (failure %d from "
            "this address; answered in %.2f s)",
            self._who,
            self._peer,
            throttle.failures(self._source, now),
            delay,
            extra={"client": self._peer, "user": self._who},
        )
        return delay

    def _authorize(self, request: LoginRequest, principal: Principal | None) -> None:
        """The credentials are checked: accept or reject the login."""
        session = self._session
        assert session is not None
        if self._closing:
            return  # closed meanwhile (the server is shutting down, say)
        if principal is None:
            assert self._transport is not None
            self._transport.pause_reading()  # nothing more is read before the answer
            self._loop.call_later(
                self._failed(), self._reject, REJECT_NOT_AUTHORIZED, self._bad_credentials()
            )
            return
        self._server._throttle.succeeded(self._source)
        self._principal = principal
        engine = self._engine
        wanted = request.session or engine.session_id
        publishing = wanted == engine.session_id and request.sequence == NO_STREAM
        if publishing and not principal.may_publish():
            self._refuse_login(_may_not_publish(principal))
        elif not publishing and not principal.may_read(wanted):
            self._refuse_login(may_not_read(principal, wanted))
        elif wanted == engine.session_id:
            self._accept(wanted, request.sequence, engine.session_log, engine)
        else:
            # The answer waits for the log to be opened; the session logic holds back
            # whatever the client sends meanwhile.
            assert self._transport is not None
            self._transport.pause_reading()
            self._pull = self._loop.create_task(self._login_closed(wanted, request.sequence))

    def _refuse_login(self, reason: str) -> None:
        log.warning(
            "login of %r from %s rejected: %s",
            self._who,
            self._peer,
            reason,
            extra={"client": self._peer, "user": self._who},
        )
        self._server.metrics.logins_rejected.labels("not_permitted").inc()
        self._send_rejected(REJECT_SESSION_NOT_AVAILABLE, reason)

    def _send_rejected(self, code: str, why: str) -> None:
        """Debug with ``why``, then Login Rejected ``code``: ``J`` has no room for a reason."""
        session = self._session
        assert session is not None
        if session.state is State.AWAITING_LOGIN:
            session.send_debug(why, self._loop.time())
        session.reject(code, self._loop.time())

    def _bad_credentials(self) -> str:
        session = self._session
        request = session.request if session is not None else None
        if request is None or not request.username:
            return "this server needs a username and password: anonymous logins are refused"
        return f"wrong username or password for user {request.username!r}"

    def _reject(self, reason: str, why: str) -> None:
        """Answer a failed login, once its delay is over."""
        self._send_rejected(reason, why)
        self._handle_events()

    async def _login_closed(self, wanted: str, sequence: int) -> None:
        session = self._session
        assert session is not None
        try:
            session_log = await self._server.closed_session(wanted)
        except StoreError as exc:
            self._server.metrics.logins_rejected.labels("session_not_available").inc()
            log.warning("login of %r from %s rejected: %s", self._who, self._peer, exc)
            self._send_rejected(
                REJECT_SESSION_NOT_AVAILABLE,
                f"session {wanted} is not available: "
                + (
                    "this server has no such session"
                    if isinstance(exc, SessionNotFound)
                    else "it cannot be opened (the server's log says why)"
                ),
            )
        except Exception as exc:
            log.error(
                "login of %r from %s rejected: session %s cannot be opened: %s",
                self._who,
                self._peer,
                wanted,
                exc,
            )
            self._server.metrics.logins_rejected.labels("session_not_available").inc()
            self._send_rejected(
                REJECT_SESSION_NOT_AVAILABLE,
                f"session {wanted} is not available: it cannot be opened (the server's log "
                "says why)",
            )
        else:
            self._accept(wanted, sequence, session_log, None)
        self._handle_events()

    def _accept(
        self, wanted: str, sequence: int, session_log: ReadableLog, engine: SessionSource | None
    ) -> None:
        session = self._session
        transport = self._transport
        assert session is not None and transport is not None
        if session.state is State.CLOSED or self._closing:
            # Timed out or dropped while the log was being opened: nobody reads it.
            if engine is None:
                self._server._release(wanted, session_log, 0)
            return
        tail = engine.next_seq if engine is not None else session_log.next_seq
        first = sequence or tail
        if engine is None:
            first = min(first, tail)  # a closed session has nothing past its end
        principal = self._principal
        self._may_publish = engine is not None and principal is not None and principal.may_publish()
        if self._may_publish and engine is not None:
            self._input = self._publisher_input(engine)
        session.accept(
            wanted,
            first,
            self._loop.time(),
            max_packet_length=self._packet_limit(),
            limit_reason=self._limit_reason(),
        )
        self._server.metrics.logins_accepted.inc()
        transport.resume_reading()
        self._session_name = wanted
        self._since = time.time()
        if engine is not None and sequence == NO_STREAM:
            # A publisher that does not want the stream: no subscription, so it is not
            # ended with the session either; it publishes into whichever is active.
            log.info(
                "%s logged in as %r to publish",
                self._peer,
                self._who,
                extra={"client": self._peer, "user": self._who},
            )
            self._flush()
            return
        log.info(
            "%s logged in as %r to session %s from sequence %d%s",
            self._peer,
            self._who,
            wanted,
            first,
            "" if engine is not None else " (closed session: replay, then end)",
            extra={"client": self._peer, "user": self._who, "session": wanted, "sequence": first},
        )
        self._flush()
        self._server._acquire(session_log)
        self._subscriber = Subscriber(
            transport,
            session_log,
            engine,
            first,
            on_sent=session.sent,
            on_caught_up=self._caught_up,
            on_end=self._end_of_session,
            on_damaged=self._damaged,
            on_failed=self.close,
            on_file_sent=self._flush,
            chunk=self._server.config.catch_up_chunk,
            sent=self._server.metrics.sent,
        )
        self._subscriber.start()

    def _packet_limit(self) -> int:
        """The longest packet this client may send once logged in."""
        if not self._may_publish:
            return self._server.config.max_client_packet
        config = getattr(self._engine, "config", None)
        longest = getattr(config, "max_message", MAX_PACKET_LENGTH - 1)
        return min(MAX_PACKET_LENGTH, max(longest + 1, self._server.config.max_client_packet))

    def _limit_reason(self) -> str:
        """Why a publisher may send no longer message (said to one that does)."""
        if not self._may_publish:
            return ""
        longest = getattr(getattr(self._engine, "config", None), "max_message", None)
        if longest is None or longest >= MAX_PACKET_LENGTH - 1:
            return ""  # no longer packet can be framed
        return (
            f"this server publishes at most {longest} bytes a message (with --mold, what "
            "one MoldUDP64 packet carries; MoldUDP64 does not fragment); nothing from this "
            "message on was published"
        )

    def info(self) -> SubscriberInfo | None:
        subscriber = self._subscriber
        if subscriber is None or self._session_name is None:
            return None
        tail = subscriber.tail()
        return SubscriberInfo(
            address=self._peer,
            user=self._who,
            session=self._session_name,
            next_seq=subscriber.next_seq,
            lag=max(0, tail - subscriber.next_seq),
            live=subscriber.live,
            state=subscriber.state,
            since=self._since,
            tls=self._transport is not None
            and self._transport.get_extra_info("ssl_object") is not None,
        )

    @property
    def publishing(self) -> bool:
        """Logged in to publish only, or allowed to publish and has sent something."""
        if not self._may_publish or self._session_name is None:
            return False
        publisher = self._input
        return self._subscriber is None or (
            publisher is not None and (publisher.acked > 0 or publisher.unpublished > 0)
        )

    def publisher_info(self) -> PublisherInfo:
        acked = self._input.acked if self._input is not None else 0
        return PublisherInfo(self._peer, self._who, acked, self._since)

    @property
    def _who(self) -> str:
        session = self._session
        request = session.request if session is not None else None
        return (request.username if request is not None else "") or "(anonymous)"

    # ------------------------------------------------------------------ publishing

    def _publisher_input(self, engine: SessionSource) -> PublisherInput:
        transport = self._transport
        session = self._session
        assert transport is not None and session is not None

        def send(payload: bytes) -> None:
            session.send_unsequenced(payload, self._loop.time())
            self._flush()

        config = self._server.config
        return PublisherInput(
            engine,
            self._peer,
            send=send,
            pause=transport.pause_reading,
            resume=transport.resume_reading,
            close=self.close,
            failed=self._server.metrics.publish_failed,
            max_messages=config.max_unpublished,
            max_bytes=config.max_unpublished_bytes,
        )

    def _received(self, payloads: list[bytes]) -> bool:
        """Unsequenced Data packets: messages to publish into the active session.
        Returns False if the connection is being closed instead."""
        if self._input is None:
            principal = self._principal
            if principal is not None and not principal.may_publish():
                reason = _may_not_publish(principal)
            else:
                reason = (
                    "publishing goes into the active session; this connection is logged in "
                    f"to {self._session_name or 'no session'}"
                )
            log.warning("closing %s: %s", self._peer, reason, extra={"client": self._peer})
            self._server.metrics.publish_failed("not_permitted")
            self.close(reason)
            return False
        return self._input.received(payloads)

    def _caught_up(self, subscriber: Subscriber, replayed: int) -> None:
        if replayed:
            log.info(
                "%s caught up: replayed %s, live from %d",
                self._peer,
                plural(replayed, "message"),
                subscriber.next_seq,
            )

    def _end_of_session(self) -> None:
        session = self._session
        assert session is not None
        session.end_session(self._loop.time())
        log.info("%s: end of session sent", self._peer)
        self._close_in_turn()

    def _damaged(self, seq: int, why: str) -> None:
        """The closed session was sent up to ``seq``, and cannot be from there: no End of
        Session (the client would take the session as whole), a Debug saying why."""
        reason = (
            f"session {self._session_name} is damaged: messages from {seq} on cannot be "
            f"served ({why})"
        )
        log.warning("closing %s: %s", self._peer, reason)
        self.close(reason)

    # ------------------------------------------------------------------ output and time

    def _flush(self) -> None:
        session = self._session
        transport = self._transport
        assert session is not None and transport is not None
        if self._closing:
            return  # what is queued goes out once the subscriber has stopped
        if self._subscriber is not None and self._subscriber.sending_file:
            return  # a sendfile is in flight; what is queued goes out after it
        data = session.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)

    def _schedule(self) -> None:
        """Arm the timer for the session's next deadline (moving it if already armed).
        Deadlines that move later, as sending and hearing do, are found when it fires."""
        session = self._session
        assert session is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing:
            self._timer_when = math.inf  # closing: CLOSE_GRACE is the only deadline
            return
        self._timer_when = session.next_deadline()
        if self._timer_when != math.inf:
            self._timer = self._loop.call_at(self._timer_when, self._tick)

    def _tick(self) -> None:
        session = self._session
        assert session is not None
        if self._closing:
            return
        now = self._loop.time()
        if self._input is not None and self._input.paused:
            session.heard(now)  # held back: it is we who stopped reading from it
        subscriber = self._subscriber
        if subscriber is not None and subscriber.sending_file:
            # A sendfile in flight is sending: no heartbeat is due (none may be written
            # in the middle of it). The client's packets are read meanwhile, so its
            # silence is judged as ever. A sendfile that does not move for the idle
            # timeout is a client that stopped reading (if not sending): it is dropped.
            if self._stuck is None or self._stuck[0] != subscriber.file_bytes_sent:
                self._stuck = (subscriber.file_bytes_sent, now)
            elif now - self._stuck[1] >= session.idle_timeout:
                self._server.metrics.heartbeat_timeouts.inc()
                self._drop(f"it read nothing for {session.idle_timeout:g} s")
                return
            session.sent(now)
        else:
            self._stuck = None
        logged_in = session.state is State.LOGGED_IN
        session.tick(now)
        if logged_in and session.state is State.CLOSED:
            self._server.metrics.heartbeat_timeouts.inc()  # silent for the idle timeout
        self._handle_events()
        if session.state is not State.CLOSED:
            self._schedule()

    def _close_in_turn(self) -> None:
        """Close from this side, throwing nothing away: stop sending the session at the
        end of the packet being sent, write what the session logic queued (End of
        Session, a Debug packet saying why, Login Rejected), then close in order. A
        client that does not let this finish within :data:`CLOSE_GRACE` seconds is
        cut off."""
        if self._closing:
            return
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = math.inf
        transport = self._transport
        subscriber = self._subscriber
        if transport is None or transport.is_closing():
            if subscriber is not None:
                subscriber.stop()
            return
        self._grace = self._loop.call_later(CLOSE_GRACE, self._grace_over)
        stopping = subscriber.halt() if subscriber is not None else None
        if stopping is None:
            self._last_words()
        else:
            stopping.add_done_callback(lambda _: self._last_words())

    def _release_log(self) -> None:
        """The subscriber reads its session's log no more (once)."""
        subscriber = self._subscriber
        if subscriber is not None and self._session_name is not None and not self._released:
            self._released = True
            self._server._release(self._session_name, subscriber.log)

    def _last_words(self) -> None:
        """The subscriber has stopped: what the session logic queued, then the close."""
        self._release_log()  # not held while the client takes its time to close
        transport = self._transport
        session = self._session
        if transport is None or transport.is_closing():
            return
        if session is not None:
            data = session.data_to_send()
            if data:
                transport.write(data)
        self._close_in_order(transport)

    def _close_in_order(self, transport: asyncio.Transport) -> None:
        """Shut the sending side once what is queued is sent (the client reads it, then
        the end), and read (and discard) what the client still sends until it closes its
        side: a socket closed with input unread is reset by the kernel, and what it still
        had to send is lost. Over TLS, the TLS close (close_notify) does the same."""
        if self._grace is None:
            self._grace = self._loop.call_later(CLOSE_GRACE, self._grace_over)
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the client is gone already (it reset the connection)
            transport.abort()
            return
        self._eof_written = True
        if not transport.is_reading():
            transport.resume_reading()

    def close_if_delivered(self) -> None:
        """Close a closing connection at once if its client has received everything,
        the end of the stream included (the server is shutting down)."""
        transport = self._transport
        if (
            self._eof_written
            and transport is not None
            and not transport.is_closing()
            and not transport.get_write_buffer_size()
            and _unacknowledged(transport) == 0
        ):
            transport.close()

    def _grace_over(self) -> None:
        """:data:`CLOSE_GRACE` seconds after the close began, the connection is still
        open: cut off a client that has not taken what is queued; close the connection
        of one that took it all but did not close its side."""
        self._grace = None
        transport = self._transport
        if transport is None or self._lost:
            return
        subscriber = self._subscriber
        stuck = (
            transport.is_closing()
            or transport.get_write_buffer_size() > 0
            or (subscriber is not None and subscriber.sending_file)
        )
        if not stuck:
            transport.close()
            return
        if self._admitted:
            log.warning(
                "%s read nothing more: connection cut", self._peer, extra={"client": self._peer}
            )
        if subscriber is not None:
            subscriber.stop()
        transport.abort()

    def _drop(self, reason: str) -> None:
        """Cut off a client that stopped reading: nothing more can reach it."""
        log.warning("dropping %s: %s", self._peer, reason, extra={"client": self._peer})
        self._closing = True
        if self._subscriber is not None:
            self._subscriber.stop()
        if self._transport is not None:
            self._transport.abort()

    def close(self, reason: str) -> None:
        """Close this connection from the server side, telling the client why (after
        whatever is queued for it)."""
        session = self._session
        if session is not None and session.state is not State.CLOSED and not self._closing:
            session.send_debug(reason, self._loop.time())
        self._close_in_turn()


def _unacknowledged(transport: asyncio.Transport) -> int | None:
    """Bytes the transport's socket has sent (its FIN counts as one) that the peer has
    not acknowledged yet, or has still to send; None where this cannot be known. Once it
    is 0 after the FIN, closing cannot lose output, even if the peer sends more (the
    kernel would answer with a reset, but the peer holds every byte and the end)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return None
    count: int = struct.unpack("i", raw)[0]
    return count


_PLAIN_ON_TLS_PORT = Debug(
    b"this port speaks TLS: connect with TLS (tickertape tail/publish --tls)"
).encode()


def _may_not_publish(principal: Principal) -> str:
    if principal.name == ANONYMOUS:
        return f"anonymous logins may not publish: log in as a user with the {Role.PUBLISHER} role"
    return f"user {principal.name!r} may not publish (the {Role.PUBLISHER} role is needed)"
