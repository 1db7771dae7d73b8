"""The MoldUDP64 endpoints: a multicast publisher and a unicast re-request server.

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

:class:`MoldRequestServer` answers each 20-byte request with one downstream packet, by
unicast to the sender, holding as many of the requested messages as fit in 1472 bytes:
from the active session or any closed one on disk (archived or not). It does not answer
malformed requests, unknown sessions, numbers out of range, or a message too long to
send. Each requester (address and port) has a budget of messages a second (a token
bucket) so that one cannot starve the others.

Reading: requests for the active session are answered at once, on the event loop, from
the log's page cache. The bytes read are kept in small windows (16 KiB each; 128 KiB for
a read that goes on where a window ends, as a client catching up in order makes), so a
client filling a gap chunk by chunk, or many clients missing the same packet, cost one
read. A request that needs a read is charged a packet's worth of the messages read on
top of what it is sent (twice that for a 128 KiB read): asking for scattered numbers (a
read each) is limited far more than asking for the next chunk of a gap (a few percent).
Closed sessions are opened and read on a thread of the server's own (opening checks every
checksum), kept open while they are asked for, and closed after a minute without
requests, so that archiving or deleting them frees their space. Requests that need such
a read wait in one queue per requester, the requesters served in turn; one for what is
already read (the windows) is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import threading
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from tickertape.errors import CorruptLogError, RemoteProtocolError, SessionNotFound, StoreError
from tickertape.server.metrics import metrics_of
from tickertape.server.provider import SessionProvider
from tickertape.store.log import ReadableLog, packet_offsets
from tickertape.store.sessionid import SessionId
from tickertape.wire.moldudp64 import (
    BLOCK_HEADER,
    HEADER,
    MAX_DATAGRAM,
    MAX_MESSAGES,
    SESSION_LENGTH,
    Request,
    end_of_session,
    heartbeat,
    pack,
)

log = logging.getLogger(__name__)

DEFAULT_TTL: Final = 1
DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
DEFAULT_EOS_SECONDS: Final = 10.0
"""How long End of Session packets are repeated (once a second) after a session ends."""
DEFAULT_MAX_QUEUED_BYTES: Final = 64 << 20
"""Batches the sending thread may fall behind by before whole batches are dropped."""
DEFAULT_SEND_TIMEOUT: Final = 1.0
"""Seconds the sending thread waits for room in its socket's buffer before it drops a
datagram."""
DEFAULT_SOCKET_BUFFER: Final = 4 << 20
DEFAULT_CLOSE_GRACE: Final = 5.0
"""Seconds the publisher may take, when closing, to send what it has queued."""
DEFAULT_REQUEST_RATE: Final = 50_000.0
"""Messages a second each requester may be sent by the re-request server."""
DEFAULT_WINDOW_BYTES: Final = 16 << 10
"""Bytes read from a log at a time for re-requests (about ten full packets' worth)."""
DEFAULT_READ_AHEAD: Final = 8
"""A read that goes on where a window ends (a client catching up in order) reads this
many windows' worth at once."""
DEFAULT_MAX_WINDOWS: Final = 64
DEFAULT_CLOSED_IDLE: Final = 60.0
"""Seconds a closed session's log stays open after its last request."""
DEFAULT_MAX_OPEN_CLOSED: Final = 8
DEFAULT_MAX_PENDING_PER_REQUESTER: Final = 64
"""Requests for closed sessions queued per requester (a pipelining client keeps 64 in
flight)."""
DEFAULT_MAX_PENDING: Final = 4096
DEFAULT_UNKNOWN_SESSION_MEMORY: Final = 5.0
"""Seconds a session found not to be on disk is not looked for again."""

_SOUP_HEADER: Final = 3  # u16 length, 'S'
_WARN_EVERY: Final = 10.0
"""At most one warning of each kind this often: a flood of drops must not flood the log."""
_READS_PER_WAKEUP: Final = 256


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


class _Throttled:
    """A warning logged at most once every ``_WARN_EVERY`` seconds, with how many times
    it happened meanwhile."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._last = -math.inf
        self._unsaid = 0
        self._lock = threading.Lock()

    def __call__(self, now: float, *args: object) -> None:
        with self._lock:
            self._unsaid += 1
            if now - self._last < _WARN_EVERY:
                return
            times, self._unsaid, self._last = self._unsaid, 0, now
        log.warning(self._text + " (%s since the last such warning)", *args, _times(times))


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


# ---------------------------------------------------------------------------- publisher


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """Where and how the MoldUDP64 publisher sends."""

    group: str
    port: int
    interface: str | None = None
    """The local address of the interface to send from (``IP_MULTICAST_IF``); None: the
    system picks (by the route to the group)."""
    ttl: int = DEFAULT_TTL
    loopback: bool = True
    """Whether receivers on this host get the packets (``IP_MULTICAST_LOOP``)."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    eos_seconds: float = DEFAULT_EOS_SECONDS
    max_datagram: int = MAX_DATAGRAM
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    socket_buffer: int = DEFAULT_SOCKET_BUFFER


@dataclass(slots=True)
class PublisherStats:
    """What the publisher sent and what it could not."""

    packets: int = 0
    """Downstream packets holding messages, sent."""
    bytes: int = 0
    """...and their bytes."""
    messages: int = 0
    heartbeats: int = 0
    end_of_session: int = 0
    oversized: int = 0
    """Messages longer than a packet holds: skipped (receivers get them by SoupBinTCP)."""
    dropped_batches: int = 0
    """Batches dropped because the sending thread was too far behind."""
    dropped_messages: int = 0
    failed_sends: int = 0
    """Datagrams the socket did not take (buffer full past the timeout, or an error)."""


_Job = tuple[str, bytes, int, int] | bytes | Callable[[], None]
"""A batch to send ``(session, data, first_seq, count)``, one ready packet, or a call
to make once everything before it was sent."""


class _Sender:
    """The thread that packs batches into datagrams and sends them."""

    def __init__(self, sock: socket.socket, config: PublisherConfig, stats: PublisherStats) -> None:
        self._sock = sock
        self._address = (config.group, config.port)
        self._max_datagram = config.max_datagram
        self._max_queued_bytes = config.max_queued_bytes
        self._stats = stats
        self._jobs: deque[_Job | None] = deque()
        self._queued_bytes = 0
        self._discard = False
        self._ready = threading.Condition()
        self._warn_oversized = _Throttled(
            "MoldUDP64: skipped message %d of session %s (%d bytes; a packet holds at most "
            "%d): receivers get it by SoupBinTCP"
        )
        self._warn_send = _Throttled("MoldUDP64: a datagram to %s was not sent: %s")
        self._thread = threading.Thread(target=self._run, name="tickertape-mold-sender")
        self._thread.daemon = True
        self._thread.start()

    def put_batch(self, session: str, data: bytes, first_seq: int, count: int) -> bool:
        """Queue a batch; False (nothing queued) if the thread is too far behind."""
        with self._ready:
            if self._queued_bytes and self._queued_bytes + len(data) > self._max_queued_bytes:
                return False
            self._queued_bytes += len(data)
            self._jobs.append((session, data, first_seq, count))
            self._ready.notify()
        return True

    def put(self, job: bytes | Callable[[], None]) -> None:
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()

    def stop(self, grace: float = DEFAULT_CLOSE_GRACE) -> None:
        """Send what is queued, then end the thread (waits for it). What is not sent
        within ``grace`` seconds (the network is stuck) is dropped."""
        with self._ready:
            self._jobs.append(None)
            self._ready.notify()
        self._thread.join(grace)
        if self._thread.is_alive():
            self._discard = True
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                job = self._jobs.popleft()
                if isinstance(job, tuple):
                    self._queued_bytes -= len(job[1])
            if job is None:
                return
            if self._discard and not callable(job):
                continue
            try:
                if isinstance(job, tuple):
                    self._send_batch(*job)
                elif isinstance(job, bytes):
                    self._send(job)
                else:
                    job()
            except Exception:
                log.exception("MoldUDP64: the sending thread failed on a job; it goes on")

    def _send_batch(self, session: str, data: bytes, first_seq: int, count: int) -> None:
        offsets = packet_offsets(data)
        if len(offsets) - 1 != count:
            log.error(
                "MoldUDP64: batch %d of session %s holds %d whole packets, not %d: not sent",
                first_seq,
                session,
                len(offsets) - 1,
                count,
            )
            return
        longest = self._max_datagram - HEADER.size - BLOCK_HEADER.size
        run: list[bytes] = []
        run_first = first_seq
        for number in range(count):
            payload = data[offsets[number] + _SOUP_HEADER : offsets[number + 1]]
            if len(payload) > longest:
                self._flush(session, run_first, run)
                run = []
                run_first = first_seq + number + 1
                self._stats.oversized += 1
                self._warn_oversized(
                    time.monotonic(), first_seq + number, session, len(payload), longest
                )
                continue
            run.append(payload)
        self._flush(session, run_first, run)

    def _flush(self, session: str, first_seq: int, messages: list[bytes]) -> None:
        if not messages:
            return
        for packet in pack(session, first_seq, messages, self._max_datagram):
            if self._send(packet):
                self._stats.packets += 1
                self._stats.bytes += len(packet)
                self._stats.messages += HEADER.unpack_from(packet)[2]

    def _send(self, packet: bytes) -> bool:
        try:
            self._sock.sendto(packet, self._address)
        except OSError as exc:  # TimeoutError (buffer full too long) is one
            self._stats.failed_sends += 1
            self._warn_send(time.monotonic(), f"{self._address[0]}:{self._address[1]}", exc)
            return False
        return True


def _publisher_socket(config: PublisherConfig) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, config.ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(config.loopback))
        if config.interface is not None:
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(config.interface)
            )
        with contextlib.suppress(OSError):  # a smaller buffer still works
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.socket_buffer)
        sock.settimeout(config.send_timeout)
    except BaseException:
        sock.close()
        raise
    return sock


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
        self._sender: _Sender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_sent = 0.0
        self._heartbeat: asyncio.TimerHandle | None = None
        self._ends: set[asyncio.TimerHandle] = set()
        self._closed = False
        self._warn_dropped = _Throttled(
            "MoldUDP64: the sending thread is %d bytes behind; dropped batch %d of session "
            "%s (receivers re-request it)"
        )

    @property
    def session(self) -> str:
        """The session whose messages and heartbeats it sends."""
        return self._session

    def start(self) -> None:
        """Open the socket and join the tail of the active session."""
        if self._sock is not None:
            raise RuntimeError("the MoldUDP64 publisher is already started")
        self._loop = asyncio.get_running_loop()
        self._sock = _publisher_socket(self.config)
        self._sender = _Sender(self._sock, self.config, self.stats)
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
        joined = self.engine.go_live(self)
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
        self.engine.leave(self)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._stop_ends()
        if self._sender is not None:
            await asyncio.to_thread(self._sender.stop)
        if self._sock is not None:
            self._sock.close()


