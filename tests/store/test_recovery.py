"""Tests of recovery at opening (:mod:`tickertape.store.recovery`): what of a damaged,
torn or unindexed log is served, what is set aside, and what is reported.

Everything runs on real files. The log file is checked by parsing it independently with
the wire framer, never only through :class:`SessionLog` itself. Moved from
tests/store/test_log.py with the split of recovery out of the log.
"""

from __future__ import annotations

import itertools
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store_logs import (
    ALL,
    BATCHES,
    RECORD_SIZE,
    add_to_log,
    append_batches,
    batch_ends,
    batch_entries,
    check_serves,
    corrected,
    ends,
    flip_bit,
    flip_record_bits,
    index_entries,
    index_records,
    logged,
    make_log,
    missing,
    pack_record,
    parse_log,
    reopen,
    size,
    truncate,
)
from tickertape.errors import StoreError
from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import Appended, Durability, SessionLog
from tickertape.store.opening import verify
from tickertape.store.recovery import Recovery
from tickertape.text import plural
from tickertape.wire.soupbintcp import (
    encode_sequenced_many,
)

# ---------------------------------------------------------------------------- recovery


LAST = BATCHES[-1]
BEFORE_LAST = ALL[: -len(LAST)]


@pytest.mark.parametrize("kept_bytes", [1, 2, 3, 4, size(b"p333333") - 1])
def test_recover_torn_unindexed_packet(tmp_path: Path, kept_bytes: int) -> None:
    """(a) A batch written to the log, torn in its third packet, with no index record:
    the tail, never acknowledged. Not damage; not served; moved aside whole."""
    make_log(tmp_path)
    extra = [b"p1", b"p22", b"p333333"]
    whole = sum(map(size, extra[:2]))
    raw = encode_sequenced_many(extra)
    add_to_log(tmp_path, raw[: whole + kept_bytes])
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.clean
        assert recovery.messages == len(ALL)
        assert (recovery.tail_bytes, recovery.tail_messages) == (whole + kept_bytes, 2)
        assert recovery.cut_bytes == 0
        end = ends(ALL)[-1]
        assert recovery.cut_to == tmp_path / f"log.cut-{end}"
        assert recovery.cut_to.read_bytes() == raw[: whole + kept_bytes]
        check_serves(session_log, ALL)
    assert logged(tmp_path) == ALL


@pytest.mark.parametrize(
    ("tear", "kept"),
    [
        (1, 0),  # inside the batch's first packet
        (size(LAST[0]) - 1, 0),
        (size(LAST[0]), 1),  # on a packet boundary: nothing torn, nothing cut
        (size(LAST[0]) + 3, 1),
        (size(LAST[0]) + size(LAST[1]) + 1, 2),
        (sum(map(size, LAST)) - 1, 2),  # the batch's very last byte is missing
    ],
)
def test_recover_torn_packet_in_the_last_indexed_batch(
    tmp_path: Path, tear: int, kept: int
) -> None:
    """(a) The log is shorter than the index says: the last indexed batch is torn. Its
    record no longer vouches for what is left, so none of it is served (not even its
    whole packets): all of it is moved aside."""
    appended = make_log(tmp_path)
    original = (tmp_path / LOG_FILE).read_bytes()
    last = appended[-1]
    log_size = last.offset + tear
    truncate(tmp_path / LOG_FILE, log_size)
    cut = log_size - last.offset
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems == (
            f"log is shorter ({log_size} bytes) than the index says "
            f"({last.offset + last.length}); the batch from sequence {last.first_seq} "
            "is incomplete",
            f"the index lists messages up to sequence {len(ALL)} but the log holds only up to "
            f"{len(BEFORE_LAST)}: {missing(len(LAST))}",
            f"{plural(cut, 'byte')} from offset {last.offset} (sequence {last.first_seq} on) not "
            "served: damaged, or following damage",
        )
        assert recovery.messages == len(BEFORE_LAST)
        assert recovery.batches == len(BATCHES) - 1
        assert recovery.cut_bytes == cut
        assert recovery.lost_vouched
        assert recovery.cut_to == tmp_path / f"log.cut-{last.offset}"
        assert recovery.cut_to.read_bytes() == original[last.offset : log_size]
        check_serves(session_log, BEFORE_LAST)
    assert logged(tmp_path) == BEFORE_LAST
    assert index_entries(tmp_path) == batch_entries(appended[:-1])
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, BEFORE_LAST)


@pytest.mark.parametrize("batch", range(len(BATCHES)))
def test_recover_log_truncated_on_a_batch_boundary(tmp_path: Path, batch: int) -> None:
    """The log ends exactly where batch ``batch`` began: nothing is torn, but the index
    promises messages the log no longer holds."""
    appended = make_log(tmp_path)
    truncate(tmp_path / LOG_FILE, appended[batch].offset)
    survivors = [p for b in BATCHES[:batch] for p in b]
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems == (
            f"the index lists messages up to sequence {len(ALL)} but the log holds only up to "
            f"{len(survivors)}: {missing(len(ALL) - len(survivors))}",
        )
        assert recovery == Recovery(
            messages=len(survivors), batches=batch, problems=recovery.problems, vouched=len(ALL)
        )
        assert recovery.lost_vouched
        check_serves(session_log, survivors)
    assert index_entries(tmp_path) == batch_entries(appended[:batch])
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE, LOG_FILE]
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean


