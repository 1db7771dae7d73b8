"""Serving another process's store: a data directory that a tickertape server on this
host is writing, followed read-only.

The :class:`Follower` stands where the :class:`~tickertape.server.engine.Engine` stands
for the SoupBinTCP endpoint (:class:`~tickertape.server.provider.SessionProvider`),
but it writes nothing: its active session is the newest session of the directory,
opened read-only, and its "publishing" is noticing what the writer appended.

- **New messages.** The writer appends a batch to ``log``, then its record to
  ``index``. The follower reads new index records (:meth:`FollowedLog.refresh
  <tickertape.store.follow.FollowedLog.refresh>`), checks each record's checksum and the
  batch's, and only then hands the batch to its live cursors, exactly as the engine
  hands a published one. A batch whose record is not written yet, or whose checksum
  fails, is not served. The follower is woken by inotify (through ``ctypes``: Linux
  has it, the standard library does not wrap it) when the session's ``index`` or
  ``ended`` changes, and polls every ``poll_interval`` besides, which is all it does
  where inotify is missing. Reading and checking runs on a thread of its own.
- **Ended and new sessions.** The writer creates the next session's directory, then
  persists the ``ended`` marker of the one it ended. Once the followed session has its
  marker, the follower reads its index one last time (everything was appended before
  the marker), tells every live cursor (End of Session after its last message), hands
  the ended log to the roll listeners, and follows the newest session.
- **Read-only.** No lock file, no recovery that cuts or re-indexes, no clean-up of an
  interrupted archive: nothing under the directory is created, changed or removed.
  Pulls of closed sessions are opened with
  :func:`~tickertape.store.opening.open_session_log`, which changes nothing.

The writer's own guarantees carry over: a batch reaches the follower's subscribers only
after the writer persisted it (its record is written after its sync), in order, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tickertape.clock import Clock, SystemClock
from tickertape.errors import StoreError
from tickertape.server.metrics import Metrics
from tickertape.server.stream import RollListener, SessionStream
from tickertape.store.catalogue import Catalogue, SessionInfo
from tickertape.store.follow import DEFAULT_REFRESH_BYTES, FollowedLog
from tickertape.store.layout import ENDED_MARKER, INDEX_FILE
from tickertape.store.log import Appended, ReadableLog, SessionLog
from tickertape.store.opening import open_session_log
from tickertape.store.sessionid import SessionId
from tickertape.text import plural

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL: Final = 0.01
"""Seconds between two looks at the followed session's index when nothing woke the
follower sooner."""
DEFAULT_OPEN_TIMEOUT: Final = 5.0
"""Seconds to wait for a session directory that exists to get its log (the writer
creates the directory, then the log)."""


@dataclass(frozen=True, slots=True)
class FollowerConfig:
    """How the follower notices changes."""

    poll_interval: float = DEFAULT_POLL_INTERVAL
    inotify: bool = True
    """Be woken by inotify where the platform has it (and still poll)."""
    max_refresh_bytes: int = DEFAULT_REFRESH_BYTES
    """About how many bytes of new batches are read before they are delivered."""


class FollowedCatalogue:
    """The sessions of a followed data directory, for pulls: opened read-only, never
    changed (unlike :meth:`Catalogue.open_closed`, which finishes an interrupted
    archive)."""

    def __init__(self, root: Path, follower: Follower) -> None:
        self.root = root
        self._catalogue = Catalogue(root)  # its reading methods only: sessions, find
        self._follower = follower

    def sessions(self) -> list[SessionInfo]:
        return self._catalogue.sessions()

    def open_closed(self, session: str) -> ReadableLog:
        info = self._catalogue.find(session)
        followed = self._follower.followed
        if followed is not None and info.id > followed and not info.ended:
            # Newer than the followed session and not ended: the writer's active
            # session, which the follower has not switched to yet. Served as a pull it
            # would end early; the client logs in again in a moment.
            raise StoreError(f"session {session} is not followed yet: try again")
        return open_session_log(info.path)


@dataclass(slots=True)
class _News:
    """What one look at the directory found."""

    batches: list[tuple[Appended, bytes]] = field(default_factory=list)
    following: tuple[SessionId, FollowedLog] | None = None
    """The session to follow next: the followed one ended."""


class Follower:
    """The sessions of a data directory another process writes, served read-only.
    Create, then ``await start()``."""

    def __init__(
        self, root: Path, config: FollowerConfig | None = None, clock: Clock | None = None
    ) -> None:
        self.clock = clock or SystemClock()
        self.stream = SessionStream(self.clock, owner="follower")
        self.metrics = Metrics()
        """What this server counts (``GET /metrics``)."""
        self.root = root
        self.config = config or FollowerConfig()
        self.catalogue = FollowedCatalogue(root, self)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tickertape-follower")
        self._task: asyncio.Task[None] | None = None
        self._looking: Future[_News] | None = None
        self._wakeup = asyncio.Event()
        self._watch: _Inotify | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Follow the newest session of the directory. Raises :class:`StoreError` if
        there is none."""
        loop = asyncio.get_running_loop()
        try:
            session_id, session_log = await loop.run_in_executor(self._executor, self._open_newest)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        if self.config.inotify:
            self._watch = _Inotify.create(self._wakeup.set)
        self._follow(session_id, session_log)
        self._task = asyncio.create_task(self._run(), name="follower")

    def _open_newest(self) -> tuple[SessionId, FollowedLog]:
        if not self.root.is_dir():
            raise StoreError(f"cannot follow {self.root}: no such directory")
        sessions = self.catalogue.sessions()
        if not sessions:
            raise StoreError(
                f"no session in {self.root} to follow: is a tickertape server writing it?"
            )
        newest = sessions[-1]
        opened = self._open(newest.path, wait=DEFAULT_OPEN_TIMEOUT)
        if opened is None:
            raise StoreError(f"session {newest.id} in {self.root} has no log to follow")
        return newest.id, opened

    def _open(self, path: Path, wait: float = 0.0) -> FollowedLog | None:
        """Open a session's log to follow it; None if it has none (yet). Blocking: on
        the follower's thread (so ``time``, not the event loop's clock)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return FollowedLog.follow(path)
            except StoreError:
                if self._closing or not path.is_dir() or time.monotonic() >= deadline:
                    return None
            # The writer made the directory and is about to make the log.
            time.sleep(self.config.poll_interval)

    async def close(self) -> None:
        """Stop following; close the followed log. Nothing on disk was changed."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._executor.shutdown(wait=True)
        looked = self._looking
        if looked is not None and not looked.cancelled() and looked.exception() is None:
            following = looked.result().following
            if following is not None and following[1] is not self.stream.log:
                following[1].close()  # opened by a look the close interrupted
        self.stream.close()

    def _follow(self, session_id: SessionId, session_log: FollowedLog) -> None:
        self.stream.open(session_id, session_log)
        if self._watch is not None:
            self._watch.watch(session_log.directory)
        log.info(
            "following session %s at %s: %s, next is %d%s",
            session_id,
            session_log.directory,
            plural(session_log.next_seq - 1, "message"),
            session_log.next_seq,
            "" if self._watch is not None else f" (polling every {self.config.poll_interval} s)",
        )

    # ------------------------------------------------------------------ following

    async def _run(self) -> None:
        failing: str | None = None
        while True:
            self._wakeup.clear()  # before looking: a change meanwhile wakes the next wait
            session_id, session_log = self.stream.id, self.stream.log
            assert session_id is not None and isinstance(session_log, FollowedLog)
            self._looking = self._executor.submit(self._look, session_id, session_log)
            try:
                news = await asyncio.wrap_future(self._looking)
            except Exception as exc:
                if str(exc) != failing:
                    failing = str(exc)
                    log.error("following %s failed (trying again): %s", self.root, exc)
                news = _News()
            else:
                failing = None
            for appended, data in news.batches:
                self.stream.fan_out(appended.first_seq, appended.count, data)
            if news.following is not None:
                self._switch_to(*news.following)
            elif not news.batches:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.poll_interval):
                        await self._wakeup.wait()

    def _look(self, session_id: SessionId, session_log: FollowedLog) -> _News:
        """On the follower's thread: new batches of the followed session; once it has
        ended and every batch was taken, the session to follow next."""
        batches = session_log.refresh(self.config.max_refresh_bytes)
        if batches:
            return _News(batches)
        if not (session_log.directory / ENDED_MARKER).exists():
            return _News()
        # Ended: every batch was appended before the marker, so this look finds the last.
        batches = session_log.refresh(self.config.max_refresh_bytes)
        if batches:
            return _News(batches)
        newer = [info for info in self.catalogue.sessions() if info.id > session_id]
        if not newer:
            return _News()  # the writer makes the next session before ending this one
        opened = self._open(newer[-1].path, wait=DEFAULT_OPEN_TIMEOUT)
        if opened is None:
            return _News()
        return _News(following=(newer[-1].id, opened))

    def _switch_to(self, session_id: SessionId, session_log: FollowedLog) -> None:
        """The followed session ended: End of Session to its live cursors, its log to
        the roll listeners, and follow the next. No await from start to end."""
        ended_id, ended_log = self.stream.id, self.stream.log
        assert ended_id is not None and ended_log is not None
        self.stream.switch(session_id, session_log)
        self._follow(session_id, session_log)
        self.stream.hand_over(ended_id, ended_log)

    # ------------------------------------------------------------------ state

    @property
    def followed(self) -> SessionId | None:
        """The id of the session followed now (None before :meth:`start`)."""
        return self.stream.id

    @property
    def inotify(self) -> bool:
        """Whether inotify wakes the follower (else it only polls)."""
        return self._watch is not None

    # ------------------------------------------------------------------ subscribers

    @property
    def session_id(self) -> str:
        return self.stream.session_id

    @property
    def session_log(self) -> SessionLog:
        return self.stream.session_log

    @property
    def next_seq(self) -> int:
        """One past the last message of the followed session that may be served."""
        return self.stream.next_seq

    @property
    def publish_refusal(self) -> None:
        """Publishers log in (what they send is refused: see :meth:`publish_many`)."""
        return None

    def on_roll(self, listener: RollListener) -> None:
        self.stream.on_roll(listener)

    # ------------------------------------------------------------------ not here

    async def publish_many(self, payloads: Sequence[bytes]) -> int:
        raise StoreError(
            f"this server follows {self.root}, which another process writes: publish there"
        )

    async def wait_for_room(self) -> None:
        await self.publish_many(())

    def enqueue_many(self, payloads: Sequence[bytes]) -> asyncio.Future[int]:
        raise StoreError(
            f"this server follows {self.root}, which another process writes: publish there"
        )

    async def end_session(self) -> str:
        raise StoreError(
            f"this server follows {self.root}, which another process writes: end sessions there"
        )


