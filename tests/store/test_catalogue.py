"""Tests of the catalogue: the sessions under a data directory, one directory each."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tickertape.errors import ConfigError, SessionNotFound, StoreError
from tickertape.store import opening
from tickertape.store import recovery as recovery_module
from tickertape.store.archive import archive_session
from tickertape.store.catalogue import Catalogue, SessionInfo
from tickertape.store.layout import (
    ENDED_MARKER,
    FORMAT_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    LOG_FILE,
    format_version,
)
from tickertape.store.log import Durability, SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.wire.soupbintcp import encode_sequenced_many

TODAY = dt.date(2026, 11, 29)


def make_session(
    root: Path, session: str, payloads: Sequence[bytes] = (), *, ended: bool = False
) -> Path:
    """A session directory holding ``payloads`` in one batch."""
    path = root / session
    with SessionLog.open(path, create=True) as session_log:
        if payloads:
            session_log.append(encode_sequenced_many(payloads), len(payloads))
    if ended:
        (path / ENDED_MARKER).touch()
    return path


def ids(catalogue: Catalogue) -> list[str]:
    return [str(info.id) for info in catalogue.sessions()]


# ---------------------------------------------------------------------------- open_active


def test_open_active_on_an_empty_directory(tmp_path: Path) -> None:
    root = tmp_path / "data"  # does not exist yet
    catalogue = Catalogue(root)
    session, session_log = catalogue.open_active(TODAY)
    with session_log:
        assert session == SessionId(TODAY, 1)
        assert str(session) == "2026112901"
        assert session_log.directory == root / "2026112901"
        assert session_log.next_seq == 1
        assert session_log.recovery.clean
        assert session_log.durability is Durability.BATCH
        session_log.append(encode_sequenced_many([b"hello"]), 1)  # writable
    assert (root / "2026112901" / LOG_FILE).is_file()
    assert (root / "2026112901" / INDEX_FILE).is_file()
    assert catalogue.sessions() == [SessionInfo(session, root / "2026112901", ended=False)]


def test_open_active_passes_the_durability_on(tmp_path: Path) -> None:
    _, session_log = Catalogue(tmp_path, Durability.ALWAYS).open_active(TODAY)
    with session_log:
        assert session_log.durability is Durability.ALWAYS


def test_open_active_continues_todays_session(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    session, session_log = catalogue.open_active(TODAY)
    with session_log:
        session_log.append(encode_sequenced_many([b"one", b"two"]), 2)
    again, session_log = catalogue.open_active(TODAY)
    with session_log:
        assert again == session
        assert session_log.next_seq == 3
        assert session_log.recovery.clean
        session_log.append(encode_sequenced_many([b"three"]), 1)
        assert session_log.next_seq == 4
    assert ids(catalogue) == ["2026112901"]


def test_open_active_continues_the_latest_roll_of_today(tmp_path: Path) -> None:
    make_session(tmp_path, "2026112901", [b"a"], ended=True)
    make_session(tmp_path, "2026112902", [b"b", b"c"])
    session, session_log = Catalogue(tmp_path).open_active(TODAY)
    with session_log:
        assert str(session) == "2026112902"
        assert session_log.next_seq == 3


def test_open_active_after_mark_ended_opens_the_next_counter(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    first, session_log = catalogue.open_active(TODAY)
    with session_log:
        session_log.append(encode_sequenced_many([b"day one"]), 1)
    catalogue.mark_ended(first)
    assert (tmp_path / str(first) / ENDED_MARKER).exists()
    assert catalogue.find(str(first)).ended

    second, session_log = catalogue.open_active(TODAY)
    with session_log:
        assert second == first.next_roll()
        assert str(second) == "2026112902"
        assert session_log.next_seq == 1
    catalogue.mark_ended(second)
    third, session_log = catalogue.open_active(TODAY)
    session_log.close()
    assert str(third) == "2026112903"
    assert [(str(i.id), i.ended) for i in catalogue.sessions()] == [
        ("2026112901", True),
        ("2026112902", True),
        ("2026112903", False),
    ]
    # The ended sessions keep their data.
    with catalogue.open_closed("2026112901") as closed:
        assert closed.read(1, 1000) == (encode_sequenced_many([b"day one"]), 1)


def test_mark_ended_is_idempotent(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    session, session_log = catalogue.open_active(TODAY)
    session_log.close()
    catalogue.mark_ended(session)
    catalogue.mark_ended(session)
    assert catalogue.find(str(session)).ended


def test_mark_ended_of_an_unknown_session_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Catalogue(tmp_path).mark_ended(SessionId(TODAY, 5))


def test_an_earlier_days_unended_session_is_ended(tmp_path: Path) -> None:
    yesterday = make_session(tmp_path, "2026112802", [b"late"])
    older = make_session(tmp_path, "2026112801", [b"early"], ended=True)
    log_before = (yesterday / LOG_FILE).read_bytes()
    catalogue = Catalogue(tmp_path)
    session, session_log = catalogue.open_active(TODAY)
    with session_log:
        assert str(session) == "2026112901"  # a new day starts at 01
        assert session_log.next_seq == 1
    assert (yesterday / ENDED_MARKER).exists()
    assert (older / ENDED_MARKER).exists()
    assert (yesterday / LOG_FILE).read_bytes() == log_before
    assert [(str(i.id), i.ended) for i in catalogue.sessions()] == [
        ("2026112801", True),
        ("2026112802", True),
        ("2026112901", False),
    ]


def test_a_session_dated_after_today_raises(tmp_path: Path) -> None:
    make_session(tmp_path, "2026113001")
    catalogue = Catalogue(tmp_path)
    with pytest.raises(
        StoreError, match=r"session 2026113001 .* is dated after today \(2026-11-29\)"
    ):
        catalogue.open_active(TODAY)
    assert ids(catalogue) == ["2026113001"]  # nothing was created for today


def test_the_last_roll_of_a_day_cannot_be_followed(tmp_path: Path) -> None:
    make_session(tmp_path, "2026112999", ended=True)
    with pytest.raises(ConfigError, match="last of its day"):
        Catalogue(tmp_path).open_active(TODAY)


# ---------------------------------------------------------------- open_active after damage


FIRST = [b"one", b"two", b"three"]
SECOND = [b"four", b"five"]
"""Today's session as damaged below: two batches (two index records)."""


