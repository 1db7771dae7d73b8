"""The MoldUDP64 publisher's sending thread: packs batches into datagrams and sends them.

:class:`MoldSender` takes what :class:`~.publisher.MoldPublisher` queues (a batch as the
engine hands it, SoupBinTCP-framed; a ready packet, such as a heartbeat; or a call to
make once what is before it was sent) and works through it on a thread of its own, so
that sending never holds up the event loop. Its socket (:func:`publisher_socket`) waits,
at most ``send_timeout``, for room in its buffer: that paces it to the network. It does
not decide what to send or when (the publisher does), and packs with
:func:`tickertape.wire.moldudp64.pack`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from tickertape.server.moldudp64.settings import (
    DEFAULT_CLOSE_GRACE,
    PublisherConfig,
    PublisherStats,
)
from tickertape.server.moldudp64.throttled import ThrottledWarning
from tickertape.wire.framing import packet_offsets
from tickertape.wire.moldudp64 import BLOCK_HEADER, HEADER, SOUPBINTCP_SEQUENCED_HEADER, pack

log = logging.getLogger(__name__)

_Job = tuple[str, bytes, int, int] | bytes | Callable[[], None]
"""A batch to send ``(session, data, first_seq, count)``, one ready packet, or a call
to make once everything before it was sent."""


class MoldSender:
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
        self._warn_oversized = ThrottledWarning(
            log,
            "MoldUDP64: skipped message %d of session %s (%d bytes; a packet holds at most "
            "%d): receivers get it by SoupBinTCP",
        )
        self._warn_send = ThrottledWarning(log, "MoldUDP64: a datagram to %s was not sent: %s")
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
            payload = data[offsets[number] + SOUPBINTCP_SEQUENCED_HEADER : offsets[number + 1]]
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


def publisher_socket(config: PublisherConfig) -> socket.socket:
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


__all__ = ["MoldSender", "publisher_socket"]