# ---------------------------------------------------------------------------- re-requests


@dataclass(frozen=True, slots=True)
class RequestServerConfig:
    """Where the re-request server listens and how much it gives each requester."""

    host: str = "127.0.0.1"
    port: int = 0
    rate: float = DEFAULT_REQUEST_RATE
    """Messages a second each requester (address and port) may be sent."""
    burst: float | None = None
    """Messages a requester may be sent at once after a quiet spell (None: ``rate``)."""
    max_datagram: int = MAX_DATAGRAM
    window_bytes: int = DEFAULT_WINDOW_BYTES
    read_ahead: int = DEFAULT_READ_AHEAD
    """A read that goes on where a window ends reads ``read_ahead`` windows' worth."""
    max_windows: int = DEFAULT_MAX_WINDOWS
    closed_idle: float = DEFAULT_CLOSED_IDLE
    max_open_closed: int = DEFAULT_MAX_OPEN_CLOSED
    max_pending_per_requester: int = DEFAULT_MAX_PENDING_PER_REQUESTER
    max_pending: int = DEFAULT_MAX_PENDING
    socket_buffer: int = DEFAULT_SOCKET_BUFFER


@dataclass(slots=True)
class RequestStats:
    """What the re-request server received and what it did with it."""

    requests: int = 0
    answered: int = 0
    messages: int = 0
    malformed: int = 0
    unknown_session: int = 0
    out_of_range: int = 0
    rate_limited: int = 0
    oversized: int = 0
    """Requests whose first message is too long for a packet: not answered."""
    dropped: int = 0
    """Requests not answered for want of room: a full queue, a full socket buffer."""
    failed: int = 0
    """Requests not answered because reading the session failed."""


