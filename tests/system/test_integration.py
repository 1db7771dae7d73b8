"""Integration tests: a real ``tickertape serve`` process on 127.0.0.1, many subscribers.

Every message of the demo source starts with its own sequence number and a space
(``b"17 2026-11-29T09:30:00.000123Z demo ..."``), so a received message ``(seq, payload)``
is correct iff ``payload.startswith(b"%d " % seq)``: the checks below look at every one.

Randomness is seeded, so each run makes the same choices; timings vary, outcomes do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tickertape.client.soupbintcp import Message, subscribe
from tickertape.store.opening import verify
from tickertape.wire.soupbintcp import LoginAccepted, LoginRequest, decode_server_packet

from support import ServerProcess, paused

HOST = "127.0.0.1"
_SEQUENCED = 0x53  # "S"
_SERVER_HEARTBEAT = 0x48  # "H"
_CLIENT_HEARTBEAT = b"\x00\x01R"
_LOGOUT = b"\x00\x01O"
_READ_SIZE = 1 << 18
_INDEX_RECORD = struct.Struct("<QQIII")  # first_seq, offset, length, count, crc32; + crc32
_INDEX_RECORD_SIZE = _INDEX_RECORD.size + 4


def _correct(seq: int, payload: bytes) -> bool:
    return payload.startswith(b"%d " % seq)


def _stamp(payload: bytes) -> dt.datetime:
    """The time a demo message was made, from its payload."""
    text = payload.split()[1].decode()
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


# ---------------------------------------------------------------------------- raw SoupBinTCP


class RawFeed:
    """A SoupBinTCP connection over a plain socket, for what the product client hides:
    the sequence number in Login Accepted (``login(seq=0)`` asks for "from the next one
    published", and only Login Accepted says which that is)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accepted: LoginAccepted,
        buffered: bytes,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session = accepted.session
        self.first_seq = accepted.sequence
        self._buffer = buffered
        self._last_sent = time.monotonic()

    @classmethod
    async def login(cls, port: int, seq: int) -> RawFeed:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(LoginRequest("", "", "", seq).encode())
        buffer = b""
        while len(buffer) < 2 or len(buffer) < 2 + int.from_bytes(buffer[:2], "big"):
            data = await reader.read(_READ_SIZE)
            if not data:
                raise AssertionError(f"the server closed the connection at login: {buffer!r}")
            buffer += data
        length = int.from_bytes(buffer[:2], "big")
        packet = decode_server_packet(buffer[2 : 2 + length])
        if not isinstance(packet, LoginAccepted):
            raise AssertionError(f"login with sequence {seq}: got {packet!r}")
        return cls(reader, writer, packet, buffer[2 + length :])

    async def check_through(self, last: int) -> int:
        """Read and check every message from Login Accepted's number through ``last``;
        returns how many there were."""
        expected = self.first_seq
        buffer = self._buffer
        position = 0
        while expected <= last:
            position, expected = _check_packets(buffer, position, expected, last)
            if expected > last:
                break
            if time.monotonic() - self._last_sent > 0.5:
                self.writer.write(_CLIENT_HEARTBEAT)
                self._last_sent = time.monotonic()
            data = await self.reader.read(_READ_SIZE)
            if not data:
                raise AssertionError(f"the server closed the connection at message {expected}")
            buffer = buffer[position:] + data
            position = 0
        _check_packets(buffer, position, expected, last)  # nothing but heartbeats after
        return expected - self.first_seq

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(_LOGOUT)
            self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def _check_packets(buffer: bytes, position: int, expected: int, last: int) -> tuple[int, int]:
    """Check the whole packets of ``buffer`` from ``position``, the first Sequenced Data
    one being message ``expected``. Returns where the whole packets end and the next
    expected sequence number."""
    end = len(buffer)
    while position + 3 <= end:
        stop = position + 2 + ((buffer[position] << 8) | buffer[position + 1])
        if stop > end:
            break
        kind = buffer[position + 2]
        if kind == _SEQUENCED:
            if expected > last:
                raise AssertionError(
                    f"a message after the last one ({last}): {buffer[position:stop][:60]!r}"
                )
            if not buffer.startswith(b"%d " % expected, position + 3, stop):
                raise AssertionError(
                    f"message {expected} is {buffer[position + 3 : stop][:40]!r}: "
                    "a gap, a duplicate or a wrong message"
                )
            expected += 1
        elif kind != _SERVER_HEARTBEAT:
            raise AssertionError(f"unexpected packet {buffer[position:stop][:60]!r}")
        position = stop
    return position, expected


async def _tail(port: int) -> int:
    """The sequence number of the next message to be published, as Login Accepted
    tells a login with sequence number 0."""
    feed = await RawFeed.login(port, 0)
    await feed.close()
    return feed.first_seq


async def _first_message(port: int, seq: int) -> Message:
    async with subscribe(HOST, port, seq=seq, reconnect=False) as messages:
        async for message in messages:
            return message
    raise AssertionError(f"no message {seq}")


def _server_problems(server: ServerProcess) -> list[str]:
    return [line for line in server.lines if " ERROR " in line or "Traceback" in line]


# ---------------------------------------------------------------------------- 1. twenty subscribers

MESSAGES = 250_000
RATE = 50_000
SUBSCRIBERS = 20
LAST_LOGIN = 4.5
"""Seconds after start-up: publishing lasts MESSAGES / PUBLISH_RATE, about 4.5 s."""
CHECK_TIMEOUT = 240.0
"""Seconds for all the subscribers to be done: about 3 million messages are decoded and
checked here, in Python; 7 s on an idle machine with 2 cores, 30 s on a busy one."""
PUBLISH_RATE = 55_000
"""The demo source paces itself to its rate exactly (it never runs ahead of its
schedule); set 10% above RATE, the rate checked, so that a busy test machine does not
make a server that keeps up look as if it did not."""


@dataclass
class Subscribed:
    """What one subscriber asked for and got."""

    name: str
    mode: str
    at: float
    requested: int = -1
    first: int = -1
    received: int = 0
    done_at: float = 0.0


async def _subscriber(port: int, plan: Subscribed, fraction: float, started: float) -> Subscribed:
    """Log in at ``plan.at`` seconds after ``started``, as ``plan.mode`` says, and check
    every message through the last one."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, started + plan.at - loop.time()))
    try:
        if plan.mode == "live":
            plan.requested = 0
            feed = await RawFeed.login(port, 0)
            plan.first = feed.first_seq
            try:
                plan.received = await feed.check_through(MESSAGES)
            finally:
                await feed.close()
        else:
            if plan.mode == "first":
                seq = 1
            else:
                tail = await _tail(port)
                seq = tail if plan.mode == "tail" else 1 + int(fraction * max(0, tail - 2))
            plan.requested = plan.first = seq
            expected = seq
            if seq <= MESSAGES:
                async with subscribe(HOST, port, seq=seq, reconnect=False) as messages:
                    async for message in messages:
                        if message.seq != expected or not _correct(expected, message.payload):
                            raise AssertionError(
                                f"expected message {expected}, got {message.seq} "
                                f"{message.payload[:40]!r}: a gap, a duplicate or a wrong one"
                            )
                        expected += 1
                        if expected > MESSAGES:
                            break
            plan.received = expected - seq
    except Exception as exc:
        raise AssertionError(f"{plan.name} ({plan.mode}, from {plan.requested}): {exc}") from exc
    plan.done_at = loop.time() - started
    assert plan.received == MESSAGES + 1 - plan.first, plan
    return plan


async def _twenty_subscribers(port: int, rng: random.Random) -> list[Subscribed]:
    modes = ["live", "first", "middle", "tail"] * (SUBSCRIBERS // 4)
    rng.shuffle(modes)
    plans = [
        Subscribed(f"subscriber {number}", mode, rng.uniform(0.0, LAST_LOGIN))
        for number, mode in enumerate(modes)
    ]
    fractions = [rng.random() for _ in plans]
    started = asyncio.get_running_loop().time()
    return await asyncio.wait_for(
        asyncio.gather(
            *(
                _subscriber(port, plan, fraction, started)
                for plan, fraction in zip(plans, fractions, strict=True)
            )
        ),
        timeout=CHECK_TIMEOUT,
    )


@pytest.mark.timeout(CHECK_TIMEOUT + 60)
def test_twenty_subscribers_at_random_moments(tmp_path: Path) -> None:
    rng = random.Random(0x71C4E7)
    began = time.monotonic()
    with ServerProcess(
        tmp_path,
        "--durability",
        "batch",
        "--demo",
        str(PUBLISH_RATE),
        "--demo-count",
        str(MESSAGES),
    ) as server:
        results = asyncio.run(_twenty_subscribers(server.port, rng))
        checked = time.monotonic() - began

        first = asyncio.run(_first_message(server.port, 1))
        last = asyncio.run(_first_message(server.port, MESSAGES))
        tail = asyncio.run(_tail(server.port))
        published = server.wait_for_log("demo source: published")
        problems = _server_problems(server)

    for plan in sorted(results, key=lambda plan: plan.at):
        print(
            f"{plan.name:>14} {plan.mode:>6} at {plan.at:5.2f} s: asked {plan.requested:>6}, "
            f"got {plan.first:>6}..{MESSAGES} ({plan.received:>6} messages), "
            f"done at {plan.done_at:5.2f} s"
        )
    assert sorted(plan.mode for plan in results) == sorted(
        ["live", "first", "middle", "tail"] * (SUBSCRIBERS // 4)
    )
    assert tail == MESSAGES + 1, "nothing is published after the last demo message"
    assert f"published {MESSAGES} messages" in published
    assert not problems, problems

    # The demo source stamps each batch when it makes it: from the first batch to the
    # last, MESSAGES messages were persisted and published.
    seconds = (_stamp(last.payload) - _stamp(first.payload)).total_seconds()
    rate = MESSAGES / seconds
    print(
        f"published {MESSAGES} messages in {seconds:.3f} s: {rate:,.0f} a second; "
        f"{sum(plan.received for plan in results):,} deliveries checked, "
        f"all done {checked:.2f} s after start-up"
    )
    assert rate >= RATE, f"published at {rate:,.0f} messages a second, below {RATE:,}"


# ---------------------------------------------------------------------------- 2. SIGKILL

ROUNDS = 4
DEMO_RATE = 3_000
NEW_AFTER_RESTART = 300


def _session_dir(data: Path) -> Path:
    sessions = [entry for entry in data.iterdir() if entry.is_dir()]
    assert len(sessions) == 1, sessions
    return sessions[0]


def _log_packets(session_dir: Path) -> list[bytes]:
    """The payloads of the session's log file, which must be whole Sequenced Data packets
    back to back, with no torn packet at the end."""
    data = (session_dir / "log").read_bytes()
    payloads = []
    position = 0
    while position < len(data):
        assert position + 3 <= len(data), f"torn packet header at offset {position}"
        length = int.from_bytes(data[position : position + 2], "big")
        assert length >= 1, f"empty packet at offset {position}"
        assert data[position + 2] == _SEQUENCED, f"not Sequenced Data at offset {position}"
        stop = position + 2 + length
        assert stop <= len(data), (
            f"torn packet at offset {position}: {length} bytes announced, "
            f"{len(data) - position - 2} there"
        )
        payloads.append(data[position + 3 : stop])
        position = stop
    return payloads


def _at_rest(session_dir: Path) -> bool:
    """Whether the index covers exactly the log: no batch is between its write to the
    log and the write of its index record."""
    index = (session_dir / "index").read_bytes()
    log_size = (session_dir / "log").stat().st_size
    if len(index) % _INDEX_RECORD_SIZE:
        return False
    if not index:
        return log_size == 0
    _, offset, length, _, _ = _INDEX_RECORD.unpack_from(index, len(index) - _INDEX_RECORD_SIZE)
    return bool(offset + length == log_size)


def _check_files_at_rest(
    server: ServerProcess, session_dir: Path, rng: random.Random
) -> list[bytes]:
    """Stop the server at a moment when no append is half done, check its log file and
    verify the session; returns the log's payloads."""
    for _ in range(200):
        with paused(server):
            if _at_rest(session_dir):
                payloads = _log_packets(session_dir)
                recovery = verify(session_dir)
                assert recovery.clean, recovery.problems
                assert recovery.messages == len(payloads)
                return payloads
        time.sleep(rng.uniform(0.0005, 0.005))
    raise AssertionError("never caught the server between two appends")


async def _record(
    server: ServerProcess, seq: int, kill_after: float
) -> tuple[list[Message], dt.datetime]:
    """Subscribe from ``seq``, record every message, SIGKILL the server after
    ``kill_after`` seconds; returns what was received and when the server was dead."""
    got: list[Message] = []

    async def consume() -> None:
        async with subscribe(HOST, server.port, seq=seq, reconnect=False) as messages:
            async for message in messages:
                got.append(message)

    task = asyncio.create_task(consume())
    await asyncio.sleep(kill_after)
    if task.done():
        task.result()  # its exception, if it failed
        raise AssertionError("the subscription ended before the kill")
    server.kill()
    killed = dt.datetime.now(dt.UTC)
    try:
        await asyncio.wait_for(task, 10)
    except ConnectionError:
        pass
    else:
        raise AssertionError("the subscription ended without the connection being lost")
    return got, killed


async def _read(port: int, seq: int, through: int) -> list[Message]:
    got: list[Message] = []
    async with subscribe(HOST, port, seq=seq, reconnect=False) as messages:
        async for message in messages:
            got.append(message)
            if message.seq >= through:
                break
    return got


def _check_contiguous(messages: list[Message], first: int | None) -> None:
    expected = messages[0].seq if first is None else first
    for message in messages:
        assert message.seq == expected, f"expected message {expected}, got {message.seq}"
        assert _correct(message.seq, message.payload), (message.seq, message.payload[:40])
        expected += 1


def test_sigkill_with_durability_always(tmp_path: Path) -> None:
    rng = random.Random(0x5161C11)
    received: dict[int, bytes] = {}
    session = ""
    server = ServerProcess(tmp_path, "--durability", "always", "--demo", str(DEMO_RATE))
    report: list[str] = []
    began = time.monotonic()
    server.start()
    try:
        for round_ in range(ROUNDS):
            kill_after = rng.uniform(0.3, 1.5)
            # From the start, live (0), or right after the last message received.
            start = rng.choice(["first", "live", "next"]) if received else "first"
            seq = {"first": 1, "live": 0, "next": 1 + max(received, default=0)}[start]

            # A subscriber records every message until the server is killed.
            got, killed = asyncio.run(_record(server, seq, kill_after))
            assert got, f"round {round_}: nothing received in {kill_after:.2f} s"
            _check_contiguous(got, seq or None)
            session = session or got[0].session
            assert {message.session for message in got} == {session}
            for message in got:
                assert received.setdefault(message.seq, message.payload) == message.payload, (
                    f"message {message.seq} was received twice, with different bytes"
                )
            highest = max(received)

            # Restart on the same data directory.
            restarted = dt.datetime.now(dt.UTC)
            server.start()
            opened = server.wait_for_log("next is ")
            next_seq = int(opened.rsplit("next is ", 1)[1])
            recovery = [line.split(": ", 1)[1] for line in server.lines if " WARNING " in line]
            assert _session_dir(tmp_path).name == session
            assert f"session {session} open" in opened
            assert next_seq > highest, (
                f"received up to {highest} before the kill, but the log ends at {next_seq - 1}"
            )

            # Every message received is in the log with its number and bytes, and
            # publishing goes on from the next number.
            logged = asyncio.run(_read(server.port, 1, next_seq - 1 + NEW_AFTER_RESTART))
            _check_contiguous(logged, 1)
            for message in logged:
                if message.seq in received:
                    assert message.payload == received[message.seq], (
                        f"message {message.seq} differs from what was received before the kill"
                    )
            assert _stamp(logged[next_seq - 2].payload) <= killed
            assert _stamp(logged[next_seq - 1].payload) >= restarted, (
                f"message {next_seq} was not published after the restart"
            )

            # The log file holds whole packets, the same messages; verify finds it clean.
            payloads = _check_files_at_rest(server, _session_dir(tmp_path), rng)
            assert len(payloads) >= len(logged)
            for seq_, payload in enumerate(payloads, start=1):
                assert _correct(seq_, payload), (seq_, payload[:40])
            for message in logged:
                assert payloads[message.seq - 1] == message.payload
            assert not _server_problems(server), _server_problems(server)
            report.append(
                f"round {round_}: from {seq}, killed after {kill_after:.2f} s having received "
                f"{got[0].seq}..{got[-1].seq}; restarted at {next_seq} "
                f"({'; '.join(recovery) or 'nothing to recover'}); log holds {len(payloads)}"
            )
    finally:
        server.stop()
    print("\n".join(report))
    print(f"{ROUNDS} rounds in {time.monotonic() - began:.2f} s")


@pytest.mark.parametrize("round_", range(6))
def test_sigterm_while_publishing_leaves_a_clean_log(tmp_path: Path, round_: int) -> None:
    """A normal shutdown lets the writer finish the batch in hand before the log closes:
    the next start finds nothing to repair."""
    server = ServerProcess(tmp_path, "--durability", "always", "--demo", "3000").start()
    try:
        asyncio.run(asyncio.wait_for(_first_message(server.port, 200 + 100 * round_), 30))
    finally:
        assert server.stop() == 0
    recovery = verify(_session_dir(tmp_path))
    assert recovery.clean, recovery.problems
    assert recovery.messages >= 200 + 100 * round_
