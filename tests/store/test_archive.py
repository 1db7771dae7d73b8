"""Tests of archived sessions: compression into independently readable chunks, byte-exact
reads from any message, damage detection, and crash safety of the archiving step.

Everything runs on real files. Each archive is compared with the bytes of the log it
replaced, copied before archiving, and its layout is parsed independently of
:mod:`tickertape.store.archive` (:func:`parse_archive`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertape.errors import CorruptLogError, StoreError
from tickertape.sources.demo import demo_payload
from tickertape.store.archive import archive_session
from tickertape.store.archived import ArchivedLog
from tickertape.store.layout import (
    ARCHIVE_FILE,
    ARCHIVE_TMP_FILE,
    ENDED_MARKER,
    INDEX_FILE,
    LOG_FILE,
)
from tickertape.store.log import SessionLog
from tickertape.store.opening import open_session_log
from tickertape.wire.soupbintcp import encode_sequenced_many, packet_offsets

HEADER = struct.Struct("<8sII")
"""magic, version, reserved: the first 16 bytes of an archive."""
CHUNK = struct.Struct("<QIQIQIII")
"""first_seq, count, offset, length (original log), offset, length (archive),
crc32 (uncompressed), crc32 (compressed)."""
TRAILER = struct.Struct("<8sIIQQQII")
"""magic, version, chunks, index offset, messages, original size, crc32(index),
crc32(the trailer's first 44 bytes)."""

SMALL_CHUNK = 4096


# ---------------------------------------------------------------------------- helpers


def varied_batches(seed: int, batches: int) -> list[list[bytes]]:
    """Batches of 1..40 messages: mostly demo-like text, some empty, some random bytes,
    and now and then one near the 64 KiB limit of a SoupBinTCP packet."""
    rng = random.Random(seed)
    out: list[list[bytes]] = []
    seq = 1
    for _ in range(batches):
        batch = []
        for _ in range(rng.randint(1, 40)):
            kind = rng.random()
            if kind < 0.1:
                payload = b""
            elif kind < 0.2:
                payload = rng.randbytes(rng.randint(1, 300))
            elif kind < 0.23:
                payload = rng.randbytes(1) * rng.randint(65_000, 65_534)
            else:
                payload = demo_payload(seq, "2026-11-29T09:30:00.000123Z", rng.randint(20, 200))
            batch.append(payload)
            seq += 1
        out.append(batch)
    return out


def make_session(
    directory: Path, batches: Sequence[Sequence[bytes]], *, ended: bool = True
) -> bytes:
    """A session in ``directory`` holding ``batches``; returns its log's bytes."""
    with SessionLog.open(directory, create=True) as session_log:
        for batch in batches:
            session_log.append(encode_sequenced_many(batch), len(batch))
    if ended:
        (directory / ENDED_MARKER).touch()
    return (directory / LOG_FILE).read_bytes()


def packet_starts(data: bytes) -> list[int]:
    """Where each message of a log starts, then where the log ends: ``[seq - 1]``."""
    found = packet_offsets(data)
    assert found[-1] == len(data)
    return found


@dataclass
class Parsed:
    chunks: list[tuple[int, int, int, int, int, int, int, int]]
    messages: int
    size: int


def parse_archive(path: Path) -> Parsed:
    """An archive parsed from the layout in the module's docstring, every field checked."""
    data = path.read_bytes()
    magic, version, reserved = HEADER.unpack_from(data)
    assert (magic, version, reserved) == (b"TTLOGZST", 1, 0)
    trailer = data[-TRAILER.size :]
    magic, version, count, index_at, messages, size, index_crc, crc = TRAILER.unpack(trailer)
    assert (magic, version) == (b"TTLOGZST", 1)
    assert crc == zlib.crc32(trailer[:-4])
    index = data[index_at : len(data) - TRAILER.size]
    assert len(index) == count * CHUNK.size
    assert zlib.crc32(index) == index_crc
    chunks = list(CHUNK.iter_unpack(index))
    at, offset, seq = HEADER.size, 0, 1
    for first_seq, n, chunk_offset, length, chunk_at, chunk_size, _, _ in chunks:
        assert (first_seq, chunk_offset, chunk_at) == (seq, offset, at)
        seq, offset, at = seq + n, offset + length, at + chunk_size
    assert (seq - 1, offset, at) == (messages, size, index_at)
    return Parsed(chunks, messages, size)


def serves(session_log: SessionLog | ArchivedLog) -> bytes:
    """Every byte the log serves, read the way a pull reads it."""
    if isinstance(session_log, ArchivedLog):
        return session_log.read_range(0, session_log.end_offset)
    return os.pread(session_log.fileno(), session_log.end_offset, 0)


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def files(directory: Path) -> set[str]:
    return {entry.name for entry in directory.iterdir()}


@dataclass
class Archived:
    """An archived session, the bytes of its original log, and an unarchived twin."""

    directory: Path
    twin: Path
    original: bytes
    starts: list[int]


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Archived:
    root = tmp_path_factory.mktemp("archived")
    directory = root / "2026112901"
    original = make_session(directory, varied_batches(seed=1, batches=120))
    shutil.copytree(directory, root / "twin")
    result = archive_session(directory, chunk_bytes=SMALL_CHUNK)
    assert result.chunks > 50
    return Archived(directory, root / "twin", original, packet_starts(original))


# ---------------------------------------------------------------------------- archiving


def test_archive_replaces_log_and_index(tmp_path: Path) -> None:
    batches = varied_batches(seed=2, batches=30)
    original = make_session(tmp_path, batches)
    messages = sum(map(len, batches))

    result = archive_session(tmp_path, chunk_bytes=SMALL_CHUNK)

    assert files(tmp_path) == {ARCHIVE_FILE, ENDED_MARKER}
    assert result.directory == tmp_path
    assert result.messages == messages
    assert result.original_bytes == len(original)
    assert result.archived_bytes == (tmp_path / ARCHIVE_FILE).stat().st_size
    parsed = parse_archive(tmp_path / ARCHIVE_FILE)
    assert (parsed.messages, parsed.size, len(parsed.chunks)) == (
        messages,
        len(original),
        result.chunks,
    )


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


def test_empty_session(tmp_path: Path) -> None:
    make_session(tmp_path, [])
    result = archive_session(tmp_path)
    assert (result.messages, result.chunks, result.original_bytes) == (0, 0, 0)
    with ArchivedLog.open(tmp_path) as archived:
        assert archived.next_seq == 1
        assert archived.offset_of(1) == 0
        assert archived.read_range(0, 0) == b""
        assert archived.read(1, 100) == (b"", 0)
        assert archived.span(1, 100, 1) == (0, 1, 0)
        assert archived.verify().clean
        with pytest.raises(StoreError, match="sequence 2 is not in"):
            archived.offset_of(2)


def test_compressible_data_gets_smaller(tmp_path: Path) -> None:
    payloads = [demo_payload(seq, "2026-11-29T09:30:00.000123Z", 100) for seq in range(1, 20_001)]
    original = make_session(tmp_path, [payloads[i : i + 1000] for i in range(0, 20_000, 1000)])
    result = archive_session(tmp_path)
    assert result.archived_bytes < len(original) / 4
    assert result.ratio == result.archived_bytes / len(original)
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert serves(session_log) == original


def test_refuses_a_session_that_has_not_ended(tmp_path: Path) -> None:
    original = make_session(tmp_path, varied_batches(seed=3, batches=3), ended=False)
    with pytest.raises(StoreError, match="has not ended"):
        archive_session(tmp_path)
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE}
    assert (tmp_path / LOG_FILE).read_bytes() == original


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: flip_bit(d / LOG_FILE, 100), "fails its checksum"),
        (lambda d: flip_bit(d / INDEX_FILE, 3), "index record 0 fails its checksum"),
        (lambda d: (d / INDEX_FILE).unlink(), "the index is missing"),
    ],
)
def test_refuses_a_damaged_session(
    tmp_path: Path, damage: Callable[[Path], object], problem: str
) -> None:
    make_session(tmp_path, varied_batches(seed=4, batches=5))
    damage(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in files(tmp_path)}
    with pytest.raises(CorruptLogError, match=f"will not be archived.*{problem}"):
        archive_session(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in files(tmp_path)} == before


