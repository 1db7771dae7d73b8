"""Sessions on disk, read without a server: describe, verify, export and archive them.

What ``tickertape sessions`` does with ``--data``, and what the admin API uses to describe
the sessions the engine is not writing. Everything here reads without changing a byte
(no recovery, no clean-up of an interrupted archive), except :func:`archive_offline`,
which first takes the data directory's lock, as a server does. Nothing here prints:
the command line (:mod:`tickertape.cli.sessions`) says what is found, and draws the
progress bar.

A session's state on disk:

``archived``
    its directory holds ``log.zst`` (:mod:`tickertape.store.archive`);
``ended``
    it holds the ``ended`` marker;
``active``
    neither: the session a server appends to (or, with no server running, the one it
    would continue, if it is today's).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from tickertape.errors import CorruptLogError, SessionNotFound, StoreError
from tickertape.store.archive import ArchiveResult, archive_session
from tickertape.store.archived import ArchivedLog
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import (
    ARCHIVE_FILE,
    ENDED_MARKER,
    INDEX_FILE,
    LOCK_FILE,
    LOG_FILE,
    format_version,
)
from tickertape.store.log import SessionLog
from tickertape.store.opening import open_session_log
from tickertape.store.sessionid import SESSION_ID_FORM, SessionId
from tickertape.wire.framing import packet_offsets

STATE_ACTIVE: Final = "active"
STATE_ENDED: Final = "ended"
STATE_ARCHIVED: Final = "archived"

EXPORT_FORMATS: Final = ("text", "hex", "raw", "soupbin")
DEFAULT_EXPORT_CHUNK: Final = 1 << 20


# ---------------------------------------------------------------------------- describing


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """A session as ``sessions list`` and ``sessions show`` present it."""

    id: str
    state: str
    messages: int
    """Messages that are intact and served (for a damaged log: up to the damage)."""
    bytes: int
    """Bytes on disk: the sizes of every file in the session's directory, added up."""
    path: Path
    log_bytes: int = 0
    """The size of the log as served (for an archived session, before compression)."""
    last_published: dt.datetime | None = None
    """The log file's modification time: the last append (None once archived)."""
    ended_at: dt.datetime | None = None
    """The ``ended`` marker's modification time: when the session ended."""
    problems: tuple[str, ...] = ()
    """What opening the log found (a full check of an archive is ``verify``'s job)."""
    tail: str | None = None
    """Bytes past the last index record, in words (not damage: a batch being written,
    or one never acknowledged); None if there are none."""
    format: int = 1
    """The session's on-disk format version (its ``format`` file; 1 without one)."""

    def brief(self) -> dict[str, object]:
        """The fields every listing shows, JSON-ready (``problems``: how many)."""
        return {
            "id": self.id,
            "state": self.state,
            "messages": self.messages,
            "bytes": self.bytes,
            "problems": len(self.problems),
        }

    def detail(self) -> dict[str, object]:
        """Every field, JSON-ready."""
        return {
            **self.brief(),
            "path": str(self.path),
            "log_bytes": self.log_bytes,
            "last_published": _iso(self.last_published),
            "ended_at": _iso(self.ended_at),
            "problems": list(self.problems),
            "tail": self.tail,
            "format": self.format,
        }


@dataclass(frozen=True, slots=True)
class LogFacts:
    """What opening a session's log read-only tells: its size in messages and bytes."""

    messages: int
    log_bytes: int
    problems: tuple[str, ...]
    tail: str | None = None
    """The log's tail past its last index record, in words (see :class:`SessionSummary`)."""


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="milliseconds")


def _mtime(path: Path) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    except FileNotFoundError:
        return None


def state_of(directory: Path) -> str:
    """``archived``, ``ended`` or ``active``, from the files in ``directory``."""
    if (directory / ARCHIVE_FILE).exists():
        return STATE_ARCHIVED
    if (directory / ENDED_MARKER).exists():
        return STATE_ENDED
    return STATE_ACTIVE


def disk_bytes(directory: Path) -> int:
    """The sizes of the regular files in ``directory``, added up."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def log_facts(directory: Path) -> LogFacts:
    """Open the log in ``directory`` read-only and say what it holds. Blocking: a log
    (not an archive) is read whole to check its checksums. An archive whose index is
    damaged holds no message that can be served."""
    try:
        opened = open_session_log(directory)
    except CorruptLogError as exc:
        return LogFacts(0, 0, (str(exc),))
    with opened as session_log:
        return LogFacts(
            session_log.recovery.messages,
            session_log.end_offset,
            session_log.recovery.problems,
            session_log.recovery.tail_note(),
        )


class LogFactsCache:
    """:func:`log_facts` of closed sessions, kept while their files are unchanged, so
    that listing the sessions again does not read every log again. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[Path, tuple[tuple[object, ...], LogFacts]] = {}

    def get(self, directory: Path) -> LogFacts:
        key = _fingerprint(directory)
        with self._lock:
            known = self._known.get(directory)
        if known is not None and known[0] == key:
            return known[1]
        facts = log_facts(directory)
        if _fingerprint(directory) == key:  # not changed while it was read
            with self._lock:
                self._known[directory] = (key, facts)
        return facts


