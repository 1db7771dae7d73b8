"""A session's log or index damaged on disk, then checked and served by a real server.

Issue 6: damage (a truncation, flipped bytes, garbage, a lost index) is found by
``tickertape sessions verify`` and when the server opens the session; the server serves
the intact prefix of the session byte for byte, says what it left out, and never sends a
corrupt packet. Both for the active session (opened at start, then appended to) and for a
closed one (opened when a subscriber first pulls it). A pull of a closed session that
cannot be served whole ends, after its intact prefix, with a Debug packet saying where and
why it stops, and no End of Session (issue 11): the same for an archived session whose
chunk fails its check.

An active session that lost messages its index vouched for (they had been published) is
not numbered on: the server ends it, still serving its intact prefix, and publishes into
the next session. One that lost nothing published (a torn or unindexed tail, a damaged
index) goes on from its intact prefix.

One session of three batches is made by a real ``tickertape serve``: published into over
SoupBinTCP, then rolled through the admin API, so that it is closed. Each test damages a
copy of it: as the active session of a fresh data directory (its ``ended`` marker
removed), or as one of the closed sessions that one server serves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.store.archive import archive_session
from tickertape.store.layout import ARCHIVE_FILE
from tickertape.store.opening import verify
from tickertape.store.sessionid import SessionId
from tickertape.wire.publishing import Ack
from tickertape.wire.soupbintcp import LoginAccepted, SequencedData, encode_sequenced_many

from support import ServerProcess, SoupClient, free_port

TOKEN = "damaged-log-token"
BATCHES = 3
PER_BATCH = 8
FIRST, MIDDLE, LAST = 0, 1, 2
MORE = 5
"""Messages published after the restart of a server whose active session was damaged."""
TIMEOUT = 20.0
RECORD = struct.Struct("<QQIII4x")
"""An index record: first sequence number, offset, length, message count, CRC-32 of the
batch; then the record's own CRC-32 (see ``tickertape.store.log``)."""


def payload(seq: int) -> bytes:
    """Message ``seq`` of the session as published: it names its number; the lengths
    vary, so that a packet's length header matters."""
    return b"msg %03d " % seq + b"x" * (seq % 5)


def payload_after(seq: int) -> bytes:
    """Message ``seq``, published after the restart."""
    return b"after restart %d" % seq


