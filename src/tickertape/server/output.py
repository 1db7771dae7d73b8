"""What goes out on one SoupBinTCP connection, and in which order.

:class:`Output` is the only writer of a connection's transport. Three things are sent:
control packets queued by the session logic (:class:`~tickertape.protocol.server.ServerConnection`:
Login Accepted, heartbeats, Debug, End of Session, Login Rejected), live batches handed
to the subscriber by the engine, and ranges of the log a subscriber catches up with
(``sendfile``, or read and written over TLS). It orders them:

- a control packet goes out at once unless a ``sendfile`` is in flight (it would land in
  the middle of a packet) or the connection is closing; it is sent once the range is;
- a ``sendfile`` starts only once what was written before it has left the transport;
- a close (:meth:`Output.close_in_turn`) first stops the subscriber at the end of the
  packet it is sending, then writes what the session logic queued (End of Session, the
  Debug saying why, Login Rejected), then shuts the sending side (FIN) and reads and
  discards the client's input until it closes: End of Session can never overtake data.

A client that does not take what is queued, or does not close its side, within
:data:`CLOSE_GRACE` seconds is cut off. It holds no protocol rules (which packet, when):
those are the session logic's; and no timers but the close's grace.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import termios
from collections.abc import Callable
from typing import Final, Protocol

log = logging.getLogger("tickertape.server.soupbintcp")

__all__ = ["CLOSE_GRACE", "Feed", "Output", "SendfileNotAvailable"]

CLOSE_GRACE: Final = 5.0
"""Seconds a closing connection has to take what is queued for it (a Debug packet
saying why, End of Session) and close its side before it is cut off. The server's own
shutdown waits as long, at most, for its connections to close."""

_NO_SENDFILE: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
"""What ``os.sendfile`` fails with where a file system or socket does not support it."""

WRITE_SLICE: Final = 256 << 10
"""A range read from the log (over TLS, or from an archive) is written in slices of this
size: each is encrypted and sent while it is in the CPU's caches, and a partial send
leaves less to copy into the transport's buffer. Measured over TLS against whole 1 MiB
writes: about half the server's CPU time per byte."""


class Feed(Protocol):
    """What sends a session on the connection (a subscriber), as a close sees it."""

    def halt(self) -> asyncio.Future[None] | None:
        """Send nothing after the packet being sent; a future done once it is sent,
        or None if nothing is being sent."""
        ...

    def stop(self) -> None:
        """Stop at once: the connection is gone."""
        ...


class SendfileNotAvailable(Exception):
    """``sendfile`` does not work here: read the log and write it."""


