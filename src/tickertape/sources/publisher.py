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

    async def publish_many(self, payloads: Sequence[bytes]) -> int: ...

    async def end_session(self) -> str: ...


class PublisherInput:
    """One publisher connection's messages, on their way to the engine.

    ``send`` sends an acknowledgement (an Unsequenced Data payload) to the publisher;
    ``pause`` and ``resume`` stop and restart reading from it; ``close`` closes it,
    saying why; ``failed`` counts a refused publish by reason (metrics).
    """

    __slots__ = (
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
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._publish())
        return True

    def stop(self) -> None:
        """The connection is gone: stop handing its messages over (what the engine was
        handed already is published anyway)."""
        if self._task is not None:
            self._task.cancel()

    async def _publish(self) -> None:
        """Hand what this publisher sent to the engine, in arrival order, one batch at
        a time, and acknowledge each once it is durable."""
        engine = self._engine
        inbox = self._inbox
        while inbox.waiting:
            batch, end = inbox.take()
            if self._paused:
                self._resume()
                self._paused = False
            try:
                if batch:
                    first = await engine.publish_many(batch)
                    self._send(
                        inbox.published(len(batch), engine.session_id, first + len(batch) - 1)
                    )
                if end:
                    ended = engine.session_id
                    log.info("%s ends session %s", self._peer, ended)
                    await engine.end_session()
                    self._send(inbox.ended(ended))
            except Exception as exc:
                if isinstance(exc, PublishFailed) and exc.published:
                    # Part of the batch was written before a write failed: say so.
                    last = exc.first_seq + exc.published - 1
                    self._send(inbox.published(exc.published, engine.session_id, last))
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
