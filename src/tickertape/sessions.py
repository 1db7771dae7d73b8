"""A session's log opened read-only, whatever its state: :func:`open_read_only`.

What is left here of the old ``sessions`` module (describing, verifying, exporting and
archiving sessions on disk went to :mod:`tickertape.store.inspect`, the command's
printing to :mod:`tickertape.cli.sessions`); it moves into the store too.
"""

from __future__ import annotations

from pathlib import Path

from tickertape.errors import CorruptLogError, StoreError
from tickertape.store.archive import ARCHIVE_FILE, ArchivedLog
from tickertape.store.log import LOG_FILE, SessionLog


def open_read_only(directory: Path) -> SessionLog | ArchivedLog:
    """A read-only view of the session in ``directory``, archived or not, changing
    nothing on disk (unlike :func:`~tickertape.store.archive.open_session_log`, which
    finishes an interrupted archiving run). Where both ``log.zst`` and ``log`` are
    present, the archive is read, and the log if the archive is damaged."""
    if (directory / ARCHIVE_FILE).exists():
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
        if (directory / ARCHIVE_FILE).exists():  # archived meanwhile
            return ArchivedLog.open(directory)
        raise


__all__ = ["open_read_only"]