def test_recover_unindexed_whole_packets(tmp_path: Path) -> None:
    """(b) Whole batches in the log with no index record: a crash between the log write
    and the index write, so never acknowledged. No checksum vouches for them: they are
    not served (whole-looking packets may hold zeros a power loss left), not called
    damage, and moved aside whole."""
    appended = make_log(tmp_path)
    extra = [[b"e1", b"e22"], [b"e333"], [b"", b"e5" * 100]]
    for batch in extra:
        add_to_log(tmp_path, encode_sequenced_many(batch))
    flat = [p for b in extra for p in b]
    tail = b"".join(encode_sequenced_many(b) for b in extra)
    recovery = verify(tmp_path)
    assert recovery.problems == ()
    assert (recovery.tail_messages, recovery.tail_bytes) == (len(flat), len(tail))
    assert recovery.tail_note() == (
        f"{len(flat)} messages ({len(tail)} bytes) past the last index record, from sequence "
        f"{len(ALL) + 1}: being written, or never acknowledged if the writer stopped (not "
        "served; the next start of a server sets them aside)"
    )
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.clean
        assert recovery.messages == len(ALL)
        assert recovery.batches == len(BATCHES)
        assert recovery.cut_bytes == 0
        assert recovery.cut_to == tmp_path / f"log.cut-{ends(ALL)[-1]}"
        assert recovery.cut_to.read_bytes() == tail
        check_serves(session_log, ALL)
    assert index_entries(tmp_path) == batch_entries(appended)
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        assert session_log.recovery.tail_bytes == 0
        check_serves(session_log, ALL)


def test_recover_without_an_index(tmp_path: Path) -> None:
    """An index is made with its log: a log without one has lost what vouched for it.
    Nothing is served, and it counts as damage that lost published messages."""
    make_log(tmp_path)
    (tmp_path / INDEX_FILE).unlink()
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems[0].startswith("the index is missing")
        assert recovery.messages == 0
        assert recovery.lost_vouched
        assert recovery.cut_to == tmp_path / "log.cut-0"
        check_serves(session_log, [])
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean


@pytest.mark.parametrize(
    "index_size", [1, RECORD_SIZE - 1, 2 * RECORD_SIZE + 5, 5 * RECORD_SIZE - 1]
)
def test_recover_partial_index_record(tmp_path: Path, index_size: int) -> None:
    """(c) The index ends in a partial record: a crash in the middle of an index write
    (never synced, so never acknowledged). Not damage: the batches after the last whole
    record are the tail."""
    make_log(tmp_path)
    truncate(tmp_path / INDEX_FILE, index_size)
    whole = index_size // RECORD_SIZE
    indexed = [p for b in BATCHES[:whole] for p in b]
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems == ()
        assert recovery.tail_messages == len(ALL) - len(indexed)
        assert recovery.messages == len(indexed)
        assert recovery.cut_bytes == 0
        check_serves(session_log, indexed)
    assert (tmp_path / INDEX_FILE).stat().st_size == whole * RECORD_SIZE
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, indexed)


def test_recover_junk_after_the_last_index_record(tmp_path: Path) -> None:
    """A partial record after the last one (a record being written) is not damage."""
    make_log(tmp_path)
    with open(tmp_path / INDEX_FILE, "ab") as f:
        f.write(b"\xff" * 7)
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.problems == ()
        check_serves(session_log, ALL)
    assert index_records(tmp_path) == len(BATCHES)


def test_recover_zeroed_records_after_the_last_index_record(tmp_path: Path) -> None:
    """Whole records of zeros at the end of the index (appended, but their page never
    reached the disk before a power loss): never synced, so never acknowledged. Their
    batches are the tail, not damage."""
    appended = make_log(tmp_path)
    raw = (tmp_path / INDEX_FILE).read_bytes()
    (tmp_path / INDEX_FILE).write_bytes(raw[: 3 * RECORD_SIZE] + bytes(2 * RECORD_SIZE))
    recovery = verify(tmp_path)
    assert recovery.problems == ()
    assert recovery.tail_bytes == appended[-1].offset + appended[-1].length - appended[3].offset
    with reopen(tmp_path) as session_log:
        check_serves(session_log, [p for b in BATCHES[:3] for p in b])
    assert (tmp_path / INDEX_FILE).read_bytes() == raw[: 3 * RECORD_SIZE]


RECORD_BITS = [0, 8 * 3 + 1, 8 * 9, 8 * 17 + 4, 8 * 21, 8 * 25 + 7, 8 * 29 + 2]
"""Bits of an index record, one in each field: first_seq, offset, length, count, the
batch's CRC, and the record's own CRC."""


@pytest.mark.parametrize("record", range(len(BATCHES)))
@pytest.mark.parametrize("bit", RECORD_BITS)
def test_recover_flipped_bit_in_an_index_record(tmp_path: Path, record: int, bit: int) -> None:
    """(d) A bit flipped in an index record (any field, or the record's own checksum) is
    put right: CRC-32 tells every single-bit error in a record apart. Nothing is lost or
    re-indexed, the batch is still checked against its record, and the mended index is
    the original one."""
    make_log(tmp_path)
    original_index = (tmp_path / INDEX_FILE).read_bytes()
    flip_record_bits(tmp_path, record, bit)
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery == Recovery(
            messages=len(ALL),
            batches=len(BATCHES),
            problems=(corrected(record),),
            vouched=len(ALL),
        )
        check_serves(session_log, ALL)
    assert (tmp_path / INDEX_FILE).read_bytes() == original_index
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, ALL)