def tickertape(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ---------------------------------------------------------------------------- the session


@dataclass(frozen=True)
class Batch:
    first_seq: int
    offset: int
    length: int
    count: int


@dataclass(frozen=True)
class Pristine:
    """The undamaged session: its directory (closed: it holds ``ended``), log, batches."""

    session: str
    directory: Path
    log: bytes
    batches: tuple[Batch, ...]

    def packet(self, batch: int, number: int) -> int:
        """Where packet ``number`` (from 0) of ``batch`` starts in the log."""
        offset = self.batches[batch].offset
        for _ in range(number):
            offset += 2 + int.from_bytes(self.log[offset : offset + 2], "big")
        return offset

    def first(self, batch: int) -> int:
        return self.batches[batch].first_seq


async def publish(port: int, first: int, payloads: list[bytes]) -> Ack:
    """Publish ``payloads`` as one batch; they must get the numbers from ``first`` on."""
    async with asyncio.timeout(TIMEOUT):
        async with await Publisher.connect("127.0.0.1", port) as publisher:
            await publisher.send_many(payloads)
            ack = await publisher.flush()
    assert ack is not None
    assert ack.seq == first + len(payloads) - 1, ack
    return ack


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    data = tmp_path_factory.mktemp("made")
    admin = free_port()
    with ServerProcess(data, "--admin-port", str(admin), "--admin-token", TOKEN) as server:
        session = server.wait_for_log(" open at ").split("session ")[1].split()[0]
        server.wait_for_log(f"admin API listening on 127.0.0.1:{admin}")

        async def fill() -> None:
            for batch in range(BATCHES):  # one publish call a batch, each waited for
                first = batch * PER_BATCH + 1
                await publish(
                    server.port, first, [payload(s) for s in range(first, first + PER_BATCH)]
                )

        asyncio.run(fill())
        rolled = tickertape("sessions", "roll", "--admin-port", str(admin), "--admin-token", TOKEN)
        assert rolled.returncode == 0, rolled.stderr
        assert rolled.stdout.startswith(f"session {session} ended; ")
    directory = data / session
    assert (directory / "ended").exists()
    index = (directory / "index").read_bytes()
    batches = tuple(
        Batch(*RECORD.unpack_from(index, at)[:4]) for at in range(0, len(index), RECORD.size)
    )
    assert [(b.first_seq, b.count) for b in batches] == [
        (n * PER_BATCH + 1, PER_BATCH) for n in range(BATCHES)
    ]
    log = (directory / "log").read_bytes()
    assert log == encode_sequenced_many([payload(s) for s in range(1, BATCHES * PER_BATCH + 1)])
    return Pristine(session, directory, log, batches)


# ---------------------------------------------------------------------------- the damage


def flip(path: Path, offset: int, mask: int = 0x20) -> None:
    """Flip the bits ``mask`` of the byte at ``offset``."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)


@dataclass(frozen=True)
class Damage:
    """One kind of damage, and what must come of it."""

    name: str
    apply: Callable[[Path, Pristine], None]
    """Damage the session in the directory (a copy of the pristine one)."""
    intact: Callable[[Pristine], int]
    """How many messages are intact: 1..this is what is served."""
    cut_at: Callable[[Pristine], int | None]
    """Where the log is cut, its bytes from there moved aside to ``log.cut-OFFSET``
    (None: no byte of the log is moved)."""
    ends_session: bool = False
    """Whether messages an index record vouched for are lost: then an active session is
    ended, and the next one opened."""
    tail: bool = False
    """Whether it is no damage at all, only bytes past the last index record (never
    acknowledged): ``verify`` names them and exits 0; a server sets them aside at start,
    in an ended session too."""

    def __str__(self) -> str:
        return self.name


def flip_record_and_batch(directory: Path, pristine: Pristine, batch: int) -> None:
    """Flip one bit of ``batch``'s index record (its offset) and one of its payload: the
    batch cannot be vouched for by its record, and must not be served."""
    flip(directory / "index", RECORD.size * batch + 9)
    flip(directory / "log", pristine.packet(batch, 5) + 4)


ALL = BATCHES * PER_BATCH


def _all(p: Pristine) -> int:
    return ALL


def _nothing(p: Pristine) -> None:
    return None


DAMAGES = [
    Damage(
        "log-cut-mid-packet",  # into the third packet of the last batch
        lambda d, p: os.truncate(d / "log", p.packet(LAST, 2) + 5),
        lambda p: p.first(LAST) - 1,  # its record no longer vouches for what is left
        lambda p: p.batches[LAST].offset,
        ends_session=True,
    ),
    Damage(
        "log-cut-mid-batch",  # after the third packet of the middle batch
        lambda d, p: os.truncate(d / "log", p.packet(MIDDLE, 3)),
        lambda p: p.first(MIDDLE) - 1,
        lambda p: p.batches[MIDDLE].offset,
        ends_session=True,
    ),
    Damage(
        "log-cut-before-last-record",  # the last batch is gone; its record is not
        lambda d, p: os.truncate(d / "log", p.batches[LAST].offset),
        lambda p: p.first(LAST) - 1,
        _nothing,
        ends_session=True,
    ),
    Damage(
        "payload-flipped-first-batch",
        lambda d, p: flip(d / "log", p.packet(FIRST, 2) + 4),
        lambda p: 0,
        lambda p: 0,
        ends_session=True,
    ),
    Damage(
        "payload-flipped-middle-batch",
        lambda d, p: flip(d / "log", p.packet(MIDDLE, 5) + 4),
        lambda p: p.first(MIDDLE) - 1,
        lambda p: p.batches[MIDDLE].offset,
        ends_session=True,
    ),
    Damage(
        "payload-flipped-last-batch",  # its very last message
        lambda d, p: flip(d / "log", p.packet(LAST, PER_BATCH - 1) + 4),
        lambda p: p.first(LAST) - 1,
        lambda p: p.batches[LAST].offset,
        ends_session=True,
    ),
    Damage(
        "length-header-flipped",  # the low byte of a packet's length, middle batch
        lambda d, p: flip(d / "log", p.packet(MIDDLE, 4) + 1, 0x01),
        lambda p: p.first(MIDDLE) - 1,
        lambda p: p.batches[MIDDLE].offset,
        ends_session=True,
    ),
    Damage(
        "index-cut-mid-record",  # the middle batch's record torn, the last one's gone
        lambda d, p: os.truncate(d / "index", RECORD.size * MIDDLE + 10),
        lambda p: p.first(MIDDLE) - 1,  # past that, a tail: records never written
        lambda p: p.batches[MIDDLE].offset,
        tail=True,
    ),
    Damage(
        "index-record-flipped",  # a bit of the middle batch's record (its offset): put right
        lambda d, p: flip(d / "index", RECORD.size * MIDDLE + 9),
        _all,
        _nothing,
    ),
    Damage(
        "index-record-two-bits-flipped",  # past putting right: nothing vouches for it
        lambda d, p: flip(d / "index", RECORD.size * MIDDLE + 9, 0x21),
        lambda p: p.first(MIDDLE) - 1,
        lambda p: p.batches[MIDDLE].offset,
        ends_session=True,
    ),
    Damage(
        "index-missing",
        lambda d, p: (d / "index").unlink(),
        lambda p: 0,
        lambda p: 0,
        ends_session=True,
    ),
    Damage(
        "garbage-appended",  # past the last record: a tail
        lambda d, p: append(d / "log", b"\xde\xad\xbe\xef" * 16),
        _all,
        lambda p: len(p.log),
        tail=True,
    ),
    Damage(
        "index-record-and-its-batch-flipped",  # one bit each: the record, its batch
        lambda d, p: flip_record_and_batch(d, p, MIDDLE),
        lambda p: p.first(MIDDLE) - 1,
        lambda p: p.batches[MIDDLE].offset,
        ends_session=True,
    ),
]


def files(directory: Path) -> dict[str, bytes]:
    return {entry.name: entry.read_bytes() for entry in sorted(directory.iterdir())}


def verified(data: Path, session: str, intact: int, tail: bool = False) -> list[str]:
    """Run ``tickertape sessions verify``: it must call the session damaged, say how much
    of it is intact, and change nothing. Returns the problems it printed. For a ``tail``
    (no damage), it must exit 0 and name the bytes past the last index record."""
    before = files(data / session)
    done = tickertape("sessions", "verify", session, "--data", str(data))
    if tail:
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.splitlines()[0].startswith(f"session {session}: clean: {intact} ")
        assert f"past the last index record, from sequence {intact + 1}: " in done.stdout
        assert "DAMAGED" not in done.stdout
        assert files(data / session) == before
        return []
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"session {session}: DAMAGED: "), done.stdout
    what = f"messages 1..{intact}" if intact else "no message"
    assert lines[-1] == f"{what} intact; nothing was changed (verify only reads)", done.stdout
    assert files(data / session) == before
    problems = [line.strip() for line in lines[1:-1]]
    assert problems
    return problems


async def receive(client: SoupClient, count: int) -> list[bytes]:
    """The next ``count`` messages; anything else is a failure."""
    got: list[bytes] = []
    for _ in range(count):
        packet = await client.packet()
        assert isinstance(packet, SequencedData), (len(got), packet)
        got.append(packet.payload)
    return got


# ---------------------------------------------------------------------------- the active session


def damaged_active(data: Path, pristine: Pristine, damage: Damage) -> Path:
    """A copy of the pristine session as ``data``'s active session, damaged."""
    directory = data / pristine.session
    shutil.copytree(pristine.directory, directory)
    (directory / "ended").unlink()
    damage.apply(directory, pristine)
    return directory


def moved_aside(directory: Path, damaged_log: bytes, cut_at: int | None) -> None:
    """What was cut went aside, whole (and nothing else did)."""
    aside = sorted(path.name for path in directory.glob("log.cut-*"))
    if cut_at is None:
        assert aside == []
    else:
        assert aside == [f"log.cut-{cut_at}"]
        assert (directory / f"log.cut-{cut_at}").read_bytes() == damaged_log[cut_at:]


@pytest.mark.parametrize("damage", [d for d in DAMAGES if not d.ends_session], ids=str)
def test_the_active_session_is_served_up_to_the_damage_and_goes_on_from_there(
    tmp_path: Path, pristine: Pristine, damage: Damage
) -> None:
    session, intact, cut_at = pristine.session, damage.intact(pristine), damage.cut_at(pristine)
    directory = damaged_active(tmp_path, pristine, damage)
    damaged_log = (directory / "log").read_bytes()
    problems = verified(tmp_path, session, intact, damage.tail)

    with ServerProcess(tmp_path) as server:
        # It starts, continues the session from the damage, and says what it found.
        server.wait_for_log(
            f"session {session} open at {directory}: {intact} messages, next is {intact + 1}"
        )
        for problem in problems:
            server.wait_for_log(f"session {session}: {problem}")
        assert not server.logged(" was damaged: ")

        async def subscribe_then_publish() -> None:
            client = await SoupClient.login(server.port, "", 1)
            assert await client.packet() == LoginAccepted(session, 1)
            assert await receive(client, intact) == [payload(s) for s in range(1, intact + 1)]
            more = [payload_after(s) for s in range(intact + 1, intact + MORE + 1)]
            ack = await publish(server.port, intact + 1, more)
            assert ack.session == session
            assert await receive(client, MORE) == more
            client.close()

        asyncio.run(asyncio.wait_for(subscribe_then_publish(), TIMEOUT))
        assert server.stop() == 0

    # What was cut went aside, whole; the log is the intact prefix and what came after.
    kept = len(damaged_log) if cut_at is None else cut_at
    moved_aside(directory, damaged_log, cut_at)
    log = (directory / "log").read_bytes()
    assert log[:kept] == pristine.log[:kept]
    assert log[kept:] == encode_sequenced_many(
        [payload_after(s) for s in range(intact + 1, intact + MORE + 1)]
    )
    assert not (directory / "ended").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [session]
    # The index was mended: the session is clean now.
    recovery = verify(directory)
    assert recovery.problems == ()
    assert recovery.messages == intact + MORE


@pytest.mark.parametrize("damage", [d for d in DAMAGES if d.ends_session], ids=str)
def test_an_active_session_that_lost_published_messages_is_ended_and_the_next_one_opened(
    tmp_path: Path, pristine: Pristine, damage: Damage
) -> None:
    """Messages its index vouched for had been published: numbering on from the damage
    would give their numbers to other messages. The server ends the session (it still
    serves its intact prefix, then a Debug packet saying what was lost, no End of
    Session) and publishes into the next one."""
    session, intact, cut_at = pristine.session, damage.intact(pristine), damage.cut_at(pristine)
    following = str(SessionId.parse(session).next_roll())
    directory = damaged_active(tmp_path, pristine, damage)
    damaged_log = (directory / "log").read_bytes()
    problems = verified(tmp_path, session, intact, damage.tail)
    more = [payload_after(s) for s in range(1, MORE + 1)]

    with ServerProcess(tmp_path) as server:
        for problem in problems:
            server.wait_for_log(f"session {session}: {problem}")
        line = server.wait_for_log(
            f"session {session} was damaged: messages {intact + 1}..{ALL} were cut; it is "
            f"ended and session {following} opened so that no number is reused"
        )
        assert "ERROR" in line, line
        server.wait_for_log(
            f"session {following} open at {tmp_path / following}: 0 messages, next is 1"
        )
        assert not server.logged(f"session {session} open at ")

        async def subscribe_and_publish() -> None:
            client = await SoupClient.login(server.port, "", 1)
            assert await client.packet() == LoginAccepted(following, 1)
            ack = await publish(server.port, 1, more)
            assert ack.session == following
            assert await receive(client, MORE) == more
            client.close()

        asyncio.run(asyncio.wait_for(subscribe_and_publish(), TIMEOUT))
        # The damaged session: its intact prefix, then a Debug packet saying that it
        # lost messages, and no End of Session: it is not whole (issue 11).
        pull = raw_pull(server.port, session)
        assert_served_up_to_the_damage(pull, session, intact)
        assert f"messages {intact + 1}..{ALL} were lost" in pull.after[0][1].decode()
        assert server.stop() == 0

    # The damaged session was repaired as ever, then ended; nothing was appended to it.
    kept = len(damaged_log) if cut_at is None else cut_at
    moved_aside(directory, damaged_log, cut_at)
    assert (directory / "log").read_bytes() == pristine.log[:kept]
    assert (directory / "ended").exists()
    assert (directory / "lost").read_text() == (
        f"messages {intact + 1}..{ALL} were lost: they were found damaged at start-up\n"
    )
    recovery = verify(directory)
    assert recovery.problems == ()
    assert recovery.messages == intact
    assert (tmp_path / following / "log").read_bytes() == encode_sequenced_many(more)
    assert verify(tmp_path / following).problems == ()


def test_start_up_says_where_it_moved_the_bytes_it_cut(tmp_path: Path, pristine: Pristine) -> None:
    damage = next(d for d in DAMAGES if d.name == "payload-flipped-middle-batch")
    cut_at = damage.cut_at(pristine)
    directory = damaged_active(tmp_path, pristine, damage)
    cut = len(pristine.log) - pristine.batches[MIDDLE].offset
    with ServerProcess(tmp_path) as server:  # recovery is logged before it listens
        assert (directory / f"log.cut-{cut_at}").exists()
        line = server.wait_for_log(f"log.cut-{cut_at}", 0)
        assert "WARNING" in line, line
        assert line.endswith(
            f"session {pristine.session}: the {cut} bytes cut (sequence "
            f"{pristine.first(MIDDLE)} on) are kept in {directory / f'log.cut-{cut_at}'}"
        ), line


# ---------------------------------------------------------------------------- closed sessions


def closed_id(number: int) -> str:
    """The id of the closed session that holds damage ``number`` (a day of 2000)."""
    return f"200001{number + 1:02d}01"


@dataclass(frozen=True)
class ClosedSessions:
    server: ServerProcess
    data: Path
    files: dict[str, dict[str, bytes]]
    """Each session's files as damaged, before the server started."""


@pytest.fixture(scope="module")
def closed(
    tmp_path_factory: pytest.TempPathFactory, pristine: Pristine
) -> Iterator[ClosedSessions]:
    """One server over closed copies of the session, each damaged in its own way."""
    data = tmp_path_factory.mktemp("closed")
    damaged = {}
    for number, damage in enumerate(DAMAGES):
        directory = data / closed_id(number)
        shutil.copytree(pristine.directory, directory)
        damage.apply(directory, pristine)
        damaged[directory.name] = files(directory)
    with ServerProcess(data) as server:
        yield ClosedSessions(server, data, damaged)


def served_whole(damage: Damage, pristine: Pristine) -> bool:
    """Whether the damage leaves every message of the session served, and nothing of
    its log unread: then, and only then, a pull ends with End of Session."""
    return damage.intact(pristine) == ALL and damage.cut_at(pristine) is None


@dataclass
class RawPull:
    """A pull as a client written from the spec sees it: Login Accepted's body, the
    payloads of the Sequenced Data packets, the packets after them (type and body), and
    how the connection ended (``eof`` or ``reset``)."""

    accepted: bytes
    payloads: list[bytes]
    after: list[tuple[bytes, bytes]]
    ended: str


def raw_pull(port: int, session: str, seq: int = 1) -> RawPull:
    """Log in to ``session`` from ``seq`` (spec 2.3.1) with a plain socket, and read
    every packet until the server closes the connection."""
    body = b" " * 16 + session.encode().rjust(10) + b"%20d" % seq
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(struct.pack(">H", 1 + len(body)) + b"L" + body)
        data = bytearray()
        ended = "eof"
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                ended = "reset"
                break
            if not chunk:
                break
            data += chunk
    packets: list[tuple[bytes, bytes]] = []
    position = 0
    while position < len(data):
        (length,) = struct.unpack_from(">H", data, position)
        assert position + 2 + length <= len(data), f"a torn packet at {position}"
        frame = bytes(data[position + 2 : position + 2 + length])
        if frame[:1] != b"H":
            packets.append((frame[:1], frame[1:]))
        position += 2 + length
    assert packets and packets[0][0] == b"A", packets[:1]
    payloads: list[bytes] = []
    for kind, payload in packets[1:]:
        if kind != b"S":
            break
        payloads.append(payload)
    return RawPull(packets[0][1], payloads, packets[1 + len(payloads) :], ended)


def assert_served_up_to_the_damage(pull: RawPull, session: str, intact: int) -> None:
    """The intact messages, then one Debug packet saying where and why the session
    stops, then an orderly close: no End of Session, which would say it is whole."""
    assert pull.payloads == [payload(s) for s in range(1, intact + 1)]
    assert [kind for kind, _ in pull.after] == [b"+"], pull.after
    text = pull.after[0][1].decode()
    assert text.startswith(
        f"session {session} is damaged: messages from {intact + 1} on cannot be served ("
    ), text
    assert pull.ended == "eof"


@pytest.mark.parametrize("damage", DAMAGES, ids=str)
def test_a_closed_session_is_pulled_up_to_the_damage(
    closed: ClosedSessions, pristine: Pristine, damage: Damage
) -> None:
    """Served up to the damage; then End of Session only if the session is whole (its
    index was damaged, its log was not), else a Debug packet saying why it stops."""
    session, intact = closed_id(DAMAGES.index(damage)), damage.intact(pristine)
    if damage.tail:
        # Not damage: the server set the tail aside when it started (an ended session
        # must be archivable), and the session is clean from then on.
        cut_at = damage.cut_at(pristine)
        assert cut_at is not None
        closed.server.wait_for_log(f"ended session {session}: {intact} messages served; ", 5)
        damaged_log = closed.files[session]["log"]
        assert (closed.data / session / "log").read_bytes() == damaged_log[:cut_at]
        moved_aside(closed.data / session, damaged_log, cut_at)
        done = tickertape("sessions", "verify", session, "--data", str(closed.data))
        assert (done.returncode, done.stdout) == (
            0,
            f"session {session}: clean: {intact} messages (log and index checked)\n",
        )
        problems: list[str] = []
    else:
        problems = verified(closed.data, session, intact)

    pull = raw_pull(closed.server.port, session)
    assert pull.accepted == session.encode() + b"%20d" % 1
    if damage.tail or served_whole(damage, pristine):  # a tail set aside is no damage
        assert pull.payloads == [payload(s) for s in range(1, intact + 1)]
        assert pull.after == [(b"Z", b"")]
        assert pull.ended == "eof"
    else:
        assert_served_up_to_the_damage(pull, session, intact)
        # Logging in again where it stopped (as a client that lost its connection
        # does) gets the same answer at once.
        again = raw_pull(closed.server.port, session, intact + 1)
        assert again.accepted == session.encode() + b"%20d" % (intact + 1)
        assert again.payloads == []
        assert [kind for kind, _ in again.after] == [b"+"], again.after
        assert again.after[0][1] == pull.after[0][1]
    for problem in problems:  # said when the server opened it for the pull
        closed.server.wait_for_log(f"session {session}: {problem}", 5)
    # What it leaves out is not served; it was not cut, and is kept nowhere else.
    cut_at = damage.cut_at(pristine)
    if damage.tail:
        return  # checked above
    if cut_at is not None:
        cut = len(closed.files[session]["log"]) - cut_at
        closed.server.wait_for_log(
            f"session {session}: the {cut} damaged bytes after offset {cut_at} (sequence "
            f"{intact + 1} on) are not served; nothing on disk is changed (opened read-only)",
            5,
        )
    assert not any(
        f"session {session}: " in line and ("kept in" in line or "was damaged" in line)
        for line in closed.server.lines
    )
    # Served read-only: nothing on disk changes.
    assert files(closed.data / session) == closed.files[session]


# ---------------------------------------------------------------------------- an archive

ARCHIVE_TRAILER = struct.Struct("<8sIIQQQII")
"""An archive's last 48 bytes: magic, version, chunks, index offset, messages, original
size, CRC-32 of the index, CRC-32 of the trailer's first 44 bytes (``store/archived.py``)."""
ARCHIVE_CHUNK = struct.Struct("<QIQIQIII")
"""One record of its chunk index: first sequence number, count, offset and length in the
original log, offset and length in the archive, CRC-32 of the bytes, of the compressed."""


def test_a_damaged_archive_is_pulled_up_to_the_damage_as_a_log_is(
    tmp_path: Path, pristine: Pristine
) -> None:
    """An archived session one of whose chunks fails its checksum is served as a damaged
    log is: up to that chunk, then a Debug packet saying why it stops, no End of Session;
    and so is a login from the damaged chunk on."""
    directory = tmp_path / pristine.session
    shutil.copytree(pristine.directory, directory)
    archive_session(directory, chunk_bytes=64)
    archive = directory / ARCHIVE_FILE
    data = archive.read_bytes()
    trailer = ARCHIVE_TRAILER.unpack_from(data, len(data) - ARCHIVE_TRAILER.size)
    count, index_at = trailer[2], trailer[3]
    chunks = [
        ARCHIVE_CHUNK.unpack_from(data, index_at + number * ARCHIVE_CHUNK.size)
        for number in range(count)
    ]
    assert count >= 3, chunks
    first_seq, _, _, _, at, size, _, _ = chunks[count // 2]
    flip(archive, at + size // 2)

    with ServerProcess(tmp_path) as server:
        pull = raw_pull(server.port, pristine.session)
        assert_served_up_to_the_damage(pull, pristine.session, first_seq - 1)
        again = raw_pull(server.port, pristine.session, first_seq)
        assert again.payloads == []
        assert [kind for kind, _ in again.after] == [b"+"], again.after
        assert again.after[0][1] == pull.after[0][1]
        assert again.ended == "eof"
        server.wait_for_log(f"chunk {count // 2} of {archive}")
        assert server.stop() == 0