Address = tuple[str, int]


class TokenBuckets:
    """A token bucket per requester: ``rate`` tokens a second, at most ``burst`` held."""

    def __init__(self, rate: float, burst: float, max_requesters: int = 65_536) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate above 0 and a burst of at least 1 are needed")
        self.rate = rate
        self.burst = burst
        self._max = max_requesters
        self._buckets: dict[Address, list[float]] = {}

    def take(self, who: Address, now: float, wanted: int) -> int:
        """Reserve ``wanted`` tokens: 0 if the bucket holds less than one token; else
        ``wanted``, taken whole (the bucket may go below zero: the debt is paid back
        before the next request is served). :meth:`settle` once the cost is known."""
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._prune(now)
            bucket = self._buckets[who] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return 0
        bucket[0] = tokens - wanted
        return wanted

    def settle(self, who: Address, reserved: int, used: int) -> None:
        """Give back what a reservation did not use, or take what it used beyond."""
        bucket = self._buckets.get(who)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + reserved - used)

    def _prune(self, now: float) -> None:
        """Forget requesters whose bucket has filled up again: they are as new."""
        for who, (tokens, when) in list(self._buckets.items()):
            if tokens + (now - when) * self.rate >= self.burst:
                del self._buckets[who]
        if len(self._buckets) >= self._max:  # a flood of fresh addresses: start over
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(slots=True)
class _Window:
    """Messages ``first`` .. ``next_seq - 1`` of a session read from its log, already
    framed as MoldUDP64 message blocks (``u16`` length, data) in ``blocks``, the block of
    each at ``offsets`` (one more offset than messages: where the last one ends). An
    answer is then a header and one slice."""

    session: str
    first: int
    blocks: bytes
    offsets: list[int]
    next_seq: int = 0
    """Set from the others: one past the last message."""

    def __post_init__(self) -> None:
        self.next_seq = self.first + len(self.offsets) - 1


