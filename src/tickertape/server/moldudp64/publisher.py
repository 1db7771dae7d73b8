"""The MoldUDP64 multicast publisher: the active session, as it is published, to a group.

:class:`MoldPublisher` is a cursor at the engine's tail, like a live SoupBinTCP
subscriber. It joins when it starts, so it multicasts what is published from then on;
anything earlier is had by re-request (or a SoupBinTCP login). Each batch the engine
hands it, already encoded as SoupBinTCP Sequenced Data packets, is cut into its messages
and packed into downstream packets of at most 1472 bytes, sent to the group. A heartbeat
goes out after each second with nothing sent. When a session ends, End of Session for
it goes out at once, then once a second in place of heartbeats while the next session has
nothing to send, for at most ``eos_seconds``; the next session's first message stops them
(never is an End of Session sent after the next session's first packet: some receivers
take the session from every packet, and would think the new session ended). Then the new
session's messages and heartbeats go out as usual.

Sending never holds up the event loop, so never the TCP side: :meth:`MoldPublisher.deliver`
only queues the batch for a thread of the publisher's own, which packs it and sends it.
That thread's socket waits (at most ``send_timeout``) for room in its buffer, which paces
it to the network. If it falls behind by more than ``max_queued_bytes`` of batches,
whole batches are dropped and counted: multicast is lossy by nature, and receivers get
the missing messages by re-request. Messages longer than 1450 bytes cannot go by
MoldUDP64 (it does not fragment; one must fit a 1472-byte datagram with its headers):
they are skipped, counted and logged. Receivers see a gap there that re-requests cannot
fill either; they fetch those messages over SoupBinTCP.

The sending thread is :mod:`.sender`; the settings and counters :mod:`.settings`. Earlier
messages are the re-request server's (:mod:`.rerequest`), not this module's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket

from tickertape.server.metrics import metrics_of
from tickertape.server.moldudp64.sender import MoldSender, publisher_socket
from tickertape.server.moldudp64.settings import PublisherConfig, PublisherStats
from tickertape.server.moldudp64.throttled import ThrottledWarning
from tickertape.server.provider import SessionProvider
from tickertape.wire.moldudp64 import end_of_session, heartbeat

log = logging.getLogger(__name__)


def parse_group(text: str) -> tuple[str, int]:
    """``GROUP:PORT`` (an IPv4 address, usually a multicast group) as ``(group, port)``.
    Raises ``ValueError`` saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r}: expected GROUP:PORT, such as 239.1.1.1:30001")
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IPv4 address") from None
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{port_text!r} is not a port number") from None
    if not 0 < port <= 65535:
        raise ValueError(f"{port}: a port is 1 to 65535")
    return str(address), port


def default_interface(host: str) -> str | None:
    """The interface to send the group on when none is named: that of ``host`` (where
    the server listens) if it is a loopback address, so that receivers on the same
    machine get the packets with no more setting; else None (the route decides)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        return None
    return str(address) if address.is_loopback else None


def _route_source(group: str, port: int) -> str | None:
    """The local address the route to ``group`` leaves from; None if there is no route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((group, port))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
        return address