def make_two_batches(root: Path, session: str = "2026112901") -> Path:
    path = root / session
    with SessionLog.open(path, create=True) as session_log:
        session_log.append(encode_sequenced_many(FIRST), len(FIRST))
        session_log.append(encode_sequenced_many(SECOND), len(SECOND))
    return path


def flip_in_second_batch(path: Path) -> int:
    """Flip a payload bit of the second batch; returns where that batch starts."""
    at = len(encode_sequenced_many(FIRST))
    data = bytearray((path / LOG_FILE).read_bytes())
    data[at + 4] ^= 0x10
    (path / LOG_FILE).write_bytes(bytes(data))
    return at


def cut_at_second_batch(path: Path) -> int:
    """Cut the log where the second batch starts: its record is left."""
    at = len(encode_sequenced_many(FIRST))
    os.truncate(path / LOG_FILE, at)
    return at


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tickertape.store.catalogue" and r.levelno == logging.ERROR
    ]


@pytest.mark.parametrize("damage", [flip_in_second_batch, cut_at_second_batch])
def test_open_active_ends_a_session_that_lost_messages_its_index_vouched_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], int]
) -> None:
    """Messages 4..5 had been published (their record was written): numbering on from 4
    in the same session would give their numbers to other messages. The session is
    ended, keeping its intact prefix, and the next one is opened, from 1."""
    caplog.set_level(logging.INFO, logger="tickertape.store.catalogue")
    path = make_two_batches(tmp_path)
    at = damage(path)
    catalogue = Catalogue(tmp_path)
    session, session_log = catalogue.open_active(TODAY)
    with session_log:
        assert str(session) == "2026112902"
        assert session_log.next_seq == 1
        assert session_log.recovery.clean
        session_log.append(encode_sequenced_many([b"fresh"]), 1)  # writable
    assert error_records(caplog) == [
        "session 2026112901 was damaged: messages 4..5 were cut; it is ended and session "
        "2026112902 opened so that no number is reused"
    ]
    assert [(str(i.id), i.ended) for i in catalogue.sessions()] == [
        ("2026112901", True),
        ("2026112902", False),
    ]
    # The damaged session was repaired as usual, and is served up to the damage.
    assert (path / LOG_FILE).stat().st_size == at
    with catalogue.open_closed("2026112901") as closed:
        assert closed.recovery.clean
        assert closed.read(1, 1000) == (encode_sequenced_many(FIRST), len(FIRST))
    # A restart continues the new session.
    again, session_log = catalogue.open_active(TODAY)
    with session_log:
        assert str(again) == "2026112902"
        assert session_log.next_seq == 2


