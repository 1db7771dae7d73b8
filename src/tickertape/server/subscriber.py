"""A subscriber: a cursor over a session's log, bound to one connection.

Its whole state is :attr:`Subscriber.next_seq`, the number of the next message it will be
sent. Behind the tail it copies byte ranges of the log straight to its socket with
``sendfile`` (over TLS, where the bytes must be encrypted in the process, it reads them
in ranges of the same size and writes them); at the tail it is *live* and the engine
hands it each published batch, encoded once for all. When its write buffer passes the
high-water mark it leaves the live set; when the buffer drains it reads the log again
until it is back at the tail. It never holds more than its write buffer and one batch in
memory, and it never slows the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from tickertape.server.session_source import SessionSource
from tickertape.store.log import ReadableLog, packet_offsets

log = logging.getLogger(__name__)

DEFAULT_CATCH_UP_CHUNK: Final = 1 << 20
"""Bytes sent per ``sendfile`` call while catching up. asyncio stops reading from the
client during a call; between calls the connection reads its client's packets. Over TLS,
bytes read from the log and written per step."""

WRITE_SLICE: Final = 256 << 10
"""A range read from the log (over TLS, or from an archive) is written in slices of this
size: each is encrypted and sent while it is in the CPU's caches, and a partial send
leaves less to copy into the transport's buffer. Measured over TLS against whole 1 MiB
writes: about half the server's CPU time per byte."""


