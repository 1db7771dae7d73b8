"""The SoupBinTCP endpoint: its configuration, and the server that listens and keeps
its connections.

:class:`SoupBinTCPServer` binds the port, admits connections within the limits
(:mod:`~tickertape.server.limits`), hands each to a
:class:`~tickertape.server.connection.Connection` (asyncio I/O and timers; it never parses:
bytes go to :class:`~tickertape.protocol.server.ServerConnection`, which returns events
and bytes to send), and closes them in order when it shuts down. A login is classified
by :func:`~tickertape.server.login.classify_login`:

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

A close never throws output away (:class:`~tickertape.server.output.Output`): whatever
is queued is sent (a catch-up stops at the end of the packet it is sending), then End of
Session or the Debug packet saying why, then the sending side is shut (FIN), and what the
client still sends is read and discarded until it closes its side, so that the kernel
never resets the connection (closing a socket whose input is unread does, discarding
what was queued for sending). A client that does not take what is queued, or does not
close, within :data:`~tickertape.server.output.CLOSE_GRACE`
seconds is cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Final

from tickertape.auth.user import Role
from tickertape.auth.users import Users
from tickertape.defaults import DEFAULT_HOST, DEFAULT_PORT
from tickertape.errors import ConfigError
from tickertape.protocol.server import ServerTimers
from tickertape.server.access import (
    DEFAULT_LOGIN_DELAY,
    DEFAULT_MAX_LOGIN_DELAY,
    Access,
    Credentials,
    LoginThrottle,
    PasswordChecks,
    is_loopback,
)
from tickertape.server.connection import Connection
from tickertape.server.connection_info import PublisherInfo, SubscriberInfo
from tickertape.server.limits import ConnectionLimits
from tickertape.server.metrics import metrics_of
from tickertape.server.output import CLOSE_GRACE
from tickertape.server.provider import SessionProvider
from tickertape.server.pulls import SessionPull
from tickertape.server.subscriber import DEFAULT_CATCH_UP_CHUNK
from tickertape.store.log import SessionLog
from tickertape.tls import TLSGate
from tickertape.wire.soupbintcp import MAX_PACKET_LENGTH, Debug

__all__ = [
    "DEFAULT_MAX_CLIENT_PACKET",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_SOURCE",
    "Credentials",
    "ServerConfig",
    "SoupBinTCPServer",
]

log = logging.getLogger(__name__)

DEFAULT_WRITE_BUFFER_HIGH: Final = 4 << 20
"""A live subscriber whose unsent bytes pass this stops taking live batches and reads
the log once they drain: with one batch on top, its memory bound."""

DEFAULT_MAX_CONNECTIONS: Final = 10_000
"""Connections open at once, in all; one more gets a Debug packet and is closed."""
DEFAULT_MAX_CONNECTIONS_PER_SOURCE: Final = 100
"""Connections open at once from one IP address."""
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

    def __init__(self, engine: SessionProvider, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.access = self.config.access()
        self.login_throttle = LoginThrottle(self.config.login_delay, self.config.max_login_delay)
        """Failed logins per source address (the admin API counts its own in too)."""
        self.password_checks = PasswordChecks(self.access)
        self.metrics = metrics_of(engine)
        self.limits = ConnectionLimits(
            self.config.max_connections,
            self.config.max_connections_per_source,
            lambda kind: self.metrics.connections_refused.labels(kind).inc(),
        )
        self.pulls = SessionPull(engine)
        """The logs of closed sessions being pulled."""
        self._server: asyncio.Server | None = None
        self._gate: TLSGate | None = None
        self._connections: set[Connection] = set()
        self._all_closed: asyncio.Future[None] | None = None  # set while closing
        engine.on_roll(self._rolled)

    def _rolled(self, ended: str, ended_log: SessionLog, following: str) -> None:
        """The engine ended a session: its log, still open, serves pulls from now on."""
        self.pulls.rolled(ended, ended_log)

    def reload_users(self, users: Users) -> None:
        """Use a users file read again (on SIGHUP): for logins from now on. (The caller
        says what changed.)"""
        self.access.replace_users(users)

    @property
    def refused_connections(self) -> int:
        """Connections closed at once because a connection limit was reached."""
        return self.limits.refused

    def admit(self, connection: Connection, source: str) -> str | None:
        """Count a new connection in; or say why it is refused."""
        refused = self.limits.admit(source)
        if refused is None:
            self._connections.add(connection)
        return refused

    def forget(self, connection: Connection, source: str) -> None:
        """An admitted connection is closed."""
        if connection in self._connections:
            self._connections.discard(connection)
            self.limits.forget(source)
        closing = self._all_closed
        if not self._connections and closing is not None and not closing.done():
            closing.set_result(None)

    async def start(self, *, serving: bool = True) -> None:
        """Bind the port (an ``OSError`` if it is taken) and, unless ``serving`` is
        False, accept connections. With False, :meth:`start_serving` accepts them: a
        server binds before it opens its session, so that a taken port changes nothing."""
        loop = asyncio.get_running_loop()
        tls = self.config.ssl

        def connection() -> asyncio.Protocol:
            return Connection(self)

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
        """Every connection publishing (see Connection.publishing), and how much."""
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
        # side first: its connection is closed at once (Connection.close_if_delivered).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE + 1
        while self._connections and loop.time() < deadline:
            self._all_closed = loop.create_future()
            for connection in list(self._connections):
                connection.close_if_delivered()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), _SHUTDOWN_POLL)
            self._all_closed = None
        self.pulls.close()


_PLAIN_ON_TLS_PORT = Debug(
    b"this port speaks TLS: connect with TLS (tickertape tail/publish --tls)"
).encode()