def _read_window(
    session_log: ReadableLog, session: str, seq: int, tail: int, window_bytes: int
) -> _Window:
    """About ``window_bytes`` of whole packets from message ``seq`` (at least one), none
    at or past ``tail``."""
    start, end_seq, end_offset = session_log.span(seq, window_bytes, tail)
    data = session_log.read_range(start, min(end_offset - start, window_bytes))
    offsets = packet_offsets(data)
    if len(offsets) == 1 and len(data) >= 2:  # the first message alone is longer
        data = session_log.read_range(
            start, min(end_offset - start, 2 + ((data[0] << 8) | data[1]))
        )
        offsets = packet_offsets(data)
    count = min(len(offsets) - 1, end_seq - seq)
    if count < 1:
        raise CorruptLogError(f"session {session}: no whole packet at message {seq}")
    # SoupBinTCP ``u16 length, 'S', payload`` (the length counts the 'S') to MoldUDP64
    # ``u16 length, payload``: each message one byte shorter.
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for number in range(count):
        start, end = offsets[number], offsets[number + 1]
        parts.append((end - start - _SOUP_HEADER).to_bytes(2, "big"))
        parts.append(view[start + _SOUP_HEADER : end])
    blocks = b"".join(parts)
    return _Window(session, seq, blocks, [offsets[n] - n for n in range(count + 1)])


