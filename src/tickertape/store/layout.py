"""The data directory's layout on disk: file names, markers, the format file, the lock.

::

    DATA/
      .lock
      2026112901/  format  log  index  ended  [lost]  [log.zst]  [log.cut-OFFSET]
      2026112902/  format  log  index

This module names every file and marker tickertape keeps (so that no other module spells
one out), reads and writes the small ones (``format``, ``lost``), takes the data
directory's lock, and holds the few durable-file helpers the store shares (syncing a
directory, replacing a file atomically, a name that does not overwrite an earlier one).

It does not read or write a log or an index (:mod:`tickertape.store.log`,
:mod:`tickertape.store.index`), nor decide what a session directory is
(:mod:`tickertape.store.catalogue`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from tickertape.errors import StoreError

LOG_FILE: Final = "log"
"""A session's SoupBinTCP Sequenced Data packets, back to back."""
INDEX_FILE: Final = "index"
"""One record per batch of the log (:mod:`tickertape.store.index`)."""
ARCHIVE_FILE: Final = "log.zst"
"""An archived session's log and index, compressed (:mod:`tickertape.store.archived`)."""
ARCHIVE_TMP_FILE: Final = "log.zst.tmp"
"""An archive being written: never trusted."""
ENDED_MARKER: Final = "ended"
"""In a session's directory: the session is closed, served but never appended to."""
LOST_FILE: Final = "lost"
"""In the directory of a session ended because messages its index vouched for were lost
(start-up found them damaged and cut them): which ones. What is left of the log is
clean, but the session cannot be served whole: pulls end with a Debug packet saying so."""
LOCK_FILE: Final = ".lock"
"""In the data directory: held (``flock``) by the process that writes it."""
CLUSTER_POSITION_FILE: Final = ".cluster-position"
"""In the data directory of a cluster's node: how far into the journal it has applied."""
CREATING_PREFIX: Final = ".creating-"
"""A session being created: renamed to its id once whole."""
DELETING_PREFIX: Final = ".deleting-"
"""A session being deleted (by the retention policy): renamed from its id first."""
FORMAT_FILE: Final = "format"
FORMAT_NAME: Final = "tickertape-session"
FORMAT_VERSION: Final = 1
"""The on-disk format of a session this release writes, and the newest it reads."""


# ---------------------------------------------------------------------------- format


def format_version(directory: Path) -> int:
    """The format version of the session in ``directory``: what its ``format`` file says,
    or 1 if it has none (made by an older release). Raises :class:`StoreError` if the file
    cannot be read or understood, or names a version newer than :data:`FORMAT_VERSION`."""
    path = directory / FORMAT_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return 1
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    name, _, version = text.strip().partition(" ")
    if name != FORMAT_NAME or not version.isdigit():
        raise StoreError(f"{path} does not name a tickertape session format: {text[:40]!r}")
    if int(version) > FORMAT_VERSION:
        raise StoreError(
            f"{path} says format version {int(version)}, newer than this release of "
            f"tickertape reads (version {FORMAT_VERSION}): use the release that wrote it"
        )
    return int(version)


def write_format(directory: Path) -> None:
    """Write (and sync) the ``format`` file of a session being created."""
    fd = os.open(directory / FORMAT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        data = f"{FORMAT_NAME} {FORMAT_VERSION}\n".encode()
        if os.write(fd, data) != len(data):
            raise StoreError(f"short write to {directory / FORMAT_FILE}")
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- lost


def lost_note(directory: Path) -> str | None:
    """What the session in ``directory`` lost (its :data:`LOST_FILE`), if anything."""
    try:
        text = (directory / LOST_FILE).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    return text or "messages were lost"


def write_lost_note(directory: Path, text: str) -> None:
    """Record in ``directory`` that the session lost messages (see :data:`LOST_FILE`);
    synced, the directory too."""
    replace_file(directory / LOST_FILE, text.encode() + b"\n")


# ---------------------------------------------------------------------------- lock


def lock_data_directory(root: Path) -> int:
    """Take ``root``'s lock for this process (made if need be) and write our process id
    in it; returns the descriptor, whose closing releases the lock (so does the end of
    the process, however it ends). Raises :class:`StoreError` if another process holds
    it: two writers would interleave their appends and destroy each other's sessions."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StoreError(
            f"data directory {root} is in use by tickertape process {holder}; "
            "stop it first, or serve another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# ---------------------------------------------------------------------------- durable files


def fsync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` (a file made, renamed or removed) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a crash leaves the old or the new file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def unused_path(path: Path) -> Path:
    """``path``, or ``path.N`` for the first N that does not exist: bytes moved aside by
    an earlier recovery (or an archive set aside) must not be overwritten."""
    candidate = path
    number = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{number}")
        number += 1
    return candidate


__all__ = [
    "ARCHIVE_FILE",
    "ARCHIVE_TMP_FILE",
    "CLUSTER_POSITION_FILE",
    "CREATING_PREFIX",
    "DELETING_PREFIX",
    "ENDED_MARKER",
    "FORMAT_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "LOST_FILE",
    "format_version",
    "fsync_directory",
    "lock_data_directory",
    "lost_note",
    "replace_file",
    "unused_path",
    "write_format",
    "write_lost_note",
]
