"""Tests of :func:`tickertape.store.opening.open_session_log`, the one opener of a
session's log whatever its state: by default it changes nothing on disk (what the
follower and ``tickertape sessions`` rely on); with ``finish_archiving`` it finishes an
archiving run a crash interrupted (what the writer does). The crash cases themselves
are in test_archive.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.store.archive import archive_session
from tickertape.store.archived import ArchivedLog
from tickertape.store.layout import (
    ARCHIVE_FILE,
    ARCHIVE_TMP_FILE,
    ENDED_MARKER,
    LOG_FILE,
)
from tickertape.store.log import SessionLog
from tickertape.store.opening import open_session_log
from tickertape.wire.soupbintcp import encode_sequenced_many

PAYLOADS = [b"one", b"two", b"three"]


def make_ended(directory: Path) -> bytes:
    with SessionLog.open(directory, create=True) as session_log:
        session_log.append(encode_sequenced_many(PAYLOADS), len(PAYLOADS))
    (directory / ENDED_MARKER).touch()
    return (directory / LOG_FILE).read_bytes()


def files(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


def test_active_ended_and_archived_sessions_open_alike(tmp_path: Path) -> None:
    active = tmp_path / "2026112902"
    with SessionLog.open(active, create=True) as writer:
        writer.append(encode_sequenced_many(PAYLOADS), len(PAYLOADS))
        with open_session_log(active) as reading:  # being written
            assert isinstance(reading, SessionLog) and reading.next_seq == 4
    ended = tmp_path / "2026112901"
    original = make_ended(ended)
    with open_session_log(ended) as reading:
        assert reading.read_range(0, reading.end_offset) == original
    archive_session(ended)
    with open_session_log(ended) as reading:
        assert isinstance(reading, ArchivedLog)
        assert reading.read_range(0, reading.end_offset) == original
    with pytest.raises(StoreError, match="no session log"):
        open_session_log(tmp_path / "2026112903")


def test_by_default_an_interrupted_archive_is_read_and_left_as_it_is(tmp_path: Path) -> None:
    directory = tmp_path / "2026112901"
    original = make_ended(directory)
    twin = tmp_path / "twin"
    shutil.copytree(directory, twin)
    archive_session(twin)
    # A crash after the commit point, before the originals were removed; and a
    # leftover temporary file of another run.
    shutil.copy(twin / ARCHIVE_FILE, directory / ARCHIVE_FILE)
    (directory / ARCHIVE_TMP_FILE).write_bytes(b"half an archive")
    before = files(directory)
    with open_session_log(directory) as reading:
        assert isinstance(reading, ArchivedLog)
        assert reading.read_range(0, reading.end_offset) == original
    assert files(directory) == before
    with open_session_log(directory, finish_archiving=True) as reading:
        assert reading.read_range(0, reading.end_offset) == original
    assert files(directory) == {ENDED_MARKER, ARCHIVE_FILE}