@pytest.mark.parametrize("record", range(len(BATCHES)))
@pytest.mark.parametrize(
    "bits",
    [
        (8 * 9, 8 * 9 + 1),  # two in one field
        (3, 8 * 21 + 6),  # two fields
        (8 * 17 + 4, 8 * 29 + 2),  # a field and the record's own CRC
        (8 * 28, 8 * 31 + 7),  # the record's own CRC only
        (1, 8 * 10 + 3, 8 * 24),  # three
    ],
)
def test_recover_index_record_with_more_than_one_flipped_bit(
    tmp_path: Path, record: int, bits: tuple[int, ...]
) -> None:
    """A record with two or more bits flipped cannot be put right (nor is it "put right"
    wrongly): it is dropped, and its batch has no checksum to vouch for it. That batch
    and everything after it are not served; they count as published (a record was
    written for them), so the session cannot go on."""
    appended = make_log(tmp_path)
    flip_record_bits(tmp_path, record, *bits)
    at = appended[record]
    kept = [p for b in BATCHES[:record] for p in b]
    cut = ends(ALL)[-1] - at.offset
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        last = record == len(BATCHES) - 1
        assert recovery.problems == (
            f"index record {record} fails its checksum",
            *(
                []
                if last
                else [
                    f"the log from offset {at.offset} (sequence {at.first_seq} on) has no "
                    "index record, but later batches have: no checksum vouches for it",
                    f"the index lists messages up to sequence {len(ALL)} but the log holds "
                    f"only up to {len(kept)}: {missing(len(ALL) - len(kept))}",
                ]
            ),
            f"{plural(cut, 'byte')} from offset {at.offset} (sequence {at.first_seq} on) not "
            "served: damaged, or following damage",
        )
        assert recovery.messages == len(kept)
        assert recovery.batches == record
        assert recovery.cut_bytes == cut
        assert recovery.lost_vouched
        check_serves(session_log, kept)
    assert index_entries(tmp_path) == batch_entries(appended[:record])
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, kept)


@pytest.mark.parametrize(("record", "batch"), list(itertools.combinations(range(len(BATCHES)), 2)))
def test_recover_flipped_bit_in_an_index_record_and_a_later_batch(
    tmp_path: Path, record: int, batch: int
) -> None:
    """A damaged index record does not stop later batches being verified against their
    own records: a bit flipped in a later batch is still found, and that batch and all
    after it are moved aside and never served."""
    appended = make_log(tmp_path)
    original_index = (tmp_path / INDEX_FILE).read_bytes()
    damaged = appended[batch]
    flip_record_bits(tmp_path, record, 8 * 9 + 2)  # the record's offset
    flip_bit(tmp_path / LOG_FILE, damaged.offset + damaged.length - 1, 4)
    on_disk = (tmp_path / LOG_FILE).read_bytes()
    kept = [p for b in BATCHES[:batch] for p in b]
    cut = len(on_disk) - damaged.offset
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems == (
            corrected(record),
            f"batch at offset {damaged.offset} (sequence {damaged.first_seq}.."
            f"{damaged.first_seq + damaged.count - 1}) fails its checksum",
            f"the index lists messages up to sequence {len(ALL)} but the log holds only up to "
            f"{len(kept)}: {missing(len(ALL) - len(kept))}",
            f"{plural(cut, 'byte')} from offset {damaged.offset} (sequence {damaged.first_seq} on) "
            "not served: damaged, or following damage",
        )
        assert recovery == Recovery(
            messages=len(kept),
            batches=batch,
            cut_bytes=cut,
            cut_to=tmp_path / f"log.cut-{damaged.offset}",
            problems=recovery.problems,
            vouched=len(ALL),
        )
        assert recovery.cut_to is not None
        assert recovery.cut_to.read_bytes() == on_disk[damaged.offset :]
        check_serves(session_log, kept)
    assert logged(tmp_path) == kept
    assert (tmp_path / INDEX_FILE).read_bytes() == original_index[: batch * RECORD_SIZE]
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, kept)


@pytest.mark.parametrize(("record", "batch"), list(itertools.combinations(range(len(BATCHES)), 2)))
def test_recover_index_record_past_putting_right_and_a_flipped_bit_in_a_later_batch(
    tmp_path: Path, record: int, batch: int
) -> None:
    """A record that cannot be put right is dropped; nothing vouches for its batch, so
    the walk stops there, before the later damaged batch: neither is served."""
    appended = make_log(tmp_path)
    at = appended[record]
    flip_record_bits(tmp_path, record, 8 * 9 + 2, 8 * 20)  # its offset and its count
    flip_bit(tmp_path / LOG_FILE, appended[batch].offset + appended[batch].length - 1, 4)
    on_disk = (tmp_path / LOG_FILE).read_bytes()
    kept = [p for b in BATCHES[:record] for p in b]
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems[0] == f"index record {record} fails its checksum"
        assert recovery.problems[1] == (
            f"the log from offset {at.offset} (sequence {at.first_seq} on) has no index "
            "record, but later batches have: no checksum vouches for it"
        )
        assert recovery == Recovery(
            messages=len(kept),
            batches=record,
            cut_bytes=len(on_disk) - at.offset,
            cut_to=tmp_path / f"log.cut-{at.offset}",
            problems=recovery.problems,
            vouched=len(ALL),
        )
        check_serves(session_log, kept)
    assert logged(tmp_path) == kept
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, kept)


@pytest.mark.parametrize("batch", range(len(BATCHES)))
@pytest.mark.parametrize("bit", RECORD_BITS)
def test_recover_flipped_bit_in_an_index_record_and_in_its_own_batch(
    tmp_path: Path, batch: int, bit: int
) -> None:
    """A bit flipped in a record and another in the batch it vouches for: the record is
    put right and the batch checked against it, so the batch (and everything after it)
    is moved aside and never served, not re-indexed with its damage. The mended index
    vouches for the intact prefix only: a later verify does not call damage clean."""
    appended = make_log(tmp_path)
    damaged = appended[batch]
    flip_record_bits(tmp_path, batch, bit)
    flip_bit(tmp_path / LOG_FILE, damaged.offset + damaged.length - 1, 4)
    on_disk = (tmp_path / LOG_FILE).read_bytes()
    kept = [p for b in BATCHES[:batch] for p in b]
    cut = len(on_disk) - damaged.offset
    assert verify(tmp_path).messages == len(kept)
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems == (
            corrected(batch),
            f"batch at offset {damaged.offset} (sequence {damaged.first_seq}.."
            f"{damaged.first_seq + damaged.count - 1}) fails its checksum",
            f"the index lists messages up to sequence {len(ALL)} but the log holds only up to "
            f"{len(kept)}: {missing(len(ALL) - len(kept))}",
            f"{plural(cut, 'byte')} from offset {damaged.offset} (sequence {damaged.first_seq} on) "
            "not served: damaged, or following damage",
        )
        assert recovery.lost_vouched
        assert recovery.cut_to == tmp_path / f"log.cut-{damaged.offset}"
        assert recovery.cut_to.read_bytes() == on_disk[damaged.offset :]
        check_serves(session_log, kept)
    assert logged(tmp_path) == kept
    assert index_entries(tmp_path) == batch_entries(appended[:batch])
    assert verify(tmp_path).clean


