"""Tests of following a log another process appends to (:class:`FollowedLog`): a batch is
taken once its index record is written and its checksums pass, never before, never twice.

Moved from tests/server/test_follower.py with the split of follow mode out of the log.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from tickertape.errors import StoreError
from tickertape.store.follow import FollowedLog
from tickertape.store.index import pack_record
from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import ReadableLog, SessionLog
from tickertape.wire.soupbintcp import encode_sequenced_many


def payloads(tag: str, count: int) -> list[bytes]:
    # Lengths vary, so that packet boundaries fall anywhere in a batch.
    return [f"{tag} {n} ".encode().ljust(10 + n % 37, b"x") for n in range(1, count + 1)]


def log_bytes(session_log: ReadableLog, first: int, stop: int) -> bytes:
    """The log's bytes for messages ``first`` up to ``stop`` (excluded)."""
    return session_log.read_range(
        session_log.offset_of(first), session_log.offset_of(stop) - session_log.offset_of(first)
    )


# ---------------------------------------------------------------------------- the log


def _append_raw(directory: Path, data: bytes) -> None:
    with open(directory / LOG_FILE, "ab") as out:
        out.write(data)


def _append_record(directory: Path, record: bytes) -> None:
    with open(directory / INDEX_FILE, "ab") as out:
        out.write(record)


def test_a_followed_log_takes_each_batch_once_its_record_is_written(tmp_path: Path) -> None:
    directory = tmp_path / "2026112901"
    with SessionLog.open(directory, create=True) as writer:
        writer.append(encode_sequenced_many(payloads("a", 5)), 5)
        with FollowedLog.follow(directory) as follower:
            assert follower.next_seq == 6
            assert follower.refresh() == []
            data = encode_sequenced_many(payloads("b", 7))
            writer.append(data, 7)
            writer.append(encode_sequenced_many(payloads("c", 3)), 3)
            taken = follower.refresh()
            assert [(a.first_seq, a.count) for a, _ in taken] == [(6, 7), (13, 3)]
            assert taken[0][1] == data
            assert follower.next_seq == writer.next_seq == 16
            assert log_bytes(follower, 1, 16) == log_bytes(writer, 1, 16)
            assert follower.refresh() == []
            # At most about max_bytes a call, but always one batch.
            for tag in "def":
                writer.append(encode_sequenced_many(payloads(tag, 2)), 2)
            assert [len(follower.refresh(max_bytes=1)) for _ in range(4)] == [1, 1, 1, 0]
            assert follower.next_seq == writer.next_seq


def test_a_batch_without_its_record_is_not_served_nor_reported(tmp_path: Path) -> None:
    directory = tmp_path / "2026112901"
    with SessionLog.open(directory, create=True) as writer:
        writer.append(encode_sequenced_many(payloads("a", 4)), 4)
        offset = writer.end_offset
    # The writer has written a batch to the log and not yet its record: at open...
    batch = encode_sequenced_many(payloads("b", 6))
    _append_raw(directory, batch)
    before = (directory / LOG_FILE).read_bytes(), (directory / INDEX_FILE).read_bytes()
    with FollowedLog.follow(directory) as follower:
        assert follower.next_seq == 5
        assert follower.recovery.clean and follower.recovery.cut_bytes == 0
        assert follower.refresh() == []  # ... and after
        # Half a record: still nothing.
        record = pack_record(5, offset, len(batch), 6, zlib.crc32(batch))
        _append_record(directory, record[:16])
        assert follower.refresh() == []
        _append_record(directory, record[16:])
        taken = follower.refresh()
        assert [(a.first_seq, a.count, a.offset) for a, _ in taken] == [(5, 6, offset)]
        assert taken[0][1] == batch
    # Neither a plain read-only open nor a follower's serves the tail, nor writes.
    assert (directory / LOG_FILE).read_bytes() == before[0]
    assert (directory / INDEX_FILE).read_bytes() == before[1] + record


def test_a_batch_that_fails_its_checksum_is_never_served(tmp_path: Path) -> None:
    directory = tmp_path / "2026112901"
    with SessionLog.open(directory, create=True) as writer:
        writer.append(encode_sequenced_many(payloads("a", 4)), 4)
        with FollowedLog.follow(directory) as follower:
            batch = encode_sequenced_many(payloads("b", 3))
            _append_raw(directory, batch)
            _append_record(directory, pack_record(5, writer.end_offset, len(batch), 3, 12345))
            assert follower.refresh() == []
            assert follower.follow_problem is not None
            assert "fails its checksum" in follower.follow_problem
            assert follower.refresh() == []  # and not later either
            assert follower.next_seq == 5


def test_a_damaged_record_is_never_passed(tmp_path: Path) -> None:
    directory = tmp_path / "2026112901"
    with SessionLog.open(directory, create=True) as writer:
        writer.append(encode_sequenced_many(payloads("a", 4)), 4)
        with FollowedLog.follow(directory) as follower:
            batch = encode_sequenced_many(payloads("b", 3))
            _append_raw(directory, batch)
            record = bytearray(pack_record(5, writer.end_offset, len(batch), 3, zlib.crc32(batch)))
            record[3] ^= 0x40
            _append_record(directory, bytes(record))
            assert follower.refresh() == []
            assert follower.follow_problem is not None
            assert "index record" in follower.follow_problem


def test_a_replaced_index_is_read_again_skipping_what_is_held(tmp_path: Path) -> None:
    directory = tmp_path / "2026112901"
    writer = SessionLog.open(directory, create=True)
    writer.append(encode_sequenced_many(payloads("a", 4)), 4)
    with FollowedLog.follow(directory) as follower:
        writer.append(encode_sequenced_many(payloads("b", 4)), 4)
        assert len(follower.refresh()) == 1
        # The writer crashes after writing a batch, in the middle of its record (never
        # acknowledged); on restart its recovery sets the batch aside and replaces the
        # index file, without the partial record.
        writer.close()
        unindexed = encode_sequenced_many(payloads("c", 5))
        offset = (directory / LOG_FILE).stat().st_size
        _append_raw(directory, unindexed)
        _append_record(directory, pack_record(9, offset, len(unindexed), 5, 0)[:20])
        inode = (directory / INDEX_FILE).stat().st_ino
        writer = SessionLog.open(directory)
        assert (directory / INDEX_FILE).stat().st_ino != inode
        writer.append(encode_sequenced_many(payloads("d", 2)), 2)
        taken = follower.refresh()
        assert [(a.first_seq, a.count) for a, _ in taken] == [(9, 2)]
        assert log_bytes(follower, 1, 11) == log_bytes(writer, 1, 11)
    writer.close()


def test_following_and_refresh_are_read_only(tmp_path: Path) -> None:
    directory = tmp_path / "2026112901"
    with SessionLog.open(directory, create=True) as writer:
        writer.append(encode_sequenced_many(payloads("a", 2)), 2)
        with FollowedLog.follow(directory) as follower:
            with pytest.raises(StoreError, match="read-only"):
                follower.append(encode_sequenced_many(payloads("b", 1)), 1)
            assert follower.next_seq == writer.next_seq == 3
        assert not hasattr(writer, "refresh")  # only a followed log takes others' appends