def _fingerprint(directory: Path) -> tuple[object, ...]:
    found: list[object] = []
    for name in (LOG_FILE, INDEX_FILE, ARCHIVE_FILE):
        try:
            stat = (directory / name).stat()
        except FileNotFoundError:
            found.append(None)
        else:
            found.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def describe(
    session_id: str,
    directory: Path,
    *,
    facts: LogFacts | None = None,
    cache: LogFactsCache | None = None,
) -> SessionSummary:
    """Summarize the session in ``directory``. ``facts`` about its log may be given (the
    engine knows its active session's); else the log is opened read-only (through
    ``cache`` if given). Blocking: run it off the event loop."""
    state = state_of(directory)
    if facts is None:
        facts = cache.get(directory) if cache is not None else log_facts(directory)
    return SessionSummary(
        id=session_id,
        state=state,
        messages=facts.messages,
        bytes=disk_bytes(directory),
        path=directory,
        log_bytes=facts.log_bytes,
        last_published=None if state == STATE_ARCHIVED else _mtime(directory / LOG_FILE),
        ended_at=_mtime(directory / ENDED_MARKER),
        problems=facts.problems,
        tail=facts.tail,
        format=format_version(directory),
    )


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise StoreError(f"no data directory {root}: give the one the server uses with --data")


def find_session(root: Path, session_id: str) -> Path:
    """The directory of session ``session_id`` under ``root``; raises
    :class:`SessionNotFound` saying what there is instead."""
    _check_root(root)
    if not SessionId.is_valid(session_id):
        raise SessionNotFound(f"{session_id!r} is not a session id: {SESSION_ID_FORM}")
    try:
        return Catalogue(root).find(session_id).path
    except SessionNotFound:
        known = [f"{info.id} ({state_of(info.path)})" for info in Catalogue(root).sessions()]
        hint = f"sessions there: {', '.join(known)}" if known else "it holds no sessions"
        raise SessionNotFound(f"no session {session_id} in {root} ({hint})") from None


def list_sessions(root: Path, cache: LogFactsCache | None = None) -> list[SessionSummary]:
    """Every session under ``root``, oldest first. Blocking."""
    _check_root(root)
    return [describe(str(info.id), info.path, cache=cache) for info in Catalogue(root).sessions()]


def show_session(root: Path, session_id: str) -> SessionSummary:
    """One session under ``root``. Blocking."""
    return describe(session_id, find_session(root, session_id))


# ---------------------------------------------------------------------------- verifying


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What checking a session's files found."""

    session: str
    checked: tuple[str, ...]
    """What was read: ``log and index``, ``archive``, or both."""
    messages: int
    """Messages before the first damage (all of them when clean)."""
    batches: int
    problems: tuple[str, ...] = field(default=())
    tail: str | None = None
    """Bytes past the log's last index record, in words: not damage (a batch being
    written, or one never acknowledged); None if there are none."""

    @property
    def clean(self) -> bool:
        """Whether nothing is damaged (a tail is not damage)."""
        return not self.problems


def verify_session(root: Path, session_id: str) -> VerifyReport:
    """Check every checksum of a session's log and index, or of its archive (every
    chunk decompressed and checked), changing nothing. Where both are present (an
    archiving run was interrupted), both are checked."""
    directory = find_session(root, session_id)
    checked: list[str] = []
    problems: list[str] = []
    messages: int | None = None
    batches = 0
    tail: str | None = None
    if (directory / ARCHIVE_FILE).exists():
        checked.append(f"archive {ARCHIVE_FILE}")
        try:
            with ArchivedLog.open(directory) as archived:
                found = archived.verify()
        except CorruptLogError as exc:
            problems.append(str(exc))
            messages = 0
        else:
            problems += found.problems
            messages, batches = found.messages, found.batches
    if (directory / LOG_FILE).exists():
        checked.append(f"{LOG_FILE} and {INDEX_FILE}")
        with SessionLog.open(directory, writable=False) as session_log:
            found = session_log.recovery
        problems += found.problems
        tail = found.tail_note()
        if messages is None or found.messages > messages:
            messages, batches = found.messages, found.batches
    return VerifyReport(session_id, tuple(checked), messages or 0, batches, tuple(problems), tail)


