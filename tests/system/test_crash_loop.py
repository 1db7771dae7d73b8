"""A crash loop: ``tickertape serve`` SIGKILLed at random moments while a publisher
publishes and subscribers read, round after round, with each durability policy.

Each round starts a real server subprocess on the data directory of the rounds before
(one session, growing), logs in two or three subscribers at various points of it (the
first message, somewhere in the middle, the tail, live), connects a publisher and sends
messages of varied sizes (empty ones, a few KB ones) that say which round and which
message they are, recording every acknowledgement and every message delivered. At a
seeded random moment, 20 to 300 ms into publishing, the server is SIGKILLed.

The next round's server, started on the same directory, is the check of the round
before, before anything is published to it:

- the log verifies clean (the start-up recovered it) and numbering goes on from where
  it stopped: the log holds, from the round's first sequence number, exactly the first
  messages the publisher sent, in order, with identical bytes (read back over
  SoupBinTCP), and nothing else;
- every message acknowledged, and every message delivered to a subscriber, is in the
  log at its sequence number with identical bytes; one that is not counts as *lost*.

A process crash loses nothing under any policy: the server writes a batch to the log
(the page cache) before it acknowledges or broadcasts it, and only an operating-system
crash or a power loss can lose what the page cache holds. So *lost* must be 0 for
``none`` as for ``batch`` and ``always``. At the end the whole log is compared with
everything checked round by round.

``TICKERTAPE_CRASH_ROUNDS`` sets the number of kills per policy (default 50). The
randomness is seeded; timings vary from run to run, so what each round sees varies too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription, subscribe
from tickertape.errors import LoginRejected, ProtocolError
from tickertape.store.opening import verify
from tickertape.wire.publishing import Ack

from support import ServerProcess

HOST = "127.0.0.1"
ROUNDS = int(os.environ.get("TICKERTAPE_CRASH_ROUNDS", "50"))
SEEDS = {"none": 0xC7A5_4001, "batch": 0xC7A5_4002, "always": 0xC7A5_4003}
KILL_AFTER = (0.020, 0.300)
"""Seconds into publishing when the server is SIGKILLed: drawn uniformly."""
MAX_SENT = 200_000
"""Messages one round's publisher sends at most (the kill comes long before)."""
IO_TIMEOUT = 30.0
"""Seconds any one step (a login, a read-back, the end of a task) may take."""
ROUND_TIMEOUT = 120.0
"""Seconds one round, its check included, may take."""
MODES = ("first", "middle", "tail", "live")
_BLOCK = random.Random(0xB10C).randbytes(8192)
"""Filler for the payloads."""


def _payload(rng: random.Random, round_: int, number: int) -> bytes:
    """Message ``number`` of round ``round_``: ``round.number:`` and filler; some are
    empty (they are told apart by their place), a few are some KB long."""
    draw = rng.random()
    if draw < 0.03:
        return b""
    head = b"%d.%d:" % (round_, number)
    size = rng.randint(1000, 4000) if draw < 0.06 else rng.randint(0, 120)
    start = (number * 31) % 4096
    return head + _BLOCK[start : start + size]


@dataclass
class Feed:
    """One subscriber of a round: where it asked to start and what it was delivered."""

    mode: str
    seq: int
    got: list[tuple[int, bytes]] = field(default_factory=list)
    subscription: Subscription | None = None


@dataclass
class Round:
    """What one round did and saw before its server was killed."""

    number: int
    session: str
    first_seq: int
    """The number the round's first message gets: the log's next when its server opened."""
    kill_after: float
    sent: list[bytes] = field(default_factory=list)
    """Every message the publisher handed to its socket, in order (maybe not all arrived)."""
    ack: Ack | None = None
    """The last acknowledgement the publisher received."""
    feeds: list[Feed] = field(default_factory=list)


