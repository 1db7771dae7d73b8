"""One SoupBinTCP client connection: asyncio I/O and timers, nothing else.

:class:`Connection` is the asyncio protocol of one client. It feeds what the client sends
to the session logic (:class:`~tickertape.protocol.server.ServerConnection`), acts on the
events it returns, arms its timers (heartbeats, timeouts) and hands everything it writes
to its :class:`~tickertape.server.output.Output`, the one writer that orders control
packets, live batches and catch-up ranges and closes in order. Whom to accept and why is
:mod:`~tickertape.server.login`'s (pure functions), the steps of a login
:class:`~tickertape.server.admission.Admission`'s, the logs of pulled sessions
:class:`~tickertape.server.pulls.SessionPull`'s, the messages a publisher sends
:class:`~tickertape.sources.publisher.PublisherInput`'s, and the reading of a
session's log :class:`~tickertape.server.subscriber.Subscriber`'s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from typing import TYPE_CHECKING

from tickertape.protocol.server import (
    ConnectionLost,
    LoginRequested,
    LogoutRequested,
    MessagesReceived,
    ServerConnection,
    State,
)
from tickertape.server.admission import Admission
from tickertape.server.connection_info import PublisherInfo, SubscriberInfo
from tickertape.server.login import Live, limit_reason, packet_limit, publish_refusal, user_of
from tickertape.server.output import Output
from tickertape.server.pulls import Lease
from tickertape.server.subscriber import Subscriber
from tickertape.sources.publisher import PublisherInput
from tickertape.text import plural
from tickertape.tls import is_client_hello
from tickertape.wire.soupbintcp import Debug

if TYPE_CHECKING:
    from tickertape.server.soupbintcp import SoupBinTCPServer

__all__ = ["Connection"]

log = logging.getLogger("tickertape.server.soupbintcp")  # the endpoint's log lines


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: SoupBinTCPServer) -> None:
        self._server = server
        self._engine = server.engine
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._output: Output | None = None
        self._session: ServerConnection | None = None
        self._subscriber: Subscriber | None = None
        self._publisher: PublisherInput | None = None
        self._lease: Lease | None = None  # on the log its subscriber reads
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self._admission: Admission | None = None
        self._may_publish = False
        self._session_name: str | None = None
        self._peer = "?"
        self._source = "?"
        self._admitted = False
        self._heard = False  # anything from the client yet
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
        output = self._output = Output(transport, self._peer)
        refused = self._server.admit(self, self._source)
        if refused is not None:
            limits = self._server.limits
            if limits.worth_logging():
                log.warning(
                    "refusing %s: %s (%d connections refused so far)",
                    self._peer,
                    refused,
                    limits.refused,
                )
            output.refuse(Debug(refused.encode()).encode())
            return
        self._admitted = output.announce_cut = True
        transport.set_write_buffer_limits(high=self._server.config.write_buffer_high)
        self._session = ServerConnection(self._loop.time(), self._server.config.timers)
        output.take_control_from(self._session.data_to_send)
        self._admission = Admission(
            self._server,
            self._session,
            self._peer,
            self._source,
            pause_reading=transport.pause_reading,
            closing=lambda: output.closing,
            accepted=self._accept,
            answered=self._handle_events,
        )
        self._schedule()

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
        if self._output is not None:
            self._output.lost()
        if not self._admitted:
            return
        self._release_log()
        self._server.forget(self, self._source)
        if self._timer is not None:
            self._timer.cancel()
        if self._admission is not None:
            self._admission.cancel()
        if self._publisher is not None:
            self._publisher.stop()  # what it handed the engine is published anyway
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
                plural(self._acked, "message"),
                f": {exc}" if exc else "",
                extra={"client": self._peer},
            )

    def pause_writing(self) -> None:
        if self._subscriber is not None:
            self._subscriber.pause_writing()

    def resume_writing(self) -> None:
        if self._subscriber is not None:
            self._subscriber.resume_writing()

    @property
    def _closing(self) -> bool:
        """The server closes it: nothing more is read or written."""
        return self._output is not None and self._output.closing

    @property
    def _acked(self) -> int:
        return self._publisher.acked if self._publisher is not None else 0

    # ------------------------------------------------------------------ session logic

    def _handle_events(self) -> None:
        session = self._session
        assert session is not None and self._output is not None
        # Accepting a login lets the session parse what the client sent after it, which
        # can raise more events: drain until there are none.
        while events := session.events_received():
            for event in events:
                if isinstance(event, LoginRequested):
                    assert self._admission is not None
                    self._admission.login(event.request)
                elif isinstance(event, MessagesReceived):
                    if self._publisher is None:
                        self._may_not_publish()
                        return
                    if not self._publisher.received(event.payloads):
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
        self._output.flush()
        if session.state is State.CLOSED:  # Login Rejected: close once it is sent
            self._close_in_turn()
        elif session.next_deadline() < self._timer_when:
            self._schedule()  # e.g. a login: heartbeats and the idle timeout start now

    def _may_not_publish(self) -> None:
        """Unsequenced Data from a connection that may not publish: close it saying why."""
        relay = getattr(self._engine, "relay_from", None)
        label, reason = publish_refusal(
            self._may_publish,
            self._admission.principal if self._admission is not None else None,
            self._session_name,
            relay,
        )
        if label == "not_permitted":
            log.warning("closing %s: %s", self._peer, reason, extra={"client": self._peer})
        self._server.metrics.publish_failed(label)
        self.close(reason)

    def _accept(self, login: Live, lease: Lease | None, closed: bool) -> None:
        """Accept the login: into the active session (``lease`` None), or a pull of a
        closed one whose log ``lease`` holds."""
        session = self._session
        transport = self._transport
        output = self._output
        assert session is not None and transport is not None and output is not None
        if session.state is State.CLOSED or output.closing:
            if lease is not None:
                lease.release()  # timed out or dropped while the log was being opened
            return
        self._may_publish = login.may_publish
        max_message = getattr(getattr(self._engine, "config", None), "max_message", None)
        session.accept(
            login.session,
            login.first,
            self._loop.time(),
            max_packet_length=packet_limit(
                login.may_publish, self._server.config.max_client_packet, max_message
            ),
            limit_reason=limit_reason(login.may_publish, max_message),
        )
        self._server.metrics.logins_accepted.inc()
        transport.resume_reading()
        self._session_name = login.session
        self._since = time.time()
        if login.may_publish and getattr(self._engine, "relay_from", None) is None:
            config = self._server.config
            self._publisher = PublisherInput(
                self._engine,
                self._peer,
                send=self._acknowledge,
                pause=transport.pause_reading,
                resume=transport.resume_reading,
                close=self.close,
                failed=self._server.metrics.publish_failed,
                max_messages=config.max_unpublished,
                max_bytes=config.max_unpublished_bytes,
            )
        if login.publish_only:
            # A publisher that does not want the stream: no subscription, so it is not
            # ended with the session either; it publishes into whichever is active.
            log.info(
                "%s logged in as %r to publish",
                self._peer,
                self._who,
                extra={"client": self._peer, "user": self._who},
            )
            output.flush()
            return
        log.info(
            "%s logged in as %r to session %s from sequence %d%s",
            self._peer,
            self._who,
            login.session,
            login.first,
            "" if not closed else " (closed session: replay, then end)",
            extra={
                "client": self._peer,
                "user": self._who,
                "session": login.session,
                "sequence": login.first,
            },
        )
        output.flush()
        if lease is None:
            lease = self._server.pulls.reading(login.session, self._engine.session_log)
        self._lease = lease
        self._subscriber = output.feed = Subscriber(
            output,
            lease.log,
            None if closed else self._engine,
            login.first,
            on_sent=session.sent,
            on_caught_up=self._caught_up,
            on_end=self._end_of_session,
            on_damaged=self._damaged,
            on_failed=self.close,
            chunk=self._server.config.catch_up_chunk,
            sent=self._server.metrics.sent,
        )
        self._subscriber.start()

    def _acknowledge(self, payload: bytes) -> None:
        session = self._session
        assert session is not None and self._output is not None
        session.send_unsequenced(payload, self._loop.time())
        self._output.flush()

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
            tls=self._output is not None and self._output.tls,
        )

    @property
    def publishing(self) -> bool:
        """Logged in to publish only, or allowed to publish and has sent something."""
        if not self._may_publish or self._session_name is None:
            return False
        unpublished = self._publisher is not None and self._publisher.unpublished > 0
        return self._subscriber is None or self._acked > 0 or unpublished

    def publisher_info(self) -> PublisherInfo:
        return PublisherInfo(self._peer, self._who, self._acked, self._since)

    @property
    def _who(self) -> str:
        return user_of(self._session.request if self._session is not None else None)

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

    # ------------------------------------------------------------------ time and closing

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
        output = self._output
        assert session is not None and output is not None
        if output.closing:
            return
        now = self._loop.time()
        if self._publisher is not None and self._publisher.paused:
            session.heard(now)  # held back: it is we who stopped reading from it
        if output.sending_file:
            # A sendfile in flight is sending: no heartbeat is due (none may be written
            # in the middle of it). The client's packets are read meanwhile, so its
            # silence is judged as ever. A sendfile that does not move for the idle
            # timeout is a client that stopped reading (if not sending): it is dropped.
            if output.stalled(now, session.idle_timeout):
                self._server.metrics.heartbeat_timeouts.inc()
                log.warning(
                    "dropping %s: it read nothing for %g s",
                    self._peer,
                    session.idle_timeout,
                    extra={"client": self._peer},
                )
                output.drop()
                return
            session.sent(now)
        logged_in = session.state is State.LOGGED_IN
        session.tick(now)
        if logged_in and session.state is State.CLOSED:
            self._server.metrics.heartbeat_timeouts.inc()  # silent for the idle timeout
        self._handle_events()
        if session.state is not State.CLOSED:
            self._schedule()

    def _close_in_turn(self) -> None:
        """Close from this side, throwing nothing away (see
        :meth:`~tickertape.server.output.Output.close_in_turn`); the log is released as
        soon as the subscriber has stopped, not held while the client takes its time."""
        output = self._output
        assert output is not None
        if output.closing:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_when = math.inf
        output.close_in_turn(self._release_log)

    def _release_log(self) -> None:
        if self._lease is not None:
            self._lease.release()

    def close_if_delivered(self) -> None:
        """Close a closing connection at once if its client has received everything
        (the server is shutting down)."""
        if self._output is not None:
            self._output.close_if_delivered()

    def close(self, reason: str) -> None:
        """Close this connection from the server side, telling the client why (after
        whatever is queued for it)."""
        session = self._session
        if session is not None and session.state is not State.CLOSED and not self._closing:
            session.send_debug(reason, self._loop.time())
        self._close_in_turn()