def test_sets_a_tail_aside_then_archives(tmp_path: Path) -> None:
    """Bytes past the last index record (a batch whose record was never written: never
    acknowledged) are not archived, and not lost with the log: they go to log.cut-N."""
    original = make_session(tmp_path, varied_batches(seed=4, batches=5))
    size = (tmp_path / LOG_FILE).stat().st_size
    with (tmp_path / LOG_FILE).open("ab") as log_file:
        log_file.write(b"\x00\x04Sabc\x00\x05S12")
    archive_session(tmp_path)
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert serves(session_log) == original
    assert (tmp_path / f"{LOG_FILE}.cut-{size}").read_bytes() == b"\x00\x04Sabc\x00\x05S12"


def test_refuses_an_archived_session(tmp_path: Path) -> None:
    make_session(tmp_path, varied_batches(seed=5, batches=3))
    archive_session(tmp_path)
    with pytest.raises(StoreError, match="already archived"):
        archive_session(tmp_path)


def test_refuses_a_missing_session(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no session log"):
        archive_session(tmp_path)
    with pytest.raises(StoreError, match="no session log"):
        open_session_log(tmp_path, finish_archiving=True)


def test_refuses_bad_settings(tmp_path: Path) -> None:
    make_session(tmp_path, varied_batches(seed=5, batches=3))
    with pytest.raises(StoreError, match="chunk size 0"):
        archive_session(tmp_path, chunk_bytes=0)
    with pytest.raises(StoreError, match="compression level 23"):
        archive_session(tmp_path, level=23)
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}


