"""The tail of the active session: what its live subscribers see.

Both the :class:`~tickertape.server.engine.Engine` (which writes the session) and the
:class:`~tickertape.server.follower.Follower` (which watches another process write it)
keep one: the session's id and log, the number of the next message (the tail), the
cursors at the tail, each new batch handed to all of them, and, when the session ends,
End of Session to all of them and the ended log to whoever serves pulls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from tickertape.clock import Clock
from tickertape.errors import StoreError
from tickertape.server.metrics import Metrics
from tickertape.store.log import ReadableLog, SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.text import plural

log = logging.getLogger(__name__)

RollListener = Callable[[str, SessionLog, str], None]
"""``listener(ended_id, ended_log, next_id)``: told after each change of active session."""


class Cursor(Protocol):
    """A subscriber as the tail sees it: the next sequence number it will be sent."""

    next_seq: int

    def deliver(self, data: bytes, first_seq: int, count: int, now: float) -> None:
        """Take a newly published batch of ``count`` packets starting at ``first_seq``."""
        ...

    def session_ended(self) -> None:
        """The session ended and every message was delivered: send End of Session."""
        ...

    def abort(self) -> None:
        """Something went wrong with this cursor: close its connection."""
        ...


class Tail:
    """The active session, its tail and the cursors live at it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._session_id: SessionId | None = None
        self._log: SessionLog | None = None
        self._published_next = 1
        self._live: dict[Cursor, None] = {}
        self._roll_listeners: list[RollListener] = []
        self.metrics = Metrics()
        """What this server counts (``GET /metrics``)."""

    # ------------------------------------------------------------------ state

    @property
    def session_id(self) -> str:
        if self._session_id is None:
            raise StoreError(f"the {type(self).__name__.lower()} has not been started")
        return str(self._session_id)

    @property
    def session_log(self) -> SessionLog:
        if self._log is None:
            raise StoreError(f"the {type(self).__name__.lower()} has not been started")
        return self._log

    @property
    def next_seq(self) -> int:
        """The number of the next message to be published: the tail cursors are at."""
        return self._published_next

    @property
    def live_count(self) -> int:
        return len(self._live)

    def is_active(self, session_log: ReadableLog) -> bool:
        """Whether ``session_log`` is the active session's (not one that has ended)."""
        return session_log is self._log

    # ------------------------------------------------------------------ cursors

    def go_live(self, cursor: Cursor) -> bool:
        """Add a cursor that has caught up to the live set. Returns False (and adds
        nothing) if it is behind the tail: it must read the log up to it first."""
        if cursor.next_seq < self._published_next:
            return False
        self._live[cursor] = None
        return True

    def leave(self, cursor: Cursor) -> None:
        """Stop handing batches to a cursor (it disconnected, or its buffer is full)."""
        self._live.pop(cursor, None)

    def on_roll(self, listener: RollListener) -> None:
        """Call ``listener(ended_id, ended_log, next_id)`` after each change of active
        session. The ended log is handed over open (subscribers may still be reading
        it): the listener owns it from then on."""
        self._roll_listeners.append(listener)

    def _fan_out(self, first: int, count: int, data: bytes) -> None:
        """A batch was published: move the tail, and hand the batch, encoded once, to
        every live cursor."""
        self._published_next = first + count
        if not self._live:
            return
        now = self.clock.monotonic()
        for cursor in tuple(self._live):
            try:
                cursor.deliver(data, first, count, now)
            except Exception:
                # One subscriber's failure must not stop the others, nor the writer.
                log.exception("dropping a subscriber that failed to take batch %d", first)
                self._live.pop(cursor, None)
                cursor.abort()

    def _switch(self, session_id: SessionId, session_log: SessionLog) -> None:
        """The active session ended: End of Session to its live cursors, and the next
        session becomes the active one. Callers make sure nothing awaits in between
        the end being persisted and this, so that no cursor is missed."""
        ended_id, ended_log = self._session_id, self._log
        assert ended_id is not None and ended_log is not None
        for cursor in tuple(self._live):
            cursor.session_ended()
        self._live.clear()
        log.info(
            "session %s ended after %s",
            ended_id,
            plural(self._published_next - 1, "message"),
            extra={"session": str(ended_id), "sequence": self._published_next - 1},
        )
        self._session_id, self._log = session_id, session_log
        self._published_next = session_log.next_seq

    def _hand_over(self, ended_id: SessionId, ended_log: SessionLog) -> None:
        """Give the ended session's log to the roll listeners (closed if there are none)."""
        if not self._roll_listeners:
            ended_log.close()
        for listener in self._roll_listeners:
            listener(str(ended_id), ended_log, self.session_id)
