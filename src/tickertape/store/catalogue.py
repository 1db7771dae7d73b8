"""The data directory: one directory per session, named by its id.

::

    DATA/
      2026112901/  log  index  ended
      2026112902/  log  index

A session whose directory holds ``ended`` is closed: it is served, never appended to.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tickertape.errors import ConfigError, SessionNotFound, StoreError
from tickertape.store.archive import ARCHIVE_FILE, ArchivedLog, open_session_log
from tickertape.store.log import LOG_FILE, Durability, Recovery, SessionLog, write_lost_note
from tickertape.store.sessionid import SessionId

log = logging.getLogger(__name__)

ENDED_MARKER: Final = "ended"
LOCK_FILE: Final = ".lock"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session on disk."""

    id: SessionId
    path: Path
    ended: bool


class Catalogue:
    """The sessions under one data directory."""

    def __init__(self, root: Path, durability: Durability = Durability.BATCH) -> None:
        self.root = root
        self.durability = durability
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Take the data directory for this process: two writers would interleave their
        appends and destroy each other's sessions. Raises :class:`StoreError` if another
        process holds it. The lock goes with the process, however it ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"data directory {self.root} is in use by tickertape process {holder}; "
                "stop it first, or serve another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def sessions(self) -> list[SessionInfo]:
        """Every session on disk, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.is_dir() and SessionId.is_valid(entry.name):
                found.append(
                    SessionInfo(SessionId.parse(entry.name), entry, (entry / ENDED_MARKER).exists())
                )
        found.sort(key=lambda info: info.id)
        return found

    def find(self, session: str) -> SessionInfo:
        """The session named ``session``; raises :class:`SessionNotFound`."""
        if SessionId.is_valid(session):
            path = self.root / session
            if (path / LOG_FILE).exists() or (path / ARCHIVE_FILE).exists():
                return SessionInfo(SessionId.parse(session), path, (path / ENDED_MARKER).exists())
        raise SessionNotFound(f"no session {session!r} in {self.root}")

    def open_active(self, today: dt.date) -> tuple[SessionId, SessionLog]:
        """The session to append to on start-up.

        Today's most recent session is continued unless it was ended; then the next id
        of the day is opened. Every other session that was never ended is ended now:
        its day is over, or a later session of its day replaced it.

        Today's session is not continued either if opening it cut messages its index
        vouched for (:attr:`Recovery.lost_vouched`): they had been published, and
        numbering on from what is left would give numbers subscribers may have seen to
        other messages. It is ended (its intact prefix is still served) and the next id
        of the day is opened. The end is persisted before the log is repaired: after a
        crash in between, the repaired log would no longer show what was cut.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        latest: SessionInfo | None = None
        sessions = self.sessions()
        for info in sessions:
            if info.id.day > today:
                raise StoreError(
                    f"session {info.id} in {self.root} is dated after today ({today:%Y-%m-%d}); "
                    "is the clock right?"
                )
        for info in sessions:
            if info.id.day == today:
                latest = info
        for info in sessions:
            if info is not latest and not info.ended:
                # Its day is over, or a later session of the same day replaced it.
                log.info("session %s was never ended: ending it", info.id)
                self.mark_ended(info.id)
        if latest is not None and not latest.ended:
            return self._continue(latest, today)
        session_id = latest.id.next_roll() if latest else SessionId.first_of(today)
        opened = SessionLog.open(
            self.root / str(session_id), durability=self.durability, create=True
        )
        return session_id, opened

    def _continue(self, latest: SessionInfo, today: dt.date) -> tuple[SessionId, SessionLog]:
        """Open ``latest`` to append to, unless its recovery cut messages its index
        vouched for: then end it and open the next (see :meth:`open_active`)."""

        def end_if_published_cut(found: Recovery) -> None:
            if not found.lost_vouched:
                return
            try:
                latest.id.next_roll()
            except ConfigError as exc:  # refused before anything is changed
                raise StoreError(
                    f"session {latest.id} was damaged: messages {found.messages + 1}.."
                    f"{found.vouched} were cut, so it cannot go on, and no session can "
                    f"follow it today: {exc}"
                ) from exc
            # Served by pull from now on, but never as a whole session.
            write_lost_note(
                latest.path,
                f"messages {found.messages + 1}..{found.vouched} were lost: they were "
                "found damaged at start-up",
            )
            self.mark_ended(latest.id)

        opened = SessionLog.open(
            latest.path, durability=self.durability, before_repair=end_if_published_cut
        )
        found = opened.recovery
        if not found.lost_vouched:
            return latest.id, opened
        opened.close()
        next_id, next_log = self.open_next(latest.id, today)
        log.error(
            "session %s was damaged: messages %d..%d were cut; it is ended and session %s "
            "opened so that no number is reused",
            latest.id,
            found.messages + 1,
            found.vouched,
            next_id,
        )
        return next_id, next_log

    def open_next(self, ended: SessionId, day: dt.date) -> tuple[SessionId, SessionLog]:
        """Create the session that follows ``ended``: counter 01 of ``day`` if that is a
        later day, else the next counter of ``ended``'s day."""
        session_id = SessionId.first_of(day) if day > ended.day else ended.next_roll()
        while (self.root / str(session_id)).exists():  # the clock went back: never reuse
            session_id = session_id.next_roll()
        created = SessionLog.open(
            self.root / str(session_id), durability=self.durability, create=True
        )
        return session_id, created

    def open_exact(self, session_id: SessionId) -> SessionLog:
        """Open ``session_id`` to append to: continue it, or create it. For a server
        that takes its session ids from elsewhere (an upstream feed). Every other
        session not yet ended is ended: this one replaces it."""
        self.root.mkdir(parents=True, exist_ok=True)
        info = next((i for i in self.sessions() if i.id == session_id), None)
        if info is not None and info.ended:
            raise StoreError(f"session {session_id} has ended; it cannot be appended to")
        for other in self.sessions():
            if other.id != session_id and not other.ended:
                self.mark_ended(other.id)
        return SessionLog.open(
            self.root / str(session_id), durability=self.durability, create=info is None
        )

    def open_closed(self, session: str) -> SessionLog | ArchivedLog:
        """A read-only view of an ended session, archived or not. A session that has
        not ended (the next one, while a roll opens it) is not served this way."""
        info = self.find(session)
        if not info.ended:
            raise SessionNotFound(f"session {session} has not ended: it is not served yet")
        return open_session_log(info.path)

    def mark_ended(self, session: SessionId) -> None:
        """Persist that ``session`` has ended."""
        marker = self.root / str(session) / ENDED_MARKER
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(marker.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