@pytest.mark.parametrize(
    ("tail", "whole"),
    [
        (encode_sequenced_many([b"six", b"seven"]), 2),  # its record was never written
        (encode_sequenced_many([b"six", b"seven"])[:8], 1),  # and torn in "seven"
    ],
    ids=["unindexed", "torn"],
)
def test_open_active_continues_a_session_whose_unindexed_tail_was_cut_or_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tail: bytes, whole: int
) -> None:
    """A crash between the log write and the index write leaves a tail that was never
    published: no checksum vouches for it, so it is set aside (whole packets or not),
    it is not damage, and the session goes on."""
    caplog.set_level(logging.INFO, logger="tickertape.store.catalogue")
    path = make_two_batches(tmp_path)
    with open(path / LOG_FILE, "ab") as f:
        f.write(tail)
    catalogue = Catalogue(tmp_path)
    session, session_log = catalogue.open_active(TODAY)
    with session_log:
        assert str(session) == "2026112901"
        assert session_log.recovery.clean
        assert session_log.recovery.tail_messages == whole
        assert not session_log.recovery.lost_vouched
        assert session_log.next_seq == len(FIRST) + len(SECOND) + 1
        assert session_log.recovery.cut_to is not None
        assert session_log.recovery.cut_to.read_bytes() == tail
    assert error_records(caplog) == []
    assert [(str(i.id), i.ended) for i in catalogue.sessions()] == [("2026112901", False)]


