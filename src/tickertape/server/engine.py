"""The engine: what sources, the endpoints and the admin API hold of a data directory
that this process writes.

An :class:`Engine` composes the parts and runs their life cycle: it locks the
:class:`~tickertape.store.catalogue.Catalogue`, opens the
:class:`~tickertape.server.active.ActiveSession` (which has the
:class:`~tickertape.server.stream.SessionStream` of its live subscribers and the
:class:`~tickertape.server.writer.SessionWriter` that publishes into it), starts the
:class:`~tickertape.server.roller.SessionRoller`, and closes them in order. Everything
else it offers (:class:`~tickertape.server.provider.SessionProvider`, publishing,
rolling) is theirs, named as its callers know it. One thread does its disk work: the
writer's appends and the roller's creating, syncing and ending of sessions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tickertape.clock import Clock, SystemClock
from tickertape.server.active import ActiveSession
from tickertape.server.metrics import Metrics
from tickertape.server.replication import Replicator
from tickertape.server.roller import SessionRoller
from tickertape.server.stream import RollListener, SessionStream
from tickertape.server.writer import WriterConfig
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import SessionLog
from tickertape.store.retention import Retention
from tickertape.store.schedule import RollSchedule
from tickertape.store.sessionid import SessionId


class Engine:
    """The active session of one data directory. Create, then ``await start()``."""

    def __init__(
        self,
        catalogue: Catalogue,
        config: WriterConfig | None = None,
        clock: Clock | None = None,
        schedule: RollSchedule | None = None,
        retention: Retention | None = None,
        replicator: Replicator | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.catalogue = catalogue
        self.config = config or WriterConfig(durability=catalogue.durability)
        self.metrics = Metrics()
        """What this server counts (``GET /metrics``)."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tickertape-writer")
        self.active = ActiveSession(self.clock, self.config, self.metrics, self._executor)
        self.active.writer.replicator = replicator
        self.roller = SessionRoller(
            catalogue, self.active, self.clock, self._executor, schedule, retention
        )
        self.relay_from: str | None = None
        """Set while an upstream feed fills the sessions (``host:port``): then nothing
        else may publish or roll, or the local copy would stop matching the upstream."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, roll_on_schedule: bool = True, session: str | None = None) -> None:
        """Open the active session: ``session`` if given (continued or created: ids come
        from elsewhere), else today's (by the roll schedule) if it was not ended, else the
        next id of the day. Then roll on the schedule, unless told not to."""
        loop = asyncio.get_running_loop()
        today = self.roller.schedule.session_day(self.clock.now())
        self.catalogue.lock()
        try:
            if session is not None:
                exact = SessionId.parse(session)
                session_log = await loop.run_in_executor(
                    self._executor, self.catalogue.open_exact, exact
                )
                session_id = exact
            else:
                session_id, session_log = await loop.run_in_executor(
                    self._executor, self.catalogue.open_active, today
                )
        except BaseException:
            self.catalogue.unlock()
            raise
        self.active.open(session_id, session_log)
        self.roller.start(roll_on_schedule=roll_on_schedule)

    async def close(self) -> None:
        """Persist and publish what is queued, let the writer finish the batch in hand,
        then close the log. The session is not ended: a restart continues it."""
        await self.roller.close()
        await asyncio.to_thread(self._executor.shutdown, True)
        self.active.stream.close()
        self.catalogue.unlock()

    # ------------------------------------------------------------------ the session

    @property
    def session_id(self) -> str:
        return self.active.session_id

    @property
    def session_log(self) -> SessionLog:
        return self.active.session_log

    @property
    def next_seq(self) -> int:
        """The number of the next message to be published: the tail cursors are at."""
        return self.active.next_seq

    @property
    def next_assigned(self) -> int:
        """The number the next message handed to :meth:`publish_many` will get."""
        return self.active.next_assigned

    @property
    def publishing_error(self) -> str | None:
        """Why publishing is paused (the last write to the log failed: the next batch
        tries again) or has stopped; None while publishing works."""
        return self.active.publishing_error

    # ------------------------------------------------------------------ subscribers

    @property
    def stream(self) -> SessionStream:
        """The active session's stream: its live subscribers (join, leave, count)."""
        return self.active.stream

    def on_roll(self, listener: RollListener) -> None:
        """See :meth:`SessionStream.on_roll`."""
        self.active.stream.on_roll(listener)

    # ------------------------------------------------------------------ publishing

    def publish(self, payload: bytes) -> Coroutine[Any, Any, int]:
        """Publish one message; returns its sequence number once it is durable."""
        return self.active.publish(payload)

    def publish_many(self, payloads: Sequence[bytes]) -> Coroutine[Any, Any, int]:
        """Publish messages in order (see :meth:`SessionWriter.publish_many`)."""
        return self.active.publish_many(payloads)

    def wait_for_room(self) -> Coroutine[Any, Any, None]:
        """See :meth:`SessionWriter.wait_for_room`."""
        return self.active.wait_for_room()

    def enqueue_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        """Queue messages without waiting for them to be durable, in order (see
        :meth:`SessionWriter.enqueue_many`): after :meth:`wait_for_room`, at once."""
        return self.active.enqueue_many(payloads)

    @property
    def publish_refusal(self) -> str | None:
        """Why publishers are refused here (another node of a cluster takes them), if
        they are."""
        replicator = self.active.writer.replicator
        return replicator.refusal() if replicator is not None else None

    def apply(self, first: int, count: int, data: bytes) -> Coroutine[Any, Any, None]:
        """Write and publish a batch numbered elsewhere (see :meth:`ActiveSession.apply`)."""
        return self.active.apply(first, count, data)

    # ------------------------------------------------------------------ rolling

    @property
    def rolling(self) -> bool:
        """Whether a roll is under way (publishing waits for the next session)."""
        return self.roller.rolling

    @property
    def housekeeping(self) -> asyncio.Future[list[str]] | None:
        """The latest retention pass (run at start and after each roll), if any."""
        return self.roller.housekeeping

    def roll(
        self, day: dt.date | None = None, *, to: str | None = None
    ) -> Coroutine[Any, Any, str]:
        """End the active session and open the next (see :meth:`SessionRoller.roll`);
        returns the new session's id."""
        return self.roller.roll(day, to=to)

    def end_session(self) -> Coroutine[Any, Any, str]:
        """End the active session and open the next (see :meth:`roll`)."""
        return self.roller.roll()
