"""Tests of reading an archived session (:mod:`tickertape.store.archived`): the layout of
independently readable chunks, byte-exact reads from any message, and damage detection.

Everything runs on real files, compared with the bytes of the log the archive replaced.
Moved from tests/store/test_archive.py with the split of the reader from the writer.
"""

from __future__ import annotations

import random
import shutil
import threading
import zlib
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from store_archives import (
    SMALL_CHUNK,
    TRAILER,
    Archived,
    flip_bit,
    make_session,
    packet_starts,
    parse_archive,
    varied_batches,
)
from tickertape.errors import CorruptLogError, StoreError
from tickertape.sources.demo import demo_payload
from tickertape.store.archive import archive_session
from tickertape.store.archived import ArchivedLog
from tickertape.store.layout import (
    ARCHIVE_FILE,
)
from tickertape.store.log import SessionLog
from tickertape.wire.framing import packet_offsets


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Archived:
    root = tmp_path_factory.mktemp("archived")
    directory = root / "2026112901"
    original = make_session(directory, varied_batches(seed=1, batches=120))
    shutil.copytree(directory, root / "twin")
    result = archive_session(directory, chunk_bytes=SMALL_CHUNK)
    assert result.chunks > 50
    return Archived(directory, root / "twin", original, packet_starts(original))


def test_archive_layout_holds_independent_frames_of_whole_packets(archived: Archived) -> None:
    data = (archived.directory / ARCHIVE_FILE).read_bytes()
    starts = set(archived.starts)
    for first_seq, count, offset, length, at, size, crc, compressed_crc in parse_archive(
        archived.directory / ARCHIVE_FILE
    ).chunks:
        # Each chunk decompresses on its own into exactly the original's bytes, starting
        # and ending on message boundaries; it is about the chunk size unless one packet
        # is larger, and never more than one packet over.
        assert zlib.crc32(data[at : at + size]) == compressed_crc
        chunk = zstandard.ZstdDecompressor().decompress(data[at : at + size])
        assert chunk == archived.original[offset : offset + length]
        assert zlib.crc32(chunk) == crc
        assert archived.starts[first_seq - 1] == offset
        assert archived.starts[first_seq - 1 + count] == offset + length
        assert offset in starts
        assert length < SMALL_CHUNK + 65_537
        last = packet_offsets(chunk)[-2]
        assert last < SMALL_CHUNK or count == 1


# ---------------------------------------------------------------------------- reading


def test_offset_of_every_sequence(archived: Archived) -> None:
    with (
        ArchivedLog.open(archived.directory) as log_,
        SessionLog.open(archived.twin, writable=False) as twin,
    ):
        assert log_.next_seq == twin.next_seq == len(archived.starts)
        assert log_.end_offset == twin.end_offset == len(archived.original)
        for seq in range(1, log_.next_seq + 1):
            assert log_.offset_of(seq) == twin.offset_of(seq) == archived.starts[seq - 1]
        for seq in (0, -1, log_.next_seq + 1):
            with pytest.raises(StoreError, match=f"sequence {seq} is not in"):
                log_.offset_of(seq)


def test_read_everything(archived: Archived) -> None:
    with ArchivedLog.open(archived.directory) as log_:
        assert log_.read_range(0, len(archived.original)) == archived.original
        assert log_.read(1, 1 << 30) == (archived.original, log_.next_seq - 1)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_read_range_of_any_range(archived: Archived, data: st.DataObject) -> None:
    size = len(archived.original)
    offset = data.draw(st.integers(0, size))
    count = data.draw(st.integers(0, min(size - offset, 3 * SMALL_CHUNK)) | st.just(size - offset))
    with ArchivedLog.open(archived.directory, cache_chunks=data.draw(st.integers(1, 3))) as log_:
        assert log_.read_range(offset, count) == archived.original[offset : offset + count]
        assert log_.read_range(offset, count) == archived.original[offset : offset + count]


@pytest.mark.parametrize(("offset", "count"), [(-1, 1), (0, -1), (0, 10**9), (10**9, 0)])
def test_read_range_outside_the_log(archived: Archived, offset: int, count: int) -> None:
    with ArchivedLog.open(archived.directory) as log_:
        with pytest.raises(StoreError, match="are not in"):
            log_.read_range(offset, count)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_read_matches_the_original_log(archived: Archived, data: st.DataObject) -> None:
    with (
        ArchivedLog.open(archived.directory) as log_,
        SessionLog.open(archived.twin, writable=False) as twin,
    ):
        seq = data.draw(st.integers(1, log_.next_seq))
        max_bytes = data.draw(st.integers(0, 3 * SMALL_CHUNK) | st.just(1 << 30))
        limit = data.draw(st.none() | st.integers(1, log_.next_seq + 5))
        assert log_.read(seq, max_bytes, limit) == twin.read(seq, max_bytes, limit)


