"""Opening a session's log from its directory, whatever state the session is in.

:func:`open_session_log` is the one way to open a session's log for reading: active (the
unindexed tail is not served), ended, archived (``log.zst``), or being written by another
process. By default it changes nothing on disk; the process that holds the data
directory's lock passes ``finish_archiving=True`` to finish an archiving run a crash
interrupted. :func:`verify` checks a log without changing it, and :func:`set_tail_aside`
makes a closed session's log archivable.

Following a log another process appends to, batch by batch, is
:class:`~tickertape.store.follow.FollowedLog`; appending is
:class:`~tickertape.store.log.SessionLog`; writing an archive is
:mod:`tickertape.store.archive`.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from tickertape.errors import CorruptLogError, StoreError
from tickertape.store.archived import ArchivedLog
from tickertape.store.layout import (
    ARCHIVE_FILE,
    ARCHIVE_TMP_FILE,
    INDEX_FILE,
    LOG_FILE,
    fsync_directory,
    unused_path,
)
from tickertape.store.log import SessionLog
from tickertape.store.recovery import Recovery

log = logging.getLogger(__name__)


def open_session_log(
    directory: Path, *, finish_archiving: bool = False
) -> SessionLog | ArchivedLog:
    """A read-only view of the session in ``directory``, archived or not, whatever its
    state. Raises :class:`StoreError` if it has no log (:class:`CorruptLogError` if its
    only log is an archive that fails its checks).

    By default nothing on disk is changed: where both ``log.zst`` and ``log`` are present
    the archive is read, and the log if the archive is damaged.

    ``finish_archiving`` (only for the process holding the data directory's lock)
    finishes an archiving run that a crash interrupted after its commit point (``log``
    and ``log.zst`` both present): the archive is verified, then the original removed.
    An archive that fails that check is moved aside to ``log.zst.damaged`` and the
    original, still intact, is served. A ``log.zst.tmp`` left by a crash is removed.
    """
    if finish_archiving:
        _discard_stale_tmp(directory)
        if (directory / ARCHIVE_FILE).exists():
            return _open_archived(directory)
    elif (directory / ARCHIVE_FILE).exists():
        try:
            return ArchivedLog.open(directory)
        except CorruptLogError:
            if not (directory / LOG_FILE).exists():
                raise
        except StoreError:
            pass  # gone since: an archive is never removed but by deleting the session
    try:
        return SessionLog.open(directory, writable=False)
    except StoreError:
        if (directory / ARCHIVE_FILE).exists():  # archived in the meantime
            return _open_archived(directory) if finish_archiving else ArchivedLog.open(directory)
        raise


def remove_originals(directory: Path) -> None:
    """Remove a session's ``index`` and ``log`` once its archive is committed. The log
    goes last: while it exists, :func:`open_session_log` checks the archive before it
    finishes the job."""
    for name in (INDEX_FILE, LOG_FILE):
        (directory / name).unlink(missing_ok=True)
    fsync_directory(directory)


def _discard_stale_tmp(directory: Path) -> None:
    """Remove ``log.zst.tmp`` unless an archiving run holds it (its lock)."""
    try:
        fd = os.open(directory / ARCHIVE_TMP_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        log.info(
            "session %s: removing %s left by an interrupted run",
            directory.name,
            ARCHIVE_TMP_FILE,
        )
        (directory / ARCHIVE_TMP_FILE).unlink(missing_ok=True)
    except BlockingIOError:
        pass  # being written right now
    finally:
        os.close(fd)


def _open_archived(directory: Path) -> SessionLog | ArchivedLog:
    archive_path = directory / ARCHIVE_FILE
    if not (directory / LOG_FILE).exists():
        archived = ArchivedLog.open(directory)
        if (directory / INDEX_FILE).exists():
            remove_originals(directory)
        return archived
    try:
        archived = ArchivedLog.open(directory)
    except CorruptLogError as exc:
        problems: tuple[str, ...] = (str(exc),)
    else:
        problems = archived.verify().problems
        if not problems:
            log.info(
                "session %s: finishing an interrupted archive: removing the original log",
                directory.name,
            )
            remove_originals(directory)
            return archived
        archived.close()
    aside = unused_path(directory / f"{ARCHIVE_FILE}.damaged")
    log.warning(
        "session %s: its archive fails its checks (%s); the original log is kept and "
        "served, and the archive moved to %s",
        directory.name,
        "; ".join(problems),
        aside,
    )
    os.replace(archive_path, aside)
    fsync_directory(directory)
    return SessionLog.open(directory, writable=False)


def verify(directory: Path) -> Recovery:
    """Check a session's log and index without changing anything."""
    with SessionLog.open(directory, writable=False) as session_log:
        return session_log.recovery


class _Damaged(Exception):
    """Raised to stop a repair that would change a damaged log."""


def set_tail_aside(directory: Path) -> Recovery | None:
    """Move the tail of a closed session's log (:attr:`Recovery.tail_bytes`: bytes past
    its last index record, which no checksum vouches for) aside to ``log.cut-OFFSET``,
    and drop a partial or zeroed last index record, so that the log passes every check
    and can be archived. A log with a problem (damage) is left as it is. Returns what
    the open found (``cut_to`` set if it moved bytes), or None if the log was damaged
    and nothing was changed."""

    def refuse_damage(found: Recovery) -> None:
        if found.problems:
            raise _Damaged

    try:
        with SessionLog.open(directory, before_repair=refuse_damage) as repaired:
            return repaired.recovery
    except _Damaged:
        return None


__all__ = ["open_session_log", "remove_originals", "set_tail_aside", "verify"]