class Output:
    """The one writer of a connection's transport (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, peer: str) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._peer = peer
        self._pending: Callable[[], bytes] = bytes
        self.batch: Callable[[bytes], None] = transport.write
        """Write a live batch, encoded once for every subscriber: one write, no more
        (the fan-out's hot path; the engine hands no batch to a subscriber that is
        catching up or halted, so nothing can be in flight then)."""
        self.feed: Feed | None = None
        """The subscriber sending the session, once there is one."""
        self.announce_cut = False
        """Log a cut-off client (not for a connection refused at once)."""
        self.closing = False
        """The server closes the connection: nothing more is read or flushed."""
        self.eof_written = False
        """write_eof was called: the FIN follows what is queued."""
        self.sending_file = False
        """True while a ``sendfile`` is in flight: nothing else may be written then."""
        self._file_bytes_sent = 0  # whether a sendfile moves
        self._moved: tuple[int, float] | None = None  # (bytes sent, when) by the last look
        self._grace: asyncio.TimerHandle | None = None
        self._lost = False

    def take_control_from(self, pending: Callable[[], bytes]) -> None:
        """Where control packets come from: the session logic's bytes to send."""
        self._pending = pending

    @property
    def tls(self) -> bool:
        return self._transport.get_extra_info("ssl_object") is not None

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def abort(self) -> None:
        self._transport.abort()

    # ------------------------------------------------------------------ sending

    def flush(self) -> None:
        """Write the control packets queued, unless a ``sendfile`` is in flight (they go
        out after it) or the connection is closing (they go out once the subscriber has
        stopped)."""
        if self.closing or self.sending_file:
            return
        data = self._pending()
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def write_range(self, data: bytes) -> None:
        """A range of the log read (over TLS, or from an archive), in slices of
        :data:`WRITE_SLICE` bytes."""
        if self._transport.is_closing():
            return
        view = memoryview(data)
        for start in range(0, len(data), WRITE_SLICE):
            self._transport.write(view[start : start + WRITE_SLICE])

    async def send_file(self, file_fd: int, offset: int, count: int) -> bool:
        """``os.sendfile`` ``count`` bytes of ``file_fd`` from ``offset`` to the socket
        (a duplicate of its descriptor, so that the event loop can wait for it to take
        more without touching the transport, which goes on reading from the client),
        after what was written before. Returns False if a close stopped it before the
        end of the range (after a whole packet); then control packets queued meanwhile
        are written. Raises :class:`SendfileNotAvailable` if ``sendfile`` does not work
        here, ``ConnectionError`` if the connection fails."""
        transport = self._transport
        if transport.is_closing():
            raise ConnectionError("the connection was closed during a catch-up")
        sock = transport.get_extra_info("socket")
        if sock is None:
            raise SendfileNotAvailable
        socket_fd = os.dup(sock.fileno())
        try:
            return await self._send_file(socket_fd, file_fd, offset, count)
        finally:
            os.close(socket_fd)  # held, it would keep the socket open past a close

    async def _send_file(self, socket_fd: int, file_fd: int, offset: int, count: int) -> bool:
        transport = self._transport
        while transport.get_write_buffer_size():  # what was written before goes first
            if transport.is_closing():
                return True
            await self._socket_writable(socket_fd)
        start = offset
        stop = offset + count
        halted = False
        self.sending_file = True
        try:
            while offset < stop:
                if transport.is_closing():
                    raise ConnectionError("the connection was closed during a catch-up")
                if self.closing and not halted:
                    halted = True  # finish the packet under way, then stop
                    stop = _packet_end(file_fd, start, offset, stop)
                    if offset >= stop:
                        break
                try:
                    sent = os.sendfile(socket_fd, file_fd, offset, stop - offset)
                except BlockingIOError:
                    await self._socket_writable(socket_fd)
                    continue
                except OSError as exc:
                    if exc.errno in _NO_SENDFILE and offset == start:
                        raise SendfileNotAvailable from exc
                    raise ConnectionError(f"sendfile failed: {exc}") from exc
                if sent == 0:
                    raise ConnectionError(
                        f"the log ends at {offset}, before the end of the range ({stop})"
                    )
                offset += sent
                self._file_bytes_sent += sent
        finally:
            self.sending_file = False
        if halted:
            return False
        self.flush()
        return not self.closing

    def stalled(self, now: float, timeout: float) -> bool:
        """Whether the ``sendfile`` in flight has not moved for ``timeout`` seconds (by
        looks at it at times ``now``): a client that stopped reading."""
        if not self.sending_file:
            self._moved = None
            return False
        if self._moved is None or self._moved[0] != self._file_bytes_sent:
            self._moved = (self._file_bytes_sent, now)
            return False
        return now - self._moved[1] >= timeout

    async def _socket_writable(self, socket_fd: int) -> None:
        """Wait until the socket takes more bytes (or the connection is closed)."""
        ready = self._loop.create_future()

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(socket_fd, writable)
        try:
            await ready
        finally:
            self._loop.remove_writer(socket_fd)

    # ------------------------------------------------------------------ closing

    def close_in_turn(self, stopped: Callable[[], None]) -> None:
        """Close from this side, throwing nothing away: stop the feed at the end of the
        packet being sent, call ``stopped()``, write what the session logic queued, then
        close in order (:meth:`close_in_order`)."""
        if self.closing:
            return
        self.closing = True
        feed = self.feed
        if self._transport.is_closing():
            if feed is not None:
                feed.stop()
            return
        self._grace = self._loop.call_later(CLOSE_GRACE, self._grace_over)
        stopping = feed.halt() if feed is not None else None
        if stopping is None:
            self._last_words(stopped)
        else:
            stopping.add_done_callback(lambda _: self._last_words(stopped))

    def _last_words(self, stopped: Callable[[], None]) -> None:
        stopped()
        transport = self._transport
        if transport.is_closing():
            return
        data = self._pending()
        if data:
            transport.write(data)
        self.close_in_order()

    def refuse(self, packet: bytes) -> None:
        """Say why (``packet``, a Debug) to a connection refused at once, and close."""
        self.closing = True
        self._transport.write(packet)
        self.close_in_order()

    def close_in_order(self) -> None:
        """Shut the sending side once what is queued is sent (the client reads it, then
        the end), and read (and discard) what the client still sends until it closes its
        side: a socket closed with input unread is reset by the kernel, and what it still
        had to send is lost. Over TLS, the TLS close (close_notify) does the same."""
        transport = self._transport
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
        self.eof_written = True
        if not transport.is_reading():
            transport.resume_reading()

    def close_if_delivered(self) -> None:
        """Close a closing connection at once if its client has received everything,
        the end of the stream included (the server is shutting down)."""
        transport = self._transport
        if (
            self.eof_written
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
        if self._lost:
            return
        stuck = transport.is_closing() or transport.get_write_buffer_size() > 0 or self.sending_file
        if not stuck:
            transport.close()
            return
        if self.announce_cut:
            log.warning(
                "%s read nothing more: connection cut", self._peer, extra={"client": self._peer}
            )
        if self.feed is not None:
            self.feed.stop()
        transport.abort()

    def drop(self) -> None:
        """Cut off a client that stopped reading: nothing more can reach it."""
        self.closing = True
        if self.feed is not None:
            self.feed.stop()
        self._transport.abort()

    def lost(self) -> None:
        """The connection is closed."""
        self._lost = True
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None


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


def _packet_end(file_fd: int, start: int, position: int, stop: int) -> int:
    """The first packet boundary at or after ``position`` in the log, walking the packets
    from ``start`` (a boundary) no further than ``stop``."""
    if position <= start:
        return start
    data = os.pread(file_fd, min(stop, position + 2) - start, start)
    at = 0
    end = position - start
    while at < end:
        if at + 2 > len(data):
            return stop  # not the packets the range was checked to hold: send it all
        at += 2 + ((data[at] << 8) | data[at + 1])
    return min(start + at, stop)