@pytest.mark.parametrize("record", range(len(BATCHES)))
@pytest.mark.parametrize("shift", [-1, 1, 5])
def test_recover_index_record_that_does_not_follow_on(
    tmp_path: Path, record: int, shift: int
) -> None:
    """A well-formed record (its own checksum is right, and so is its batch's) whose
    first sequence number is not the one that follows on: it does not vouch for its
    batch, so the walk stops there."""
    appended = make_log(tmp_path)
    original_index = (tmp_path / INDEX_FILE).read_bytes()
    wrong = appended[record]
    first_seq = wrong.first_seq + shift
    batch_crc = zlib.crc32((tmp_path / LOG_FILE).read_bytes()[wrong.offset :][: wrong.length])
    forged = pack_record(first_seq, wrong.offset, wrong.length, wrong.count, batch_crc)
    (tmp_path / INDEX_FILE).write_bytes(
        original_index[: record * RECORD_SIZE]
        + forged
        + original_index[(record + 1) * RECORD_SIZE :]
    )
    kept = [p for b in BATCHES[:record] for p in b]
    others = len(ALL) - (len(LAST) if record == len(BATCHES) - 1 else 0)
    promised = max(first_seq + wrong.count - 1, others)
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems == (
            f"index record for offset {wrong.offset} (sequence {first_seq}) does not follow on"
            f" (expected sequence {wrong.first_seq})",
            f"the index lists messages up to sequence {promised} but the log holds "
            f"only up to {len(kept)}: {missing(promised - len(kept))}",
            f"{plural(ends(ALL)[-1] - wrong.offset, 'byte')} from offset {wrong.offset} (sequence "
            f"{wrong.first_seq} on) not served: damaged, or following damage",
        )
        assert recovery.messages == len(kept)
        assert recovery.lost_vouched
        check_serves(session_log, kept)
    assert (tmp_path / INDEX_FILE).read_bytes() == original_index[: record * RECORD_SIZE]
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean


def test_recover_index_record_repeated_in_place_of_the_next(tmp_path: Path) -> None:
    """Record 2 repeated where record 3 should be: batch 3 has no record, so nothing
    vouches for it; it and everything after it are not served."""
    appended = make_log(tmp_path)
    raw = (tmp_path / INDEX_FILE).read_bytes()
    damaged = (
        raw[: 3 * RECORD_SIZE] + raw[2 * RECORD_SIZE : 3 * RECORD_SIZE] + raw[4 * RECORD_SIZE :]
    )
    (tmp_path / INDEX_FILE).write_bytes(damaged)
    kept = [p for b in BATCHES[:3] for p in b]
    at = appended[3]
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        assert recovery.problems == (
            f"the log from offset {at.offset} (sequence {at.first_seq} on) has no index "
            "record, but later batches have: no checksum vouches for it",
            "dropped 1 index records that match no batch of the log (duplicated or out of place)",
            f"the index lists messages up to sequence {len(ALL)} but the log holds only up to "
            f"{len(kept)}: {missing(len(ALL) - len(kept))}",
            f"{plural(ends(ALL)[-1] - at.offset, 'byte')} from offset {at.offset} (sequence "
            f"{at.first_seq} on) not served: damaged, or following damage",
        )
        check_serves(session_log, kept)
    assert (tmp_path / INDEX_FILE).read_bytes() == raw[: 3 * RECORD_SIZE]


@pytest.mark.parametrize(
    ("where", "bit"),
    [
        ("length", 3),  # the packet length field: the batch no longer parses the same
        ("type", 0),  # the 'S' type byte
        ("payload", 5),
        ("last byte", 7),
    ],
)
def test_recover_flipped_bit_inside_a_middle_batch(tmp_path: Path, where: str, bit: int) -> None:
    """(e) A flipped bit inside batch 2 of 5: batches 0 and 1 are kept; everything from
    batch 2 on is moved aside to ``log.cut-OFFSET``, byte for byte, and never served."""
    appended = make_log(tmp_path)
    damaged = appended[2]
    position = {
        "length": damaged.offset + 1,
        "type": damaged.offset + 2,
        "payload": damaged.offset + 3 + 100,
        "last byte": damaged.offset + damaged.length - 1,
    }[where]
    flip_bit(tmp_path / LOG_FILE, position, bit)
    on_disk = (tmp_path / LOG_FILE).read_bytes()
    kept = [p for b in BATCHES[:2] for p in b]
    with reopen(tmp_path) as session_log:
        recovery = session_log.recovery
        last_seq = damaged.first_seq + damaged.count - 1
        assert recovery.problems == (
            f"batch at offset {damaged.offset} (sequence {damaged.first_seq}..{last_seq})"
            " fails its checksum",
            f"the index lists messages up to sequence {len(ALL)} but the log holds only up to "
            f"{len(kept)}: {missing(len(ALL) - len(kept))}",
            f"{plural(len(on_disk) - damaged.offset, 'byte')} from offset {damaged.offset} "
            f"(sequence {damaged.first_seq} on) not served: damaged, or following damage",
        )
        assert recovery.messages == len(kept)
        assert recovery.batches == 2
        assert recovery.cut_bytes == len(on_disk) - damaged.offset
        assert recovery.cut_to == tmp_path / f"log.cut-{damaged.offset}"
        assert recovery.cut_to.read_bytes() == on_disk[damaged.offset :]
        check_serves(session_log, kept)
        assert session_log.read(damaged.first_seq, 1 << 20) == (b"", 0)
        with pytest.raises(StoreError):
            session_log.offset_of(damaged.first_seq + 1)
    assert (tmp_path / LOG_FILE).read_bytes() == on_disk[: damaged.offset]
    assert index_entries(tmp_path) == batch_entries(appended[:2])


