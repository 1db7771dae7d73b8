"""The session writer: the queue of publish requests, group commit, and the failure hold.

Persist, then publish. Messages handed to :meth:`SessionWriter.publish_many` are queued;
the writer takes everything queued (group commit), encodes it once as SoupBinTCP
Sequenced Data packets, appends it to the active session's log and makes it durable on a
thread of its own (disk work never runs on the event loop), and only then hands the
encoded batch to the session's :class:`~tickertape.server.stream.SessionStream`, which
moves the tail and gives it to every live subscriber.

A write that fails (the disk is full, a file-size limit, an I/O error) leaves the log as
it was (:meth:`SessionLog.append` cuts it back) and pauses publishing: the publish calls
of the failed batch, and every call queued or waiting behind it, fail with
:class:`PublishFailed` saying why, and none of their messages gets a number. Subscribers
are not disturbed: they go on reading what is in the log. Publish calls made meanwhile
wait out a short delay (on the event loop's clock; it doubles while writes keep
failing), then the next batch tries again; the first one written resumes publishing.
:attr:`SessionWriter.publishing_error` says why publishing is paused, if it is.

With a :class:`~tickertape.server.replication.Replicator` (a cluster node), each batch
is replicated before it is written to the log, and nothing is taken while the
replicator refuses.

The writer does not choose the session it writes, nor end it: the
:class:`~tickertape.server.roller.SessionRoller` drains it (:meth:`SessionWriter.drain`),
moves the stream to the next session, and starts it again there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import Final

from tickertape.errors import LocalProtocolError, StoreError
from tickertape.server.batches import PublishRequest, WriterBatch, take_batch
from tickertape.server.metrics import Metrics
from tickertape.server.replication import Replicator
from tickertape.server.stream import SessionStream
from tickertape.store.log import Appended, Durability
from tickertape.text import plural
from tickertape.wire.soupbintcp import MAX_PAYLOAD

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_MESSAGES: Final = 16_384
DEFAULT_MAX_BATCH_BYTES: Final = 1 << 20
DEFAULT_MAX_QUEUED_MESSAGES: Final = 1 << 20
DEFAULT_MAX_QUEUED_BYTES: Final = 64 << 20
DEFAULT_PUBLISH_RETRY: Final = 1.0
"""Seconds after a failed write to the log before publishing is tried again..."""
DEFAULT_PUBLISH_RETRY_MAX: Final = 8.0
"""...doubling after each failure in a row, up to this."""


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """How the session writer batches and persists."""

    durability: Durability = Durability.BATCH
    max_batch_messages: int = DEFAULT_MAX_BATCH_MESSAGES
    """A batch holds at most this many messages (one log write, one sync)."""
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    """...and about this many bytes of payload: it bounds what a live subscriber may be
    handed beyond its write-buffer limit."""
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    """Publishers wait while this many messages are queued and not yet written..."""
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    """...or this many bytes of them."""
    max_message: int = MAX_PAYLOAD
    """Longer messages are refused when published (lowered to what a MoldUDP64 packet
    carries when the server multicasts)."""
    publish_retry: float = DEFAULT_PUBLISH_RETRY
    """After a write to the log fails, publish calls wait this long (on the event
    loop's clock), then the next batch tries again..."""
    publish_retry_max: float = DEFAULT_PUBLISH_RETRY_MAX
    """...doubling after each failure in a row, up to this."""


class PublishFailed(StoreError):
    """A publish call failed: a write to the log failed (the disk is full, say), and
    publishing is paused until a write succeeds. ``published``: how many of the call's
    messages were published before that (a call larger than a batch is written in
    several), numbered from ``first_seq``; none of its others were."""

    def __init__(self, message: str, published: int = 0, first_seq: int = 0) -> None:
        super().__init__(message)
        self.published = published
        self.first_seq = first_seq


class SessionWriter:
    """Writes what is published into the active session of ``stream``, in batches, on
    ``executor`` (one thread). Call :meth:`start` once the stream has a session."""

    def __init__(
        self, stream: SessionStream, config: WriterConfig, metrics: Metrics, executor: Executor
    ) -> None:
        self.stream = stream
        self.config = config
        self.metrics = metrics
        self._executor = executor
        self._queue: deque[PublishRequest] = deque()
        self._queued_messages = 0
        self._queued_bytes = 0
        self._queue_space = asyncio.Event()
        self._queue_space.set()
        self._wakeup = asyncio.Event()
        self._assigned_next = 1
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None  # the writer broke: publishing stopped
        # A failed write pauses publishing: publish calls wait until ``_hold`` fires,
        # then the next batch tries again; the first that is written resumes it.
        self._publishing_error: str | None = None
        self._hold: asyncio.TimerHandle | None = None
        self._failed_in_a_row = 0
        self._write_failures = 0  # ever: a call waiting for room when one happens is told
        self._last_reason: str | None = None
        self._retry_in = 0.0
        self._closing = False
        self._draining = False
        self.replicator: Replicator | None = None
        """Where each batch goes before the log (a cluster's journal), if anywhere."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Write into the stream's active session, numbering from where its log ends."""
        self._assigned_next = self.stream.session_log.next_seq
        self.resume()

    def resume(self) -> None:
        """Start writing again into the same session after :meth:`drain` (a roll that
        failed), unless publishing has stopped."""
        if self._task is None and self._failure is None:
            self._task = asyncio.create_task(self._write_loop(), name="session-writer")

    async def drain(self) -> None:
        """Write and publish everything queued, then stop writing; publishers are held
        back (:meth:`wait_for_room` waits) until :meth:`release`. For a roll."""
        self._draining = True
        await self._stop()

    def release(self) -> None:
        """Let publishers held back by :meth:`drain` go on (into the next session)."""
        self._draining = False
        self._queue_space.set()

    async def close(self) -> None:
        """Write and publish everything queued, then stop for good: publishers held
        back are told, later calls refused."""
        self._closing = True
        self._end_hold()  # held-back publishers wake and are told
        await self._stop()

    async def _stop(self) -> None:
        """Let the writer write everything queued, then return (``_closing`` or
        ``_draining`` is set, so it stops once the queue is empty)."""
        if self._task is not None:
            self._wakeup.set()
            await asyncio.shield(self._task)  # a cancelled caller must not cancel it
            self._task = None

    # ------------------------------------------------------------------ state

    @property
    def draining(self) -> bool:
        """Whether a roll holds publishers back (they publish into the next session)."""
        return self._draining

    @property
    def failure(self) -> BaseException | None:
        """What broke the writer, if it broke: publishing has then stopped for good."""
        return self._failure

    @property
    def next_assigned(self) -> int:
        """The number the next message handed to :meth:`publish_many` will get."""
        return self._assigned_next

    @property
    def publishing_error(self) -> str | None:
        """Why publishing is paused (the last write to the log failed: the next batch
        tries again) or has stopped; None while publishing works."""
        if self._failure is not None:
            return f"publishing has stopped: {self._failure}"
        return self._publishing_error

    # ------------------------------------------------------------------ publishing

    async def publish_many(self, payloads: Sequence[bytes]) -> int:
        """Publish messages in order; returns the first one's sequence number once all
        are durable (per the durability policy) and handed to live subscribers.

        The numbers are assigned once there is room in the queue. To know them before
        calling (to write them into the messages, say), ``await wait_for_room()``, then
        read :attr:`next_assigned` and call this without awaiting anything in between.

        Raises :class:`PublishFailed` if writing them to the log failed: publishing is
        then paused, and a later call tries again (see the module's documentation).
        """
        if not payloads:
            self.check_open()
            return self._assigned_next
        size = self._check_messages(payloads)
        await self.wait_for_room()
        return await self._enqueue(payloads, size)

    def enqueue_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        """Queue messages at once, in order, numbered from :attr:`next_assigned`; the
        future resolves as :meth:`publish_many` returns. Call it right after
        :meth:`wait_for_room`, with no ``await`` between: unlike :meth:`publish_many`,
        the next messages may then be queued before these are durable, in order."""
        if not payloads:
            raise ValueError("nothing to publish")
        size = self._check_messages(payloads)
        self.check_open()
        return self._enqueue(payloads, size)

    def _enqueue(self, payloads: Sequence[bytes], size: int) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(PublishRequest(payloads, size, self._assigned_next, future))
        self._queued_messages += len(payloads)
        self._queued_bytes += size
        self._assigned_next += len(payloads)
        self._wakeup.set()
        return future

    def _check_messages(self, payloads: Sequence[bytes]) -> int:
        """Raise if any of ``payloads`` cannot be published (not bytes, too long); their
        size in bytes."""
        if not all(map(isinstance, payloads, repeat(bytes))):
            raise TypeError("messages are published as bytes")
        longest = max(map(len, payloads))
        if longest > self.config.max_message:
            why = (
                f"SoupBinTCP carries at most {MAX_PAYLOAD} bytes a message"
                if self.config.max_message == MAX_PAYLOAD
                else f"this server is configured for at most {self.config.max_message} bytes "
                "a message (with --mold: what one MoldUDP64 packet carries)"
            )
            self.metrics.publish_failed("too_long")
            raise LocalProtocolError(f"a message of {longest} bytes cannot be published: {why}")
        return sum(map(len, payloads))

    async def wait_for_room(self) -> None:
        """Wait while the queue is full (``max_queued_messages`` or ``max_queued_bytes``),
        a roll is under way, or publishing is paused after a failed write and its retry
        is not due: publishers are held back, never dropped. Raises if publishing has
        stopped, or a write fails meanwhile (:class:`PublishFailed`)."""
        self.check_open()
        failures = self._write_failures
        while (
            self._draining
            or self._hold is not None
            or self._queued_messages >= self.config.max_queued_messages
            or self._queued_bytes >= self.config.max_queued_bytes
        ):
            self._queue_space.clear()
            await self._queue_space.wait()
            self.check_open()
            if self._write_failures != failures:
                # Behind the batch that failed: told with the calls it carried.
                self.metrics.publish_failed("write_failed")
                raise PublishFailed(self._paused_message())

    def check_open(self, *, here: bool = True) -> None:
        """Raise :class:`StoreError` if nothing more may be published: the writer broke,
        or is closing; or, unless ``here`` is false, the replicator refuses (another
        node publishes: its reason says where)."""
        if self._failure is not None or self._closing:
            self.metrics.publish_failed("stopped")
        if self._failure is not None:
            raise StoreError(f"publishing has stopped: {self._failure}")
        if self._closing:
            raise StoreError("the server is shutting down: nothing more is published")
        if here and self.replicator is not None and (why := self.replicator.refusal()):
            self.metrics.publish_failed("elsewhere")
            raise StoreError(why)

    def realign(self) -> None:
        """Number the next message after the stream's tail, which moved without this
        writer (a cluster's journal was applied); nothing may be queued."""
        assert not self._queue, "batches applied around a writer with messages queued"
        self._assigned_next = self.stream.next_seq

    def _take(self) -> WriterBatch:
        config = self.config
        always = config.durability is Durability.ALWAYS
        return take_batch(
            self._queue, config.max_batch_messages, config.max_batch_bytes, one_call=always
        )

    async def _write_loop(self) -> None:
        """Encode batch N+1 on the event loop while batch N is being written and synced
        on the writer's thread: the sync releases the GIL, so the two overlap."""
        loop = asyncio.get_running_loop()
        session_log = self.stream.session_log
        writing: asyncio.Future[Appended] | None = None
        written: WriterBatch | None = None
        batch: WriterBatch | None = None
        try:
            while True:
                batch = self._take() if self._queue else None
                if writing is not None and written is not None:
                    try:
                        appended = await writing
                    except Exception as exc:
                        self._write_failed([written, batch], exc)
                        batch = None
                    else:
                        self._published(written, appended)
                        if self._publishing_error is not None:
                            self._resumed(appended)
                    writing = written = None
                if batch is not None:
                    append = partial(
                        self.metrics.timed, session_log.append, batch.data, batch.count, batch.crc
                    )
                    if self.replicator is None:
                        writing = loop.run_in_executor(self._executor, append)
                    else:
                        writing = asyncio.ensure_future(self._replicated(batch, append))
                    written, batch = batch, None
                    continue
                if self._closing or self._draining:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
        except asyncio.CancelledError:
            self._fail([written, batch], StoreError("the session writer was cancelled"))
            raise
        except Exception as exc:
            self._fail([written, batch], exc)

    async def _replicated(self, batch: WriterBatch, append: partial[Appended]) -> Appended:
        """Replicate ``batch``, then ``append`` it to the log."""
        assert self.replicator is not None
        await self.replicator.batch(
            self.stream.session_id, batch.first_seq, batch.count, batch.data
        )
        try:
            appended = await asyncio.get_running_loop().run_in_executor(self._executor, append)
        except Exception as exc:
            self.replicator.not_written(exc)
            raise
        self.replicator.written()
        return appended

    def _published(self, batch: WriterBatch, appended: Appended) -> None:
        self._queued_messages -= batch.count
        self._queued_bytes -= len(batch.data) - 3 * batch.count
        self._queue_space.set()
        self.stream.fan_out(appended.first_seq, appended.count, batch.data)
        size = len(batch.data) - 3 * batch.count  # payloads, without the packets' headers
        self.metrics.batch_published(
            self.stream.session_id, batch.count, size, batch.parts[0][0].queued
        )
        for request, start, stop in batch.parts:
            request.done += stop - start
            if request.done == len(request.payloads) and not request.future.done():
                request.future.set_result(request.first_seq)

    def _write_failed(self, batches: list[WriterBatch | None], exc: Exception) -> None:
        """Appending a batch failed (the log is as it was before it: see
        :meth:`SessionLog.append`). Fail it, the batch taken after it and every call
        queued or waiting for room: none of their messages gets a number. Then pause
        publishing: calls wait out the retry delay, and the next batch tries again."""
        self._write_failures += 1
        self._failed_in_a_row += 1
        delay = min(
            self.config.publish_retry * 2 ** (self._failed_in_a_row - 1),
            self.config.publish_retry_max,
        )
        again = self._publishing_error is not None
        reason = str(exc) if isinstance(exc, StoreError) else f"writing to the log failed: {exc}"
        self._publishing_error = reason
        requests = dict.fromkeys(
            request for batch in batches if batch for request, _, _ in batch.parts
        )
        requests.update(dict.fromkeys(self._queue))
        lost = 0
        self._retry_in = delay
        message = self._paused_message()
        for request in requests:
            count = len(request.payloads)
            lost += count - request.done
            if request.future.done():
                continue
            if request.done:
                last = request.first_seq + request.done - 1
                error = PublishFailed(
                    f"the first {request.done} of these {count} messages were published "
                    f"(sequence {request.first_seq}..{last}), the rest not: {message}",
                    request.done,
                    request.first_seq,
                )
            else:
                error = PublishFailed(message)
            error.__cause__ = exc  # a StoreError, caused by the OSError
            request.future.set_exception(error)
            self.metrics.publish_failed("write_failed")
        self._queue.clear()
        self._queued_messages = self._queued_bytes = 0
        self._assigned_next = self.stream.next_seq
        if self._hold is not None:
            self._hold.cancel()
        if not self._closing:
            self._hold = asyncio.get_running_loop().call_later(delay, self._end_hold)
        self._queue_space.set()  # calls waiting for room are told
        log.log(
            logging.WARNING if again and reason == self._last_reason else logging.ERROR,
            "session %s: %s: %s; %s (%s) were not published and got no numbers (the next "
            "is still %d); the next publish tries again in %g s",
            self.stream.id,
            "publishing still paused" if again else "publishing paused",
            reason,
            plural(lost, "message"),
            plural(len(requests), "publish call"),
            self.stream.next_seq,
            delay,
        )
        self._last_reason = reason

    def _paused_message(self) -> str:
        return (
            f"{self._publishing_error}; publishing is paused, and the next publish tries "
            f"again in {self._retry_in:g} s"
        )

    def _end_hold(self) -> None:
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        self._queue_space.set()

    def _resumed(self, appended: Appended) -> None:
        log.warning(
            "session %s: publishing resumed at sequence %d, after %s (%s)",
            self.stream.id,
            appended.first_seq,
            plural(self._failed_in_a_row, "failed write"),
            self._publishing_error,
        )
        self._publishing_error = None
        self._failed_in_a_row = 0

    def _fail(self, batches: list[WriterBatch | None], exc: BaseException) -> None:
        """The writer broke (not a failed write: see :meth:`_write_failed`): publishing
        stops for good."""
        self._failure = exc
        log.error(
            "session %s: the session writer broke, publishing stopped: %s", self.stream.id, exc
        )
        error = StoreError(f"the message was not persisted: {exc}")
        requests = [r for batch in batches if batch for r, _, _ in batch.parts]
        for request in [*requests, *self._queue]:
            if not request.future.done():
                request.future.set_exception(error)
                self.metrics.publish_failed("stopped")
        self._queue.clear()
        self._queued_messages = self._queued_bytes = 0
        self._assigned_next = self.stream.next_seq
        self._end_hold()  # wake held-back publishers: they see the failure


__all__ = ["PublishFailed", "SessionWriter", "WriterConfig"]
