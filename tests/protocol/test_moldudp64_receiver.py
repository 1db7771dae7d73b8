"""The MoldUDP64 Receiver, alone and behind a fake lossy network, with a fake clock
(plain floats).

Section names are those of ``/work/shared/specs/moldudp64-notes.md``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from tickertape.errors import ConfigError
from tickertape.protocol.moldudp64 import (
    DEFAULT_MAX_CACHED,
    DEFAULT_MAX_OUTSTANDING,
    DEFAULT_REQUEST_CHUNK,
    DEFAULT_RETRY_AFTER,
    Receiver,
    ReceiverStats,
)
from tickertape.wire.moldudp64 import (
    Downstream,
    Request,
    end_of_session,
    heartbeat,
    pack,
)

SESSION = "2026112901"


def packet(first: int, count: int, session: str = SESSION) -> bytes:
    """Messages ``first`` .. ``first + count - 1``, each its own number as text."""
    return Downstream(
        session, first, tuple(b"m%d" % n for n in range(first, first + count))
    ).encode()


def expected(first: int, stop: int) -> list[tuple[int, bytes]]:
    return [(n, b"m%d" % n) for n in range(first, stop)]


def asked(requests: Sequence[Request]) -> list[tuple[int, int]]:
    assert all(request.session == SESSION for request in requests)
    return [(request.sequence, request.count) for request in requests]


# ---------------------------------------------------------------------------- configuration


def test_defaults() -> None:
    receiver = Receiver(0.0)
    assert receiver.session == ""
    assert receiver.next_seq == 1
    assert receiver.gap == 0
    assert receiver.cached == 0
    assert not receiver.ended
    assert receiver.stats == ReceiverStats()
    assert receiver.messages() == []
    assert receiver.requests(0.0) == []
    assert receiver.next_deadline() == math.inf
    assert (DEFAULT_REQUEST_CHUNK, DEFAULT_RETRY_AFTER) == (100, 0.25)
    assert DEFAULT_MAX_OUTSTANDING >= 1
    assert DEFAULT_MAX_CACHED >= DEFAULT_REQUEST_CHUNK * DEFAULT_MAX_OUTSTANDING


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"session": "ABCDEFGHIJK"}, "session"),
        ({"session": "séance"}, "session"),
        ({"next_seq": -1}, "next_seq"),
        ({"next_seq": 1 << 64}, "next_seq"),
        ({"request_chunk": 0}, "request_chunk"),
        ({"request_chunk": 0x10000}, "request_chunk"),
        ({"retry_after": 0.0}, "retry_after"),
        ({"retry_after": math.inf}, "retry_after"),
        ({"retry_after": math.nan}, "retry_after"),
        ({"max_outstanding": 0}, "max_outstanding"),
        ({"max_cached": 0}, "max_cached"),
    ],
)
def test_bad_configuration(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Receiver(0.0, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- in order


def test_in_order_messages_are_released_at_once() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 3), 0.1)
    assert receiver.session == SESSION  # adopted from the first packet
    assert receiver.messages() == expected(1, 4)
    assert receiver.messages() == []  # handed out once
    receiver.datagram_received(packet(4, 2), 0.2)
    receiver.datagram_received(heartbeat(SESSION, 6), 0.3)
    assert receiver.messages() == expected(4, 6)
    assert receiver.next_seq == 6
    assert receiver.gap == 0
    assert receiver.requests(0.3) == []
    assert receiver.next_deadline() == math.inf


def test_end_of_session_with_nothing_missing() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 3), 0.1)
    assert not receiver.ended
    receiver.datagram_received(end_of_session(SESSION, 4), 0.2)
    assert receiver.ended
    assert receiver.messages() == expected(1, 4)
    assert receiver.requests(0.2) == []


def test_empty_session() -> None:
    receiver = Receiver(0.0, session=SESSION)
    receiver.datagram_received(end_of_session(SESSION, 1), 0.1)
    assert receiver.ended
    assert receiver.messages() == []


def test_a_blank_receiver_follows_the_session_after_one_that_ended_before_it_joined() -> None:
    """After a roll, the ended session's End of Session repeats while the next is quiet:
    a receiver joining then follows the next session, not the one that ended."""
    receiver = Receiver(0.0)
    receiver.datagram_received(end_of_session("OLD", 40), 0.1)
    assert receiver.session == ""
    assert not receiver.ended
    assert receiver.requests(0.1) == []
    receiver.datagram_received(packet(1, 3), 0.2)
    receiver.datagram_received(end_of_session("OLD", 40), 0.3)  # ignored
    assert receiver.session == SESSION
    assert not receiver.ended
    assert receiver.messages() == expected(1, 4)
    assert receiver.stats.foreign == 2


def test_live_only_starts_at_the_first_packet_and_asks_for_nothing_earlier() -> None:
    receiver = Receiver(0.0, next_seq=0)
    receiver.datagram_received(packet(500, 2), 0.1)
    assert receiver.messages() == expected(500, 502)
    assert receiver.requests(0.1) == []
    receiver.datagram_received(packet(504, 1), 0.2)  # 502 and 503 lost: asked for
    assert asked(receiver.requests(0.2)) == [(502, 2)]
    heartbeat_first = Receiver(0.0, session=SESSION, next_seq=0)
    heartbeat_first.datagram_received(heartbeat(SESSION, 77), 0.1)
    heartbeat_first.datagram_received(packet(77, 1), 0.2)
    assert heartbeat_first.messages() == expected(77, 78)
    assert heartbeat_first.requests(0.2) == []


def test_starting_past_the_end() -> None:
    receiver = Receiver(0.0, session=SESSION, next_seq=50)
    receiver.datagram_received(end_of_session(SESSION, 10), 0.1)
    assert receiver.ended
    assert receiver.gap == 0


# ---------------------------------------------------------------------------- sessions


def test_packets_of_another_session_are_ignored() -> None:
    receiver = Receiver(0.0, session=SESSION)
    receiver.datagram_received(packet(1, 3, session="OTHER"), 0.1)
    receiver.datagram_received(end_of_session("OTHER", 4), 0.1)
    assert receiver.messages() == []
    assert not receiver.ended
    assert receiver.stats.foreign == 2
    receiver.datagram_received(packet(1, 3), 0.2)
    assert receiver.messages() == expected(1, 4)


def test_the_first_session_seen_is_kept() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(heartbeat(SESSION, 1), 0.1)
    receiver.datagram_received(packet(1, 3, session="2026112902"), 0.2)
    assert receiver.session == SESSION
    assert receiver.messages() == []
    assert receiver.stats.foreign == 1


def test_session_with_trailing_spaces_matches() -> None:
    receiver = Receiver(0.0, session="ABC   ")
    assert receiver.session == "ABC"
    receiver.datagram_received(packet(1, 1, session="ABC"), 0.1)
    assert receiver.messages() == [(1, b"m1")]


# ---------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"short",
        packet(1, 2)[:-1],  # a message overruns the packet
        packet(1, 2) + b"\x00",  # a byte after the last block
        end_of_session(SESSION, 1) + b"\x00\x01x",  # End of Session with a payload
        b"\xff" * 10 + packet(1, 1)[10:],  # session not ASCII
        Downstream(SESSION, (1 << 64) - 1, (b"a", b"b")).encode(),  # numbers past u64
    ],
)
def test_malformed_datagrams_are_counted_and_ignored(data: bytes) -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(data, 0.1)
    assert receiver.malformed == receiver.stats.malformed == 1
    assert receiver.session == ""  # nothing adopted from a malformed packet
    assert receiver.next_deadline() == math.inf
    receiver.datagram_received(packet(1, 2), 0.2)
    assert receiver.messages() == expected(1, 3)
    assert receiver.malformed == 1


def test_messages_past_end_of_session_are_dropped() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 2), 0.1)
    receiver.datagram_received(end_of_session(SESSION, 5), 0.2)
    receiver.datagram_received(packet(3, 4), 0.3)  # 3, 4 exist; 5, 6 contradict the end
    assert receiver.messages() == expected(1, 5)
    assert receiver.ended
    assert receiver.malformed == 1
    receiver.datagram_received(end_of_session(SESSION, 7), 0.4)  # another end
    assert receiver.malformed == 2
    receiver.datagram_received(heartbeat(SESSION, 9), 0.5)
    assert receiver.ended
    assert receiver.gap == 0


def test_end_of_session_below_an_announced_number() -> None:
    # A heartbeat said 10, End of Session says 6: the end wins, nothing past it is asked.
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 2), 0.1)
    receiver.datagram_received(packet(8, 1), 0.1)
    receiver.datagram_received(heartbeat(SESSION, 10), 0.1)
    assert receiver.gap == 6  # 3..7, 9
    receiver.datagram_received(end_of_session(SESSION, 6), 0.2)
    assert receiver.gap == 3
    assert receiver.cached == 0
    assert asked(receiver.requests(0.2)) == [(3, 3)]
    receiver.datagram_received(packet(3, 3), 0.3)
    assert receiver.ended
    assert receiver.messages() == expected(1, 6)


# ---------------------------------------------------------------------------- duplicates


def test_duplicates_are_dropped() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 3), 0.1)
    receiver.datagram_received(packet(1, 3), 0.2)
    receiver.datagram_received(packet(2, 3), 0.3)  # 2, 3 again, 4 new
    assert receiver.messages() == expected(1, 5)
    assert receiver.stats.duplicates == 5


def test_duplicates_in_the_cache_are_dropped() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(5, 3), 0.1)
    receiver.datagram_received(packet(6, 3), 0.2)  # 6, 7 again, 8 new
    assert receiver.cached == 4
    assert receiver.stats.duplicates == 2
    receiver.datagram_received(packet(1, 4), 0.3)
    assert receiver.messages() == expected(1, 9)
    assert receiver.cached == 0


def test_messages_below_next_seq_are_dropped() -> None:
    receiver = Receiver(0.0, next_seq=50)
    receiver.datagram_received(packet(1, 10), 0.1)
    assert receiver.messages() == []
    assert receiver.gap == 0
    assert receiver.stats.duplicates == 10
    receiver.datagram_received(packet(45, 10), 0.2)  # 45..49 old, 50..54 wanted
    assert receiver.messages() == expected(50, 55)
    assert receiver.stats.duplicates == 15


# ---------------------------------------------------------------------------- gaps


def test_out_of_order_messages_wait_for_the_gap() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 2), 0.1)
    receiver.datagram_received(packet(5, 2), 0.2)
    assert receiver.messages() == expected(1, 3)
    assert receiver.gap == 2
    assert receiver.cached == 2
    assert receiver.next_deadline() == 0.2  # due now
    assert asked(receiver.requests(0.2)) == [(3, 2)]
    receiver.datagram_received(packet(4, 1), 0.3)
    assert receiver.messages() == []
    receiver.datagram_received(packet(3, 1), 0.4)
    assert receiver.messages() == expected(3, 7)
    assert receiver.gap == receiver.cached == 0
    assert receiver.next_deadline() == math.inf


def test_heartbeat_announces_a_gap() -> None:
    # Notes, "Downstream packet", Heartbeat: the next sequence number the sender will use.
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 5), 0.1)
    receiver.datagram_received(heartbeat(SESSION, 8), 0.2)
    assert receiver.gap == 2
    assert asked(receiver.requests(0.2)) == [(6, 2)]
    receiver.datagram_received(heartbeat(SESSION, 3), 0.2)  # an old one: no change
    assert receiver.gap == 2


def test_late_joiner() -> None:
    # Notes, "Joining late": cache the group, ask for the missing range in chunks.
    receiver = Receiver(10.0, max_outstanding=3)
    receiver.datagram_received(packet(1001, 5), 10.0)
    assert receiver.session == SESSION
    assert receiver.next_seq == 1
    assert receiver.gap == 1000
    assert receiver.messages() == []
    assert asked(receiver.requests(10.0)) == [(1, 100), (101, 100), (201, 100)]
    receiver.datagram_received(packet(1006, 5), 10.01)  # the group goes on
    assert receiver.cached == 10
    for first in range(1, 1001, 100):
        receiver.requests(10.02)
        receiver.datagram_received(packet(first, 100), 10.02)
    assert receiver.messages() == expected(1, 1011)
    assert receiver.gap == receiver.cached == 0
    assert receiver.requests(10.02) == []


def test_late_joiner_with_next_seq() -> None:
    receiver = Receiver(0.0, session=SESSION, next_seq=991)
    receiver.datagram_received(packet(1001, 5), 0.0)
    assert receiver.gap == 10
    assert asked(receiver.requests(0.0)) == [(991, 10)]
    receiver.datagram_received(packet(991, 10), 0.1)
    assert receiver.messages() == expected(991, 1006)


def test_gap_at_the_end() -> None:
    # Notes: "Receivers that had a gap at the end only notice the end after they fill it".
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(1, 8), 0.1)
    receiver.datagram_received(end_of_session(SESSION, 11), 0.2)
    assert not receiver.ended
    assert receiver.gap == 2
    assert asked(receiver.requests(0.2)) == [(9, 2)]
    assert receiver.requests(0.3) == []
    assert asked(receiver.requests(0.45)) == [(9, 2)]  # asked again: still missing
    receiver.datagram_received(end_of_session(SESSION, 11), 0.5)  # repeated
    receiver.datagram_received(packet(9, 1), 0.6)
    assert not receiver.ended
    receiver.datagram_received(packet(10, 1), 0.7)
    assert receiver.ended
    assert receiver.messages() == expected(1, 11)
    assert receiver.requests(1.0) == []
    assert receiver.next_deadline() == math.inf


# ---------------------------------------------------------------------------- requests


def test_retry_timing() -> None:
    receiver = Receiver(0.0, retry_after=0.5)
    receiver.datagram_received(packet(3, 1), 1.0)
    assert receiver.next_deadline() == 1.0
    assert asked(receiver.requests(1.0)) == [(1, 2)]
    assert receiver.next_deadline() == 1.5
    assert receiver.requests(1.2) == []
    assert receiver.requests(1.499) == []
    assert receiver.next_deadline() == 1.5
    assert asked(receiver.requests(1.5)) == [(1, 2)]
    assert receiver.next_deadline() == 2.0
    receiver.datagram_received(packet(2, 1), 1.7)  # not from the start: still waiting
    assert receiver.next_deadline() == 2.0
    assert receiver.requests(1.9) == []
    assert asked(receiver.requests(2.0)) == [(1, 1)]
    receiver.datagram_received(packet(1, 1), 2.1)
    assert receiver.next_deadline() == math.inf
    assert receiver.messages() == expected(1, 4)
    assert receiver.stats.requests == 3


def test_a_new_gap_is_asked_for_at_once() -> None:
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(3, 1), 0.0)
    assert asked(receiver.requests(0.0)) == [(1, 2)]
    receiver.datagram_received(packet(6, 1), 0.1)  # 4, 5 missing too, not asked yet
    assert receiver.next_deadline() == 0.1
    assert asked(receiver.requests(0.1)) == [(4, 2)]
    assert receiver.next_deadline() == 0.25


def test_chunking_of_a_large_gap() -> None:
    receiver = Receiver(0.0, request_chunk=100, max_outstanding=4)
    receiver.datagram_received(packet(1001, 1), 0.0)
    assert asked(receiver.requests(0.0)) == [(1, 100), (101, 100), (201, 100), (301, 100)]
    assert receiver.requests(0.0) == []  # four outstanding: no more
    assert receiver.next_deadline() == 0.25
    # The answer to the first, whole: one more may go.
    receiver.datagram_received(packet(1, 100), 0.05)
    assert receiver.next_deadline() == 0.05
    assert asked(receiver.requests(0.05)) == [(401, 100)]
    # The answer to the second holds what fit in a datagram: the rest is asked at once.
    receiver.datagram_received(packet(101, 30), 0.06)
    assert asked(receiver.requests(0.06)) == [(131, 70)]
    assert receiver.requests(0.07) == []
    # Nothing more answered: every outstanding range is asked again once it times out.
    assert receiver.next_deadline() == 0.25
    assert asked(receiver.requests(0.25)) == [(201, 100), (301, 100)]
    assert asked(receiver.requests(0.31)) == [(131, 70), (401, 100)]
    assert receiver.messages() == expected(1, 131)
    assert receiver.gap == 1000 - 130


def test_chunks_skip_what_is_cached() -> None:
    receiver = Receiver(0.0, request_chunk=10)
    for first in (5, 30, 33):
        receiver.datagram_received(packet(first, 2), 0.0)
    assert receiver.gap == 28
    assert asked(receiver.requests(0.0)) == [(1, 4), (7, 10), (17, 10), (27, 3), (32, 1)]


def test_heartbeat_answer_to_a_request_is_harmless() -> None:
    # Notes, "Request packet": a server may answer with a heartbeat.
    receiver = Receiver(0.0)
    receiver.datagram_received(packet(3, 1), 0.0)
    assert asked(receiver.requests(0.0)) == [(1, 2)]
    receiver.datagram_received(heartbeat(SESSION, 4), 0.1)
    assert receiver.gap == 2
    assert receiver.requests(0.1) == []
    assert receiver.next_deadline() == 0.25


def test_the_cache_is_bounded() -> None:
    receiver = Receiver(0.0, max_cached=10, request_chunk=4)
    receiver.datagram_received(packet(6, 20), 0.0)  # 6..15 kept, 16..25 not
    assert receiver.cached == 5  # 6..10: the window is 1..10
    assert receiver.gap == 20
    assert receiver.stats.beyond_cache == 15
    # Only the window is asked for: an answer beyond it could not be kept.
    assert asked(receiver.requests(0.0)) == [(1, 4), (5, 1)]
    receiver.datagram_received(packet(1, 5), 0.1)
    assert receiver.messages() == expected(1, 11)
    assert receiver.cached == 0
    assert asked(receiver.requests(0.1)) == [(11, 4), (15, 4), (19, 2)]
    for first in range(11, 26):
        receiver.datagram_received(packet(first, 1), 0.2)
        assert receiver.cached <= 10
    assert receiver.messages() == expected(11, 26)
    assert receiver.next_deadline() == math.inf


def test_a_packet_wholly_beyond_the_cache_only_announces_its_numbers() -> None:
    receiver = Receiver(0.0, max_cached=10, request_chunk=100)
    receiver.datagram_received(packet(1, 1), 0.0)
    receiver.datagram_received(packet(50, 5), 0.1)  # far ahead: not kept
    receiver.datagram_received(packet(60, 2, session="OTHER"), 0.1)  # another session
    assert receiver.messages() == expected(1, 2)
    assert receiver.gap == 53  # 2..54
    assert receiver.cached == 0
    assert receiver.stats.beyond_cache == 5
    assert receiver.stats.foreign == 1
    assert asked(receiver.requests(0.1)) == [(2, 10)]  # the window only
    receiver.datagram_received(packet(2, 53), 0.2)
    assert receiver.messages() == expected(2, 55)
    assert receiver.gap == 0


# ---------------------------------------------------------------------------- a lossy network


@dataclass
class Network:
    """Datagrams in flight, each dropped, duplicated and delayed (so reordered) at random."""

    rng: random.Random
    drop: float
    duplicate: float
    max_delay: float
    queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, now: float, to: str, data: bytes) -> None:
        if self.rng.random() < self.drop:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            at = now + self.rng.uniform(0.0, self.max_delay)
            heapq.heappush(self.queue, (at, next(self.counter), to, data))

    def next_time(self) -> float:
        return self.queue[0][0] if self.queue else math.inf

    def pop(self) -> tuple[float, str, bytes]:
        at, _, to, data = heapq.heappop(self.queue)
        return at, to, data


class Sender:
    """A MoldUDP64 sender of one session and its re-request server, on a schedule."""

    def __init__(self, rng: random.Random, messages: list[bytes]) -> None:
        self.rng = rng
        self.messages = messages
        self.group: list[tuple[float, bytes]] = []
        now = 0.0
        sent = 0
        while sent < len(messages):
            batch = messages[sent : sent + rng.randint(1, 40)]
            self.group.extend((now, p) for p in pack(SESSION, sent + 1, batch))
            sent += len(batch)
            idle = rng.expovariate(20.0)
            if rng.random() < 0.02:
                idle += 2.5  # a quiet spell: heartbeats, once a second
            for beat in range(1, int(idle) + 1):
                self.group.append((now + beat, heartbeat(SESSION, sent + 1)))
            now += idle
        self.group.append((now + 0.5, heartbeat(SESSION, sent + 1)))
        # Notes: "the sender should repeat End of Session packets for several seconds".
        self.group.extend(
            (now + 1.0 + 0.5 * i, end_of_session(SESSION, sent + 1)) for i in range(20)
        )

    def answer(self, request: Request) -> bytes | None:
        """Notes, "Request packet": as many of the requested messages as fit in one
        datagram, from the requested one; no answer (or a heartbeat) for ones that do
        not exist."""
        first = request.sequence
        if request.session != SESSION or not 1 <= first <= len(self.messages):
            if self.rng.random() < 0.5:
                return heartbeat(SESSION, len(self.messages) + 1)
            return None
        wanted = self.messages[first - 1 : first - 1 + request.count]
        return next(pack(SESSION, first, wanted))


def run(seed: int) -> ReceiverStats:
    rng = random.Random(seed)
    sizes = rng.choice([(0, 20), (0, 200), (100, 1450)])
    count = rng.choice([1, 10, 300, 1000, 2500])
    messages = [b"%d:" % (n + 1) + rng.randbytes(rng.randint(*sizes))[:1440] for n in range(count)]
    sender = Sender(rng, messages)
    max_cached = rng.choice([1, 16, 200]) if rng.random() < 0.3 else DEFAULT_MAX_CACHED
    chunk = rng.choice([1, 7, 500]) if rng.random() < 0.3 else DEFAULT_REQUEST_CHUNK
    outstanding = rng.choice([1, 3]) if rng.random() < 0.3 else DEFAULT_MAX_OUTSTANDING
    network = Network(
        rng,
        drop=rng.choice([0.0, 0.05, 0.2, 0.4]),
        duplicate=rng.choice([0.0, 0.1, 0.3]),
        max_delay=rng.choice([0.0, 0.002, 0.05, 0.3]),
    )
    # A late joiner misses what was sent before it joined.
    join = sender.group[-5][0] * rng.choice([0.0, 0.0, 0.3, 0.9, 1.0])
    for at, data in sender.group:
        if at >= join:
            network.send(at, "receiver", data)
    # A receiver that gets only End of Session packets (it joined after the last
    # heartbeat, or the network dropped the others) must name the session it wants: a
    # blank one waits for the next session instead. Blank, then, only where a heartbeat
    # or a message surely reaches it.
    last_live = max(at for at, data in sender.group if not Downstream.decode(data).end_of_session)
    blank = network.drop == 0.0 and join <= last_live
    receiver = Receiver(
        join,
        session="" if blank else SESSION,
        max_cached=max_cached,
        request_chunk=chunk,
        max_outstanding=outstanding,
    )
    released: list[tuple[int, bytes]] = []
    now = join
    while not receiver.ended:
        now = max(now, min(network.next_time(), receiver.next_deadline()))
        assert now < join + 7200.0, f"stuck: next_seq {receiver.next_seq}, gap {receiver.gap}"
        if network.next_time() <= now:
            _, to, data = network.pop()
            if to == "receiver":
                receiver.datagram_received(data, now)
            elif (answer := sender.answer(Request.decode(data))) is not None:
                network.send(now, "receiver", answer)
        for request in receiver.requests(now):
            network.send(now, "sender", request.encode())
        released.extend(receiver.messages())
        assert receiver.cached <= max_cached
    assert released == list(enumerate(messages, start=1))
    assert receiver.gap == receiver.cached == 0
    assert receiver.malformed == 0
    assert receiver.stats.foreign == 0
    return receiver.stats


SEEDS = range(200)


@pytest.mark.parametrize("seed", SEEDS)
def test_lossy_network(seed: int) -> None:
    """Every message handed out exactly once, in order, and the end noticed, however
    the network drops, duplicates, delays and reorders datagrams both ways."""
    run(seed)


def test_the_lossy_network_is_lossy() -> None:
    """The seeds above do exercise what they are meant to."""
    totals = [run(seed) for seed in SEEDS[:40]]
    assert sum(stats.requests > 0 for stats in totals) > 10
    assert sum(stats.duplicates > 0 for stats in totals) > 10
    assert sum(stats.beyond_cache > 0 for stats in totals) > 1
