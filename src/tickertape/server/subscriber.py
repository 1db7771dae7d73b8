"""A subscriber: a cursor over a session's log, bound to one connection.

Its whole state is :attr:`Subscriber.next_seq`, the number of the next message it will be
sent. Behind the tail it copies byte ranges of the log straight to its socket with
``sendfile`` (over TLS, where the bytes must be encrypted in the process, it reads them
in ranges of the same size and writes them); at the tail it is *live* and the engine
hands it each published batch, encoded once for all. When its write buffer passes the
high-water mark it leaves the live set; when the buffer drains it reads the log again
until it is back at the tail. It never holds more than its write buffer and one batch in
memory, and it never slows the others.

It writes through the connection's :class:`~tickertape.server.output.Output`, which
orders what goes out: its ``sendfile`` (its own loop of ``os.sendfile`` calls, not
``loop.sendfile``, which stops reading from the client for as long as it runs: the
client's packets are read and acted on during a catch-up as at any other time), the
control packets of the session logic, and the close. :meth:`Subscriber.halt` stops a
catch-up at the end of the packet being sent, so that what the connection writes next
(a Debug packet saying why it closes) starts on a packet boundary.

A closed session that cannot be served whole (its log or archive is damaged) is served
up to the damage, and then the connection is told why it stops instead of being told
that the session ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from tickertape.errors import CorruptLogError
from tickertape.server.metrics import SentCounts
from tickertape.server.output import Output, SendfileNotAvailable
from tickertape.server.provider import SessionProvider
from tickertape.store.log import ReadableLog
from tickertape.wire.framing import packet_offsets

log = logging.getLogger(__name__)

DEFAULT_CATCH_UP_CHUNK: Final = 1 << 20
"""Bytes of the log sent per step while catching up (the step ends on a batch boundary);
over TLS, read from the log and written per step."""


class Subscriber:
    """A cursor over one session's log, writing to one connection's output."""

    def __init__(
        self,
        output: Output,
        session_log: ReadableLog,
        engine: SessionProvider | None,
        next_seq: int,
        *,
        on_sent: Callable[[float], None],
        on_caught_up: Callable[[Subscriber, int], None],
        on_end: Callable[[], None],
        on_damaged: Callable[[int, str], None],
        on_failed: Callable[[str], None],
        chunk: int = DEFAULT_CATCH_UP_CHUNK,
        sent: SentCounts | None = None,
    ) -> None:
        """``on_end()``: the whole session was sent; send End of Session.
        ``on_damaged(seq, why)``: the session was sent up to message ``seq`` (not
        included), and cannot be from there: say why, and close. ``on_failed(reason)``:
        the catch-up failed; say so, and close."""
        self.next_seq = next_seq
        self._sent = sent or SentCounts()  # what subscribers were sent, for the metrics
        self.first_seq = next_seq
        self._output = output
        self._log = session_log
        self._engine = engine
        self._on_sent = on_sent
        self._on_caught_up = on_caught_up
        self._on_end = on_end
        self._on_damaged = on_damaged
        self._on_failed = on_failed
        self._chunk = chunk
        self._live = False
        self._paused = False
        self._halting = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._caught_up_once = False
        self._task: asyncio.Task[None] | None = None
        self._sendfile = not output.tls
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
        if engine is not None and engine.stream.is_active(self._log):
            return engine.next_seq
        return self._log.next_seq

    def start(self) -> None:
        """Begin: read the log up to the tail, then go live (or, for a closed session,
        send End of Session)."""
        if self._halting:
            return
        self._task = asyncio.create_task(self._catch_up(), name=f"catch-up-{id(self):x}")

    def stop(self) -> None:
        """The connection is gone: leave the live set and stop reading the log."""
        self._halting = True
        if self._engine is not None:
            self._engine.stream.leave(self)
        self._live = False
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def halt(self) -> asyncio.Future[None] | None:
        """Send nothing more after the packet being sent: leave the live set and stop
        catching up. Returns a future done once that packet is sent (a ``sendfile`` is
        in flight), or None if nothing is being sent. Then the transport is free."""
        task = self._task
        if self._output.sending_file and task is not None and not task.done():
            self._halting = True
            if self._engine is not None:
                self._engine.stream.leave(self)
            self._live = False
            return task
        self.stop()
        return None

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
        self._output.batch(data)
        sent = self._sent
        sent.live_messages += end - nxt
        sent.live_bytes += len(data)
        self.next_seq = end
        self._on_sent(now)

    def abort(self) -> None:
        """Close the connection at once: something went wrong with this cursor."""
        self.stop()
        self._output.abort()

    def session_ended(self) -> None:
        """The active session ended; once caught up, this cursor sends End of Session."""
        self._engine = None
        if self._live:
            self._live = False
            self._ended()

    def _ended(self) -> None:
        """Every message of the closed session was sent: End of Session, unless the
        session's log cannot be served whole."""
        damage = self._log.damage
        if damage is None:
            self._on_end()
        else:
            self._on_damaged(self.next_seq, damage)

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
            self._engine.stream.leave(self)
        self._live = False

    def _resume(self) -> None:
        if not self._live and not self._halting and (self._task is None or self._task.done()):
            self.start()

    # ------------------------------------------------------------------ catching up

    async def _catch_up(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replayed = 0
        narrow = False  # an archive's range failed its check: find the damage chunk by chunk
        while not self._output.is_closing() and not self._halting:
            engine = self._engine
            if engine is not None and not engine.stream.is_active(self._log):
                engine = self._engine = None  # the session ended while catching up
            tail = engine.next_seq if engine is not None else self._log.next_seq
            if self.next_seq >= tail:
                if engine is None:
                    self._ended()
                    return
                if self._paused:
                    return  # resume_writing starts a new catch-up
                engine.stream.go_live(self)
                self._live = True
                if not self._caught_up_once:
                    self._caught_up_once = True
                    self._on_caught_up(self, replayed)
                    if replayed:
                        log.debug("replayed %d messages in %.3f s", replayed, loop.time() - started)
                return
            chunk = 1 if narrow else self._chunk
            try:
                if self._log.sendfile_source() is None:
                    # An archive: finding the range decompresses a chunk; not on the loop.
                    start, end_seq, end_offset = await loop.run_in_executor(
                        None, self._log.span, self.next_seq, chunk, tail
                    )
                else:
                    start, end_seq, end_offset = self._log.span(self.next_seq, chunk, tail)
                if not await self._send_range(start, end_offset - start):
                    return  # halted in the middle of the range
            except CorruptLogError as exc:
                # An archived chunk that fails its check is never served. The range may
                # span several chunks: the ones before the damage are served first.
                if not narrow:
                    narrow = True
                    continue
                log.warning("session %s: %s", getattr(self._log, "directory", "?"), exc)
                self._on_damaged(self.next_seq, "its archive fails its checks there")
                return
            except ConnectionError as exc:
                if not self._output.is_closing():
                    log.info("catch-up stopped: %s", exc)
                    self._output.abort()
                return
            except Exception as exc:
                log.exception("catch-up from sequence %d failed: closing", self.next_seq)
                self._on_failed(f"the server failed to read the session: {exc}")
                return
            narrow = False
            replayed += end_seq - self.next_seq
            self._sent.catch_up_messages += end_seq - self.next_seq
            self._sent.catch_up_bytes += end_offset - start
            self.next_seq = end_seq
            self._on_sent(loop.time())
            await asyncio.sleep(0)  # a client faster than the disk: let its packets be read

    async def _send_range(self, offset: int, count: int) -> bool:
        """Send ``count`` bytes of the log from ``offset``: with ``sendfile`` where the
        log is a plain file and the transport allows it; else (TLS, an archive) read them
        (off the event loop: an archived log decompresses) and write them, then wait
        while the write buffer is above its high-water mark: the next range is read
        while the bytes of this one, still buffered, are sent (in slices of
        :data:`~tickertape.server.output.WRITE_SLICE` bytes). Returns False if
        :meth:`halt` stopped it before the end of the range (after a whole packet)."""
        source = self._log.sendfile_source() if self._sendfile else None
        if source is not None:
            try:
                return await self._output.send_file(source.fileno(), offset, count)
            except SendfileNotAvailable:
                self._sendfile = False  # a file system or socket without sendfile
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, self._log.read_range, offset, count)
        if len(data) != count:
            raise ConnectionError(f"read {len(data)} of {count} bytes of the log")
        if not self._output.is_closing():
            self._output.write_range(data)
            await self._writable.wait()
        return True
