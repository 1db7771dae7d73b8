"""Tests of the session log: appending, reading, durability, and crash recovery.

Everything runs on real files. The log file is checked by parsing it independently with
the wire framer (:func:`parse_log`), never only through :class:`SessionLog` itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from store_logs import (
    ALL,
    BATCHES,
    append_batches,
    check_serves,
    ends,
    index_records,
    logged,
    make_log,
    parse_log,
    reopen,
    size,
)
from tickertape.errors import StoreError
from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import Appended, Durability, SessionLog
from tickertape.store.recovery import Recovery
from tickertape.wire.soupbintcp import encode_sequenced_many

# ---------------------------------------------------------------------------- create, append


def test_create_empty(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    with SessionLog.open(directory, create=True) as session_log:
        assert session_log.next_seq == 1
        assert session_log.end_offset == 0
        assert session_log.offset_of(1) == 0
        assert session_log.read(1, 1000) == (b"", 0)
        assert session_log.span(1, 1000, 1) == (0, 1, 0)
        assert session_log.recovery == Recovery(messages=0, batches=0)
        assert session_log.recovery.clean
        assert session_log.durability is Durability.BATCH
    assert (directory / LOG_FILE).read_bytes() == b""
    assert (directory / INDEX_FILE).read_bytes() == b""
    with reopen(directory) as session_log:
        assert session_log.recovery.clean
        assert session_log.next_seq == 1


def test_open_missing_log_raises(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no session log at"):
        SessionLog.open(tmp_path / "nothing")
    with pytest.raises(StoreError, match="no session log at"):
        SessionLog.open(tmp_path, writable=False)
    assert list(tmp_path.iterdir()) == []


def test_append_reports_where_batches_land(tmp_path: Path) -> None:
    with SessionLog.open(tmp_path, create=True) as session_log:
        appended = append_batches(session_log, BATCHES)
    offsets = ends(ALL)
    seq = 1
    for batch, result in zip(BATCHES, appended, strict=True):
        assert result == Appended(
            first_seq=seq,
            count=len(batch),
            offset=offsets[seq - 1],
            length=sum(map(size, batch)),
        )
        seq += len(batch)
    assert logged(tmp_path) == ALL
    assert index_records(tmp_path) == len(BATCHES)


@pytest.mark.parametrize("durability", list(Durability))
def test_append_and_reopen(tmp_path: Path, durability: Durability) -> None:
    with SessionLog.open(tmp_path, durability=durability, create=True) as session_log:
        assert session_log.durability is durability
        for count, batch in enumerate(BATCHES, 1):
            session_log.append(encode_sequenced_many(batch), len(batch))
            done = [p for b in BATCHES[:count] for p in b]
            # Served at once by the appending instance, before any reopen.
            check_serves(session_log, done)
    assert logged(tmp_path) == ALL
    with reopen(tmp_path, durability=durability) as session_log:
        recovery = session_log.recovery
        assert recovery.clean
        assert recovery == Recovery(messages=len(ALL), batches=len(BATCHES), vouched=len(ALL))
        assert not recovery.lost_vouched
        check_serves(session_log, ALL)
        # ... and appending continues where it left off.
        extra = session_log.append(encode_sequenced_many([b"more", b"and more"]), 2)
        assert extra.first_seq == len(ALL) + 1
        assert session_log.next_seq == len(ALL) + 3
    with reopen(tmp_path, durability=durability) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, [*ALL, b"more", b"and more"])


def test_offset_of_every_seq(tmp_path: Path) -> None:
    appended = make_log(tmp_path)
    offsets = ends(ALL)
    with reopen(tmp_path) as session_log:
        for result in appended:
            # First of the batch, then every one in the middle, then the next batch.
            assert session_log.offset_of(result.first_seq) == result.offset
            for seq in range(result.first_seq, result.first_seq + result.count):
                assert session_log.offset_of(seq) == offsets[seq - 1]
        assert session_log.offset_of(session_log.next_seq) == (tmp_path / LOG_FILE).stat().st_size
        for bad in (0, -1, len(ALL) + 2, 10**9):
            with pytest.raises(
                StoreError, match=rf"sequence {bad} is not in .* \(1\.\.{len(ALL)}\)"
            ):
                session_log.offset_of(bad)


def test_reader_and_fileno(tmp_path: Path) -> None:
    make_log(tmp_path)
    with reopen(tmp_path) as session_log:
        data = (tmp_path / LOG_FILE).read_bytes()
        assert session_log.reader.read() == data
        assert os.pread(session_log.fileno(), 10, 0) == data[:10]
        assert session_log.fileno() == session_log.reader.fileno()
    session_log.close()  # closing twice is harmless


# ---------------------------------------------------------------------------- read and span


def expected_read(
    payloads: Sequence[bytes], seq: int, max_bytes: int, limit_seq: int | None
) -> list[bytes]:
    """A model of :meth:`SessionLog.read`."""
    limit = len(payloads) + 1 if limit_seq is None else min(limit_seq, len(payloads) + 1)
    taken: list[bytes] = []
    used = 0
    for number in range(seq, limit):
        payload = payloads[number - 1]
        if taken and used + size(payload) > max_bytes:
            break
        taken.append(payload)
        used += size(payload)
    return taken


def test_read_against_a_model(tmp_path: Path) -> None:
    make_log(tmp_path)
    total = ends(ALL)[-1]
    with reopen(tmp_path) as session_log:
        for seq in range(1, len(ALL) + 3):
            for limit_seq in [None, *range(1, len(ALL) + 4)]:
                for max_bytes in [*range(0, 40), 300, 303, 304, 305, 310, total, total + 1]:
                    data, count = session_log.read(seq, max_bytes, limit_seq)
                    want = expected_read(ALL, seq, max_bytes, limit_seq)
                    assert parse_log(data) == want, (seq, max_bytes, limit_seq)
                    assert count == len(want)
                    if count:
                        assert (
                            data
                            == (tmp_path / LOG_FILE).read_bytes()[
                                session_log.offset_of(seq) : session_log.offset_of(seq + count)
                            ]
                        )
                    if count > 1:
                        assert len(data) <= max_bytes


def test_read_at_least_one_packet(tmp_path: Path) -> None:
    make_log(tmp_path)
    with reopen(tmp_path) as session_log:
        for seq in range(1, len(ALL) + 1):
            for max_bytes in (0, 1, 2):
                data, count = session_log.read(seq, max_bytes)
                assert count == 1
                assert parse_log(data) == [ALL[seq - 1]]


def test_read_limit_seq(tmp_path: Path) -> None:
    make_log(tmp_path)
    with reopen(tmp_path) as session_log:
        data, count = session_log.read(2, 1 << 20, limit_seq=5)
        assert (parse_log(data), count) == (ALL[1:4], 3)
        data, count = session_log.read(2, 1 << 20, limit_seq=100)  # clipped to next_seq
        assert (parse_log(data), count) == (ALL[1:], len(ALL) - 1)
        assert session_log.read(5, 1 << 20, limit_seq=5) == (b"", 0)
        assert session_log.read(5, 1 << 20, limit_seq=3) == (b"", 0)
        assert session_log.read(len(ALL) + 1, 1 << 20) == (b"", 0)
        assert session_log.read(len(ALL) + 5, 1 << 20) == (b"", 0)


def test_read_large_packets(tmp_path: Path) -> None:
    """Messages near the 64 KiB limit: ``read`` looks beyond ``max_bytes`` for one packet."""
    big = [bytes([n]) * 65534 for n in range(3)] + [b"small"]
    make_log(tmp_path, [big])
    with reopen(tmp_path) as session_log:
        data, count = session_log.read(1, 10)
        assert (parse_log(data), count) == (big[:1], 1)
        data, count = session_log.read(2, 65537 * 2 - 1)
        assert (parse_log(data), count) == (big[1:2], 1)
        data, count = session_log.read(1, 65537 * 2)
        assert (parse_log(data), count) == (big[:2], 2)
        data, count = session_log.read(3, 65537 + size(b"small") - 1)
        assert (parse_log(data), count) == (big[2:3], 1)
        data, count = session_log.read(3, 65537 + size(b"small"))
        assert (parse_log(data), count) == (big[2:4], 2)
        data, count = session_log.read(1, 65537 * 3 + size(b"small"))
        assert (parse_log(data), count) == (big, 4)


def test_span_against_a_model(tmp_path: Path) -> None:
    appended = make_log(tmp_path)
    boundaries = {a.first_seq: a.offset for a in appended}
    boundaries[len(ALL) + 1] = ends(ALL)[-1]
    total = ends(ALL)[-1]
    with reopen(tmp_path) as session_log:
        for seq in range(1, len(ALL) + 1):
            for limit_seq in range(seq + 1, len(ALL) + 2):
                for max_bytes in [*range(1, 40), 300, 305, 320, 330, total]:
                    start, end_seq, end_offset = session_log.span(seq, max_bytes, limit_seq)
                    assert start == session_log.offset_of(seq)
                    assert seq < end_seq <= limit_seq
                    assert end_offset == session_log.offset_of(end_seq)
                    # It ends on a batch boundary, or at the limit ...
                    assert end_seq == limit_seq or end_seq in boundaries
                    # ... the first boundary at least max_bytes on, else the limit.
                    if end_seq < limit_seq:
                        assert end_offset - start >= max_bytes
                    earlier = [
                        s
                        for s, o in boundaries.items()
                        if seq < s < end_seq and o - start >= max_bytes
                    ]
                    assert earlier == []
                    data = (tmp_path / LOG_FILE).read_bytes()[start:end_offset]
                    assert parse_log(data) == ALL[seq - 1 : end_seq - 1]


# ---------------------------------------------------------------------------- durability


def _spy_syncs(monkeypatch: pytest.MonkeyPatch, directory: Path) -> list[str]:
    """Record which file each ``fdatasync``/``fsync`` call synced, by inode."""
    names = {(directory / n).stat().st_ino: n for n in (LOG_FILE, INDEX_FILE)}
    calls: list[str] = []

    def wrap(real: Callable[[int], None]) -> Callable[[int], None]:
        def spy(fd: int) -> None:
            calls.append(names.get(os.fstat(fd).st_ino, "other"))
            real(fd)

        return spy

    monkeypatch.setattr(os, "fdatasync", wrap(os.fdatasync))
    monkeypatch.setattr(os, "fsync", wrap(os.fsync))
    return calls


@pytest.mark.parametrize(
    ("durability", "per_batch"),
    [
        (Durability.NONE, []),
        (Durability.BATCH, [LOG_FILE, INDEX_FILE]),
        (Durability.ALWAYS, [LOG_FILE, INDEX_FILE]),
    ],
)
def test_durability_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: Durability, per_batch: list[str]
) -> None:
    with SessionLog.open(tmp_path, durability=durability, create=True) as session_log:
        calls = _spy_syncs(monkeypatch, tmp_path)
        append_batches(session_log, BATCHES)
        assert calls == per_batch * len(BATCHES)
    monkeypatch.undo()
    with reopen(tmp_path, durability=durability) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, ALL)


def test_durability_values() -> None:
    assert [d.value for d in Durability] == ["none", "batch", "always"]
    assert Durability("batch") is Durability.BATCH


# ---------------------------------------------------------------------------- failed appends


def test_failed_index_write_rolls_the_log_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SessionLog.open(tmp_path, create=True) as session_log:
        append_batches(session_log, BATCHES[:2])
        before = (tmp_path / LOG_FILE).read_bytes()
        index_inode = (tmp_path / INDEX_FILE).stat().st_ino
        real_write = os.write

        def failing_write(fd: int, data: bytes) -> int:
            if os.fstat(fd).st_ino == index_inode:
                raise OSError(28, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", failing_write)
        with pytest.raises(StoreError, match=r"no space left on device writing session .*'s index"):
            session_log.append(encode_sequenced_many(BATCHES[2]), len(BATCHES[2]))
        monkeypatch.undo()
        assert (tmp_path / LOG_FILE).read_bytes() == before
        assert session_log.next_seq == 5
        # The log goes on as if the failed batch had never been offered.
        append_batches(session_log, BATCHES[2:])
        check_serves(session_log, ALL)
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, ALL)


def test_short_log_write_rolls_the_log_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SessionLog.open(tmp_path, create=True) as session_log:
        append_batches(session_log, BATCHES[:2])
        before = (tmp_path / LOG_FILE).read_bytes()
        real_write = os.write

        def short_write(fd: int, data: bytes) -> int:
            return real_write(fd, data[: len(data) // 2])

        monkeypatch.setattr(os, "write", short_write)
        with pytest.raises(StoreError, match="short write"):
            session_log.append(encode_sequenced_many(BATCHES[2]), len(BATCHES[2]))
        monkeypatch.undo()
        assert (tmp_path / LOG_FILE).read_bytes() == before
        append_batches(session_log, BATCHES[2:])
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, ALL)


@pytest.mark.parametrize("failing", [LOG_FILE, INDEX_FILE])
def test_failed_sync_rolls_back_log_and_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A failed ``fdatasync`` (of the log, or of the index after its record was written)
    leaves neither the batch nor its index record behind: later batches are appended,
    acknowledged, and survive a reopen."""
    with SessionLog.open(tmp_path, durability=Durability.ALWAYS, create=True) as session_log:
        append_batches(session_log, BATCHES[:2])
        inode = (tmp_path / failing).stat().st_ino
        real_sync = os.fdatasync

        def failing_sync(fd: int) -> None:
            if os.fstat(fd).st_ino == inode:
                raise OSError(5, "Input/output error")
            real_sync(fd)

        monkeypatch.setattr(os, "fdatasync", failing_sync)
        with pytest.raises(StoreError, match=f"input/output error syncing session .*'s {failing}"):
            session_log.append(encode_sequenced_many([b"lost"]), 1)
        monkeypatch.undo()
        assert index_records(tmp_path) == 2
        append_batches(session_log, BATCHES[2:])
        check_serves(session_log, ALL)
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean, session_log.recovery.problems
        check_serves(session_log, ALL)


def test_read_only_log_refuses_appends(tmp_path: Path) -> None:
    make_log(tmp_path)
    with reopen(tmp_path, writable=False) as session_log:
        with pytest.raises(StoreError, match="read-only"):
            session_log.append(encode_sequenced_many([b"no"]), 1)
        check_serves(session_log, ALL)