class Subscriber:
    """A cursor over one session's log, writing to one transport."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        session_log: ReadableLog,
        engine: SessionSource | None,
        next_seq: int,
        *,
        on_sent: Callable[[float], None],
        on_caught_up: Callable[[Subscriber, int], None],
        on_end: Callable[[], None],
        chunk: int = DEFAULT_CATCH_UP_CHUNK,
    ) -> None:
        self.next_seq = next_seq
        self.first_seq = next_seq
        self._transport = transport
        self._log = session_log
        self._engine = engine
        self._on_sent = on_sent
        self._on_caught_up = on_caught_up
        self._on_end = on_end
        self._chunk = chunk
        self._live = False
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._caught_up_once = False
        self._task: asyncio.Task[None] | None = None
        self.sending_file = False
        """True while a ``sendfile`` is in flight: nothing else may be written then."""
        self._sendfile = transport.get_extra_info("ssl_object") is None
        """False over TLS, where the bytes are encrypted in the process, or once
        ``sendfile`` was found not to work: then the log is read and written."""

    @property
    def live(self) -> bool:
        return self._live

    @property
    def state(self) -> str:
        """For the status view: live, blocked (its write buffer is full), closed session
        (reading a session that ended) or catching up."""
        if self._live:
            return "live"
        if self._paused:
            return "blocked"
        return "closed session" if self._engine is None else "catching up"

    @property
    def log(self) -> ReadableLog:
        """The log of the session it reads."""
        return self._log

    def tail(self) -> int:
        """One past the last message of its session that exists now."""
        engine = self._engine
        if engine is not None and engine.is_active(self._log):
            return engine.next_seq
        return self._log.next_seq

    def start(self) -> None:
        """Begin: read the log up to the tail, then go live (or, for a closed session,
        send End of Session)."""
        self._task = asyncio.create_task(self._catch_up(), name=f"catch-up-{id(self):x}")

    def stop(self) -> None:
        """The connection is gone: leave the live set and stop reading the log."""
        if self._engine is not None:
            self._engine.leave(self)
        self._live = False
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # ------------------------------------------------------------------ live

    def deliver(self, data: bytes, first_seq: int, count: int, now: float) -> None:
        """A batch was published; write what this cursor has not yet been sent."""
        nxt = self.next_seq
        end = first_seq + count
        if nxt != first_seq:
            if nxt >= end:
                return  # it asked for a number that does not exist yet
            if nxt < first_seq:  # pragma: no cover - the hand-off makes this impossible
                log.error(
                    "subscriber at %d was handed batch %d: re-reading the log", nxt, first_seq
                )
                self._leave_live()
                self._resume()
                return
            data = data[packet_offsets(data)[nxt - first_seq] :]
        self._transport.write(data)
        self.next_seq = end
        self._on_sent(now)

    def abort(self) -> None:
        """Close the connection at once: something went wrong with this cursor."""
        self.stop()
        self._transport.abort()

    def session_ended(self) -> None:
        """The active session ended; once caught up, this cursor sends End of Session."""
        self._engine = None
        if self._live:
            self._live = False
            self._on_end()

    # ------------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        """The write buffer passed its high-water mark: stop taking live batches."""
        self._paused = True
        self._writable.clear()
        self._leave_live()

    def resume_writing(self) -> None:
        """The write buffer drained: read the log up to the tail, then go live again."""
        self._paused = False
        self._writable.set()
        self._resume()

    def _leave_live(self) -> None:
        if self._live and self._engine is not None:
            self._engine.leave(self)
        self._live = False

    def _resume(self) -> None:
        if not self._live and (self._task is None or self._task.done()):
            self.start()

    # ------------------------------------------------------------------ catching up

    async def _catch_up(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replayed = 0
        while not self._transport.is_closing():
            engine = self._engine
            if engine is not None and not engine.is_active(self._log):
                engine = self._engine = None  # the session ended while catching up
            tail = engine.next_seq if engine is not None else self._log.next_seq
            if self.next_seq >= tail:
                if engine is None:
                    self._on_end()
                    return
                if self._paused:
                    return  # resume_writing starts a new catch-up
                engine.go_live(self)
                self._live = True
                if not self._caught_up_once:
                    self._caught_up_once = True
                    self._on_caught_up(self, replayed)
                    if replayed:
                        log.debug("replayed %d messages in %.3f s", replayed, loop.time() - started)
                return
            try:
                if self._log.sendfile_source() is None:
                    # An archive: finding the range decompresses a chunk; not on the loop.
                    start, end_seq, end_offset = await loop.run_in_executor(
                        None, self._log.span, self.next_seq, self._chunk, tail
                    )
                else:
                    start, end_seq, end_offset = self._log.span(self.next_seq, self._chunk, tail)
                await self._send_range(start, end_offset - start)
            except ConnectionError as exc:
                if not self._transport.is_closing():
                    log.info("catch-up stopped: %s", exc)
                    self._transport.abort()
                return
            except Exception:
                log.exception("catch-up from sequence %d failed: closing", self.next_seq)
                self._transport.abort()
                return
            replayed += end_seq - self.next_seq
            self.next_seq = end_seq
            self._on_sent(loop.time())

    async def _send_range(self, offset: int, count: int) -> None:
        """Send ``count`` bytes of the log from ``offset``: with ``sendfile`` where the
        log is a plain file and the transport allows it; else (TLS, an archive) read them
        (off the event loop: an archived log decompresses) and write them, then wait
        while the write buffer is above its high-water mark: the next range is read
        while the bytes of this one, still buffered, are sent. Written in slices of
        :data:`WRITE_SLICE` bytes."""
        loop = asyncio.get_running_loop()
        source = self._log.sendfile_source() if self._sendfile else None
        if source is not None:
            self.sending_file = True
            try:
                await loop.sendfile(self._transport, source, offset, count, fallback=False)
                return
            except (asyncio.SendfileNotAvailableError, NotImplementedError):
                self._sendfile = False  # a file system or transport without sendfile
            finally:
                self.sending_file = False
        data = await loop.run_in_executor(None, self._log.read_range, offset, count)
        if len(data) != count:
            raise ConnectionError(f"read {len(data)} of {count} bytes of the log")
        if not self._transport.is_closing():
            view = memoryview(data)
            for start in range(0, count, WRITE_SLICE):
                self._transport.write(view[start : start + WRITE_SLICE])
            await self._writable.wait()