@dataclass
class Tally:
    """A policy's figures, and the log as checked so far."""

    seed: int
    policy: str
    logged: list[bytes] = field(default_factory=list)
    """The log's messages, message ``seq`` at ``seq - 1``: read back and checked."""
    kills: int = 0
    checked: int = 0
    """Acknowledged or delivered messages checked (each once per round it was in)."""
    acknowledged: int = 0
    deliveries: int = 0
    lost: int = 0
    """Acknowledged or delivered messages missing from the log or different there."""
    losses: list[str] = field(default_factory=list)
    """What was lost: one line per acknowledgement or delivery of a lost message."""
    recoveries: dict[str, int] = field(default_factory=dict)

    def where(self, round_: int) -> str:
        return f"durability={self.policy} seed={self.seed:#x} round {round_}"


def _opened(server: ServerProcess) -> tuple[str, int]:
    """The session the server opened and the number of its next message, from its log."""
    line = server.wait_for_log("next is ")
    session = line.split("session ", 1)[1].split()[0]
    return session, int(line.rsplit("next is ", 1)[1])


def _server_problems(server: ServerProcess) -> list[str]:
    return [line for line in server.lines if " ERROR " in line or "Traceback" in line]


def _recovery_kinds(server: ServerProcess, tally: Tally) -> None:
    """Count what the start-up recovery did (its warnings), for the closing note."""
    for line in server.lines:
        if " WARNING " not in line:
            continue
        for kind in ("past the last index record", "cut", "fails its checksum", "missing"):
            if kind in line:
                tally.recoveries[kind] = tally.recoveries.get(kind, 0) + 1


# ---------------------------------------------------------------------------- one round


async def _subscriber(port: int, feed: Feed) -> None:
    """Record every message delivered until the connection is lost."""
    async with subscribe(
        HOST, port, seq=feed.seq, reconnect=False, server_timeout=IO_TIMEOUT
    ) as subscription:
        feed.subscription = subscription
        with contextlib.suppress(OSError):  # the server was killed
            async for batch in subscription.batches():
                feed.got.extend((message.seq, message.payload) for message in batch)
        # (A subscription never sees End of Session here: nothing ends the session.)


async def _publisher(
    port: int, round_: Round, rng: random.Random, connected: asyncio.Event
) -> None:
    """Publish as fast as the server takes it until the connection is lost."""
    publisher = await Publisher.connect(HOST, port, server_timeout=IO_TIMEOUT)
    connected.set()
    try:
        while len(round_.sent) < MAX_SENT:
            chunk = [
                _payload(rng, round_.number, len(round_.sent) + offset)
                for offset in range(rng.choice((1, 1, 4, 16, 64, 256)))
            ]
            round_.sent.extend(chunk)  # before sending: some of it may reach the server
            await publisher.send_many(chunk)
            await asyncio.sleep(0)  # drain() does not yield while the buffer has room
    except (OSError, ProtocolError, LoginRejected):
        pass  # the server was killed
    finally:
        await publisher.close()
        round_.ack = publisher.last_ack


async def _play(server: ServerProcess, round_: Round, rng: random.Random, seed: int) -> None:
    """Subscribers in, publisher on, SIGKILL after ``round_.kill_after`` seconds.

    ``rng`` makes the round's choices, the same number of draws whatever the timings
    were (so that a seed gives the same choices in every run); the payloads come from a
    generator of the round's own."""
    port = server.port
    count = rng.choice((2, 3))
    for mode in rng.choices(MODES, k=count):
        seq = {
            "first": 1,
            "middle": 1 + int(rng.random() * round_.first_seq),
            "tail": round_.first_seq,
            "live": 0,
        }[mode]
        round_.feeds.append(Feed(mode, seq))
    readers = [asyncio.create_task(_subscriber(port, feed)) for feed in round_.feeds]
    async with asyncio.timeout(IO_TIMEOUT):
        while not all(
            feed.subscription is not None and feed.subscription.logins > 0 for feed in round_.feeds
        ):
            for reader in readers:
                if reader.done():
                    reader.result()
                    raise AssertionError("a subscriber stopped before the kill")
            await asyncio.sleep(0.002)

    connected = asyncio.Event()
    payloads = random.Random(seed * 1000 + round_.number)
    publishing = asyncio.create_task(_publisher(port, round_, payloads, connected))
    async with asyncio.timeout(IO_TIMEOUT):
        await connected.wait()
    await asyncio.sleep(round_.kill_after)
    for task in (publishing, *readers):
        if task.done():
            task.result()
            raise AssertionError("publishing or a subscriber stopped before the kill")
    server.kill()
    async with asyncio.timeout(IO_TIMEOUT):
        await asyncio.gather(publishing, *readers)


