"""Tests of the data directory's layout helpers (:mod:`tickertape.store.layout`): the
lock, the ``lost`` note, atomic replacement and names that never overwrite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.store.layout import (
    LOCK_FILE,
    LOST_FILE,
    lock_data_directory,
    lost_note,
    replace_file,
    unused_path,
    write_lost_note,
)


def test_the_lock_is_taken_once_names_its_holder_and_goes_with_its_descriptor(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    fd = lock_data_directory(root)  # makes the directory
    try:
        assert (root / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(StoreError, match=f"is in use by tickertape process {os.getpid()}"):
            lock_data_directory(root)
    finally:
        os.close(fd)
    os.close(lock_data_directory(root))  # released: taken again


def test_the_lost_note_is_read_back_and_absent_is_none(tmp_path: Path) -> None:
    assert lost_note(tmp_path) is None
    write_lost_note(tmp_path, "messages 4..9 were lost")
    assert (tmp_path / LOST_FILE).read_text() == "messages 4..9 were lost\n"
    assert lost_note(tmp_path) == "messages 4..9 were lost"
    (tmp_path / LOST_FILE).write_text("\n")
    assert lost_note(tmp_path) == "messages were lost"


def test_replace_file_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "index"
    path.write_bytes(b"old")
    replace_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_unused_path_never_names_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "log.cut-40"
    assert unused_path(path) == path
    path.touch()
    assert unused_path(path) == tmp_path / "log.cut-40.1"
    (tmp_path / "log.cut-40.1").touch()
    assert unused_path(path) == tmp_path / "log.cut-40.2"
