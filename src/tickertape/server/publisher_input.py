"""The publisher input of a SoupBinTCP connection: Unsequenced Data into the engine.

:class:`PublisherInput` queues the messages a publisher sends (and the END OF SESSION
markers among them), hands them to ``engine.publish_many`` in arrival order, one batch at
a time, and acknowledges each batch once it is durable (the publishing convention of
:mod:`tickertape.protocol.publishing`). Past :attr:`max_unpublished` messages (or bytes)
it stops reading from the publisher until the writer catches up. Whether the connection
may publish at all is decided before (:mod:`tickertape.server.login`), and the bytes go
out through the connection's output.

This block is moved as it was from the endpoint; it is due to move to ``sources/`` and
to take runs of messages instead of one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from tickertape.protocol.publishing import END_OF_SESSION_MARKER, Ack
from tickertape.server.provider import SessionProvider
from tickertape.server.writer import PublishFailed

__all__ = ["PublisherInput"]

log = logging.getLogger("tickertape.server.soupbintcp")


class PublisherInput:
    """What one publisher connection sent that is not yet published, and its acks."""

    def __init__(
        self,
        engine: SessionProvider,
        transport: asyncio.Transport,
        peer: str,
        *,
        max_unpublished: int,
        max_unpublished_bytes: int,
        acknowledge: Callable[[bytes], None],
        close: Callable[[str], None],
    ) -> None:
        """``acknowledge(payload)``: send the publisher an Unsequenced Data packet;
        ``close(reason)``: close the connection, saying why."""
        self._engine = engine
        self._transport = transport
        self._peer = peer
        self.max_unpublished = max_unpublished
        self.max_unpublished_bytes = max_unpublished_bytes
        self._acknowledge = acknowledge
        self._close = close
        self._unpublished: list[bytes] = []
        self._unpublished_bytes = 0
        self._ends: deque[int] = deque()  # where, in _unpublished, publishers ended sessions
        self._publisher: asyncio.Task[None] | None = None
        self.acked = 0
        """Messages it sent that were published (acknowledged)."""
        self.paused = False
        """Not read from: the writer is behind."""

    @property
    def unpublished(self) -> bool:
        """Messages it sent are not published yet."""
        return bool(self._unpublished)

    def received(self, payload: bytes) -> None:
        """An Unsequenced Data packet: a message to publish into the active session."""
        if payload == END_OF_SESSION_MARKER:
            self._ends.append(len(self._unpublished))  # after what came before it
        else:
            self._unpublished.append(payload)
            self._unpublished_bytes += len(payload)
        if not self.paused and (
            len(self._unpublished) >= self.max_unpublished
            or self._unpublished_bytes >= self.max_unpublished_bytes
        ):
            # The writer is behind: stop reading from this publisher until it catches up.
            self._transport.pause_reading()
            self.paused = True

    def start(self) -> None:
        """Publish what was received, unless that is under way."""
        if (self._unpublished or self._ends) and (
            self._publisher is None or self._publisher.done()
        ):
            self._publisher = asyncio.get_running_loop().create_task(self._publish())

    def cancel(self) -> None:
        """The connection is gone (what was handed to the engine is published anyway)."""
        if self._publisher is not None:
            self._publisher.cancel()

    async def _publish(self) -> None:
        """Hand what this publisher sent to the engine, in arrival order, one batch at
        a time, and acknowledge each once it is durable."""
        engine = self._engine
        while self._unpublished or self._ends:
            end = bool(self._ends) and self._ends[0] <= len(self._unpublished)
            if end:
                cut = self._ends.popleft()
                batch, self._unpublished = self._unpublished[:cut], self._unpublished[cut:]
                self._ends = deque(position - cut for position in self._ends)
            else:
                batch, self._unpublished = self._unpublished, []
            self._unpublished_bytes = sum(map(len, self._unpublished))
            if self.paused:
                self._transport.resume_reading()
                self.paused = False
            try:
                if batch:
                    first = await engine.publish_many(batch)
                    self.acked += len(batch)
                    self._ack(engine.session_id, first + len(batch) - 1)
                if end:
                    ended = engine.session_id
                    log.info("%s ends session %s", self._peer, ended)
                    await engine.end_session()
                    self._ack(ended, 0)
            except Exception as exc:
                if isinstance(exc, PublishFailed) and exc.published:
                    # Part of the batch was written before a write failed: say so.
                    self.acked += exc.published
                    self._ack(engine.session_id, exc.first_seq + exc.published - 1)
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
                return

    def _ack(self, session: str, last_seq: int) -> None:
        """Acknowledge to the publisher (see :mod:`tickertape.protocol.publishing`)."""
        self._acknowledge(Ack(self.acked, session, last_seq).encode())