# ---------------------------------------------------------------------------- the check


async def _read_back(port: int, first: int, last: int) -> list[bytes]:
    """Messages ``first..last`` over SoupBinTCP, checked to come in order."""
    payloads: list[bytes] = []
    if last < first:
        return payloads
    async with asyncio.timeout(IO_TIMEOUT):
        async with subscribe(HOST, port, seq=first, reconnect=False) as messages:
            async for message in messages:
                assert message.seq == first + len(payloads), (message.seq, first, len(payloads))
                payloads.append(message.payload)
                if message.seq == last:
                    break
    assert len(payloads) == last - first + 1, (first, last, len(payloads))
    return payloads


async def _check(server: ServerProcess, data: Path, played: Round, tally: Tally) -> int:
    """After the restart that follows ``played``'s kill: check the log and everything
    acknowledged or delivered in that round. Returns the log's next number."""
    where = (
        f"{tally.where(played.number)} (killed {played.kill_after * 1000:.0f} ms into "
        f"publishing; subscribers {[(feed.mode, feed.seq) for feed in played.feeds]})"
    )
    session, next_seq = _opened(server)
    assert session == played.session, f"{where}: the restart opened {session}"
    first = played.first_seq
    assert next_seq >= first, (
        f"{where}: the log went back from {first - 1} messages to {next_seq - 1}"
    )
    _recovery_kinds(server, tally)
    assert not _server_problems(server), (where, _server_problems(server))

    # The log is clean (the start-up repaired it), numbered 1 to next_seq - 1.
    recovery = verify(data / session)
    assert recovery.clean, (where, recovery.problems)
    assert recovery.messages == next_seq - 1, (where, recovery.messages, next_seq)

    # From the round's first number on: exactly the publisher's first messages, in order.
    logged = await _read_back(server.port, first, next_seq - 1)
    assert len(logged) <= len(played.sent), (
        f"{where}: the log holds {len(logged)} messages from {first} on, but only "
        f"{len(played.sent)} were sent"
    )
    for number, payload in enumerate(logged):
        assert payload == played.sent[number], (
            f"{where}: message {first + number} is {payload[:40]!r}, but the publisher's "
            f"message {number} was {played.sent[number][:40]!r}"
        )
    assert len(tally.logged) == first - 1, (where, len(tally.logged), first)
    tally.logged.extend(logged)

    # Every acknowledged message is there (the ones acknowledged come first, in order).
    checked: set[int] = set()
    losses: dict[int, list[str]] = {}
    ack = played.ack
    if ack is not None:
        assert ack.session == session, (where, ack)
        assert ack.seq - ack.count + 1 == first, (
            f"{where}: acknowledged {ack.count} messages up to {ack.seq}, but the round "
            f"started at {first}"
        )
        tally.acknowledged += ack.count
        for number in range(ack.count):
            seq = first + number
            checked.add(seq)
            if number >= len(logged):
                losses.setdefault(seq, []).append(
                    f"{where}: acknowledged message {seq} ({played.sent[number][:24]!r}) "
                    f"is not in the log, which ends at {next_seq - 1}"
                )

    # Every message delivered to a subscriber is there, with the same bytes.
    for feed in played.feeds:
        seqs = [seq for seq, _ in feed.got]
        if seqs:
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (
                f"{where}: subscriber from {feed.seq} ({feed.mode}) got a gap or a repeat"
            )
            assert feed.seq in (0, seqs[0]), (where, feed, seqs[0])
            assert feed.seq != 0 or seqs[0] >= first, (where, feed, seqs[0])
        tally.deliveries += len(feed.got)
        for seq, payload in feed.got:
            checked.add(seq)
            if seq >= next_seq:
                losses.setdefault(seq, []).append(
                    f"{where}: message {seq} ({payload[:24]!r}) was delivered to the "
                    f"subscriber from {feed.seq} ({feed.mode}) but is not in the log, "
                    f"which ends at {next_seq - 1}"
                )
            elif tally.logged[seq - 1] != payload:
                losses.setdefault(seq, []).append(
                    f"{where}: message {seq} was delivered as {payload[:24]!r} to the "
                    f"subscriber from {feed.seq} ({feed.mode}) but the log holds "
                    f"{tally.logged[seq - 1][:24]!r}"
                )
    tally.checked += len(checked)
    tally.lost += len(losses)
    tally.losses += [line for seq in sorted(losses) for line in losses[seq]]
    return next_seq