@pytest.mark.parametrize("max_bytes", [0, 1, 1000, SMALL_CHUNK, 3 * SMALL_CHUNK, 1 << 30])
def test_span_ends_on_chunk_boundaries_and_covers_exactly(
    archived: Archived, max_bytes: int
) -> None:
    """A pull's loop: spans from sequence 1 to the end, read and concatenated, are the
    original log; each ends on a chunk boundary or at the limit."""
    chunk_starts = {
        offset for _, _, offset, *_ in parse_archive(archived.directory / ARCHIVE_FILE).chunks
    }
    with ArchivedLog.open(archived.directory) as log_:
        for limit in (log_.next_seq, log_.next_seq // 2):
            seq, sent = 1, []
            while seq < limit:
                start, end_seq, end_offset = log_.span(seq, max_bytes, limit)
                assert start == archived.starts[seq - 1]
                assert seq < end_seq <= limit
                assert end_offset == archived.starts[end_seq - 1]
                assert end_offset in chunk_starts or end_seq == limit
                assert end_offset - start <= max(max_bytes, 0) + SMALL_CHUNK + 65_537
                sent.append(log_.read_range(start, end_offset - start))
                seq = end_seq
            assert b"".join(sent) == archived.original[: archived.starts[limit - 1]]


def test_span_from_every_sequence(archived: Archived) -> None:
    with ArchivedLog.open(archived.directory) as log_:
        for seq in range(1, log_.next_seq):
            start, end_seq, end_offset = log_.span(seq, 2000, log_.next_seq)
            assert (start, end_offset) == (archived.starts[seq - 1], archived.starts[end_seq - 1])
            assert end_seq > seq


def test_cache_keeps_recent_chunks(archived: Archived, monkeypatch: pytest.MonkeyPatch) -> None:
    made = 0
    real = zstandard.ZstdDecompressor

    def counting() -> zstandard.ZstdDecompressor:
        nonlocal made
        made += 1
        return real()

    monkeypatch.setattr(zstandard, "ZstdDecompressor", counting)
    with ArchivedLog.open(archived.directory, cache_chunks=2) as log_:
        log_.read_range(0, 10)
        log_.read_range(5, 10)
        assert made == 1
        log_.read_range(len(archived.original) - 10, 10)
        log_.read_range(0, 10)
        assert made == 2
        for offset in range(0, len(archived.original), SMALL_CHUNK):
            log_.read_range(offset, 1)
        made = 0
        log_.read_range(0, 10)  # evicted long ago
        assert made == 1


def test_readers_on_many_threads(archived: Archived) -> None:
    failures: list[BaseException] = []
    with ArchivedLog.open(archived.directory, cache_chunks=2) as log_:

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(200):
                    offset = rng.randrange(len(archived.original))
                    count = rng.randrange(min(3 * SMALL_CHUNK, len(archived.original) - offset))
                    got = log_.read_range(offset, count)
                    assert got == archived.original[offset : offset + count]
            except BaseException as exc:  # reported below, on the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


# ---------------------------------------------------------------------------- damage


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, bytes]:
    """A small archived session: a few chunks, every byte of which can be damaged."""
    batches = [[demo_payload(seq, "stamp", 50 + seq % 7)] for seq in range(1, 61)]
    original = make_session(tmp_path, batches)
    archive_session(tmp_path, chunk_bytes=1000)
    return tmp_path, original


def test_flipped_bit_in_a_chunk_is_not_served(small: tuple[Path, bytes]) -> None:
    directory, original = small
    chunks = parse_archive(directory / ARCHIVE_FILE).chunks
    assert len(chunks) >= 3
    first_seq, _, offset, length, at, size, _, _ = chunks[1]
    flip_bit(directory / ARCHIVE_FILE, at + size // 2, 3)
    with ArchivedLog.open(directory) as log_:
        with pytest.raises(CorruptLogError, match=f"chunk 1 of .*sequence {first_seq}\\.\\."):
            log_.read_range(offset + 1, 1)
        with pytest.raises(CorruptLogError):
            log_.read_range(0, len(original))
        with pytest.raises(CorruptLogError):
            log_.offset_of(first_seq + 1)
        # The chunks around it are still served.
        assert log_.read_range(0, offset) == original[:offset]
        assert log_.read_range(offset + length, 10) == original[offset + length :][:10]
        found = log_.verify()
    assert not found.clean
    assert found.messages == first_seq - 1
    assert len(found.problems) == 1
    assert "chunk 1 of" in found.problems[0]


def test_every_flipped_bit_is_detected(small: tuple[Path, bytes]) -> None:
    """Anywhere in the file: on opening (header, index, trailer) or by verify()."""
    directory, _ = small
    path = directory / ARCHIVE_FILE
    pristine = path.read_bytes()
    for position in range(len(pristine)):
        damaged = bytearray(pristine)
        damaged[position] ^= 1 << (position % 8)
        path.write_bytes(bytes(damaged))
        try:
            with ArchivedLog.open(directory) as log_:
                found = log_.verify()
        except CorruptLogError:
            continue
        assert not found.clean, f"a flipped bit at {position} was not detected"


def test_truncated_archive_is_detected(small: tuple[Path, bytes]) -> None:
    directory, _ = small
    path = directory / ARCHIVE_FILE
    pristine = path.read_bytes()
    for length in range(len(pristine)):
        path.write_bytes(pristine[:length])
        with pytest.raises(CorruptLogError, match="is damaged"):
            ArchivedLog.open(directory)


def test_unknown_version(small: tuple[Path, bytes]) -> None:
    directory, _ = small
    path = directory / ARCHIVE_FILE
    data = bytearray(path.read_bytes())
    data[8:12] = (2).to_bytes(4, "little")
    body = bytes(data[-TRAILER.size : -4])
    body = body[:8] + (2).to_bytes(4, "little") + body[12:]
    data[-TRAILER.size :] = body + zlib.crc32(body).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="format version 2"):
        ArchivedLog.open(directory)
