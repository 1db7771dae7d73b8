"""The re-request server's budget: what each requester may be sent, and what a read costs.

:class:`TokenBuckets` holds a token bucket per requester (address and port): ``rate``
messages a second, at most ``burst`` at once, so that one requester cannot starve the
others. :func:`read_charge` is what a request that needs a read of the log is charged on
top of the messages it is sent. Nothing here reads, sends or keeps time: the caller
passes ``now``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from tickertape.wire.moldudp64 import HEADER

Address = tuple[str, int]
"""A requester: the address and port its requests come from."""


class TokenBuckets:
    """A token bucket per requester: ``rate`` tokens a second, at most ``burst`` held."""

    def __init__(self, rate: float, burst: float, max_requesters: int = 65_536) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate above 0 and a burst of at least 1 are needed")
        self.rate = rate
        self.burst = burst
        self._max = max_requesters
        self._buckets: dict[Address, list[float]] = {}

    def take(self, who: Address, now: float, wanted: int) -> int:
        """Reserve ``wanted`` tokens: 0 if the bucket holds less than one token; else
        ``wanted``, taken whole (the bucket may go below zero: the debt is paid back
        before the next request is served). :meth:`settle` once the cost is known."""
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._prune(now)
            bucket = self._buckets[who] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return 0
        bucket[0] = tokens - wanted
        return wanted

    def settle(self, who: Address, reserved: int, used: int) -> None:
        """Give back what a reservation did not use, or take what it used beyond."""
        bucket = self._buckets.get(who)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + reserved - used)

    def _prune(self, now: float) -> None:
        """Forget requesters whose bucket has filled up again: they are as new."""
        for who, (tokens, when) in list(self._buckets.items()):
            if tokens + (now - when) * self.rate >= self.burst:
                del self._buckets[who]
        if len(self._buckets) >= self._max:  # a flood of fresh addresses: start over
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)


def read_charge(offsets: Sequence[int], size: int, max_datagram: int, window_bytes: int) -> int:
    """What a read of ``size`` bytes costs the requester, for a window whose blocks start
    at ``offsets``: a packet's worth of the messages read (as many as one packet holds
    from the window's first), and one more for every further four windows' worth of
    bytes. A request that misses the windows costs the loop far more than one that hits
    them; a client asking for the next packet's worth each time is charged about one read
    per window, a few percent."""
    room = max_datagram - HEADER.size
    packet_worth = max(1, bisect_right(offsets, room) - 1)
    return packet_worth * max(1, size // (4 * window_bytes))


__all__ = ["Address", "TokenBuckets", "read_charge"]