def test_one_archiving_run_at_a_time(tmp_path: Path) -> None:
    original = make_session(tmp_path, varied_batches(seed=6, batches=3))
    with open(tmp_path / ARCHIVE_TMP_FILE, "wb") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="being archived by another process"):
            archive_session(tmp_path)
        with open_session_log(
            tmp_path, finish_archiving=True
        ) as session_log:  # leaves the run's file alone
            assert serves(session_log) == original
        assert (tmp_path / ARCHIVE_TMP_FILE).exists()
    archive_session(tmp_path)  # the lock went with its holder: the leftover is overwritten
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert serves(session_log) == original


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


# ---------------------------------------------------------------------------- crashes


class Crash(BaseException):
    """The process dies here: no ``except Exception`` clean-up runs."""


ALLOWED_STATES = [
    {LOG_FILE, INDEX_FILE, ENDED_MARKER},  # nothing happened, or only the garbage remains
    {LOG_FILE, INDEX_FILE, ENDED_MARKER, ARCHIVE_TMP_FILE},
    {LOG_FILE, INDEX_FILE, ENDED_MARKER, ARCHIVE_FILE},  # committed, not cleaned up
    {LOG_FILE, ENDED_MARKER, ARCHIVE_FILE},
    {ENDED_MARKER, ARCHIVE_FILE},  # done
]


def inject(
    monkeypatch: pytest.MonkeyPatch, root: Path, fail_at: int, error: Callable[[], BaseException]
) -> list[str]:
    """Make the ``fail_at``-th write, sync, truncation, rename or removal of a file under
    ``root`` raise ``error()``. Returns the list of such steps taken, which grows."""
    steps: list[str] = []

    def wrap(name: str) -> None:
        real = getattr(os, name)

        def faulty(*args: object, **kwargs: object) -> object:
            target = args[0]
            path = Path(
                os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else str(target)
            )
            if path.is_relative_to(root):
                steps.append(f"{name} {path.name}")
                if len(steps) - 1 == fail_at:
                    raise error()
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, faulty)

    for name in ("write", "fsync", "ftruncate", "replace", "rename", "unlink"):
        wrap(name)
    return steps


def check_after_crash(directory: Path, original: bytes) -> None:
    """Whatever happened, the session serves exactly the original, and archiving it
    again completes."""
    assert files(directory) in ALLOWED_STATES
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert serves(session_log) == original
        assert session_log.next_seq == len(packet_starts(original))
        if isinstance(session_log, ArchivedLog):
            assert files(directory) == {ENDED_MARKER, ARCHIVE_FILE}
            assert session_log.verify().clean
        else:
            assert files(directory) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}
    if (directory / ARCHIVE_FILE).exists():
        with pytest.raises(StoreError, match="already archived"):
            archive_session(directory, chunk_bytes=1000)
    else:
        archive_session(directory, chunk_bytes=1000)
    assert files(directory) == {ENDED_MARKER, ARCHIVE_FILE}
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert isinstance(session_log, ArchivedLog)
        assert serves(session_log) == original


