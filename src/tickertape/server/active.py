"""The ActiveSession: the one session of a data directory that is being written.

An :class:`ActiveSession` has an id and a log, two next sequence numbers (the next to
be published, which is the tail of its :class:`~tickertape.server.stream.SessionStream`,
and the next to be assigned, which runs ahead of it by what the writer has queued), the
stream of its live subscribers, and the :class:`~tickertape.server.writer.SessionWriter`
that publishes into it.

It neither opens sessions nor ends them: the :class:`~tickertape.server.engine.Engine`
opens the first one, and the :class:`~tickertape.server.roller.SessionRoller` replaces
it by the next (:meth:`ActiveSession.replace`).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Coroutine, Sequence
from concurrent.futures import Executor
from typing import Any

from tickertape.clock import Clock
from tickertape.server.metrics import Metrics
from tickertape.server.stream import SessionStream
from tickertape.server.writer import SessionWriter, WriterConfig
from tickertape.store.log import SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.text import plural

log = logging.getLogger(__name__)


class ActiveSession:
    """The session being written, its stream and its writer (disk work on
    ``executor``). :meth:`open` it before publishing."""

    def __init__(
        self, clock: Clock, config: WriterConfig, metrics: Metrics, executor: Executor
    ) -> None:
        self.stream = SessionStream(clock, owner="engine")
        self.writer = SessionWriter(self.stream, config, metrics, executor)
        self._executor = executor

    # ------------------------------------------------------------------ state

    @property
    def id(self) -> SessionId | None:
        """The session's id (None before :meth:`open`)."""
        return self.stream.id

    @property
    def session_id(self) -> str:
        return self.stream.session_id

    @property
    def session_log(self) -> SessionLog:
        return self.stream.session_log

    @property
    def next_seq(self) -> int:
        """The number of the next message to be published (persisted and handed to the
        live subscribers)."""
        return self.stream.next_seq

    @property
    def next_assigned(self) -> int:
        """The number the next message handed to :meth:`publish_many` will get."""
        return self.writer.next_assigned

    @property
    def publishing_error(self) -> str | None:
        """Why publishing is paused or has stopped; None while publishing works."""
        return self.writer.publishing_error

    # ------------------------------------------------------------------ publishing

    def publish(self, payload: bytes) -> Coroutine[Any, Any, int]:
        """Publish one message; returns its sequence number once it is durable."""
        return self.writer.publish_many((payload,))

    def publish_many(self, payloads: Sequence[bytes]) -> Coroutine[Any, Any, int]:
        """See :meth:`SessionWriter.publish_many`."""
        return self.writer.publish_many(payloads)

    def wait_for_room(self) -> Coroutine[Any, Any, None]:
        """See :meth:`SessionWriter.wait_for_room`."""
        return self.writer.wait_for_room()

    def enqueue_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        """See :meth:`SessionWriter.enqueue_many`."""
        return self.writer.enqueue_many(payloads)

    async def apply(self, first: int, count: int, data: bytes) -> None:
        """Write a batch numbered elsewhere (a cluster's journal: ``data`` are its
        Sequenced Data packets) to the log, then hand it to the live subscribers, as
        the writer does with its own; nothing may be queued to the writer meanwhile."""
        if first != self.stream.next_seq:
            raise ValueError(f"batch {first} applied where {self.stream.next_seq} is next")
        appended = await asyncio.get_running_loop().run_in_executor(
            self._executor, self.session_log.append, data, count, zlib.crc32(data)
        )
        self.stream.fan_out(appended.first_seq, appended.count, data)
        self.writer.realign()

    # ------------------------------------------------------------------ changes

    def open(self, session_id: SessionId, session_log: SessionLog) -> None:
        """Make ``session_id`` (its log open for writing) the active session, and
        start writing into it."""
        self.stream.open(session_id, session_log)
        self._started()

    def replace(self, session_id: SessionId, session_log: SessionLog) -> None:
        """The active session ended (persisted, its writer drained): End of Session to
        its live subscribers, and ``session_id`` is the active session from now on.
        Nothing awaits here, so no subscriber is missed."""
        self.stream.switch(session_id, session_log)
        self._started()

    def _started(self) -> None:
        self.writer.start()
        session_id, session_log = self.stream.session_id, self.stream.session_log
        log.info(
            "session %s open at %s: %s, next is %d",
            session_id,
            session_log.directory,
            plural(session_log.next_seq - 1, "message"),
            session_log.next_seq,
            extra={"session": session_id, "sequence": session_log.next_seq},
        )

    async def close(self) -> None:
        """Persist and publish what is queued, then refuse further publishing. The
        session is not ended, and its log stays open (see :meth:`SessionStream.close`)."""
        await self.writer.close()
