"""The SoupBinTCP endpoint: asyncio glue between sockets, the session logic and the engine.

This layer never parses: bytes go to :class:`~tickertape.protocol.server.ServerConnection`,
which returns events and bytes to send. A login is classified here:

- blank session, or the active session's id: subscribe to the active session, from the
  requested sequence number (0: the next message published; 1..next: replay, then live;
  above next: accepted, and sent from that number once it exists);
- the id of another session on disk: a pull, the messages from the requested number to
  the end, then End of Session;
- anything else: Login Rejected ``S``. Wrong credentials (when ``--user`` is set): ``A``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import socket
from collections import deque
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Final

from tickertape.errors import StoreError
from tickertape.protocol.publishing import END_OF_SESSION_MARKER, NO_STREAM, Ack
from tickertape.protocol.server import (
    ConnectionLost,
    LoginRequested,
    LogoutRequested,
    MessageReceived,
    ServerConnection,
    ServerTimers,
    State,
)
from tickertape.server.session_source import SessionSource
from tickertape.server.subscriber import DEFAULT_CATCH_UP_CHUNK, Subscriber
from tickertape.store.log import ReadableLog, SessionLog
from tickertape.wire.soupbintcp import (
    REJECT_NOT_AUTHORIZED,
    REJECT_SESSION_NOT_AVAILABLE,
    LoginRequest,
)

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7300
DEFAULT_WRITE_BUFFER_HIGH: Final = 4 << 20
"""A live subscriber whose unsent bytes pass this stops taking live batches and reads
the log once they drain: with one batch on top, its memory bound."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """The one username and password accepted, compared case-insensitively."""

    username: str
    password: str

    def match(self, username: str, password: str) -> bool:
        user_ok = hmac.compare_digest(username.upper().encode(), self.username.upper().encode())
        password_ok = hmac.compare_digest(password.upper().encode(), self.password.upper().encode())
        return user_ok and password_ok


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


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and how the SoupBinTCP endpoint listens."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    credentials: Credentials | None = None
    """None: every username and password is accepted."""
    timers: ServerTimers = field(default_factory=ServerTimers)
    write_buffer_high: int = DEFAULT_WRITE_BUFFER_HIGH
    catch_up_chunk: int = DEFAULT_CATCH_UP_CHUNK
    max_unpublished: int = DEFAULT_MAX_UNPUBLISHED
    max_unpublished_bytes: int = DEFAULT_MAX_UNPUBLISHED_BYTES
    ssl: SSLContext | None = None
    """Serve over TLS with this context (see :func:`tickertape.tls.server_context`).
    Catching up cannot use ``sendfile`` then: the log is read and written in large ranges."""


class SoupBinTCPServer:
    """Serves the engine's sessions to SoupBinTCP clients."""

    def __init__(self, engine: SessionSource, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closed_logs: dict[str, asyncio.Future[ReadableLog]] = {}
        self._readers: dict[ReadableLog, int] = {}
        engine.on_roll(self._rolled)

    def _rolled(self, ended: str, ended_log: SessionLog, following: str) -> None:
        """The engine ended a session: its log, still open, serves pulls from now on,
        until no subscriber reads it."""
        handed: asyncio.Future[ReadableLog] = asyncio.get_running_loop().create_future()
        handed.set_result(ended_log)
        self._closed_logs[ended] = handed
        self._release(ended, ended_log, 0)

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

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        tls = self.config.ssl
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self.config.host,
            self.config.port,
            reuse_address=True,
            ssl=tls,
            # A client that never finishes the handshake is dropped as one that never logs in.
            ssl_handshake_timeout=self.config.timers.login_timeout if tls is not None else None,
        )
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            log.info("SoupBinTCP listening on %s:%d%s", host, port, " (TLS)" if tls else "")

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

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close("the server is shutting down")
        if self._server is not None:
            await self._server.wait_closed()
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
        self._unpublished: list[bytes] = []
        self._unpublished_bytes = 0
        self._ends: deque[int] = deque()  # where, in _unpublished, publishers ended sessions
        self._publisher: asyncio.Task[None] | None = None
        self._acked = 0
        self._paused = False
        self._session_name: str | None = None
        self._peer = "?"
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        transport.set_write_buffer_limits(high=self._server.config.write_buffer_high)
        self._session = ServerConnection(self._loop.time(), self._server.config.timers)
        self._server._connections.add(self)
        self._schedule()

    def data_received(self, data: bytes) -> None:
        session = self._session
        assert session is not None
        session.receive_data(data, self._loop.time())
        self._handle_events()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._subscriber is not None and self._session_name is not None:
            self._server._release(self._session_name, self._subscriber.log)
        self._server._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._pull is not None:
            self._pull.cancel()
        if self._publisher is not None:
            self._publisher.cancel()  # what it handed the engine is published anyway
        if self._subscriber is not None:
            self._subscriber.stop()
            log.info(
                "%s disconnected at sequence %d%s",
                self._peer,
                self._subscriber.next_seq,
                f": {exc}" if exc else "",
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
                elif isinstance(event, MessageReceived):
                    if not self._received(event.payload):
                        return
                elif isinstance(event, LogoutRequested):
                    log.info("%s logged out", self._peer)
                    self._flush()
                    self._close_transport()
                    return
                elif isinstance(event, ConnectionLost):
                    log.info("dropping %s: %s", self._peer, event.reason)
                    self._flush()
                    self._close_transport()
                    return
        self._flush()
        if (self._unpublished or self._ends) and (
            self._publisher is None or self._publisher.done()
        ):
            self._publisher = self._loop.create_task(self._publish())
        if session.state is State.CLOSED:  # Login Rejected: close once it is sent
            self._close_transport()
        elif session.next_deadline() < self._timer_when:
            self._schedule()  # e.g. a login: heartbeats and the idle timeout start now

    def _login(self, request: LoginRequest) -> None:
        session = self._session
        assert session is not None
        credentials = self._server.config.credentials
        if credentials is not None and not credentials.match(request.username, request.password):
            log.warning(
                "login of %r from %s rejected: bad username or password", self._who, self._peer
            )
            session.reject(REJECT_NOT_AUTHORIZED, self._loop.time())
            return
        engine = self._engine
        wanted = request.session or engine.session_id
        if wanted == engine.session_id:
            self._accept(wanted, request.sequence, engine.session_log, engine)
        else:
            # The answer waits for the log to be opened; the session logic holds back
            # whatever the client sends meanwhile.
            self._pull = self._loop.create_task(self._login_closed(wanted, request.sequence))

    async def _login_closed(self, wanted: str, sequence: int) -> None:
        session = self._session
        assert session is not None
        try:
            session_log = await self._server.closed_session(wanted)
        except StoreError as exc:
            log.warning("login of %r from %s rejected: %s", self._who, self._peer, exc)
            session.reject(REJECT_SESSION_NOT_AVAILABLE, self._loop.time())
        except Exception as exc:
            log.error(
                "login of %r from %s rejected: session %s cannot be opened: %s",
                self._who,
                self._peer,
                wanted,
                exc,
            )
            session.reject(REJECT_SESSION_NOT_AVAILABLE, self._loop.time())
        else:
            self._accept(wanted, sequence, session_log, None)
        self._handle_events()

    def _accept(
        self, wanted: str, sequence: int, session_log: ReadableLog, engine: SessionSource | None
    ) -> None:
        session = self._session
        transport = self._transport
        assert session is not None and transport is not None
        if session.state is State.CLOSED:
            # Timed out or dropped while the log was being opened: nobody reads it.
            if engine is None:
                self._server._release(wanted, session_log, 0)
            return
        tail = engine.next_seq if engine is not None else session_log.next_seq
        first = sequence or tail
        if engine is None:
            first = min(first, tail)  # a closed session has nothing past its end
        session.accept(wanted, first, self._loop.time())
        self._session_name = wanted
        self._may_publish = engine is not None
        if engine is not None and sequence == NO_STREAM:
            # A publisher that does not want the stream: no subscription, so it is not
            # ended with the session either; it publishes into whichever is active.
            log.info("%s logged in as %r to publish", self._peer, self._who)
            self._flush()
            return
        log.info(
            "%s logged in as %r to session %s from sequence %d%s",
            self._peer,
            self._who,
            wanted,
            first,
            "" if engine is not None else " (closed session: replay, then end)",
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
            chunk=self._server.config.catch_up_chunk,
        )
        self._subscriber.start()

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
        )

    @property
    def _who(self) -> str:
        session = self._session
        request = session.request if session is not None else None
        return (request.username if request is not None else "") or "(anonymous)"

    # ------------------------------------------------------------------ publishing

    def _received(self, payload: bytes) -> bool:
        """An Unsequenced Data packet: a message to publish into the active session.
        Returns False if the connection is being closed instead."""
        if not self._may_publish:
            self.close(
                "publishing goes into the active session; this connection is logged in "
                f"to {self._session_name or 'no session'}"
            )
            return False
        relay = getattr(self._engine, "relay_from", None)
        if relay is not None:
            self.close(f"this server relays {relay}: publish there")
            return False
        if payload == END_OF_SESSION_MARKER:
            self._ends.append(len(self._unpublished))  # after what came before it
        else:
            self._unpublished.append(payload)
            self._unpublished_bytes += len(payload)
        if not self._paused and (
            len(self._unpublished) >= self._server.config.max_unpublished
            or self._unpublished_bytes >= self._server.config.max_unpublished_bytes
        ):
            # The writer is behind: stop reading from this publisher until it catches up.
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True
        return True

    async def _publish(self) -> None:
        """Hand what this publisher sent to the engine, in arrival order, one batch at
        a time, and acknowledge each once it is durable."""
        engine = self._engine
        while self._unpublished or self._ends:
            end = bool(self._ends) and self._ends[0] <= len(self._unpublished)
            if end:
                cut = self._ends.popleft()
                batch, self._unpublished = self._unpublished[:cut], self._unpublished[cut:]
                self._ends = deque(position - cut for position in self._ends)
            else:
                batch, self._unpublished = self._unpublished, []
            self._unpublished_bytes = sum(map(len, self._unpublished))
            if self._paused and self._transport is not None:
                self._transport.resume_reading()
                self._paused = False
            try:
                if batch:
                    first = await engine.publish_many(batch)
                    self._acked += len(batch)
                    self._ack(engine.session_id, first + len(batch) - 1)
                if end:
                    ended = engine.session_id
                    log.info("%s ends session %s", self._peer, ended)
                    await engine.end_session()
                    self._ack(ended, 0)
            except Exception as exc:
                from tickertape.server.engine import PublishFailed  # noqa: PLC0415

                if isinstance(exc, PublishFailed) and exc.published:
                    # Part of the batch was written before a write failed: say so.
                    self._acked += exc.published
                    self._ack(engine.session_id, exc.first_seq + exc.published - 1)
                # A failed write is logged once, by the engine: here, whom it cost.
                level = logging.WARNING if isinstance(exc, PublishFailed) else logging.ERROR
                log.log(level, "publishing from %s failed: %s", self._peer, exc)
                self.close(f"not published: {exc}")
                return

    def _ack(self, session: str, last_seq: int) -> None:
        """Acknowledge to the publisher (see :mod:`tickertape.protocol.publishing`)."""
        connection = self._session
        assert connection is not None
        ack = Ack(self._acked, session, last_seq).encode()
        connection.send_unsequenced(ack, self._loop.time())
        self._flush()

    def _caught_up(self, subscriber: Subscriber, replayed: int) -> None:
        if replayed:
            log.info(
                "%s caught up: replayed %d messages, live from %d",
                self._peer,
                replayed,
                subscriber.next_seq,
            )

    def _end_of_session(self) -> None:
        session = self._session
        assert session is not None
        session.end_session(self._loop.time())
        self._flush()
        log.info("%s: end of session sent", self._peer)
        self._close_transport()

    # ------------------------------------------------------------------ output and time

    def _flush(self) -> None:
        session = self._session
        transport = self._transport
        assert session is not None and transport is not None
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
        self._timer_when = session.next_deadline()
        if self._timer_when != math.inf:
            self._timer = self._loop.call_at(self._timer_when, self._tick)

    def _tick(self) -> None:
        session = self._session
        assert session is not None
        now = self._loop.time()
        if self._paused:
            session.heard(now)  # held back: it is we who stopped reading from it
        if self._subscriber is not None and self._subscriber.sending_file:
            # asyncio does not read from the client while a sendfile is in flight, so
            # its heartbeats wait unread: judge its silence once the chunk is sent.
            session.sent(now)
            self._timer_when = now + self._server.config.timers.heartbeat_interval
            self._timer = self._loop.call_at(self._timer_when, self._tick)
            return
        session.tick(now)
        self._handle_events()
        if session.state is not State.CLOSED:
            self._schedule()

    def _close_transport(self) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def close(self, reason: str) -> None:
        """Close this connection from the server side, telling the client why."""
        session = self._session
        if session is not None and session.state is not State.CLOSED:
            session.send_debug(reason, self._loop.time())
            self._flush()
        self._close_transport()