def test_crash_at_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process crash at each write, sync, rename and removal. (A power loss can undo
    an unsynced step as well; each state that leaves is one of these.)"""
    batches = [[demo_payload(seq, "stamp", 50 + seq % 7)] for seq in range(1, 61)]
    template = tmp_path / "template"
    original = make_session(template, batches)

    dry = tmp_path / "dry"
    shutil.copytree(template, dry)
    with monkeypatch.context() as patch:
        all_steps = inject(patch, dry, -1, Crash)
        archive_session(dry, chunk_bytes=1000)
    assert any(step.startswith("replace") for step in all_steps)
    assert all_steps[-3:] == ["unlink index", "unlink log", "fsync " + dry.name]
    assert len(all_steps) > 10

    for fail_at in range(len(all_steps)):
        directory = tmp_path / f"crash-{fail_at}"
        shutil.copytree(template, directory)
        with monkeypatch.context() as patch:
            steps = inject(patch, directory, fail_at, Crash)
            with pytest.raises(Crash):
                archive_session(directory, chunk_bytes=1000)
        assert len(steps) == fail_at + 1
        check_after_crash(directory, original)


def test_crash_while_finishing_an_interrupted_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "template"
    original = make_session(template, varied_batches(seed=7, batches=5))
    shutil.copytree(template, tmp_path / "archived")
    archive_session(tmp_path / "archived", chunk_bytes=1000)
    shutil.copy(
        tmp_path / "archived" / ARCHIVE_FILE, template / ARCHIVE_FILE
    )  # commit, no clean-up
    for fail_at in range(3):
        directory = tmp_path / f"crash-{fail_at}"
        shutil.copytree(template, directory)
        with monkeypatch.context() as patch:
            inject(patch, directory, fail_at, Crash)
            with pytest.raises(Crash):
                open_session_log(directory, finish_archiving=True)
        check_after_crash(directory, original)


def test_failed_write_leaves_the_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = make_session(tmp_path, varied_batches(seed=8, batches=10))
    with monkeypatch.context() as patch:
        inject(patch, tmp_path, 5, lambda: OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(OSError, match="No space left"):
            archive_session(tmp_path, chunk_bytes=1000)
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}
    assert (tmp_path / LOG_FILE).read_bytes() == original
    check_after_crash(tmp_path, original)


def test_leftover_tmp_is_removed_on_open(tmp_path: Path) -> None:
    original = make_session(tmp_path, varied_batches(seed=9, batches=3))
    (tmp_path / ARCHIVE_TMP_FILE).write_bytes(b"half an archive")
    with open_session_log(tmp_path, finish_archiving=True) as session_log:
        assert isinstance(session_log, SessionLog)
        assert serves(session_log) == original
    assert files(tmp_path) == {LOG_FILE, INDEX_FILE, ENDED_MARKER}


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_archive_beside_the_original_is_set_aside(tmp_path: Path, damage: str) -> None:
    """A committed archive that fails its check while the original is still there (damage
    after the commit point): the original is served, and can be archived again."""
    directory = tmp_path / "session"
    original = make_session(directory, varied_batches(seed=10, batches=5))
    shutil.copytree(directory, tmp_path / "copy")
    archive_session(directory, chunk_bytes=1000)
    for name in (LOG_FILE, INDEX_FILE):  # as if the clean-up had not run
        shutil.copy(tmp_path / "copy" / name, directory / name)
    archive_path = directory / ARCHIVE_FILE
    if damage == "flip":
        flip_bit(archive_path, HEADER.size + 5)
    else:
        archive_path.write_bytes(archive_path.read_bytes()[:-1])
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert isinstance(session_log, SessionLog)
        assert serves(session_log) == original
    assert files(directory) == {LOG_FILE, INDEX_FILE, ENDED_MARKER, ARCHIVE_FILE + ".damaged"}
    archive_session(directory, chunk_bytes=1000)
    with open_session_log(directory, finish_archiving=True) as session_log:
        assert isinstance(session_log, ArchivedLog)
        assert serves(session_log) == original


_ARCHIVER = """
import sys
from pathlib import Path
from tickertape.store.archive import archive_session
print("start", flush=True)
archive_session(Path(sys.argv[1]), chunk_bytes=4096, level=19)
"""


@pytest.mark.parametrize("kill_after", [0.0, 0.03, 0.06, 0.1, 0.15, 1.0])
def test_sigkill_while_archiving_loses_nothing(tmp_path: Path, kill_after: float) -> None:
    """A real process, killed outright at a moment in the middle of archiving (or after
    it finished): the session still serves exactly its messages."""
    rng = random.Random(kill_after)
    batches = [[rng.randbytes(rng.randrange(0, 3000)) for _ in range(50)] for _ in range(60)]
    original = make_session(tmp_path, batches)
    archiver = subprocess.Popen(
        [sys.executable, "-c", _ARCHIVER, str(tmp_path)], stdout=subprocess.PIPE
    )
    assert archiver.stdout is not None
    assert archiver.stdout.readline() == b"start\n"
    try:
        archiver.wait(kill_after)
    except subprocess.TimeoutExpired:
        archiver.send_signal(signal.SIGKILL)
        archiver.wait(10)
    check_after_crash(tmp_path, original)