@dataclass(frozen=True, slots=True)
class _Answer:
    """What one answer holds: ``count`` message blocks, ``blocks[start:end]``."""

    blocks: bytes
    start: int
    end: int
    count: int


@dataclass(slots=True)
class _Closed:
    """A closed session's log, open while it is asked for."""

    log: ReadableLog
    used: float


@dataclass(slots=True)
class _Pending:
    """A request for a closed session, waiting its turn, and the tokens it holds."""

    request: Request
    reserved: int


class MoldRequestServer:
    """Answers MoldUDP64 re-requests by unicast. Create, then ``await start()``."""

    def __init__(self, engine: SessionProvider, config: RequestServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or RequestServerConfig()
        self.stats = RequestStats()
        metrics_of(engine).mold_requests = self.stats  # read by GET /metrics
        burst = self.config.burst if self.config.burst is not None else self.config.rate
        self.buckets = TokenBuckets(self.config.rate, max(burst, 1.0))
        self._per_packet = max(1, (self.config.max_datagram - HEADER.size) // BLOCK_HEADER.size)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._windows: OrderedDict[tuple[str, int], _Window] = OrderedDict()
        self._read_cost = 0
        self._closed_logs: dict[str, _Closed] = {}
        self._unknown: dict[str, float] = {}
        self._pending: OrderedDict[Address, deque[_Pending]] = OrderedDict()
        self._pending_count = 0
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tickertape-mold-reader")
        self._prefetching: dict[tuple[str, int], asyncio.Future[_Window]] = {}
        self._fields: dict[str, bytes] = {}  # session: its 10-byte header field
        self._warn_failed = _Throttled("MoldUDP64: a re-request for session %s failed: %s")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.socket_buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.socket_buffer)
            sock.bind((self.config.host, self.config.port))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        loop.add_reader(sock.fileno(), self._readable)
        self._worker = loop.create_task(self._work(), name="mold-request-worker")
        host, port = sock.getsockname()[:2]
        log.info("MoldUDP64 re-requests on %s:%d", host, port)

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the re-request server is not started")
        port: int = self._sock.getsockname()[1]
        return port

    async def close(self) -> None:
        if self._sock is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._sock.fileno())
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for reading in list(self._prefetching.values()):
            reading.cancel()
        await asyncio.to_thread(self._executor.shutdown, True)
        for closed in self._closed_logs.values():
            closed.log.close()
        self._closed_logs.clear()
        self._windows.clear()
        self._sock.close()
        self._sock = None

    # ------------------------------------------------------------------ receiving

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, address = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("MoldUDP64 re-request socket: %s", exc)
                continue
            try:
                self.handle(data, (address[0], address[1]))
            except Exception:
                log.exception("MoldUDP64: a re-request from %s:%d failed", *address[:2])

    def handle(self, data: bytes, who: Address) -> None:
        """One datagram from ``who``: answer it now (active session), queue it (a
        closed session), or ignore it."""
        assert self._loop is not None
        self.stats.requests += 1
        try:
            request = Request.decode(data)
        except RemoteProtocolError:
            self.stats.malformed += 1
            return
        if request.count == 0 or request.sequence < 1:
            self.stats.out_of_range += 1
            return
        now = self._loop.time()
        if request.session == self.engine.session_id:
            tail = self.engine.next_seq
            if request.sequence >= tail:
                self.stats.out_of_range += 1
                return
            reserved = self._reserve(request, who, now)
            if not reserved:
                return
            sent = 0
            reads = self._read_cost
            try:
                sent = self._answer_active(request, who, tail)
            except (StoreError, OSError) as exc:
                self.stats.failed += 1
                self._warn_failed(now, request.session, exc)
            finally:
                self.buckets.settle(who, reserved, self._cost(sent, reads))
            return
        if request.session not in self._closed_logs and (
            not SessionId.is_valid(request.session) or self._known_unknown(request.session, now)
        ):
            self.stats.unknown_session += 1
            return
        if self._answer_cached(request, who, now):
            return
        queue = self._pending.get(who)
        if self._pending_count >= self.config.max_pending or (
            queue is not None and len(queue) >= self.config.max_pending_per_requester
        ):
            self.stats.dropped += 1
            return
        reserved = self._reserve(request, who, now)
        if not reserved:
            return
        if queue is None:
            queue = self._pending[who] = deque()
        queue.append(_Pending(request, reserved))
        self._pending_count += 1
        self._wake.set()

    def _answer_cached(self, request: Request, who: Address, now: float) -> bool:
        """Answer a request for a closed session at once if its log is open and what it
        asks for is in the windows (no read needed: as cheap as for the active session).
        False if it must wait its turn for a read."""
        closed = self._closed_logs.get(request.session)
        if closed is None:
            return False
        seq, tail = request.sequence, closed.log.next_seq
        if seq >= tail:
            self.stats.out_of_range += 1
            return True
        window = self._find(request.session, seq)
        if window is None:
            return False
        answer, short = self._fill(window, seq, request.count)
        if short and window.next_seq < tail:
            return False  # the packet has room for more than the window holds
        reserved = self._reserve(request, who, now)
        if not reserved:
            return True
        sent = 0
        read_cost = self._read_cost
        try:
            sent = self._send(request, who, answer)
            closed.used = now
            self._prefetch(closed.log, window, seq + answer.count, tail)
        finally:
            self.buckets.settle(who, reserved, self._cost(sent, read_cost))
        return True

    def _cost(self, sent: int, read_cost_before: int) -> int:
        """What answering cost the requester: the messages sent, and a full packet's
        worth of the messages read for each read of the log (a request that misses the
        windows costs the loop far more than one that hits them; a client asking for the
        next packet's worth each time is charged about one read per window, a few
        percent)."""
        return sent + self._read_cost - read_cost_before

    def _read_charge(self, window: _Window, size: int) -> int:
        """What a read of ``size`` bytes costs the requester: a packet's worth of the
        messages read (as many as one packet holds from the window's first), and one more
        for every further four windows' worth of bytes."""
        room = self.config.max_datagram - HEADER.size
        packet_worth = max(1, bisect_right(window.offsets, room) - 1)
        return packet_worth * max(1, size // (4 * self.config.window_bytes))

    def _reserve(self, request: Request, who: Address, now: float) -> int:
        reserved = self.buckets.take(who, now, min(request.count, self._per_packet))
        if not reserved:
            self.stats.rate_limited += 1
        return reserved

    def _known_unknown(self, session: str, now: float) -> bool:
        until = self._unknown.get(session)
        if until is None:
            return False
        if now < until:
            return True
        del self._unknown[session]
        return False

    # ------------------------------------------------------------------ answering

    def _window_bytes(self, session: str, seq: int, ahead: bool) -> int:
        """What to read from ``seq``: a window; more for a client reading on in order
        (``seq`` is where a window ends, or the rest of a packet is wanted), so that
        catching up costs few reads, while scattered requests each read little."""
        size = self.config.window_bytes
        if ahead or any(w.session == session and w.next_seq == seq for w in self._windows.values()):
            return size * max(1, self.config.read_ahead)
        return size

    def _read_now(
        self, session_log: ReadableLog, session: str, seq: int, tail: int, ahead: bool = False
    ) -> _Window:
        size = self._window_bytes(session, seq, ahead)
        window = _read_window(session_log, session, seq, tail, size)
        self._read_cost += self._read_charge(window, size)
        self._keep(window)
        return window

    def _find(self, session: str, seq: int) -> _Window | None:
        for key in reversed(self._windows):
            window = self._windows[key]
            if window.session == session and window.first <= seq < window.next_seq:
                self._windows.move_to_end(key)
                return window
        return None

    def _keep(self, window: _Window) -> None:
        self._windows[(window.session, window.first)] = window
        self._windows.move_to_end((window.session, window.first))
        while len(self._windows) > self.config.max_windows:
            self._windows.popitem(last=False)

    def _fill(self, window: _Window, seq: int, count: int) -> tuple[_Answer, bool]:
        """The messages from ``seq`` that fit a packet, up to ``count``; and whether the
        window ran out before the packet or the count was full."""
        room = self.config.max_datagram - HEADER.size
        wanted = min(count, MAX_MESSAGES)
        offsets = window.offsets
        number = seq - window.first
        last = len(offsets) - 1
        # The last message whose block ends within the room, at most ``wanted`` of them.
        stop = bisect_right(offsets, offsets[number] + room, number, min(last, number + wanted) + 1)
        stop -= 1
        answer = _Answer(window.blocks, offsets[number], offsets[stop], stop - number)
        return answer, stop >= last and stop - number < wanted

    def _answer_active(self, request: Request, who: Address, tail: int) -> int:
        """Answer from the windows, reading the active log on the loop if need be (its
        recent part is in the page cache). Returns the number of messages sent."""
        session, seq = request.session, request.sequence
        session_log = self.engine.session_log
        window = self._find(session, seq) or self._read_now(session_log, session, seq, tail)
        answer, short = self._fill(window, seq, request.count)
        if short and window.next_seq < tail:
            # The packet has room for more than this window holds: read on from seq.
            window = self._read_now(session_log, session, seq, tail, ahead=True)
            answer, short = self._fill(window, seq, request.count)
        return self._send(request, who, answer)

    def _send(self, request: Request, who: Address, answer: _Answer) -> int:
        if not answer.count:
            self.stats.oversized += 1
            return 0
        field = self._fields.get(request.session)
        if field is None:
            if len(self._fields) >= 64:
                self._fields.clear()
            field = self._fields[request.session] = request.session.encode("ascii").ljust(
                SESSION_LENGTH
            )
        packet = (
            HEADER.pack(field, request.sequence, answer.count)
            + answer.blocks[answer.start : answer.end]
        )
        assert self._sock is not None
        try:
            self._sock.sendto(packet, who)
        except OSError:  # BlockingIOError: the buffer is full; the client asks again
            self.stats.dropped += 1
            return 0
        self.stats.answered += 1
        self.stats.messages += answer.count
        return answer.count

    # ------------------------------------------------------------------ closed sessions

    def _next_pending(self) -> tuple[Address, _Pending]:
        """The next request, taking requesters in turn."""
        who, queue = next(iter(self._pending.items()))
        pending = queue.popleft()
        self._pending_count -= 1
        if queue:
            self._pending.move_to_end(who)
        else:
            del self._pending[who]
        return who, pending

    async def _work(self) -> None:
        """Answer the requests for closed sessions, one at a time, requesters in turn."""
        assert self._loop is not None
        while True:
            if not self._pending:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.closed_idle / 2)
                self._expire()
                continue
            who, pending = self._next_pending()
            request = pending.request
            sent = 0
            reads = self._read_cost
            try:
                sent = await self._answer_closed(request, who)
            except (StoreError, OSError) as exc:
                self.stats.failed += 1
                self._warn_failed(self._loop.time(), request.session, exc)
            finally:
                self.buckets.settle(who, pending.reserved, self._cost(sent, reads))

    async def _answer_closed(self, request: Request, who: Address) -> int:
        """Answer from the windows, reading the closed session's log on a thread if
        need be. Returns the number of messages sent."""
        session, seq = request.session, request.sequence
        closed = await self._closed_log(session)
        if closed is None:
            self.stats.unknown_session += 1
            return 0
        tail = closed.log.next_seq
        if seq >= tail:
            self.stats.out_of_range += 1
            return 0
        window = self._find(session, seq) or await self._prefetched(session, seq)
        if window is None:
            window = await self._read_later(closed.log, session, seq, tail)
        answer, short = self._fill(window, seq, request.count)
        if short and window.next_seq < tail:
            window = await self._read_later(closed.log, session, seq, tail, ahead=True)
            answer, short = self._fill(window, seq, request.count)
        sent = self._send(request, who, answer)
        self._prefetch(closed.log, window, seq + answer.count, tail)
        return sent

    def _prefetch(self, session_log: ReadableLog, window: _Window, upto: int, tail: int) -> None:
        """A client reading on in order past the middle of a window will want the next:
        read it now, on the thread, so that its requests do not wait for the read (the
        requester that caused it pays for it now)."""
        start = window.next_seq
        key = (window.session, start)
        if (
            start >= tail
            or upto - window.first < (start - window.first) // 2
            or key in self._prefetching
            or self._find(window.session, start) is not None
        ):
            return
        size = self.config.window_bytes * max(1, self.config.read_ahead)
        self._read_cost += self._read_charge(window, size)
        reading = asyncio.ensure_future(
            self._read_later(session_log, window.session, start, tail, ahead=True, charged=True)
        )
        self._prefetching[key] = reading

        def done(future: asyncio.Future[_Window]) -> None:
            self._prefetching.pop(key, None)
            if not future.cancelled() and future.exception() is not None:
                log.debug("MoldUDP64: reading ahead failed: %s", future.exception())

        reading.add_done_callback(done)

    async def _prefetched(self, session: str, seq: int) -> _Window | None:
        """The window being read ahead from ``seq``, once read; None if there is none."""
        reading = self._prefetching.get((session, seq))
        if reading is None:
            return None
        try:
            window = await asyncio.shield(reading)
        except Exception:  # said by _prefetch; read again the usual way
            return None
        return window if window.first <= seq < window.next_seq else None

    async def _read_later(
        self,
        session_log: ReadableLog,
        session: str,
        seq: int,
        tail: int,
        ahead: bool = False,
        charged: bool = False,
    ) -> _Window:
        assert self._loop is not None
        size = self._window_bytes(session, seq, ahead)
        window = await self._loop.run_in_executor(
            self._executor, _read_window, session_log, session, seq, tail, size
        )
        if not charged:
            self._read_cost += self._read_charge(window, size)
        self._keep(window)
        return window

    async def _closed_log(self, session: str) -> _Closed | None:
        """The open log of closed session ``session``, or None if it cannot be served."""
        assert self._loop is not None
        now = self._loop.time()
        closed = self._closed_logs.get(session)
        if closed is None:
            if self._known_unknown(session, now):
                return None
            try:
                opened = await self._loop.run_in_executor(
                    self._executor, self.engine.catalogue.open_closed, session
                )
            except SessionNotFound:
                self._forget_later(session, now)
                return None
            except StoreError as exc:  # damaged: said once in a while, asked again later
                self._forget_later(session, now)
                self._warn_failed(now, session, exc)
                return None
            closed = self._closed_logs[session] = _Closed(opened, now)
            while len(self._closed_logs) > self.config.max_open_closed:
                oldest = min(self._closed_logs, key=lambda s: self._closed_logs[s].used)
                self._closed_logs.pop(oldest).log.close()
        closed.used = self._loop.time()
        return closed

    def _forget_later(self, session: str, now: float) -> None:
        if len(self._unknown) >= 1024:
            self._unknown.clear()
        self._unknown[session] = now + DEFAULT_UNKNOWN_SESSION_MEMORY

    def _expire(self) -> None:
        """Close the closed sessions nobody asked for lately (archiving or deleting them
        then frees their space) and forget their windows."""
        assert self._loop is not None
        now = self._loop.time()
        for session, closed in list(self._closed_logs.items()):
            if now - closed.used >= self.config.closed_idle:
                del self._closed_logs[session]
                closed.log.close()
                for key in [k for k in self._windows if k[0] == session]:
                    del self._windows[key]


__all__ = [
    "MoldPublisher",
    "MoldRequestServer",
    "PublisherConfig",
    "PublisherStats",
    "RequestServerConfig",
    "RequestStats",
    "TokenBuckets",
    "default_interface",
    "parse_group",
]
