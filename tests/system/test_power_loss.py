"""Crash states after a power loss, rebuilt from the writes and syncs of a real writer.

A :class:`SessionLog` appends batches while every ``write`` and ``fdatasync`` it makes to
the log and the index is recorded. A crash state is the files as a power loss at one
point of that trace may leave them: what was synced survives; of what was written since
(the unsynced part), each file keeps nothing, everything, zeros in its place (the file
kept its new size, its data pages were lost: XFS, ext4 ``data=writeback``), or, page by
page (4096 bytes), some pages and zeros for the others, perhaps cut short at a page
boundary. The crash points are every write and sync (every batch boundary and every
step inside a batch), and the middle of every write (a torn write).

For every crash state, recovery must serve every message with exactly the bytes it was
published with, must keep every acknowledged message (under ``batch`` and ``always``:
``append`` returned), and ``sessions verify`` must agree with what is served.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

from tickertape.cli.main import main
from tickertape.store.inspect import verify_session
from tickertape.store.layout import INDEX_FILE, LOG_FILE
from tickertape.store.log import Durability, SessionLog
from tickertape.wire.framing import Framer, packet_offsets
from tickertape.wire.soupbintcp import SequencedData, decode_server_packet, encode_sequenced_many

PAGE = 4096
SESSION = "2026120701"


@dataclass
class Op:
    """One system call the writer made on the log or the index."""

    file: str
    kind: str  # "write" or "sync"
    data: bytes = b""


@dataclass
class Trace:
    ops: list[Op] = field(default_factory=list)
    acked: list[tuple[int, int]] = field(default_factory=list)
    """(ops done when ``append`` returned, messages acknowledged by then), per batch."""


def make_batches(seed: int) -> list[list[bytes]]:
    """Batches of messages of varied sizes (1..3000 bytes, no zero bytes), so that
    batches and packets straddle page boundaries: a page lost can zero a payload whose
    length header survived."""
    rng = random.Random(seed)
    return [
        [bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 3000))) for _ in range(n)]
        for n in (rng.randrange(1, 6) for _ in range(8))
    ]


def traced_appends(
    directory: Path, durability: Durability, batches: list[list[bytes]], mp: pytest.MonkeyPatch
) -> Trace:
    """Append ``batches`` with a real :class:`SessionLog`, recording its writes and
    syncs of the log and the index in order."""
    trace = Trace()
    with SessionLog.open(directory, durability=durability, create=True) as session_log:
        names = {(directory / n).stat().st_ino: n for n in (LOG_FILE, INDEX_FILE)}
        real_write, real_fdatasync, real_fsync = os.write, os.fdatasync, os.fsync

        def write(fd: int, data: bytes | memoryview) -> int:
            name = names.get(os.fstat(fd).st_ino)
            written = real_write(fd, data)
            if name is not None:
                trace.ops.append(Op(name, "write", bytes(data[:written])))
            return written

        def sync(real: Callable[[int], None]) -> Callable[[int], None]:
            def synced(fd: int) -> None:
                real(fd)
                name = names.get(os.fstat(fd).st_ino)
                if name is not None:
                    trace.ops.append(Op(name, "sync"))

            return synced

        mp.setattr(os, "write", write)
        mp.setattr(os, "fdatasync", sync(real_fdatasync))
        mp.setattr(os, "fsync", sync(real_fsync))
        acked = 0
        for batch in batches:
            session_log.append(encode_sequenced_many(batch), len(batch))
            acked += len(batch)
            trace.acked.append((len(trace.ops), acked))
        mp.undo()
    return trace


@dataclass
class FileState:
    content: bytes
    durable: int
    """How many bytes of ``content`` were synced."""


def state_at(trace: Trace, done: int, torn: bool) -> dict[str, FileState]:
    """Each file after the first ``done`` operations (and, if ``torn``, half of the
    next one, a write), with how much of it was synced."""
    content = {LOG_FILE: bytearray(), INDEX_FILE: bytearray()}
    durable = {LOG_FILE: 0, INDEX_FILE: 0}
    for op in trace.ops[:done]:
        if op.kind == "write":
            content[op.file] += op.data
        else:
            durable[op.file] = len(content[op.file])
    if torn:
        op = trace.ops[done]
        content[op.file] += op.data[: len(op.data) // 2]
    return {name: FileState(bytes(content[name]), durable[name]) for name in content}


Survivor = Callable[[FileState], bytes]


def dropped(state: FileState) -> bytes:
    return state.content[: state.durable]


def kept(state: FileState) -> bytes:
    return state.content


def zeroed(state: FileState) -> bytes:
    return state.content[: state.durable] + bytes(len(state.content) - state.durable)


def paged(seed: int) -> Survivor:
    """Each page holding unsynced bytes kept or zeroed at random; the file perhaps cut
    at a page boundary past what was synced."""

    def survive(state: FileState) -> bytes:
        rng = random.Random(seed * 7919 + len(state.content))
        data = bytearray(state.content)
        for page in range(state.durable // PAGE, -(-len(data) // PAGE)):
            if rng.random() < 0.5:
                start = max(page * PAGE, state.durable)
                stop = min((page + 1) * PAGE, len(data))
                data[start:stop] = bytes(stop - start)
        if rng.random() < 0.5:
            boundaries = range(-(-state.durable // PAGE) * PAGE, len(data) + 1, PAGE)
            if boundaries:
                del data[rng.choice(boundaries) :]
        return bytes(data)

    return survive


SURVIVORS: dict[str, Survivor] = {
    "dropped": dropped,
    "kept": kept,
    "zeros": zeroed,
    "pages": paged(1),
}


def crash_points(trace: Trace) -> Iterator[tuple[int, bool]]:
    """After every operation, and in the middle of every write."""
    for done in range(len(trace.ops) + 1):
        yield done, False
        if done < len(trace.ops) and trace.ops[done].kind == "write":
            yield done, True


def served(session_log: SessionLog) -> list[bytes]:
    data, _ = session_log.read(1, 1 << 30)
    framer = Framer()
    framer.feed(data)
    payloads = []
    for frame in framer:
        packet = decode_server_packet(frame)
        assert isinstance(packet, SequencedData)
        payloads.append(packet.payload)
    assert framer.buffered == 0
    return payloads


@pytest.mark.parametrize("durability", list(Durability), ids=lambda d: d.value)
def test_every_crash_state_serves_only_published_bytes_and_keeps_what_was_acknowledged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    durability: Durability,
) -> None:
    batches = make_batches(seed=11)
    published = [p for batch in batches for p in batch]
    trace = traced_appends(tmp_path / "written", durability, batches, monkeypatch)
    syncs = [op.file for op in trace.ops if op.kind == "sync"]
    if durability is not Durability.NONE:
        # The log is synced, then the index, before append returns: an acknowledged
        # message has its bytes and the checksum vouching for them on disk.
        assert syncs == [LOG_FILE, INDEX_FILE] * len(batches)
    root = tmp_path / "crashed"
    directory = root / SESSION
    states = 0
    zero_payloads_refused = 0
    for done, torn in crash_points(trace):
        acked = max((count for ops, count in trace.acked if ops <= done), default=0)
        at = state_at(trace, done, torn)
        for log_how, log_survives in SURVIVORS.items():
            for index_how, index_survives in SURVIVORS.items():
                where = (
                    f"after op {done}{' (torn)' if torn else ''}, log {log_how}, index {index_how}"
                )
                shutil.rmtree(root, ignore_errors=True)
                directory.mkdir(parents=True)
                log_bytes = log_survives(at[LOG_FILE])
                (directory / LOG_FILE).write_bytes(log_bytes)
                (directory / INDEX_FILE).write_bytes(index_survives(at[INDEX_FILE]))
                states += 1

                report = verify_session(root, SESSION)
                # `sessions verify` itself (for a quarter of the states: it parses its
                # arguments each time): its exit status and the count it prints.
                if log_how == "pages":
                    status = main(["sessions", "verify", SESSION, "--data", str(root)])
                    printed = capsys.readouterr().out
                    if report.clean:
                        assert status == 0, (where, printed)
                        assert f": clean: {report.messages} messages " in printed, where
                    else:
                        assert status == 1, (where, printed)
                        intact = (
                            f"messages 1..{report.messages}" if report.messages else "no message"
                        )
                        assert f"{intact} intact;" in printed, (where, printed)
                with SessionLog.open(directory, writable=False) as read_only:
                    seen = served(read_only)
                with SessionLog.open(directory, durability=durability) as recovered:
                    got = served(recovered)
                    lost_vouched = recovered.recovery.lost_vouched
                # Exactly the published bytes, a prefix of them, and the same read-only.
                assert got == published[: len(got)], where
                assert seen == got, where
                assert report.messages == len(got), where
                if durability is not Durability.NONE:
                    # Every acknowledged message is there, and nothing is called damage:
                    # what is past the last record was never acknowledged.
                    assert len(got) >= acked, where
                    assert report.clean, (where, report.problems)
                    assert not lost_vouched, where
                after = verify_session(root, SESSION)
                assert (after.clean, after.messages, after.tail) == (True, len(got), None), where
                # A whole-looking packet past the vouched bytes, with a zeroed payload, was
                # not served (the power-loss case this test is about).
                end = sum(3 + len(p) for p in got)
                found = packet_offsets(log_bytes[end:])
                if any(b"\0" in log_bytes[end + a + 3 : end + b] for a, b in pairwise(found)):
                    zero_payloads_refused += 1  # published payloads hold no zero byte
    assert states == 16 * len(list(crash_points(trace)))
    assert zero_payloads_refused > 0