def test_recover_flipped_bit_in_the_first_batch(tmp_path: Path) -> None:
    make_log(tmp_path)
    on_disk_before = (tmp_path / LOG_FILE).read_bytes()
    flip_bit(tmp_path / LOG_FILE, 3)
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.messages == 0
        assert session_log.recovery.cut_to == tmp_path / "log.cut-0"
        check_serves(session_log, [])
    assert (tmp_path / "log.cut-0").read_bytes()[4:] == on_disk_before[4:]
    assert (tmp_path / LOG_FILE).read_bytes() == b""


def test_a_second_cut_at_the_same_offset_keeps_the_first(tmp_path: Path) -> None:
    """Bytes moved aside are never overwritten by a later cut at the same offset."""
    appended = make_log(tmp_path)
    at = appended[2].offset
    flip_bit(tmp_path / LOG_FILE, at + 3)
    first_cut = (tmp_path / LOG_FILE).read_bytes()[at:]
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.cut_to == tmp_path / f"log.cut-{at}"
        append_batches(session_log, [[b"again"]])
    flip_bit(tmp_path / LOG_FILE, at + 3)
    second_cut = (tmp_path / LOG_FILE).read_bytes()[at:]
    with reopen(tmp_path) as session_log:
        cut_to = session_log.recovery.cut_to
        assert cut_to is not None
        assert cut_to == tmp_path / f"log.cut-{at}.1"
        assert cut_to.read_bytes() == second_cut
    assert (tmp_path / f"log.cut-{at}").read_bytes() == first_cut


# ---------------------------------------------------------------------------- damage catalogue


Damage = Callable[[Path, list[Appended]], list[bytes]]
"""Damages a log made by :func:`make_log`; returns the messages that must survive."""


def _clean(directory: Path, appended: list[Appended]) -> list[bytes]:
    return ALL


def _torn_unindexed(directory: Path, appended: list[Appended]) -> list[bytes]:
    add_to_log(directory, encode_sequenced_many([b"t1", b"t2"])[:7])
    return ALL


def _torn_indexed(directory: Path, appended: list[Appended]) -> list[bytes]:
    truncate(directory / LOG_FILE, appended[-1].offset + size(LAST[0]) + 2)
    return BEFORE_LAST


def _unindexed(directory: Path, appended: list[Appended]) -> list[bytes]:
    add_to_log(directory, encode_sequenced_many([b"u1", b"u2"]))
    return ALL


def _partial_index(directory: Path, appended: list[Appended]) -> list[bytes]:
    truncate(directory / INDEX_FILE, 3 * RECORD_SIZE + 11)
    return [p for b in BATCHES[:3] for p in b]


def _index_bit(directory: Path, appended: list[Appended]) -> list[bytes]:
    flip_bit(directory / INDEX_FILE, 2 * RECORD_SIZE + 9, 2)
    return ALL


def _index_bits(directory: Path, appended: list[Appended]) -> list[bytes]:
    flip_record_bits(directory, 2, 8 * 9 + 2, 8 * 17)  # past putting right
    return [p for b in BATCHES[:2] for p in b]


def _batch_bit(directory: Path, appended: list[Appended]) -> list[bytes]:
    flip_bit(directory / LOG_FILE, appended[3].offset + 4, 6)
    return [p for b in BATCHES[:3] for p in b]


def _no_index(directory: Path, appended: list[Appended]) -> list[bytes]:
    (directory / INDEX_FILE).unlink()
    return []


def _batch_boundary(directory: Path, appended: list[Appended]) -> list[bytes]:
    truncate(directory / LOG_FILE, appended[3].offset)
    return [p for b in BATCHES[:3] for p in b]


def _index_and_batch_bit(directory: Path, appended: list[Appended]) -> list[bytes]:
    flip_bit(directory / INDEX_FILE, RECORD_SIZE + 20, 1)
    flip_bit(directory / LOG_FILE, appended[3].offset + 5, 3)
    return [p for b in BATCHES[:3] for p in b]


def _index_and_own_batch_bit(directory: Path, appended: list[Appended]) -> list[bytes]:
    flip_bit(directory / INDEX_FILE, 3 * RECORD_SIZE + 20, 1)
    flip_bit(directory / LOG_FILE, appended[3].offset + 5, 3)
    return [p for b in BATCHES[:3] for p in b]


def _wrong_sequence(directory: Path, appended: list[Appended]) -> list[bytes]:
    raw = (directory / INDEX_FILE).read_bytes()
    wrong = appended[2]
    batch_crc = int.from_bytes(raw[3 * RECORD_SIZE - 8 : 3 * RECORD_SIZE - 4], "little")
    forged = pack_record(wrong.first_seq + 1, wrong.offset, wrong.length, wrong.count, batch_crc)
    (directory / INDEX_FILE).write_bytes(raw[: 2 * RECORD_SIZE] + forged + raw[3 * RECORD_SIZE :])
    return [p for b in BATCHES[:2] for p in b]


DAMAGES: dict[str, Damage] = {
    "clean": _clean,
    "torn-unindexed": _torn_unindexed,
    "torn-indexed": _torn_indexed,
    "unindexed": _unindexed,
    "partial-index": _partial_index,
    "index-bit": _index_bit,
    "index-bits": _index_bits,
    "batch-bit": _batch_bit,
    "no-index": _no_index,
    "batch-boundary": _batch_boundary,
    "index-and-batch-bit": _index_and_batch_bit,
    "index-and-own-batch-bit": _index_and_own_batch_bit,
    "wrong-sequence": _wrong_sequence,
}