def _final_check(data: Path, session: str, tally: Tally) -> None:
    """The whole log, read from the file once the server is stopped: clean, and exactly
    the messages checked round by round."""
    directory = data / session
    recovery = verify(directory)
    assert recovery.clean, (tally.where(-1), recovery.problems)
    raw = (directory / "log").read_bytes()
    payloads = []
    position = 0
    while position < len(raw):
        assert position + 3 <= len(raw), f"torn packet at offset {position}"
        length = int.from_bytes(raw[position : position + 2], "big")
        assert raw[position + 2] == 0x53, f"not Sequenced Data at offset {position}"
        assert position + 2 + length <= len(raw), f"torn packet at offset {position}"
        payloads.append(raw[position + 3 : position + 2 + length])
        position += 2 + length
    assert len(payloads) == len(tally.logged), (len(payloads), len(tally.logged))
    changed = [
        seq for seq, (a, b) in enumerate(zip(payloads, tally.logged, strict=True), 1) if a != b
    ]
    assert not changed, f"{tally.where(-1)}: messages changed since checked: {changed[:20]}"


# ---------------------------------------------------------------------------- the loop


async def _crash_loop(data: Path, policy: str, tally: Tally) -> None:
    rng = random.Random(tally.seed)
    # The daily roll twelve hours away: a run that crosses midnight keeps one session.
    roll_at = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)).strftime("%H:%M")
    server = ServerProcess(data, "--durability", policy, "--roll-at", roll_at, "--timezone", "UTC")
    server.start()
    try:
        session, next_seq = _opened(server)
        for number in range(ROUNDS):
            round_ = Round(number, session, next_seq, rng.uniform(*KILL_AFTER))
            where = f"{tally.where(number)} (kill {round_.kill_after * 1000:.0f} ms in)"
            try:
                async with asyncio.timeout(ROUND_TIMEOUT):
                    await _play(server, round_, rng, tally.seed)
            except Exception as exc:
                raise AssertionError(f"{where}: {exc!r}") from exc
            killed_problems = _server_problems(server)
            assert not killed_problems, (where, killed_problems)
            server.stop()  # reaps the killed process and its log reader
            tally.kills += 1

            server.start()  # the next round's server checks this round
            async with asyncio.timeout(ROUND_TIMEOUT):
                next_seq = await _check(server, data, round_, tally)
            if tally.lost:  # stop there, and say what
                return
        assert server.stop() == 0
        _final_check(data, session, tally)
    finally:
        server.stop()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("policy", ["none", "batch", "always"])
def test_sigkill_loop_under_publishing_and_fan_out(tmp_path: Path, policy: str) -> None:
    tally = Tally(SEEDS[policy], policy)
    began = time.monotonic()
    try:
        asyncio.run(_crash_loop(tmp_path, policy, tally))
    finally:  # the figures, also when a check failed
        took = time.monotonic() - began
        print(
            f"\ncrash loop durability={policy}: {tally.kills} kills, {tally.checked} messages "
            f"checked, {tally.lost} lost"
        )
        recoveries = ", ".join(f"{kind} {n}" for kind, n in sorted(tally.recoveries.items()))
        print(
            f"  seed {tally.seed:#x}: {tally.acknowledged} acknowledged, {tally.deliveries} "
            f"deliveries, log of {len(tally.logged)} messages; recovery warnings: "
            f"{recoveries or 'none'}; {took:.1f} s ({took / max(tally.kills, 1):.2f} s a round)"
        )
    assert not tally.lost, "\n".join(tally.losses[:50])
    assert tally.kills == ROUNDS
