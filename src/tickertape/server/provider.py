"""The SessionProvider: what the endpoints and their subscribers need of the sessions
they serve (the active session, its stream of live subscribers, the closed sessions).

A protocol only, with no code. Two things offer it: the
:class:`~tickertape.server.engine.Engine`, which writes the sessions of its data
directory, and the :class:`~tickertape.sources.follow.Follower`, which serves,
read-only, the data directory another process writes. The SoupBinTCP and MoldUDP64
endpoints and the :class:`~tickertape.server.subscriber.Subscriber` are written against
this protocol, so they serve either the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tickertape.server.stream import SessionStream
    from tickertape.store.log import ReadableLog, SessionLog


class ClosedSessions(Protocol):
    """Where the logs of sessions other than the active one are opened, for pulls."""

    def open_closed(self, session: str) -> ReadableLog:
        """A read-only view of ``session``; raises ``StoreError`` if it cannot be
        served (``SessionNotFound`` if there is no such session)."""
        ...


class SessionProvider(Protocol):
    """The active session, its tail and its live cursors; the closed sessions."""

    @property
    def catalogue(self) -> ClosedSessions: ...

    @property
    def session_id(self) -> str:
        """The active session's id."""
        ...

    @property
    def session_log(self) -> SessionLog:
        """The active session's log."""
        ...

    @property
    def next_seq(self) -> int:
        """One past the last message of the active session that may be served: the
        tail live cursors are at."""
        ...

    @property
    def stream(self) -> SessionStream:
        """The active session's stream: cursors go live on it (if caught up to its
        tail), leave it, and ask it whether a log is the active session's."""
        ...

    @property
    def publish_refusal(self) -> str | None:
        """Why a publisher's login is refused here (a cluster's node that is not its
        sequencer: where to publish instead); None if publishers may log in."""
        ...

    def on_roll(self, listener: Callable[[str, SessionLog, str], None]) -> None:
        """Call ``listener(ended_id, ended_log, next_id)`` after each change of active
        session; the listener owns the ended log, still open, from then on."""
        ...

    async def publish_many(self, payloads: Sequence[bytes]) -> int:
        """Publish messages into the active session; returns the first one's number.
        Raises ``StoreError`` where nothing may be published (a follower)."""
        ...

    async def wait_for_room(self) -> None:
        """Wait until :meth:`enqueue_many` may be called. Raises ``StoreError`` where
        nothing may be published (a follower)."""
        ...

    def enqueue_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        """Queue messages at once, in order, after :meth:`wait_for_room`; the future
        resolves with the first one's number once they are durable."""
        ...

    async def end_session(self) -> str:
        """End the active session and open the next; returns the new one's id.
        Raises ``StoreError`` where sessions are not this process's to end."""
        ...


__all__ = ["ClosedSessions", "SessionProvider"]