EACH_DAMAGE = pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))

LOSES_VOUCHED = {"torn-indexed", "batch-bit", "batch-boundary", "index-and-batch-bit"}
LOSES_VOUCHED |= {"index-and-own-batch-bit", "index-bits", "no-index", "wrong-sequence"}
"""The damages that cost messages an index record vouched for: they had been published.
The others cost nothing, or only a torn or unindexed tail (never published)."""

NOT_DAMAGE = {"clean", "torn-unindexed", "unindexed", "partial-index"}
"""What a crash leaves without damage: a tail past the last index record."""

OLD = 1_000_000_000 * 10**9  # 2001-09-09, in nanoseconds


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in ``directory`` with its bytes and mtime, and the directory's mtime."""
    state = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}
    state["."] = (b"", directory.stat().st_mtime_ns)
    return state


def age(directory: Path) -> None:
    """Set every mtime far in the past, so that any write would show."""
    for path in directory.iterdir():
        os.utime(path, ns=(OLD, OLD))
    os.utime(directory, ns=(OLD, OLD))


@EACH_DAMAGE
def test_read_only_open_and_verify_change_nothing(tmp_path: Path, damage: str) -> None:
    """(f) A read-only open and ``verify`` find the same problems as a writable open,
    serve only the trusted prefix, and change nothing on disk."""
    appended = make_log(tmp_path)
    survivors = DAMAGES[damage](tmp_path, appended)
    age(tmp_path)
    before = snapshot(tmp_path)

    with reopen(tmp_path, writable=False) as session_log:
        seen = session_log.recovery
        assert seen.cut_to is None
        assert seen.messages == len(survivors)
        assert session_log.next_seq == len(survivors) + 1
        for seq in range(1, len(survivors) + 2):
            assert session_log.offset_of(seq) == ends(survivors)[seq - 1]
        data, count = session_log.read(1, 1 << 20)
        assert count == len(survivors)
        assert parse_log(data) == survivors
    assert snapshot(tmp_path) == before

    verified = verify(tmp_path)
    assert verified == seen
    assert verified.clean == (damage in NOT_DAMAGE)
    assert snapshot(tmp_path) == before

    # A writable open finds the same problems, and (unless clean) repairs.
    with reopen(tmp_path) as session_log:
        repaired = session_log.recovery
        assert repaired.problems == seen.problems
        assert repaired.messages == seen.messages
        assert repaired.cut_bytes == seen.cut_bytes
    assert (snapshot(tmp_path) == before) == (damage == "clean")
    assert verify(tmp_path).clean


@EACH_DAMAGE
@pytest.mark.parametrize("durability", list(Durability))
def test_appending_after_recovery(tmp_path: Path, damage: str, durability: Durability) -> None:
    """(g) After recovery, appending continues with the next sequence number, and a
    second reopen is clean."""
    appended = make_log(tmp_path, durability=durability)
    survivors = DAMAGES[damage](tmp_path, appended)
    with reopen(tmp_path, durability=durability) as session_log:
        assert session_log.recovery.clean == (damage in NOT_DAMAGE)
        assert session_log.next_seq == len(survivors) + 1
        result = session_log.append(encode_sequenced_many([b"after", b"recovery"]), 2)
        assert result.first_seq == len(survivors) + 1
        assert session_log.next_seq == len(survivors) + 3
        check_serves(session_log, [*survivors, b"after", b"recovery"])
    with reopen(tmp_path, durability=durability) as session_log:
        assert session_log.recovery.clean, session_log.recovery.problems
        assert session_log.recovery.messages == len(survivors) + 2
        check_serves(session_log, [*survivors, b"after", b"recovery"])
    assert logged(tmp_path) == [*survivors, b"after", b"recovery"]
    assert verify(tmp_path).clean


@EACH_DAMAGE
@pytest.mark.parametrize("writable", [False, True], ids=["read-only", "writable"])
def test_recovery_says_whether_it_lost_messages_the_index_vouched_for(
    tmp_path: Path, damage: str, writable: bool
) -> None:
    """Messages an index record vouched for had been published (the writer publishes a
    batch only once its record is written): losing them is told apart from losing a
    torn or unindexed tail, which was never published."""
    appended = make_log(tmp_path)
    survivors = DAMAGES[damage](tmp_path, appended)
    with reopen(tmp_path, writable=writable) as session_log:
        recovery = session_log.recovery
        assert recovery.messages == len(survivors)
        assert recovery.lost_vouched == (damage in LOSES_VOUCHED)
        # The last record left vouches for message 13, but for these: the index is gone,
        # or holds the first three records only.
        # The index is gone: each whole packet of the log counts as published.
        assert recovery.vouched == {"partial-index": 6}.get(damage, len(ALL))


def test_before_repair_is_told_what_was_found_before_anything_changes(tmp_path: Path) -> None:
    """A writable open about to repair calls ``before_repair`` first, once, with what it
    found; if that raises, nothing on disk changes and the open fails."""
    appended = make_log(tmp_path)
    survivors = _batch_bit(tmp_path, appended)
    before = snapshot(tmp_path)
    seen: list[Recovery] = []

    def refuse(found: Recovery) -> None:
        seen.append(found)
        assert snapshot(tmp_path) == before  # nothing changed yet
        raise OSError(28, "No space left on device")

    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="No space left"):
        SessionLog.open(tmp_path, before_repair=refuse)
    assert len(os.listdir("/proc/self/fd")) == open_fds
    assert snapshot(tmp_path) == before
    assert len(seen) == 1
    assert seen[0].messages == len(survivors)
    assert seen[0].lost_vouched
    assert seen[0].cut_to is None

    seen.clear()
    with SessionLog.open(tmp_path, before_repair=seen.append) as session_log:
        assert seen == [replace(session_log.recovery, cut_to=None)]
        assert session_log.recovery.cut_to == tmp_path / f"log.cut-{appended[3].offset}"
    # Nothing to repair (clean now), or read-only: not called.
    seen.clear()
    with SessionLog.open(tmp_path, before_repair=seen.append) as session_log:
        assert session_log.recovery.clean
    flip_bit(tmp_path / LOG_FILE, appended[1].offset + 4, 6)
    with SessionLog.open(tmp_path, writable=False, before_repair=seen.append) as session_log:
        assert not session_log.recovery.clean
    assert seen == []


