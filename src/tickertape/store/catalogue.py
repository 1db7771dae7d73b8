"""The data directory: one directory per session, named by its id.

::

    DATA/
      2026112901/  format  log  index  ended
      2026112902/  format  log  index

A session whose directory holds ``ended`` is closed: it is served, never appended to.

``format`` names the on-disk format the session was written in: one line,
``tickertape-session 1``. A session without it was made by a release older than the file,
and is version 1. A session of a version newer than this release knows is never read,
written or removed: :meth:`Catalogue.find` refuses it with an error naming the file and
the version, and :meth:`Catalogue.sessions` skips it with a warning.

A session is created whole or not at all, as a restart sees it: its directory is built
under a temporary name (``.creating-ID``, with an empty log and index, synced), then
renamed to its id, and the data directory is synced. A crash (or a full disk) part way
leaves only a ``.creating-`` directory, which no reader takes for a session and the next
writer removes.

The data directory is read defensively: only a real directory named like a session id,
holding a regular ``log`` (or ``log.zst``, archived), is a session. Anything else in it (a
symbolic link named like a session, an empty directory, one holding only ``index``, a
``log`` that is a directory, files of other names) is skipped with one warning naming it,
never followed, never written to. An empty directory named like a session (what a roll of
an older version, killed part way, left) is removed by the next writer.

The names of the files and markers, the ``format`` file and the lock itself are
:mod:`tickertape.store.layout`'s; opening a log is :mod:`tickertape.store.opening`'s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tickertape.errors import ConfigError, SessionNotFound, StoreError
from tickertape.store.archived import ArchivedLog
from tickertape.store.layout import (
    ARCHIVE_FILE,
    CLUSTER_POSITION_FILE,
    CREATING_PREFIX,
    DELETING_PREFIX,
    ENDED_MARKER,
    INDEX_FILE,
    LOCK_FILE,
    LOG_FILE,
    format_version,
    fsync_directory,
    lock_data_directory,
    write_format,
    write_lost_note,
)
from tickertape.store.log import Durability, SessionLog
from tickertape.store.opening import open_session_log, set_tail_aside
from tickertape.store.recovery import Recovery, has_tail
from tickertape.store.sessionid import SessionId

log = logging.getLogger(__name__)

_OWN_PREFIXES: Final = (LOCK_FILE, CLUSTER_POSITION_FILE, CREATING_PREFIX, DELETING_PREFIX)


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
        self._warned: set[str] = set()

    def lock(self) -> None:
        """Take the data directory for this process: two writers would interleave their
        appends and destroy each other's sessions. Raises :class:`StoreError` if another
        process holds it. The lock goes with the process, however it ends."""
        self._lock_fd = lock_data_directory(self.root)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def sessions(self) -> list[SessionInfo]:
        """Every session on disk, oldest first. Anything else in the data directory is
        skipped, with a warning naming it (once per catalogue)."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith(_OWN_PREFIXES):
                continue
            why = _not_a_session(entry)
            if why is not None:
                if os.path.lexists(entry):  # else deleted since it was listed
                    self._skip(entry, why)
                continue
            try:
                format_version(entry)
            except StoreError as exc:
                self._skip(entry, str(exc), "a session this release cannot read")
                continue
            found.append(
                SessionInfo(SessionId.parse(entry.name), entry, (entry / ENDED_MARKER).exists())
            )
        found.sort(key=lambda info: info.id)
        return found

    def _skip(self, entry: Path, why: str, what: str = "not a session tickertape made") -> None:
        if entry.name not in self._warned:
            self._warned.add(entry.name)
            log.warning(
                "skipping %s (%s): %s, so it is neither read, followed nor changed",
                entry,
                why,
                what,
            )

    def find(self, session: str) -> SessionInfo:
        """The session named ``session``; raises :class:`SessionNotFound`."""
        if SessionId.is_valid(session):
            path = self.root / session
            why = _not_a_session(path)
            if why is None:
                format_version(path)  # refuses a format this release does not know
                return SessionInfo(SessionId.parse(session), path, (path / ENDED_MARKER).exists())
            if os.path.lexists(path):
                raise SessionNotFound(f"no session {session!r} in {self.root}: {path} is {why}")
        raise SessionNotFound(f"no session {session!r} in {self.root}")

    def tidy(self) -> None:
        """Remove what interrupted work left (for the writer, holding the lock): a
        session being created (``.creating-``) or deleted (``.deleting-``), and an
        empty directory named like a session (a creation an older version did not
        finish). Nothing else is touched."""
        if not self.root.is_dir():
            return
        removed = False
        for entry in self.root.iterdir():
            if entry.name.startswith((CREATING_PREFIX, DELETING_PREFIX)) and entry.is_symlink():
                continue  # not what tickertape makes: never followed
            if entry.name.startswith(CREATING_PREFIX):
                log.warning("removing %s: a session creation that did not finish", entry)
                shutil.rmtree(entry)
                removed = True
            elif entry.name.startswith(DELETING_PREFIX):
                log.info("removing %s: a session deletion that did not finish", entry)
                shutil.rmtree(entry)
                removed = True
            elif (
                SessionId.is_valid(entry.name)
                and not entry.is_symlink()
                and entry.is_dir()
                and not any(entry.iterdir())
            ):
                log.warning(
                    "removing %s: an empty directory, from a session creation that did not finish",
                    entry,
                )
                entry.rmdir()
                removed = True
        if removed:
            fsync_directory(self.root)

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
        self.tidy()
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
        if latest is not None and not latest.ended:
            session_id, opened = self._continue(latest, today)
        else:
            session_id = latest.id.next_roll() if latest else SessionId.first_of(today)
            session_id = self._unused(session_id)
            opened = self.create(session_id)
        # Only now that the active session is open: ending the others first would end
        # a session that a failed start should have left to go on.
        for info in sessions:
            if info.id != session_id and not info.ended:
                # Its day is over, or a later session of the same day replaced it.
                log.info("session %s was never ended: ending it", info.id)
                self.mark_ended(info.id)
        self.set_tails_aside(info for info in sessions if info.id != session_id)
        return session_id, opened

    def set_tails_aside(self, ended: Iterable[SessionInfo]) -> None:
        """Make ended sessions whose logs end past their last index record archivable:
        a crash left a batch whose record was never written (never acknowledged), or an
        earlier version did not sync the index (see :func:`set_tail_aside`). The bytes
        go to ``log.cut-OFFSET``; a damaged log is left as it is, for ``verify`` to show."""
        for info in ended:
            try:
                if (info.path / ARCHIVE_FILE).exists() or not has_tail(info.path):
                    continue
                found = set_tail_aside(info.path)
            except (StoreError, OSError) as exc:
                log.warning("session %s: could not check its log's tail: %s", info.id, exc)
                continue
            if found is None:
                log.warning(
                    "session %s is damaged (tickertape sessions verify %s says where): left "
                    "as it is",
                    info.id,
                    info.id,
                )
            elif found.cut_to is not None:
                log.warning(
                    "ended session %s: %d messages served; %s set aside in %s",
                    info.id,
                    found.messages,
                    found.tail_summary(),
                    found.cut_to,
                )

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
        session_id = self._unused(session_id)
        return session_id, self.create(session_id)

    def _unused(self, session_id: SessionId) -> SessionId:
        """``session_id``, or the first after it whose name nothing in the data directory
        holds: a session the clock went back to, or a stray entry, is never reused."""
        while os.path.lexists(self.root / str(session_id)):
            session_id = session_id.next_roll()
        return session_id

    def create(self, session_id: SessionId) -> SessionLog:
        """Create session ``session_id`` whole, or not at all (see the module's
        documentation), and open it to append to. Raises :class:`StoreError` (or the
        ``OSError``: a full disk) with nothing left behind."""
        final = self.root / str(session_id)
        building = self.root / f"{CREATING_PREFIX}{session_id}"
        if os.path.lexists(final):
            raise StoreError(f"cannot create session {session_id}: {final} is in the way")
        if building.is_symlink():
            building.unlink()
        elif building.exists():
            shutil.rmtree(building)
        try:
            building.mkdir()
            for name in (LOG_FILE, INDEX_FILE):
                fd = os.open(building / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            write_format(building)
            fsync_directory(building)
            os.rename(building, final)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(building)
            raise
        fsync_directory(self.root)
        return SessionLog.open(final, durability=self.durability)

    def discard(self, session_id: SessionId, created: SessionLog) -> None:
        """Close and remove a session :meth:`create` has just made, which nothing was
        written to (a roll that could not end the session before it). Renamed first, so
        that a crash midway leaves no part of it that could be taken for a session."""
        created.close()
        path = self.root / str(session_id)
        doomed = self.root / f"{DELETING_PREFIX}{session_id}"
        try:
            path.rename(doomed)
            fsync_directory(self.root)
            shutil.rmtree(doomed)
            fsync_directory(self.root)
        except OSError as exc:
            log.error("session %s was created but cannot be removed: %s", session_id, exc)

    def open_exact(self, session_id: SessionId) -> SessionLog:
        """Open ``session_id`` to append to: continue it, or create it. For a server
        that takes its session ids from elsewhere (an upstream feed). Every other
        session not yet ended is ended: this one replaces it."""
        self.root.mkdir(parents=True, exist_ok=True)
        info = next((i for i in self.sessions() if i.id == session_id), None)
        if info is not None and info.ended:
            raise StoreError(f"session {session_id} has ended; it cannot be appended to")
        if info is None:
            opened = self.create(session_id)  # raises if a stray entry holds the name
        else:
            opened = SessionLog.open(info.path, durability=self.durability)
        others = [other for other in self.sessions() if other.id != session_id]
        for other in others:
            if not other.ended:
                self.mark_ended(other.id)
        self.set_tails_aside(others)
        return opened

    def open_closed(self, session: str) -> SessionLog | ArchivedLog:
        """A read-only view of an ended session, archived or not. A session that has
        not ended (the next one, while a roll opens it) is not served this way."""
        info = self.find(session)
        if not info.ended:
            raise SessionNotFound(f"session {session} has not ended: it is not served yet")
        return open_session_log(info.path, finish_archiving=True)

    def mark_ended(self, session: SessionId) -> None:
        """Persist that ``session`` has ended."""
        directory = self.root / str(session)
        why = _not_a_session(directory)
        if why is not None and os.path.lexists(directory):  # if absent, os.open says so
            raise StoreError(f"cannot end session {session}: {directory} is {why}")
        # O_NOFOLLOW: a symbolic link named ``ended`` is not written through.
        fd = os.open(directory / ENDED_MARKER, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(directory)


def _not_a_session(entry: Path) -> str | None:
    """None if ``entry`` is a session directory tickertape made; else what it is."""
    if not SessionId.is_valid(entry.name):
        return "not named like a session (YYYYMMDDNN)"
    if entry.is_symlink():
        return "a symbolic link"
    if not entry.exists():
        return "not there"
    if not entry.is_dir():
        return "not a directory"
    kinds = []
    for name in (LOG_FILE, ARCHIVE_FILE):
        part = entry / name
        if part.is_symlink():
            return f"a directory whose {name} is a symbolic link"
        if part.is_file():
            return None
        if part.exists():
            kinds.append(f"a directory whose {name} is not a file")
    if kinds:
        return kinds[0]
    try:
        held = sorted(p.name for p in entry.iterdir())
    except OSError as exc:
        return f"a directory that cannot be read ({exc.strerror})"
    if not held:
        return "an empty directory"
    return f"a directory with no log, only: {', '.join(held[:5])}"
