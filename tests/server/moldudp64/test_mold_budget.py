"""The re-request server's budget: token buckets per requester, and what a read costs."""

from __future__ import annotations

from tickertape.server.moldudp64.budget import TokenBuckets, read_charge
from tickertape.wire.moldudp64 import MAX_DATAGRAM


def test_token_buckets() -> None:
    buckets = TokenBuckets(rate=100, burst=10)
    a, b = ("10.0.0.1", 1), ("10.0.0.2", 1)
    assert buckets.take(a, 0.0, 8) == 8
    assert buckets.take(a, 0.0, 8) == 8  # 2 left: taken whole, 6 owed
    assert buckets.take(a, 0.0, 1) == 0
    assert buckets.take(b, 0.0, 5) == 5  # another requester is not affected
    assert buckets.take(a, 0.06, 1) == 0  # 6 paid back, not yet 1 more
    assert buckets.take(a, 0.08, 1) == 1
    buckets.settle(a, 100, 0)
    assert buckets.take(a, 0.08, 10) == 10  # refunds fill it, no further than the burst
    assert buckets.take(a, 0.08, 1) == 0
    buckets.settle(a, 1, 21)  # it cost more than was reserved: 20 more owed
    assert buckets.take(a, 0.28, 1) == 0
    assert buckets.take(a, 0.3, 1) == 1
    assert len(buckets) == 2


def test_a_read_costs_a_packets_worth_of_what_it_read_and_more_for_a_long_read() -> None:
    offsets = list(range(0, 30 * 102 + 1, 102))  # 30 blocks of 102 bytes: 14 fill a packet
    window_bytes = 16 << 10
    assert read_charge(offsets, window_bytes, MAX_DATAGRAM, window_bytes) == 14
    assert read_charge(offsets, 8 * window_bytes, MAX_DATAGRAM, window_bytes) == 28
    assert read_charge([0, 2000], window_bytes, MAX_DATAGRAM, window_bytes) == 1  # at least 1
