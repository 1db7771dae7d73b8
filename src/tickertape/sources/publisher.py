"""The SessionInputSource of a publisher connection: what it sends, into the active session.

:class:`PublisherInput` takes the runs of messages a SoupBinTCP connection logged in to
publish hands out (one list per run, as read), queues them in a
:class:`~tickertape.protocol.publishing.PublisherInbox`, and hands them to the engine
one ``publish_many`` call at a time, in arrival order, ending the session where the
publisher's END OF SESSION marker says; once each call is durable it sends the
acknowledgement back. While the engine is behind, the connection stops reading.

What it does not do: log the connection in, decide who may publish, frame packets or
write to the socket (the SoupBinTCP endpoint does, through the callbacks it passes).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from tickertape.protocol.publishing import PublisherInbox
from tickertape.server.writer import PublishFailed

__all__ = ["PublishTarget", "PublisherInput"]

log = logging.getLogger(__name__)


class PublishTarget(Protocol):
    """What a publisher publishes into: the active session of an engine."""

    @property
    def session_id(self) -> str: ...

    async def wait_for_room(self) -> None: ...

    def enqueue_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]: ...

    async def end_session(self) -> str: ...


class PublisherInput:
    """One publisher connection's messages, on their way to the engine.

    ``send`` sends an acknowledgement (an Unsequenced Data payload) to the publisher;
    ``pause`` and ``resume`` stop and restart reading from it; ``close`` closes it,
    saying why; ``failed`` counts a refused publish by reason (metrics).
    """

    __slots__ = (
        "_arrived",
        "_close",
        "_engine",
        "_failed",
        "_inbox",
        "_pause",
        "_paused",
        "_peer",
        "_relay",
        "_resume",
        "_send",
        "_task",
    )

    def __init__(
        self,
        engine: PublishTarget,
        peer: str,
        *,
        send: Callable[[bytes], None],
        pause: Callable[[], None],
        resume: Callable[[], None],
        close: Callable[[str], None],
        failed: Callable[[str], None],
        max_messages: int,
        max_bytes: int,
    ) -> None:
        self._engine = engine
        self._peer = peer
        self._send = send
        self._pause = pause
        self._resume = resume
        self._close = close
        self._failed = failed
        self._inbox = PublisherInbox(max_messages, max_bytes)
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()  # set by received: the publish task looks again
        relay = getattr(engine, "relay_from", None)
        self._relay = None if relay is None else str(relay)

    @property
    def acked(self) -> int:
        """Messages acknowledged (durable) so far."""
        return self._inbox.acked

    @property
    def paused(self) -> bool:
        """Whether reading from the publisher is stopped (the engine is behind)."""
        return self._paused

    @property
    def unpublished(self) -> int:
        """Messages received and not yet handed to the engine."""
        return self._inbox.unpublished

    def received(self, payloads: list[bytes]) -> bool:
        """A run of messages from the publisher, in arrival order. Returns False if the
        connection is being closed instead (this server relays another)."""
        if self._relay is not None:
            self._failed("relay")
            self._close(f"this server relays {self._relay}: publish there")
            return False
        if self._inbox.receive(payloads) and not self._paused:
            # The writer is behind: stop reading from this publisher until it catches up.
            self._pause()
            self._paused = True
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._publish())
        return True

    def stop(self) -> None:
        """The connection is gone: stop handing its messages over (what the engine was
        handed already is published anyway)."""
        if self._task is not None:
            self._task.cancel()

    async def _publish(self) -> None:
        """Hand what this publisher sent to the engine, in arrival order, and
        acknowledge each batch, in order, once it is durable. A batch is handed over
        while the ones before it are still being written (the engine keeps their order),
        so one connection is not held to one write-and-sync at a time."""
        engine = self._engine
        inbox = self._inbox
        in_flight: deque[tuple[asyncio.Future[int], int, str]] = deque()
        try:
            while inbox.waiting or in_flight:
                if inbox.waiting:
                    await engine.wait_for_room()
                    batch, end = inbox.take()
                    if self._paused:
                        self._resume()
                        self._paused = False
                    if batch:
                        in_flight.append(
                            (engine.enqueue_many(batch), len(batch), engine.session_id)
                        )
                    if end:
                        while in_flight:
                            await self._acknowledge(in_flight)
                        ended = engine.session_id
                        log.info("%s ends session %s", self._peer, ended)
                        await engine.end_session()
                        self._send(inbox.ended(ended))
                    while in_flight and in_flight[0][0].done():
                        await self._acknowledge(in_flight)
                else:
                    self._arrived.clear()
                    arrived = asyncio.ensure_future(self._arrived.wait())
                    try:
                        await asyncio.wait(
                            (in_flight[0][0], arrived), return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        arrived.cancel()
                    while in_flight and in_flight[0][0].done():
                        await self._acknowledge(in_flight)
        except Exception as exc:
            # A failed write is logged once, by the engine: here, whom it cost.
            level = logging.WARNING if isinstance(exc, PublishFailed) else logging.ERROR
            log.log(
                level,
                "publishing from %s failed: %s",
                self._peer,
                exc,
                extra={"client": self._peer},
            )
            self._close(f"not published: {exc}")
        finally:
            for future, _, _ in in_flight:  # published anyway; nobody to tell
                future.add_done_callback(_retrieved)

    async def _acknowledge(self, in_flight: deque[tuple[asyncio.Future[int], int, str]]) -> None:
        """Wait for the oldest batch in flight to be durable, and say so to the publisher
        (if part of it was written before a write failed, that part, then raise)."""
        future, count, session = in_flight[0]
        try:
            first = await future
        except PublishFailed as exc:
            in_flight.popleft()
            if exc.published:
                last = exc.first_seq + exc.published - 1
                self._send(self._inbox.published(exc.published, session, last))
            raise
        in_flight.popleft()
        self._send(self._inbox.published(count, session, first + count - 1))


def _retrieved(future: asyncio.Future[int]) -> None:
    """Mark a future's outcome as seen (its failure was told, or nobody is left to tell)."""
    if not future.cancelled():
        future.exception()
