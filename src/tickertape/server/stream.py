"""The SessionStream: the active session as its live subscribers see it.

A :class:`SessionStream` holds the active session's id and log, the number of the next
message (the tail), the :class:`SubscriptionList` of cursors live at the tail, and the
listeners told when the active session changes. Each new batch, encoded once, is handed
to every live cursor (:meth:`SessionStream.fan_out`); when the session ends, every live
cursor is told (End of Session after its last message) and the stream moves to the next
session (:meth:`SessionStream.switch`).

Both the :class:`~tickertape.server.active.ActiveSession` (whose writer publishes into
it) and the :class:`~tickertape.sources.follow.Follower` (which notices what another
process wrote) have one. It holds no queue and writes nothing: publishing is the
writer's (:mod:`tickertape.server.writer`), rolling the roller's
(:mod:`tickertape.server.roller`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from tickertape.clock import Clock
from tickertape.errors import StoreError
from tickertape.store.log import ReadableLog, SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.text import plural

log = logging.getLogger(__name__)

RollListener = Callable[[str, SessionLog, str], None]
"""``listener(ended_id, ended_log, next_id)``: told after each change of active session."""


class Cursor(Protocol):
    """A subscriber as the stream sees it (the design's Subscription): the next sequence
    number it will be sent."""

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


class SubscriptionList:
    """The cursors live at the tail of the active session, in the order they joined."""

    __slots__ = ("_live",)

    def __init__(self) -> None:
        self._live: dict[Cursor, None] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, cursor: Cursor) -> None:
        self._live[cursor] = None

    def remove(self, cursor: Cursor) -> None:
        self._live.pop(cursor, None)

    def clear(self) -> None:
        self._live.clear()

    def deliver(self, data: bytes, first: int, count: int, now: float) -> None:
        """Hand a batch, encoded once, to every live cursor. A cursor that fails to take
        it is dropped and aborted; the others go on."""
        for cursor in tuple(self._live):
            try:
                cursor.deliver(data, first, count, now)
            except Exception:
                # One subscriber's failure must not stop the others, nor the writer.
                log.exception("dropping a subscriber that failed to take batch %d", first)
                self._live.pop(cursor, None)
                cursor.abort()

    def end(self) -> None:
        """The session ended: tell every live cursor, then empty the list."""
        for cursor in tuple(self._live):
            cursor.session_ended()
        self._live.clear()


class SessionStream:
    """The active session's id, log and tail, and the cursors live at the tail.
    ``owner`` names what has it, for the error raised before :meth:`open`."""

    def __init__(self, clock: Clock, owner: str) -> None:
        self.clock = clock
        self.owner = owner
        self.subscriptions = SubscriptionList()
        self._session_id: SessionId | None = None
        self._log: SessionLog | None = None
        self._next_seq = 1
        self._roll_listeners: list[RollListener] = []

    # ------------------------------------------------------------------ state

    @property
    def id(self) -> SessionId | None:
        """The active session's id (None before :meth:`open`)."""
        return self._session_id

    @property
    def log(self) -> SessionLog | None:
        """The active session's log (None before :meth:`open`)."""
        return self._log

    @property
    def session_id(self) -> str:
        if self._session_id is None:
            raise StoreError(f"the {self.owner} has not been started")
        return str(self._session_id)

    @property
    def session_log(self) -> SessionLog:
        if self._log is None:
            raise StoreError(f"the {self.owner} has not been started")
        return self._log

    @property
    def next_seq(self) -> int:
        """The number of the next message to be published: the tail cursors are at."""
        return self._next_seq

    @property
    def live_count(self) -> int:
        return len(self.subscriptions)

    def is_active(self, session_log: ReadableLog) -> bool:
        """Whether ``session_log`` is the active session's (not one that has ended)."""
        return session_log is self._log

    # ------------------------------------------------------------------ cursors

    def go_live(self, cursor: Cursor) -> bool:
        """Add a cursor that has caught up to the live set. Returns False (and adds
        nothing) if it is behind the tail: it must read the log up to it first."""
        if cursor.next_seq < self._next_seq:
            return False
        self.subscriptions.add(cursor)
        return True

    def leave(self, cursor: Cursor) -> None:
        """Stop handing batches to a cursor (it disconnected, or its buffer is full)."""
        self.subscriptions.remove(cursor)

    def on_roll(self, listener: RollListener) -> None:
        """Call ``listener(ended_id, ended_log, next_id)`` after each change of active
        session. The ended log is handed over open (subscribers may still be reading
        it): the listener owns it from then on."""
        self._roll_listeners.append(listener)

    # ------------------------------------------------------------------ changes

    def open(self, session_id: SessionId, session_log: SessionLog) -> None:
        """Make ``session_id`` the active session, its tail where its log ends."""
        self._session_id, self._log = session_id, session_log
        self._next_seq = session_log.next_seq

    def fan_out(self, first: int, count: int, data: bytes) -> None:
        """A batch was published: move the tail, and hand the batch, encoded once, to
        every live cursor."""
        self._next_seq = first + count
        if self.subscriptions:
            self.subscriptions.deliver(data, first, count, self.clock.monotonic())

    def switch(self, session_id: SessionId, session_log: SessionLog) -> None:
        """The active session ended: End of Session to its live cursors, and the next
        session becomes the active one. Callers make sure nothing awaits in between
        the end being persisted and this, so that no cursor is missed."""
        ended_id, ended_log = self._session_id, self._log
        assert ended_id is not None and ended_log is not None
        self.subscriptions.end()
        log.info(
            "session %s ended after %s",
            ended_id,
            plural(self._next_seq - 1, "message"),
            extra={"session": str(ended_id), "sequence": self._next_seq - 1},
        )
        self.open(session_id, session_log)

    def hand_over(self, ended_id: SessionId, ended_log: SessionLog) -> None:
        """Give the ended session's log to the roll listeners (closed if there are none)."""
        if not self._roll_listeners:
            ended_log.close()
        for listener in self._roll_listeners:
            listener(str(ended_id), ended_log, self.session_id)

    def close(self) -> None:
        """Drop the live cursors and close the active session's log."""
        self.subscriptions.clear()
        if self._log is not None:
            self._log.close()