def test_recovery_says_where_it_moved_the_bytes_it_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A writable open logs where the bytes it cut are kept; a read-only one (nothing on
    disk changes) says that they are not served, and does not say it cut them."""
    caplog.set_level(logging.WARNING, logger="tickertape.store.log")
    appended = make_log(tmp_path)
    _batch_bit(tmp_path, appended)
    at = appended[3].offset
    cut = (tmp_path / LOG_FILE).stat().st_size - at
    first = appended[3].first_seq

    with reopen(tmp_path, writable=False):
        pass
    said = [r.getMessage() for r in caplog.records if "damaged bytes" in r.getMessage()]
    assert said == [
        f"session {tmp_path.name}: the {cut} damaged bytes after offset {at} (sequence "
        f"{first} on) are not served; nothing on disk is changed (opened read-only)"
    ]
    assert not any("kept in" in r.getMessage() for r in caplog.records)

    caplog.clear()
    with reopen(tmp_path):
        pass
    said = [r.getMessage() for r in caplog.records if "kept in" in r.getMessage()]
    assert said == [
        f"session {tmp_path.name}: the {cut} bytes cut (sequence {first} on) are kept in "
        f"{tmp_path / f'log.cut-{at}'}"
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_index_is_replaced_atomically_and_only_when_it_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writable open leaves a clean index alone; a repaired index is written to a
    temporary file and renamed over the old one, so that a crash leaves one or the
    other; appends then go to the new index."""
    make_log(tmp_path)
    original_index = (tmp_path / INDEX_FILE).read_bytes()
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(source: str | Path, target: str | Path) -> None:
        replaced.append((Path(source).name, Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy_replace)
    inode = (tmp_path / INDEX_FILE).stat().st_ino
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
    assert replaced == []
    assert (tmp_path / INDEX_FILE).stat().st_ino == inode

    flip_bit(tmp_path / INDEX_FILE, 2 * RECORD_SIZE + 3)
    damaged_index = (tmp_path / INDEX_FILE).read_bytes()

    # A crash before the rename: the damaged index is still whole, and nothing leaks.
    def crash(source: str | Path, target: str | Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="Input/output error"):
        reopen(tmp_path)
    assert len(os.listdir("/proc/self/fd")) == open_fds
    assert (tmp_path / INDEX_FILE).read_bytes() == damaged_index
    assert (tmp_path / INDEX_FILE).stat().st_ino == inode

    monkeypatch.setattr(os, "replace", spy_replace)
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.problems == (corrected(2),)
        assert replaced == [(INDEX_FILE + ".tmp", INDEX_FILE)]
        assert (tmp_path / INDEX_FILE).stat().st_ino != inode
        assert (tmp_path / INDEX_FILE).read_bytes() == original_index
        assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE, LOG_FILE]
        appended = session_log.append(encode_sequenced_many([b"new"]), 1)
    assert index_entries(tmp_path)[-1] == (len(ALL) + 1, appended.offset, size(b"new"), 1)
    assert len(replaced) == 1
    with reopen(tmp_path) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, [*ALL, b"new"])


def test_index_checksums_cover_every_batch(tmp_path: Path) -> None:
    """The index's own format, as documented: one CRC-protected record per batch."""
    appended = make_log(tmp_path)
    raw = (tmp_path / INDEX_FILE).read_bytes()
    log_bytes = (tmp_path / LOG_FILE).read_bytes()
    assert len(raw) == RECORD_SIZE * len(appended)
    for number, result in enumerate(appended):
        record = raw[number * RECORD_SIZE : (number + 1) * RECORD_SIZE]
        assert zlib.crc32(record[:28]) == int.from_bytes(record[28:], "little")
        assert int.from_bytes(record[0:8], "little") == result.first_seq
        assert int.from_bytes(record[8:16], "little") == result.offset
        assert int.from_bytes(record[16:20], "little") == result.length
        assert int.from_bytes(record[20:24], "little") == result.count
        batch = log_bytes[result.offset : result.offset + result.length]
        assert int.from_bytes(record[24:28], "little") == zlib.crc32(batch)


# ---------------------------------------------------------------------------- properties


batches_strategy = st.lists(
    st.lists(st.binary(max_size=300), min_size=1, max_size=6), min_size=1, max_size=8
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, data=st.data())
def test_truncation_leaves_a_prefix(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[bytes]], data: st.DataObject
) -> None:
    """Whatever byte the log (and perhaps the index) is cut at, reopening serves exactly
    the whole messages before the cut, and never a torn packet."""
    directory = tmp_path_factory.mktemp("truncated")
    make_log(directory, batches)
    payloads = [p for b in batches for p in b]
    log_bytes = (directory / LOG_FILE).read_bytes()
    cut = data.draw(st.integers(0, len(log_bytes)), label="log cut")
    truncate(directory / LOG_FILE, cut)
    index_size = (directory / INDEX_FILE).stat().st_size
    index_cut = data.draw(st.none() | st.integers(0, index_size), label="index cut")
    if index_cut is not None:
        truncate(directory / INDEX_FILE, index_cut)

    # What a surviving record vouches for, batch by batch from the start.
    records = len(batches) if index_cut is None else index_cut // RECORD_SIZE
    vouched = 0
    for number, batch in enumerate(batches[:records]):
        if batch_ends(batches)[number] > cut:
            break
        vouched += len(batch)
    whole = vouched
    with reopen(directory) as session_log:
        on_disk = logged(directory)  # parses strictly: no torn packet
        assert on_disk == payloads[: len(on_disk)]
        assert session_log.next_seq == len(on_disk) + 1
        # Nothing vouched for was thrown away, and nothing else kept.
        assert len(on_disk) == whole
        check_serves(session_log, on_disk)
        recovery = session_log.recovery
        kept_bytes = ends(payloads)[whole]
        assert recovery.cut_bytes + recovery.tail_bytes == cut - kept_bytes
        if recovery.cut_to is not None:
            assert recovery.cut_to.read_bytes() == log_bytes[kept_bytes:cut]
        session_log.append(encode_sequenced_many([b"next"]), 1)
    with reopen(directory) as session_log:
        assert session_log.recovery.clean
        check_serves(session_log, [*on_disk, b"next"])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, data=st.data())