def test_open_active_persists_the_end_before_the_repair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repair leaves no trace of what it cut: were the process to stop after it and
    before the end is persisted, a restart would number on from 4 again. So the end
    comes first: stopped at any point after, a restart opens the next session."""
    path = make_two_batches(tmp_path)
    flip_in_second_batch(path)
    catalogue = Catalogue(tmp_path)
    ended_before_the_cut: list[bool] = []
    real_move_aside = recovery_module.move_aside

    def move_aside(directory: Path, log_fd: int, start: int, stop: int) -> Path:
        ended_before_the_cut.append((path / ENDED_MARKER).exists())
        return real_move_aside(directory, log_fd, start, stop)

    def stopped(ended: SessionId, day: dt.date) -> tuple[SessionId, SessionLog]:
        raise OSError(5, "Input/output error")  # as if the process stopped here

    monkeypatch.setattr(recovery_module, "move_aside", move_aside)
    monkeypatch.setattr(catalogue, "open_next", stopped)
    with pytest.raises(OSError, match="Input/output error"):
        catalogue.open_active(TODAY)
    assert ended_before_the_cut == [True]
    with SessionLog.open(path, writable=False) as repaired:
        assert repaired.recovery.clean  # it no longer shows what was cut

    session, session_log = Catalogue(tmp_path).open_active(TODAY)
    with session_log:
        assert str(session) == "2026112902"
        assert session_log.next_seq == 1


def test_the_last_session_of_a_day_that_lost_published_messages_is_left_as_it_is(
    tmp_path: Path,
) -> None:
    """No session can follow the day's last: start-up is refused, saying why, before
    anything on disk changes."""
    path = make_two_batches(tmp_path, "2026112999")
    flip_in_second_batch(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(StoreError, match=r"2026112999 was damaged: messages 4..5 were cut.*last"):
        Catalogue(tmp_path).open_active(TODAY)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


# ---------------------------------------------------------------------------- sessions, find


def test_sessions_on_a_missing_directory(tmp_path: Path) -> None:
    assert Catalogue(tmp_path / "absent").sessions() == []


def test_sessions_are_ordered_and_filtered(tmp_path: Path) -> None:
    for session in ["2026113001", "2026112910", "2026112902", "2025123199", "2026112901"]:
        make_session(tmp_path, session, ended=session < "2026112910")
    # Not sessions: other names, invalid ids, a file with a session's name.
    for name in ["notes", "2026112900", "2026023001", "20261129", "202611290a"]:
        (tmp_path / name).mkdir()
    (tmp_path / "2026112903").write_bytes(b"not a directory")
    (tmp_path / "README").write_text("hello")

    sessions = Catalogue(tmp_path).sessions()
    assert [str(i.id) for i in sessions] == [
        "2025123199",
        "2026112901",
        "2026112902",
        "2026112910",
        "2026113001",
    ]
    assert [i.ended for i in sessions] == [True, True, True, False, False]
    assert all(i.path == tmp_path / str(i.id) for i in sessions)
    assert [i.id for i in sessions] == sorted(i.id for i in sessions)


def test_find(tmp_path: Path) -> None:
    make_session(tmp_path, "2026112901", [b"x"], ended=True)
    make_session(tmp_path, "2026112902")
    catalogue = Catalogue(tmp_path)
    assert catalogue.find("2026112901") == SessionInfo(
        SessionId(TODAY, 1), tmp_path / "2026112901", ended=True
    )
    assert catalogue.find("2026112902") == SessionInfo(
        SessionId(TODAY, 2), tmp_path / "2026112902", ended=False
    )


@pytest.mark.parametrize(
    "name",
    [
        "2026112903",  # well formed, not on disk
        "2026112900",  # an invalid counter
        "",  # blank
        "ABCDEFGHIJ",
        "../2026112901",
        "2026112901 ",
    ],
)
def test_find_unknown_raises_session_not_found(tmp_path: Path, name: str) -> None:
    make_session(tmp_path, "2026112901")
    with pytest.raises(SessionNotFound, match=rf"no session {name!r} in "):
        Catalogue(tmp_path).find(name)


def test_find_a_directory_without_a_log(tmp_path: Path) -> None:
    (tmp_path / "2026112901").mkdir()
    with pytest.raises(SessionNotFound):
        Catalogue(tmp_path).find("2026112901")


def test_session_not_found_is_a_store_error() -> None:
    assert issubclass(SessionNotFound, StoreError)


# ---------------------------------------------------------------------------- open_closed


def test_open_closed_is_read_only(tmp_path: Path) -> None:
    path = make_session(tmp_path, "2026112801", [b"m1", b"m2", b"m3"], ended=True)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.iterdir()}
    catalogue = Catalogue(tmp_path)
    with catalogue.open_closed("2026112801") as closed:
        assert closed.next_seq == 4
        assert closed.recovery.clean
        data, count = closed.read(2, 1000)
        assert (data, count) == (encode_sequenced_many([b"m2", b"m3"]), 2)
        assert isinstance(closed, SessionLog)  # not archived
        with pytest.raises(StoreError, match="read-only"):
            closed.append(encode_sequenced_many([b"more"]), 1)
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.iterdir()}
    assert after == before


def test_open_closed_does_not_repair(tmp_path: Path) -> None:
    path = make_session(tmp_path, "2026112801", [b"m1", b"m2"], ended=True)
    with open(path / LOG_FILE, "ab") as f:
        f.write(b"\x00\x09Storn")  # a torn packet: served by nobody, moved by nobody
    size = os.path.getsize(path / LOG_FILE)
    with Catalogue(tmp_path).open_closed("2026112801") as closed:
        assert closed.next_seq == 3
        assert closed.recovery.tail_bytes == 7
        assert closed.recovery.cut_to is None
    assert os.path.getsize(path / LOG_FILE) == size
    assert sorted(p.name for p in path.iterdir()) == [ENDED_MARKER, INDEX_FILE, LOG_FILE]


def test_open_closed_of_unknown_raises(tmp_path: Path) -> None:
    with pytest.raises(SessionNotFound):
        Catalogue(tmp_path).open_closed("2026112901")


@pytest.mark.parametrize("lost", [1, 2, 3], ids=lambda n: f"{n}-records-lost")
@pytest.mark.parametrize("today", [False, True], ids=["earlier-day", "same-day"])
def test_an_ended_session_whose_last_index_records_are_lost_is_archivable_after_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, lost: int, today: bool
) -> None:
    """A power loss soon after a roll, with an index that was not synced (as before the
    end synced it), leaves an ended session whose last records are gone while its log is
    whole. Nothing vouches for those bytes (a page of zeros looks the same), so they are
    not served; start-up sets them aside (log.cut-OFFSET, logged), and the session is
    clean and archivable instead of refused on every retention pass."""
    caplog.set_level(logging.WARNING)
    day = TODAY if today else TODAY - dt.timedelta(days=1)
    batches = [[b"m%d-%d" % (b, n) for n in range(b + 1)] for b in range(5)]
    path = tmp_path / f"{day:%Y%m%d}01"
    with SessionLog.open(path, create=True) as session_log:
        for batch in batches:
            session_log.append(encode_sequenced_many(batch), len(batch))
    (path / ENDED_MARKER).touch()
    log_before = (path / LOG_FILE).read_bytes()
    index = (path / INDEX_FILE).read_bytes()
    kept = len(batches) - lost
    os.truncate(path / INDEX_FILE, len(index) - lost * 32)
    vouched = sum(len(b) for b in batches[:kept])
    cut_at = len(encode_sequenced_many([p for b in batches[:kept] for p in b]))

    session, active = Catalogue(tmp_path).open_active(TODAY)  # start-up
    active.close()
    assert str(session) == f"{TODAY:%Y%m%d}0{2 if today else 1}"
    assert (path / LOG_FILE).read_bytes() == log_before[:cut_at]
    assert (path / f"log.cut-{cut_at}").read_bytes() == log_before[cut_at:]
    assert any(
        f"ended session {path.name}: {vouched} messages served; " in r.getMessage()
        and f"log.cut-{cut_at}" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert opening.verify(path).clean

    result = archive_session(path)
    assert result.messages == vouched
    assert (path / f"log.cut-{cut_at}").exists()  # kept: the archive does not remove it


def test_start_up_leaves_a_damaged_ended_session_as_it_is(tmp_path: Path) -> None:
    """Setting a tail aside never touches a session with real damage: verify shows it."""
    path = make_two_batches(tmp_path, "2026112801")
    (path / ENDED_MARKER).touch()
    with open(path / LOG_FILE, "ab") as f:
        f.write(encode_sequenced_many([b"tail"]))
    flip_in_second_batch(path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    Catalogue(tmp_path).open_active(TODAY)[1].close()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


# ---------------------------------------------------------------------------- creation, strays


def test_a_creation_that_fails_leaves_nothing_and_ends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_session(tmp_path, "2026112801", [b"yesterday"])  # never ended
    real_open = os.open

    def no_room(path: object, flags: int, *args: int, **kwargs: object) -> int:
        if str(path).endswith(f"/{LOG_FILE}") and ".creating-" in str(path):
            raise OSError(28, "No space left on device")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_room)
    with pytest.raises(OSError, match="No space"):
        Catalogue(tmp_path).open_active(TODAY)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026112801"]
    assert not (tmp_path / "2026112801" / ENDED_MARKER).exists()  # it may still go on
    session, session_log = Catalogue(tmp_path).open_active(TODAY)
    session_log.close()
    assert str(session) == "2026112901"
    assert (tmp_path / "2026112801" / ENDED_MARKER).exists()


def test_what_an_interrupted_creation_left_is_removed_by_the_writer(tmp_path: Path) -> None:
    make_session(tmp_path, "2026112901", [b"one"])
    (tmp_path / ".creating-2026112902" / LOG_FILE).parent.mkdir()
    (tmp_path / ".creating-2026112902" / LOG_FILE).touch()
    (tmp_path / "2026112903").mkdir()  # an older version's interrupted roll
    catalogue = Catalogue(tmp_path)
    assert ids(catalogue) == ["2026112901"]  # a reader skips both
    session, session_log = catalogue.open_active(TODAY)
    session_log.close()
    assert str(session) == "2026112901"  # continued
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026112901"]
    assert str(catalogue.open_next(session, TODAY)[0]) == "2026112902"


def test_strays_and_symlinks_are_skipped_with_one_warning_and_never_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, outside = tmp_path / "data", tmp_path / "outside"
    make_session(root, "2026112901", [b"one"])
    make_session(outside, "2026112701", [b"outside"])
    (root / "2026112701").symlink_to(outside / "2026112701")
    (root / "2026112702").mkdir()
    (root / "2026112702" / INDEX_FILE).write_bytes(b"x" * 32)
    (root / "2026112703" / LOG_FILE).mkdir(parents=True)
    (root / "2026112704").mkdir()
    (root / "2026112704" / LOG_FILE).symlink_to(outside / "2026112701" / LOG_FILE)
    catalogue = Catalogue(root)
    with caplog.at_level(logging.WARNING):
        assert ids(catalogue) == ["2026112901"]
        assert ids(catalogue) == ["2026112901"]
    warned = sorted(r.getMessage() for r in caplog.records)
    assert len(warned) == 4, warned  # one each, however often listed
    assert "2026112701 (a symbolic link)" in warned[0]
    assert "2026112702 (a directory with no log, only: index)" in warned[1]
    assert "2026112703 (a directory whose log is not a file)" in warned[2]
    assert "2026112704 (a directory whose log is a symbolic link)" in warned[3]
    for name in ["2026112701", "2026112702", "2026112703", "2026112704"]:
        with pytest.raises(SessionNotFound, match=name):
            catalogue.find(name)
    with pytest.raises(StoreError, match="a symbolic link"):
        catalogue.mark_ended(SessionId.parse("2026112701"))
    _, session_log = catalogue.open_active(TODAY)
    session_log.close()
    assert not (outside / "2026112701" / ENDED_MARKER).exists()
    # A new session never takes a name something else holds.
    following, following_log = catalogue.open_next(SessionId.parse("2026112701"), TODAY)
    following_log.close()
    assert str(following) == "2026112902"
    assert catalogue._unused(SessionId.parse("2026112701")) == SessionId.parse("2026112705")


# ---------------------------------------------------------------------------- format version


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``directory``: its bytes and modification time."""
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_new_session_holds_its_format_version(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    session_id, opened = catalogue.open_active(TODAY)
    opened.close()
    path = tmp_path / str(session_id)
    assert (path / FORMAT_FILE).read_bytes() == b"tickertape-session 1\n"
    assert format_version(path) == FORMAT_VERSION == 1
    # The file does not change what counts as a session.
    assert ids(catalogue) == [str(session_id)]
    assert catalogue.find(str(session_id)).path == path
    # And a session that continues keeps it.
    again, reopened = Catalogue(tmp_path).open_active(TODAY)
    reopened.close()
    assert again == session_id
    assert (path / FORMAT_FILE).read_bytes() == b"tickertape-session 1\n"


def test_a_session_without_a_format_file_is_version_1(tmp_path: Path) -> None:
    path = make_session(tmp_path, "2026112801", [b"old"], ended=True)
    assert not (path / FORMAT_FILE).exists()
    assert format_version(path) == 1
    catalogue = Catalogue(tmp_path)
    assert ids(catalogue) == ["2026112801"]
    with catalogue.open_closed("2026112801") as closed:
        assert closed.next_seq == 2
    assert not (path / FORMAT_FILE).exists()  # reading it writes nothing


def test_a_session_of_a_newer_format_is_refused_and_never_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_session(tmp_path, "2026112901", [b"future"])  # not ended: start-up would end it
    (path / FORMAT_FILE).write_text("tickertape-session 2\n")
    before = snapshot(path)
    catalogue = Catalogue(tmp_path)
    with pytest.raises(StoreError, match=r"format.* version 2, newer than") as refused:
        catalogue.find("2026112901")
    assert str(path / FORMAT_FILE) in str(refused.value)
    assert not isinstance(refused.value, SessionNotFound)
    with caplog.at_level(logging.WARNING):
        assert catalogue.sessions() == []
    assert [r.getMessage() for r in caplog.records if "2026112901" in r.getMessage()] == [
        f"skipping {path} ({path / FORMAT_FILE} says format version 2, newer than this "
        "release of tickertape reads (version 1): use the release that wrote it): a session "
        "this release cannot read, so it is neither read, followed nor changed"
    ]
    # A server start neither continues, ends, tidies nor reuses it.
    session_id, opened = catalogue.open_active(TODAY)
    opened.close()
    assert session_id == SessionId.parse("2026112902")
    assert snapshot(path) == before


def test_a_format_file_that_makes_no_sense_is_refused(tmp_path: Path) -> None:
    path = make_session(tmp_path, "2026112901", [b"x"], ended=True)
    (path / FORMAT_FILE).write_text("something else\n")
    with pytest.raises(StoreError, match="does not name a tickertape session format"):
        Catalogue(tmp_path).find("2026112901")