# ---------------------------------------------------------------------------- inotify

_IN_MODIFY: Final = 0x002
_IN_MOVED_TO: Final = 0x080
_IN_CREATE: Final = 0x100
_IN_Q_OVERFLOW: Final = 0x4000
_IN_NONBLOCK: Final = os.O_NONBLOCK
_IN_CLOEXEC: Final = os.O_CLOEXEC
_EVENT: Final = struct.Struct("iIII")  # wd, mask, cookie, length of the name
_WAKING_NAMES: Final = frozenset({INDEX_FILE.encode(), ENDED_MARKER.encode()})


class _Inotify:
    """Calls ``wake`` when the followed session's ``index`` is appended to or replaced,
    or its ``ended`` marker appears. Linux only, through ``ctypes``."""

    def __init__(self, libc: ctypes.CDLL, fd: int, wake: Callable[[], None]) -> None:
        self._libc = libc
        self._fd = fd
        self._wake = wake
        self._watch: int | None = None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read)

    @classmethod
    def create(cls, wake: Callable[[], None]) -> _Inotify | None:
        """An inotify watcher, or None where there is no inotify (then poll)."""
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            init = libc.inotify_init1
        except (OSError, AttributeError):
            log.info("no inotify here: polling")
            return None
        fd = int(init(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            log.warning("inotify_init1 failed (%s): polling", os.strerror(ctypes.get_errno()))
            return None
        return cls(libc, fd, wake)

    def watch(self, directory: Path) -> None:
        """Watch ``directory`` (a session's) instead of the one watched so far."""
        if self._watch is not None:
            self._libc.inotify_rm_watch(self._fd, self._watch)
            self._watch = None
        watch = int(
            self._libc.inotify_add_watch(
                self._fd, os.fsencode(directory), _IN_MODIFY | _IN_MOVED_TO | _IN_CREATE
            )
        )
        if watch < 0:
            log.warning(
                "cannot watch %s with inotify (%s): polling",
                directory,
                os.strerror(ctypes.get_errno()),
            )
            return
        self._watch = watch

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        position = 0
        wake = False
        while position + _EVENT.size <= len(data):
            _, mask, _, length = _EVENT.unpack_from(data, position)
            name = data[position + _EVENT.size : position + _EVENT.size + length].rstrip(b"\0")
            position += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW or name in _WAKING_NAMES:
                wake = True
        if wake:
            self._wake()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


__all__ = ["DEFAULT_POLL_INTERVAL", "FollowedCatalogue", "Follower", "FollowerConfig"]