# ---------------------------------------------------------------------------- exporting


class ExportProgress(Protocol):
    """What :func:`export` tells of its progress (a progress bar, in the command line)."""

    def update(self, done: int) -> None:
        """``done`` messages were written so far."""

    def finish(self, done: int) -> None:
        """All ``done`` messages were written."""


def export_range(
    session_log: SessionLog | ArchivedLog, first: int | None, last: int | None
) -> tuple[int, int]:
    """The sequence numbers ``first..last`` to export, checked against what the log
    holds: by default all of it; ``last`` past the end stops at the end."""
    held = session_log.next_seq - 1
    start = 1 if first is None else first
    stop = held if last is None else min(last, held)
    if start < 1:
        raise StoreError(f"--from {start}: sequence numbers start at 1")
    if first is not None and start > held:
        what = f"messages 1..{held}" if held else "no messages"
        raise StoreError(f"--from {start}: session {session_log.directory.name} holds {what}")
    if last is not None and last < start:
        raise StoreError(f"--to {last} is before --from {start}")
    return start, stop


def export(
    session_log: SessionLog | ArchivedLog,
    first: int,
    last: int,
    form: str,
    out: BinaryIO,
    progress: ExportProgress | None = None,
    chunk: int = DEFAULT_EXPORT_CHUNK,
) -> int:
    """Write messages ``first..last`` to ``out`` in ``form`` (one of
    :data:`EXPORT_FORMATS`); returns how many were written.

    ``text``: ``SEQ PAYLOAD`` a line, trailing spaces of the payload dropped (as
    ``tail`` prints); ``hex``: ``SEQ HEX`` a line; ``raw``: each payload after its length
    (u16, big-endian); ``soupbin``: the Sequenced Data packets exactly as in the log.
    """
    if form not in EXPORT_FORMATS:
        raise StoreError(f"unknown export format {form!r}: one of {', '.join(EXPORT_FORMATS)}")
    seq = first
    limit = last + 1
    while seq < limit:
        block, count = session_log.read(seq, chunk, limit)
        if count == 0:
            break
        if form == "soupbin":
            out.write(block)
        else:
            out.write(_render(block, seq, form))
        seq += count
        if progress is not None:
            progress.update(seq - first)
    if progress is not None:
        progress.finish(seq - first)
    return seq - first


def _render(block: bytes, seq: int, form: str) -> bytes:
    offsets = packet_offsets(block)
    view = memoryview(block)
    lines: list[bytes] = []
    for number, (start, stop) in enumerate(pairwise(offsets)):
        payload = bytes(view[start + 3 : stop])
        if form == "text":
            lines.append(b"%d %s\n" % (seq + number, payload.rstrip(b" ")))
        elif form == "hex":
            lines.append(b"%d %s\n" % (seq + number, payload.hex().encode()))
        else:
            lines.append(len(payload).to_bytes(2, "big") + payload)
    return b"".join(lines)


# ---------------------------------------------------------------------------- archiving


@contextlib.contextmanager
def data_directory_held(root: Path) -> Iterator[None]:
    """Hold ``root``'s lock, as a server does, for the duration of the block; raise
    :class:`StoreError` at once if a server (or another command) holds it."""
    _check_root(root)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise StoreError(
                f"data directory {root} is in use by tickertape process {holder}: archive "
                "through its admin API (tickertape sessions archive ID --admin-port PORT), "
                "or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def data_directory_in_use(root: Path) -> str | None:
    """Who holds ``root``'s lock (a server's process id, as it wrote it), or None if
    nobody does. Only looks: the lock is taken shared for an instant and nothing is
    written."""
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
    else:
        return None
    finally:
        os.close(fd)


def archive_offline(root: Path, session_id: str) -> ArchiveResult:
    """Archive an ended session of a data directory no server is using."""
    with data_directory_held(root):
        return archive_session(find_session(root, session_id))


__all__ = [
    "EXPORT_FORMATS",
    "STATE_ACTIVE",
    "STATE_ARCHIVED",
    "STATE_ENDED",
    "ExportProgress",
    "LogFacts",
    "LogFactsCache",
    "SessionSummary",
    "VerifyReport",
    "archive_offline",
    "data_directory_held",
    "data_directory_in_use",
    "describe",
    "disk_bytes",
    "export",
    "export_range",
    "find_session",
    "list_sessions",
    "log_facts",
    "show_session",
    "state_of",
    "verify_session",
]
