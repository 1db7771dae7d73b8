"""The MoldUDP64 re-request server: the design's Rerequest for MoldUDP64 receivers.

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

The windows are :mod:`.windows`, the budget :mod:`.budget`, the settings and counters
:mod:`.settings`. Framing is :mod:`tickertape.wire.moldudp64`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from tickertape.errors import RemoteProtocolError, SessionNotFound, StoreError
from tickertape.server.metrics import metrics_of
from tickertape.server.moldudp64.budget import Address, TokenBuckets, read_charge
from tickertape.server.moldudp64.settings import (
    DEFAULT_UNKNOWN_SESSION_MEMORY,
    RequestServerConfig,
    RequestStats,
)
from tickertape.server.moldudp64.throttled import ThrottledWarning
from tickertape.server.moldudp64.windows import Answer, Window, Windows, read_window
from tickertape.server.provider import SessionProvider
from tickertape.store.log import ReadableLog
from tickertape.store.sessionid import SessionId
from tickertape.wire.moldudp64 import BLOCK_HEADER, HEADER, SESSION_LENGTH, Request

log = logging.getLogger(__name__)

_READS_PER_WAKEUP: Final = 256


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
        self._windows = Windows(
            self.config.max_datagram,
            self.config.window_bytes,
            self.config.read_ahead,
            self.config.max_windows,
        )
        self._read_cost = 0
        self._closed_logs: dict[str, _Closed] = {}
        self._unknown: dict[str, float] = {}
        self._pending: OrderedDict[Address, deque[_Pending]] = OrderedDict()
        self._pending_count = 0
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tickertape-mold-reader")
        self._prefetching: dict[tuple[str, int], asyncio.Future[Window]] = {}
        self._fields: dict[str, bytes] = {}  # session: its 10-byte header field
        self._warn_failed = ThrottledWarning(
            log, "MoldUDP64: a re-request for session %s failed: %s"
        )

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
        window = self._windows.find(request.session, seq)
        if window is None:
            return False
        answer, short = self._windows.fill(window, seq, request.count)
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

    def _read_charge(self, window: Window, size: int) -> int:
        """What a read of ``size`` bytes costs the requester (see :func:`.read_charge`)."""
        return read_charge(window.offsets, size, self.config.max_datagram, self.config.window_bytes)

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

    def _read_now(
        self, session_log: ReadableLog, session: str, seq: int, tail: int, ahead: bool = False
    ) -> Window:
        size = self._windows.size_to_read(session, seq, ahead)
        window = read_window(session_log, session, seq, tail, size)
        self._read_cost += self._read_charge(window, size)
        self._windows.keep(window)
        return window

    def _answer_active(self, request: Request, who: Address, tail: int) -> int:
        """Answer from the windows, reading the active log on the loop if need be (its
        recent part is in the page cache). Returns the number of messages sent."""
        session, seq = request.session, request.sequence
        session_log = self.engine.session_log
        window = self._windows.find(session, seq) or self._read_now(session_log, session, seq, tail)
        answer, short = self._windows.fill(window, seq, request.count)
        if short and window.next_seq < tail:
            # The packet has room for more than this window holds: read on from seq.
            window = self._read_now(session_log, session, seq, tail, ahead=True)
            answer, short = self._windows.fill(window, seq, request.count)
        return self._send(request, who, answer)

    def _send(self, request: Request, who: Address, answer: Answer) -> int:
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
        window = self._windows.find(session, seq) or await self._prefetched(session, seq)
        if window is None:
            window = await self._read_later(closed.log, session, seq, tail)
        answer, short = self._windows.fill(window, seq, request.count)
        if short and window.next_seq < tail:
            window = await self._read_later(closed.log, session, seq, tail, ahead=True)
            answer, short = self._windows.fill(window, seq, request.count)
        sent = self._send(request, who, answer)
        self._prefetch(closed.log, window, seq + answer.count, tail)
        return sent

    def _prefetch(self, session_log: ReadableLog, window: Window, upto: int, tail: int) -> None:
        """A client reading on in order past the middle of a window will want the next:
        read it now, on the thread, so that its requests do not wait for the read (the
        requester that caused it pays for it now)."""
        start = window.next_seq
        key = (window.session, start)
        if (
            start >= tail
            or upto - window.first < (start - window.first) // 2
            or key in self._prefetching
            or self._windows.find(window.session, start) is not None
        ):
            return
        size = self.config.window_bytes * max(1, self.config.read_ahead)
        self._read_cost += self._read_charge(window, size)
        reading = asyncio.ensure_future(
            self._read_later(session_log, window.session, start, tail, ahead=True, charged=True)
        )
        self._prefetching[key] = reading

        def done(future: asyncio.Future[Window]) -> None:
            self._prefetching.pop(key, None)
            if not future.cancelled() and future.exception() is not None:
                log.debug("MoldUDP64: reading ahead failed: %s", future.exception())

        reading.add_done_callback(done)

    async def _prefetched(self, session: str, seq: int) -> Window | None:
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
    ) -> Window:
        assert self._loop is not None
        size = self._windows.size_to_read(session, seq, ahead)
        window = await self._loop.run_in_executor(
            self._executor, read_window, session_log, session, seq, tail, size
        )
        if not charged:
            self._read_cost += self._read_charge(window, size)
        self._windows.keep(window)
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
                self._windows.forget(session)


__all__ = ["MoldRequestServer"]