def test_a_flipped_bit_in_the_log_is_never_served(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[bytes]], data: st.DataObject
) -> None:
    directory = tmp_path_factory.mktemp("flipped")
    appended = make_log(directory, batches)
    size_ = (directory / LOG_FILE).stat().st_size
    position = data.draw(st.integers(0, size_ - 1), label="byte")
    flip_bit(directory / LOG_FILE, position, data.draw(st.integers(0, 7), label="bit"))
    damaged = next(n for n, a in enumerate(appended) if a.offset <= position < a.offset + a.length)
    kept = [p for b in batches[:damaged] for p in b]
    assert verify(directory).messages == len(kept)
    with reopen(directory) as session_log:
        check_serves(session_log, kept)
        assert session_log.recovery.cut_bytes == size_ - appended[damaged].offset
    assert logged(directory) == kept


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, data=st.data())
def test_a_flipped_bit_in_the_index_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[bytes]], data: st.DataObject
) -> None:
    directory = tmp_path_factory.mktemp("index")
    make_log(directory, batches)
    payloads = [p for b in batches for p in b]
    index_size = (directory / INDEX_FILE).stat().st_size
    position = data.draw(st.integers(0, index_size - 1), label="byte")
    flip_bit(directory / INDEX_FILE, position, data.draw(st.integers(0, 7), label="bit"))
    with reopen(directory) as session_log:
        assert session_log.recovery == Recovery(
            messages=len(payloads),
            batches=len(batches),
            problems=(corrected(position // RECORD_SIZE),),
            vouched=len(payloads),
        )
        check_serves(session_log, payloads)
    with reopen(directory) as session_log:
        assert session_log.recovery.clean


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, data=st.data())
def test_more_than_one_flipped_bit_in_an_index_record_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[bytes]], data: st.DataObject
) -> None:
    """Two or more bits flipped in one record: it cannot be put right, and is dropped;
    nothing vouches for its batch, so it and what follows are not served (and count as
    published: the session cannot go on)."""
    directory = tmp_path_factory.mktemp("index-bits")
    make_log(directory, batches)
    record = data.draw(st.integers(0, len(batches) - 1), label="record")
    bits = data.draw(
        st.lists(st.integers(0, RECORD_SIZE * 8 - 1), min_size=2, max_size=4, unique=True),
        label="bits",
    )
    flip_record_bits(directory, record, *bits)
    kept = [p for b in batches[:record] for p in b]
    with reopen(directory) as session_log:
        recovery = session_log.recovery
        assert f"index record {record} fails its checksum" in recovery.problems
        assert recovery.lost_vouched
        check_serves(session_log, kept)
    with reopen(directory) as session_log:
        assert session_log.recovery.clean


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, data=st.data())
def test_a_flipped_bit_in_the_index_does_not_hide_one_in_its_own_or_a_later_batch(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[bytes]], data: st.DataObject
) -> None:
    """A bit flipped in index record ``k`` and another in the log, in batch ``k`` or a
    later one: the damaged batch and everything after it is never served; everything
    before it is."""
    directory = tmp_path_factory.mktemp("both")
    appended = make_log(directory, batches)
    record = data.draw(st.integers(0, len(batches) - 1), label="record")
    byte = data.draw(st.integers(0, RECORD_SIZE - 1), label="index byte")
    flip_bit(directory / INDEX_FILE, record * RECORD_SIZE + byte, data.draw(st.integers(0, 7)))
    damaged = appended[data.draw(st.integers(record, len(batches) - 1), label="batch")]
    position = data.draw(st.integers(damaged.offset, damaged.offset + damaged.length - 1))
    flip_bit(directory / LOG_FILE, position, data.draw(st.integers(0, 7), label="bit"))
    size_ = (directory / LOG_FILE).stat().st_size
    kept = [p for b in batches[: appended.index(damaged)] for p in b]
    last_seq = damaged.first_seq + damaged.count - 1
    assert verify(directory).messages == len(kept)
    with reopen(directory) as session_log:
        recovery = session_log.recovery
        assert corrected(record) in recovery.problems
        assert (
            f"batch at offset {damaged.offset} (sequence {damaged.first_seq}..{last_seq}) "
            "fails its checksum" in recovery.problems
        )
        assert recovery.cut_bytes == size_ - damaged.offset
        assert recovery.lost_vouched
        check_serves(session_log, kept)
    assert logged(directory) == kept
    with reopen(directory) as session_log:
        assert session_log.recovery.clean


def test_a_duplicated_index_record_is_reported_not_called_clean(tmp_path: Path) -> None:
    make_log(tmp_path)
    raw = (tmp_path / INDEX_FILE).read_bytes()
    (tmp_path / INDEX_FILE).write_bytes(raw + raw[RECORD_SIZE : 2 * RECORD_SIZE])
    recovery = verify(tmp_path)
    assert recovery.problems == (
        "dropped 1 index records that match no batch of the log (duplicated or out of place)",
    )
    with reopen(tmp_path) as session_log:
        check_serves(session_log, ALL)
    assert (tmp_path / INDEX_FILE).read_bytes() == raw
