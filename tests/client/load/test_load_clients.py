"""The load test's checking subscriber (tickertape.client.load.clients.LoadSubscriber), fed
batches by hand: what it counts, and the errors it finds in sequence numbers and in each
publisher's order."""

from __future__ import annotations

from tickertape.client.load.clients import HEADER, LAST, LoadSubscriber, Plan, Target

from support import free_port


def plan(publishers: int = 2) -> Plan:
    return Plan(
        target=Target("127.0.0.1", free_port()),
        tag=b"RUNTAG01",
        publishers=publishers,
        subscribers=1,
        size=HEADER.size,
        count=6,
        duration=None,
        seq=1,
        batch=10,
        rate=None,
    )


def message(publisher: int, number: int, *, last: bool = False, tag: bytes = b"RUNTAG01") -> bytes:
    return HEADER.pack(tag, publisher, LAST if last else 0, number, 0)


def test_the_checker_finds_gaps_repeats_and_jumps_in_sequence_numbers() -> None:
    subscriber = LoadSubscriber(plan(), 0)
    subscriber.take(1, [message(0, 0), b"someone else's", message(1, 0)], 1000)
    subscriber.take(4, [message(0, 2), message(1, 0)], 1000)  # 0's #1 missing; 1's #0 again
    subscriber.take(9, [message(0, 3, last=True), message(1, 1, last=True)], 1000)  # 6..8
    assert subscriber.errors == [
        "message 4: publisher 1's message 3 arrived where 2 was due: 1 missing",
        "message 5: publisher 2's message 1 arrived again or out of order (after its message 1)",
        "sequence numbers jump from 5 to 9",
    ]
    assert (subscriber.received, subscriber.delivered, subscriber.other) == (7, 6, 1)
    assert subscriber.lasts == 2
    assert subscriber.expected == [4, 2]
    assert sum(subscriber.latency.values()) == 6


def test_the_checker_takes_a_clean_stream_without_errors() -> None:
    subscriber = LoadSubscriber(plan(1), 0)
    subscriber.take(1, [message(0, n) for n in range(5)], 2_000_000)
    subscriber.take(6, [message(0, 5, last=True), message(0, 6, tag=b"OTHERRUN")], 3_000_000)
    assert subscriber.errors == []
    assert (subscriber.delivered, subscriber.other, subscriber.lasts) == (6, 1, 1)
    assert subscriber.latency == {2000: 5, 3000: 1}
