"""The SessionRoller: ending the active session and opening the next, on demand and on
the roll schedule, and applying the retention policy to ended sessions.

A roll drains the :class:`~tickertape.server.writer.SessionWriter` (everything queued
is written and published; publishers are held back), opens the next session in the
:class:`~tickertape.store.catalogue.Catalogue`, persists the end (the ended log synced,
then its ``ended`` marker), and only then replaces the
:class:`~tickertape.server.active.ActiveSession` (End of Session to every live
subscriber) and hands the ended log to the roll listeners. After the start and each
roll, a retention pass runs off the event loop.

The roller does not publish, nor fan out; the first session is opened by the
:class:`~tickertape.server.engine.Engine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from concurrent.futures import Executor
from typing import Final

from tickertape.clock import Clock
from tickertape.errors import StoreError
from tickertape.server.active import ActiveSession
from tickertape.store.catalogue import Catalogue
from tickertape.store.retention import Retention, apply_retention
from tickertape.store.schedule import RollSchedule
from tickertape.store.sessionid import SessionId

log = logging.getLogger(__name__)

DEFAULT_ROLL_RETRY: Final = 10.0
"""Seconds before a scheduled roll that failed is tried again."""


class SessionRoller:
    """Rolls ``active`` from one session of ``catalogue`` to the next (catalogue work
    on ``executor``, the writer's thread). :meth:`start` once the session is open."""

    def __init__(
        self,
        catalogue: Catalogue,
        active: ActiveSession,
        clock: Clock,
        executor: Executor,
        schedule: RollSchedule | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.active = active
        self.clock = clock
        self.schedule = schedule or RollSchedule()
        self.retention = retention or Retention()
        self._executor = executor
        self._housekeeping: asyncio.Future[list[str]] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, roll_on_schedule: bool = True) -> None:
        """Apply the retention policy now, and roll on the schedule unless told not to."""
        log.info("retention: %s", self.retention.describe())
        self._keep_house()
        if roll_on_schedule:
            self.roll_on_schedule()

    def roll_on_schedule(self) -> None:
        """Roll at each time the schedule says, from now on (until :meth:`stop_schedule`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._roll_on_schedule(), name="session-roller")

    async def stop_schedule(self) -> None:
        """Stop rolling on the schedule; return once a roll under way (scheduled or
        asked for) is over."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._lock:  # a roll holds it to its end
            pass

    async def close(self) -> None:
        """Stop rolling on the schedule, wait for the retention pass and for a roll
        under way, then close the active session's writer (what is queued is written):
        a close never cuts a roll in half."""
        await self.stop_schedule()
        if self._housekeeping is not None:
            with contextlib.suppress(Exception):
                await self._housekeeping
        async with self._lock:
            await self.active.close()

    # ------------------------------------------------------------------ state

    @property
    def rolling(self) -> bool:
        """Whether a roll is under way (publishing waits for the next session)."""
        return self.active.writer.draining

    @property
    def housekeeping(self) -> asyncio.Future[list[str]] | None:
        """The latest retention pass (run at start and after each roll), if any."""
        return self._housekeeping

    # ------------------------------------------------------------------ rolling

    async def roll(self, day: dt.date | None = None, *, to: str | None = None) -> str:
        """End the active session and open the next; returns the new session's id.

        Publishing pauses; everything already queued is written and published; the end
        is persisted (the session's ``ended`` marker, synced); only then is each
        subscriber told, and sends End of Session after the last message. The next
        session carries ``day`` (default: the schedule's day for now): counter 01 of a
        new day, or the next counter of the same day; or is exactly ``to``, when ids come
        from elsewhere (an upstream feed). Publishers held back meanwhile publish into it.

        A roll, once begun, runs to its end even if the caller is cancelled (a roll cut
        in half would leave a session ended on disk and open in memory). If it fails,
        the active session goes on and the error is raised.

        With a replicator (a cluster node), a roll to the next id is replicated before
        its end is persisted here, and refused while the replicator refuses; a roll to
        ``to`` is one replicated already (the cluster's journal applied).
        """
        return await asyncio.shield(self._roll(day, to))

    async def _roll(self, day: dt.date | None, to: str | None) -> str:
        loop = asyncio.get_running_loop()
        active, writer = self.active, self.active.writer
        async with self._lock:
            writer.check_open(here=False)
            replicator = writer.replicator if to is None else None  # None: applied, not rolled
            if replicator is not None and (why := replicator.refusal()):
                raise StoreError(f"sessions are rolled by the cluster's sequencer ({why})")
            ended_id, ended_log = active.id, active.session_log
            assert ended_id is not None
            try:
                await writer.drain()
                if writer.failure is not None:
                    raise StoreError(f"publishing has stopped: {writer.failure}")
                if to is not None:
                    next_id = SessionId.parse(to)
                    next_log = await loop.run_in_executor(
                        self._executor, self.catalogue.open_exact, next_id
                    )
                else:
                    day = day or self.schedule.session_day(self.clock.now())
                    next_id, next_log = await loop.run_in_executor(
                        self._executor, self.catalogue.open_next, ended_id, day
                    )
                replicated = False
                try:
                    if replicator is not None:
                        await replicator.roll(str(ended_id), str(next_id))
                        replicated = True
                    # What an end promises is durable before the end is: the log and index.
                    await loop.run_in_executor(self._executor, ended_log.sync)
                    await loop.run_in_executor(self._executor, self.catalogue.mark_ended, ended_id)
                    if replicator is not None:
                        replicator.written()
                except BaseException as exc:
                    if replicator is not None and replicated:
                        replicator.not_written(exc)
                    if to is None:  # it was just created, and is empty: no trace of it
                        await loop.run_in_executor(
                            self._executor, self.catalogue.discard, next_id, next_log
                        )
                    raise
                # From here to the switch nothing awaits: a subscriber that logged in to
                # the ended session meanwhile is live in it, and is told with the rest.
                active.replace(next_id, next_log)
            except Exception as exc:
                writer.resume()  # the active session goes on: held-back publishers too
                log.error("rolling session %s failed; it goes on: %s", ended_id, exc)
                raise StoreError(f"rolling session {ended_id} failed: {exc}") from exc
            finally:
                writer.release()
        active.stream.hand_over(ended_id, ended_log)
        self._keep_house()
        return str(next_id)

    async def _roll_on_schedule(self) -> None:
        active, today = self.active.id, self.schedule.session_day(self.clock.now())
        if active is not None and active.day < today:
            # A session of a day gone by (a cluster node that took over after the roll
            # time): its roll is due already.
            await self._roll_until_done(today)
        while True:
            due = self.schedule.next_roll(self.clock.now())
            log.info("next roll at %s", due.isoformat(timespec="seconds"))
            due = due.astimezone(dt.UTC)  # compare instants, not wall times
            while (left := (due - self.clock.now().astimezone(dt.UTC)).total_seconds()) > 0:  # noqa: ASYNC110
                # In steps, so that a wall clock set forward or back is noticed.
                await asyncio.sleep(min(left, 60.0))
            await self._roll_until_done(self.schedule.session_day(due))

    async def _roll_until_done(self, day: dt.date) -> None:
        while True:
            try:
                await self.roll(day)
                return
            except StoreError:
                # roll() said why in the log; try again shortly, not the next day.
                await asyncio.sleep(DEFAULT_ROLL_RETRY)

    # ------------------------------------------------------------------ retention

    def _keep_house(self) -> None:
        """Apply the retention policy to ended sessions, off the event loop."""
        if not self.retention.configured or (
            self._housekeeping is not None and not self._housekeeping.done()
        ):
            return
        session_id = self.active.id
        assert session_id is not None
        self._housekeeping = asyncio.get_running_loop().run_in_executor(
            None,
            apply_retention,
            self.catalogue,
            session_id.day,
            self.retention,
            frozenset({str(session_id)}),
        )
        self._housekeeping.add_done_callback(_log_failure)


def _log_failure(done: asyncio.Future[list[str]]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("applying the retention policy failed: %s", done.exception())


__all__ = ["DEFAULT_ROLL_RETRY", "SessionRoller"]
