"""Retention: archive and delete ended sessions by age, and nothing unasked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tickertape.errors import ConfigError
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import ARCHIVE_FILE, ENDED_MARKER, LOG_FILE
from tickertape.store.log import SessionLog
from tickertape.store.opening import open_session_log
from tickertape.store.retention import Retention, apply_retention
from tickertape.wire.soupbintcp import encode_sequenced_many

TODAY = dt.date(2026, 11, 29)


def make(root: Path, session: str, *, ended: bool = True) -> bytes:
    payloads = [f"{session} {n}".encode() for n in range(100)]
    with SessionLog.open(root / session, create=True) as session_log:
        session_log.append(encode_sequenced_many(payloads), len(payloads))
    if ended:
        (root / session / ENDED_MARKER).touch()
    return (root / session / LOG_FILE).read_bytes()


def test_nothing_happens_unless_configured(tmp_path: Path) -> None:
    make(tmp_path, "2020010101")
    assert apply_retention(Catalogue(tmp_path), TODAY, Retention()) == []
    assert (tmp_path / "2020010101" / LOG_FILE).exists()


def test_archive_after_and_delete_after(tmp_path: Path) -> None:
    old = make(tmp_path, "2026111901")  # 10 days old
    make(tmp_path, "2026110101")  # 28 days old
    recent = make(tmp_path, "2026112801")  # 1 day old
    make(tmp_path, "2026112901", ended=False)  # today's, active
    done = apply_retention(
        Catalogue(tmp_path), TODAY, Retention(archive_after_days=7, delete_after_days=20)
    )
    assert done[0] == "deleted session 2026110101 (28 days old)"
    assert done[1].startswith("archived session 2026111901 (10 days old)")
    assert len(done) == 2
    assert not (tmp_path / "2026110101").exists()
    assert (tmp_path / "2026111901" / ARCHIVE_FILE).exists()
    with open_session_log(tmp_path / "2026111901", finish_archiving=True) as archived:
        assert archived.read_range(0, len(old)) == old
    assert (tmp_path / "2026112801" / LOG_FILE).read_bytes() == recent
    assert (tmp_path / "2026112901" / LOG_FILE).exists()
    # a second pass has nothing left to do
    assert (
        apply_retention(
            Catalogue(tmp_path), TODAY, Retention(archive_after_days=7, delete_after_days=20)
        )
        == []
    )


def test_sessions_not_ended_and_kept_ones_are_never_touched(tmp_path: Path) -> None:
    make(tmp_path, "2020010101", ended=False)
    make(tmp_path, "2020010201")
    done = apply_retention(
        Catalogue(tmp_path), TODAY, Retention(delete_after_days=0), keep=frozenset({"2020010201"})
    )
    assert done == []
    assert (tmp_path / "2020010101").exists()
    assert (tmp_path / "2020010201").exists()


def test_an_interrupted_deletion_is_finished_and_never_served(tmp_path: Path) -> None:
    make(tmp_path, "2020010101")
    (tmp_path / "2020010101").rename(tmp_path / ".deleting-2020010101")
    assert [info.id for info in Catalogue(tmp_path).sessions()] == []
    apply_retention(Catalogue(tmp_path), TODAY, Retention(delete_after_days=1))
    assert list(tmp_path.iterdir()) == []


def test_negative_days_are_refused() -> None:
    with pytest.raises(ConfigError, match="--delete-after -1: a number of days"):
        Retention(delete_after_days=-1)


@pytest.mark.parametrize("option", ["archive", "delete"])
def test_zero_days_takes_every_ended_session_todays_too(tmp_path: Path, option: str) -> None:
    make(tmp_path, "2026112901")  # today's, ended
    make(tmp_path, "2026112801")  # yesterday's
    make(tmp_path, "2026112902", ended=False)  # today's, active
    retention = (
        Retention(archive_after_days=0) if option == "archive" else Retention(delete_after_days=0)
    )
    done = apply_retention(Catalogue(tmp_path), TODAY, retention)
    verb = "archived" if option == "archive" else "deleted"
    assert [line.split(":")[0] for line in done] == [
        f"{verb} session 2026112801 (1 day old)",
        f"{verb} session 2026112901 (0 days old)",
    ]
    assert (tmp_path / "2026112902" / LOG_FILE).exists()


def test_days_count_from_the_date_in_the_id(tmp_path: Path) -> None:
    make(tmp_path, "2026112201")  # 7 days old
    make(tmp_path, "2026112301")  # 6 days old
    done = apply_retention(Catalogue(tmp_path), TODAY, Retention(delete_after_days=7))
    assert done == ["deleted session 2026112201 (7 days old)"]


def test_the_policy_is_described_for_the_log() -> None:
    assert Retention().describe().startswith("ended sessions are kept as they are")
    assert Retention(archive_after_days=0, delete_after_days=30).describe() == (
        "ended sessions are archived once ended (today's too: 0 days), and deleted once "
        "30 days old or more"
    )
    assert Retention(archive_after_days=1).describe() == (
        "ended sessions are archived once 1 day old or more"
    )