class MoldPublisher:
    """Multicasts the engine's active session as MoldUDP64. Create, then ``start()``."""

    def __init__(self, engine: SessionProvider, config: PublisherConfig) -> None:
        self.engine = engine
        self.config = config
        self.stats = PublisherStats()
        metrics_of(engine).mold_publisher = self.stats  # read by GET /metrics
        self.next_seq = 1
        self._session = ""
        self._sock: socket.socket | None = None
        self._sender: MoldSender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_sent = 0.0
        self._heartbeat: asyncio.TimerHandle | None = None
        self._ends: set[asyncio.TimerHandle] = set()
        self._closed = False
        self._warn_dropped = ThrottledWarning(
            log,
            "MoldUDP64: the sending thread is %d bytes behind; dropped batch %d of session "
            "%s (receivers re-request it)",
        )

    @property
    def session(self) -> str:
        """The session whose messages and heartbeats it sends."""
        return self._session

    @property
    def sender(self) -> MoldSender | None:
        """The sending thread, once started."""
        return self._sender

    def start(self) -> None:
        """Open the socket and join the tail of the active session."""
        if self._sock is not None:
            raise RuntimeError("the MoldUDP64 publisher is already started")
        self._loop = asyncio.get_running_loop()
        self._sock = publisher_socket(self.config)
        self._sender = MoldSender(self._sock, self.config, self.stats)
        self._join()
        group, port, interface = self.config.group, self.config.port, self.config.interface
        if interface is not None:
            loopback = ipaddress.IPv4Address(interface).is_loopback
            log.info(
                "MoldUDP64 publishing to %s:%d on the interface of %s%s (ttl %d)",
                group,
                port,
                interface,
                " (the loopback: receivers on this machine only)" if loopback else "",
                self.config.ttl,
            )
            return
        source = _route_source(group, port)
        if source is None:
            log.warning(
                "MoldUDP64: no route to %s: its packets go nowhere; name the interface to "
                "send on with --mold-iface ADDR (127.0.0.1 for receivers on this machine)",
                group,
            )
        else:
            log.info(
                "MoldUDP64 publishing to %s:%d on the interface of %s, where the route to "
                "the group leads (--mold-iface ADDR chooses another) (ttl %d)",
                group,
                port,
                source,
                self.config.ttl,
            )

    def _join(self) -> None:
        """Go live at the tail of the active session and say so with a heartbeat."""
        if self._closed:
            return
        self._session = self.engine.session_id
        self.next_seq = self.engine.next_seq
        joined = self.engine.stream.go_live(self)
        assert joined, "a cursor at the tail is always taken"
        if not self._ends:  # else the ended session's End of Session stands in for it
            self._send_heartbeat()

    # ------------------------------------------------------------------ Cursor

    def deliver(self, data: bytes, first_seq: int, count: int, now: float) -> None:
        """Queue a newly published batch for the sending thread (never blocks)."""
        assert self._sender is not None and self._loop is not None
        if self._ends:
            self._stop_ends()
        self.next_seq = first_seq + count
        self._last_sent = self._loop.time()
        if self._heartbeat is None:
            self._heartbeat = self._loop.call_at(
                self._last_sent + self.config.heartbeat_interval, self._tick
            )
        if not self._sender.put_batch(self._session, data, first_seq, count):
            self.stats.dropped_batches += 1
            self.stats.dropped_messages += count
            self._warn_dropped(
                self._loop.time(), self.config.max_queued_bytes, first_seq, self._session
            )

    def session_ended(self) -> None:
        """End of Session for the ended session, now and once a second for a while;
        then (on the next turn of the loop, once the engine has switched) join the next
        session's tail."""
        assert self._loop is not None
        ended, next_seq = self._session, self.next_seq
        if self._heartbeat is not None:
            self._heartbeat.cancel()  # the next session's first packet restarts it
            self._heartbeat = None
        self._stop_ends()  # an earlier session's: this end supersedes it
        repeats = max(1, math.ceil(self.config.eos_seconds / self.config.heartbeat_interval))
        log.info(
            "MoldUDP64: End of Session %s at %d, up to %d times (until the next session's "
            "first message)",
            ended,
            next_seq,
            repeats,
        )
        self._send_end(ended, next_seq, repeats)
        self._loop.call_soon(self._join)

    def abort(self) -> None:
        """Taking a batch failed (a bug: :meth:`deliver` does not raise). The engine
        has dropped this cursor: join the tail again rather than stop publishing."""
        assert self._loop is not None
        log.error("MoldUDP64: the publisher was dropped from the tail; joining it again")
        self._loop.call_soon(self._join)

    # ------------------------------------------------------------------ timers

    def _send_heartbeat(self) -> None:
        assert self._sender is not None and self._loop is not None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._sender.put(heartbeat(self._session, self.next_seq))
        self.stats.heartbeats += 1
        self._last_sent = self._loop.time()
        self._heartbeat = self._loop.call_at(
            self._last_sent + self.config.heartbeat_interval, self._tick
        )

    def _tick(self) -> None:
        """A heartbeat if nothing was sent for an interval; else look again when one
        will have passed since the last send."""
        assert self._loop is not None
        due = self._last_sent + self.config.heartbeat_interval
        if self._loop.time() >= due:
            self._send_heartbeat()
        else:
            self._heartbeat = self._loop.call_at(due, self._tick)

    def _send_end(self, session: str, next_seq: int, left: int) -> None:
        assert self._sender is not None and self._loop is not None
        if self._closed:
            return
        self._sender.put(end_of_session(session, next_seq))
        self.stats.end_of_session += 1
        self._last_sent = self._loop.time()
        if left > 1:
            handle: asyncio.TimerHandle

            def again() -> None:
                self._ends.discard(handle)
                self._send_end(session, next_seq, left - 1)

            handle = self._loop.call_later(self.config.heartbeat_interval, again)
            self._ends.add(handle)
        elif session != self._session and self._heartbeat is None:
            # The last one, and the next session has sent nothing: its heartbeats begin.
            self._heartbeat = self._loop.call_at(
                self._last_sent + self.config.heartbeat_interval, self._tick
            )

    def _stop_ends(self) -> None:
        """No more End of Session repeats (the next session has something to send)."""
        for handle in self._ends:
            handle.cancel()
        self._ends.clear()

    # ------------------------------------------------------------------ closing

    async def flush(self) -> None:
        """Wait until everything queued so far has been handed to the socket."""
        if self._sender is None:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not done.done():
                done.set_result(None)

        def mark() -> None:
            loop.call_soon_threadsafe(settle)

        self._sender.put(mark)
        await done

    async def close(self) -> None:
        """Stop: leave the tail, send what is queued, close the socket."""
        if self._closed:
            return
        self._closed = True
        self.engine.stream.leave(self)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._stop_ends()
        if self._sender is not None:
            await asyncio.to_thread(self._sender.stop)
        if self._sock is not None:
            self._sock.close()


__all__ = ["MoldPublisher", "default_interface", "parse_group"]
