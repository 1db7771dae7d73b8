"""The receiving side of a MoldUDP64 feed, sans I/O.

:class:`Receiver` takes the datagrams that arrive, from the multicast group or from the
re-request server (:meth:`~Receiver.datagram_received`), with the time (``now``, in
monotonic seconds). It hands back the messages strictly in sequence order, each once
(:meth:`~Receiver.messages`), and the Request packets to send for what is missing
(:meth:`~Receiver.requests`, next due at :meth:`~Receiver.next_deadline`). Nothing here
reads a clock or touches a socket.

This is the splice of two feeds that the notes' "Joining late" section describes (RFC
6285 applied to MoldUDP64): messages that arrive ahead of a gap are cached, the gap is
asked for in chunks, and the cache is released in order once the gap closes. A late
joiner is just a receiver whose first packet is far above ``next_seq``.

Re-requests are pipelined: up to ``max_outstanding`` are in flight at a time, each for
what one reply holds (estimated from the sizes of the messages received last: a reply
holds as many as fit one datagram, so asking for more only makes the server send the
same packet's worth), and each answered one makes room for the next at once. One that
is not answered within ``retry_after`` (lost, or over the server's per-requester budget)
is sent again. The default window (64) is what the re-request server queues per
requester for a closed session.

Memory is bounded: at most ``max_cached`` messages wait out of order, those numbered
from ``next_seq`` to ``next_seq + max_cached - 1`` (the *window*). A message further
ahead is not kept; it stays missing and is asked for again once the window reaches it, so
nothing is lost, only fetched twice. At most ``max_outstanding`` requests are unanswered
at a time, so a gap of a million messages does not become ten thousand requests at once.
For a gap that large the notes suggest catching up over SoupBinTCP instead; by
re-requests it goes at about the server's per-requester budget.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from tickertape.errors import ConfigError, RemoteProtocolError
from tickertape.wire.moldudp64 import (
    BLOCK_HEADER,
    HEADER,
    MAX_DATAGRAM,
    SESSION_LENGTH,
    Downstream,
    Request,
)

__all__ = [
    "DEFAULT_MAX_CACHED",
    "DEFAULT_MAX_OUTSTANDING",
    "DEFAULT_REQUEST_CHUNK",
    "DEFAULT_RETRY_AFTER",
    "Receiver",
    "ReceiverStats",
]

DEFAULT_REQUEST_CHUNK: Final = 100
"""Messages asked for by one Request packet, at most (fewer when fewer fit a reply)."""
DEFAULT_RETRY_AFTER: Final = 0.25
"""Seconds before a range still missing is asked for again."""
DEFAULT_MAX_OUTSTANDING: Final = 64
"""Requests sent and neither answered nor timed out, at most (the re-request server
queues 64 a requester for a closed session: more would be dropped)."""
DEFAULT_MAX_CACHED: Final = 16_384
"""Messages kept out of order, at most (at 1450 bytes each, about 24 MB)."""

log = logging.getLogger(__name__)

_ROOM: Final = MAX_DATAGRAM - HEADER.size
"""Bytes of message blocks a reply holds."""
_SEQUENCE_LIMIT: Final = 1 << 64
"""Sequence numbers are u64: a message numbered this or more cannot be asked for."""


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    """What a :class:`Receiver` has counted since it was made."""

    malformed: int = 0
    """Datagrams ignored: not a MoldUDP64 downstream packet, or contradicting End of
    Session (messages at or past its number, another End of Session number)."""
    foreign: int = 0
    """Datagrams of another session, ignored."""
    duplicates: int = 0
    """Messages received again, or numbered below ``next_seq``: dropped."""
    beyond_cache: int = 0
    """Messages too far ahead to keep (see ``max_cached``): asked for again later."""
    requests: int = 0
    """Request packets handed out by :meth:`Receiver.requests`."""


def _start(interval: tuple[int, int]) -> int:
    return interval[0]


def _ask_start(ask: tuple[int, int, float]) -> int:
    return ask[0]


class Receiver:
    """One MoldUDP64 session as seen by a receiver, from message ``next_seq`` on.

    ``session`` is the session to follow; blank, the session of the first heartbeat or
    message is adopted (not that of an End of Session: that session ended before this
    receiver joined, and the one that follows it is followed). Packets of any other
    session are ignored (logged at DEBUG, once per session).

    ``next_seq`` 0 means live only: from the first packet's number on, nothing earlier
    is asked for.
    """

    __slots__ = (
        "_adopted",
        "_asks",
        "_beyond_cache",
        "_cache",
        "_duplicates",
        "_end",
        "_foreign",
        "_foreign_seen",
        "_holes",
        "_horizon",
        "_live",
        "_malformed",
        "_max_cached",
        "_max_outstanding",
        "_next_seq",
        "_now",
        "_per_reply",
        "_released",
        "_request_chunk",
        "_requests",
        "_retry_after",
        "_session",
    )

    def __init__(
        self,
        now: float,
        *,
        session: str = "",
        next_seq: int = 1,
        request_chunk: int = DEFAULT_REQUEST_CHUNK,
        retry_after: float = DEFAULT_RETRY_AFTER,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
        max_cached: int = DEFAULT_MAX_CACHED,
    ) -> None:
        session = session.rstrip(" ")
        if not session.isascii() or len(session) > SESSION_LENGTH:
            raise ConfigError(
                f"session {session!r}: a MoldUDP64 session is at most {SESSION_LENGTH} ASCII "
                "characters; name one, or leave it blank to follow the first seen"
            )
        if not 0 <= next_seq < _SEQUENCE_LIMIT:
            raise ConfigError(
                f"next_seq is {next_seq}; MoldUDP64 numbers messages from 1 (0: live only)"
            )
        if not 1 <= request_chunk <= 0xFFFF:
            raise ConfigError(
                f"request_chunk is {request_chunk}; a Request asks for 1 to 65535 messages"
            )
        if not retry_after > 0 or retry_after == math.inf:
            raise ConfigError(
                f"retry_after is {retry_after!r}; it must be a positive number of seconds"
            )
        for name, value in (("max_outstanding", max_outstanding), ("max_cached", max_cached)):
            if value < 1:
                raise ConfigError(f"{name} is {value}; it must be at least 1")
        self._session = session
        self._adopted = bool(session)
        self._request_chunk = request_chunk
        self._per_reply = request_chunk  # until a packet's messages say how many fit
        self._retry_after = retry_after
        self._max_outstanding = max_outstanding
        self._max_cached = max_cached
        self._now = now
        self._live = next_seq == 0  # until the first packet says where live is
        next_seq = max(next_seq, 1)
        self._next_seq = next_seq
        # Every number from _next_seq up to _horizon (excluded) is known to exist, and is
        # either in _cache or in _holes: sorted, disjoint [start, end) ranges. After
        # _release(), a non-empty _holes starts at _next_seq.
        self._horizon = next_seq
        self._cache: dict[int, bytes] = {}
        self._holes: list[tuple[int, int]] = []
        # Requests sent and not yet answered or timed out: disjoint [start, end, expires).
        self._asks: list[tuple[int, int, float]] = []
        self._end: int | None = None
        self._released: list[tuple[int, bytes]] = []
        self._malformed = 0
        self._foreign = 0
        self._foreign_seen: set[str] = set()
        self._duplicates = 0
        self._beyond_cache = 0
        self._requests = 0

    # ------------------------------------------------------------------ state

    @property
    def session(self) -> str:
        """The session followed; blank until the first packet if none was named."""
        return self._session

    @property
    def next_seq(self) -> int:
        """The number of the next message :meth:`messages` will hand out."""
        return self._next_seq

    @property
    def gap(self) -> int:
        """Messages known to exist, not yet received, that hold up the ones after them."""
        return sum(end - start for start, end in self._holes)

    @property
    def cached(self) -> int:
        """Messages received out of order, waiting for a gap to close."""
        return len(self._cache)

    @property
    def ended(self) -> bool:
        """End of Session was seen, and every message before it handed out."""
        return self._end is not None and self._next_seq >= self._end

    @property
    def stats(self) -> ReceiverStats:
        """The counts so far, as a snapshot."""
        return ReceiverStats(
            self._malformed, self._foreign, self._duplicates, self._beyond_cache, self._requests
        )

    @property
    def malformed(self) -> int:
        """Datagrams ignored as malformed (also in :attr:`stats`)."""
        return self._malformed

    # ------------------------------------------------------------------ input

    def datagram_received(self, data: bytes, now: float) -> None:
        """Take one datagram: a downstream packet from the group, or the answer to a
        request. A malformed one, or one of another session, is counted and ignored."""
        self._now = now
        if self._adopted and len(data) >= HEADER.size:
            raw, start, count = HEADER.unpack_from(data)
            if (
                0 < count < 0xFFFF
                and start >= self._next_seq + self._max_cached
                and len(data) >= HEADER.size + BLOCK_HEADER.size * count
                and start + count <= _SEQUENCE_LIMIT
                and raw.rstrip(b" \x00") == self._session.encode()
            ):
                # Too far ahead to keep (a late joiner catching up while the group runs
                # on): only the number it announces matters; its messages are not decoded.
                self._announce(start + count)
                self._beyond_cache += count
                return
        try:
            packet = Downstream.decode(data)
        except RemoteProtocolError:
            self._malformed += 1
            return
        start = packet.sequence
        messages = packet.messages
        stop = start + len(messages)
        if stop > _SEQUENCE_LIMIT:
            self._malformed += 1
            return
        if packet.session != self._session:
            if self._adopted or packet.end_of_session:
                self._ignore(packet)
                return
            self._session = packet.session
            log.debug("MoldUDP64: following session %s", packet.session)
        self._adopted = True
        if self._live:
            self._live = False
            self._next_seq = self._horizon = start
        if packet.end_of_session:
            self._end_of_session(start)
        elif not messages:
            # Heartbeat: "Sequence Number = the next sequence number the sender will use".
            self._announce(start)
        elif start == self._next_seq == self._horizon and (self._end is None or stop <= self._end):
            # In order, nothing missing: the usual case, handed out as it is.
            self._released.extend(zip(range(start, stop), messages, strict=True))
            self._next_seq = self._horizon = stop
        else:
            self._receive(start, messages)

    def _ignore(self, packet: Downstream) -> None:
        self._foreign += 1
        if packet.session in self._foreign_seen or len(self._foreign_seen) >= 16:
            return
        self._foreign_seen.add(packet.session)
        if self._adopted:
            log.debug(
                "MoldUDP64: ignoring packets of session %s (following session %s)",
                packet.session,
                self._session,
            )
        else:
            log.debug(
                "MoldUDP64: ignoring End of Session of session %s: it ended before this "
                "receiver joined; following the next session seen",
                packet.session,
            )

    def _receive(self, start: int, messages: Sequence[bytes]) -> None:
        stop = start + len(messages)
        # What a reply holds, judged by these messages' sizes.
        size = BLOCK_HEADER.size * len(messages) + sum(map(len, messages))
        self._per_reply = max(
            1,
            min(self._request_chunk, (_ROOM * len(messages)) // size if size else _ROOM),
        )
        if self._end is not None and stop > self._end:
            self._malformed += 1  # messages past End of Session: keep those before it
            stop = max(start, self._end)
        # An answer holds "as many of the requested messages as fit in one datagram,
        # starting at the requested one": a request answered from its start (or whose start
        # the group delivered) is done, and what did not fit is due again at once.
        asks = self._asks  # sorted by start
        first = bisect_left(asks, start, key=_ask_start)
        last = bisect_left(asks, stop, first, key=_ask_start)
        if first < last:
            del asks[first:last]
        self._announce(stop)
        low = max(start, self._next_seq)
        self._duplicates += min(low, stop) - start
        cache = self._cache
        if low == self._next_seq and low < stop:
            # The next messages (a pipelined answer, usually): handed out as they are,
            # all of them (in order, so none waits in the cache).
            if cache:
                for sequence in range(low, stop):
                    if cache.pop(sequence, None) is not None:
                        self._duplicates += 1
            self._released.extend(
                zip(range(low, stop), messages[low - start : stop - start], strict=True)
            )
            self._next_seq = stop
            self._fill(low, stop)
            self._release()
            return
        high = min(stop, self._next_seq + self._max_cached)
        self._beyond_cache += max(0, stop - max(low, high))
        if low >= high:
            return
        for sequence in range(low, high):
            if sequence in cache:
                self._duplicates += 1
            else:
                cache[sequence] = messages[sequence - start]
        self._fill(low, high)
        self._release()

    def _announce(self, horizon: int) -> None:
        """The sender has sent every message below ``horizon``."""
        if self._end is not None:
            horizon = min(horizon, self._end)
        if horizon <= self._horizon:
            return
        holes = self._holes
        if holes and holes[-1][1] == self._horizon:
            holes[-1] = (holes[-1][0], horizon)
        else:
            holes.append((self._horizon, horizon))
        self._horizon = horizon

    def _end_of_session(self, end: int) -> None:
        # "Sequence Number = the next sequence number (one past the last message)".
        if self._end is not None:
            if end != self._end:
                self._malformed += 1
            return
        self._end = end
        if self._horizon > end:  # a sender that announced more than it ended with
            self._horizon = max(end, self._next_seq)
            self._holes = [(start, min(stop, end)) for start, stop in self._holes if start < end]
            for sequence in [sequence for sequence in self._cache if sequence >= end]:
                del self._cache[sequence]
        self._announce(end)

    def _fill(self, low: int, high: int) -> None:
        """Take ``[low, high)`` out of the holes."""
        holes = self._holes
        i = bisect_right(holes, low, key=_start) - 1
        if i < 0 or holes[i][1] <= low:
            i += 1
        j = i
        pieces = []
        while j < len(holes) and holes[j][0] < high:
            start, end = holes[j]
            if start < low:
                pieces.append((start, low))
            if end > high:
                pieces.append((high, end))
            j += 1
        holes[i:j] = pieces

    def _release(self) -> None:
        cache = self._cache
        sequence = self._next_seq
        released = self._released
        while cache:
            message = cache.pop(sequence, None)
            if message is None:
                break
            released.append((sequence, message))
            sequence += 1
        self._next_seq = sequence

    # ------------------------------------------------------------------ output

    def messages(self) -> list[tuple[int, bytes]]:
        """``(sequence number, message)`` pairs handed out since the last call: in order,
        without a gap, from ``next_seq`` as it was at the start."""
        released, self._released = self._released, []
        return released

    def requests(self, now: float) -> list[Request]:
        """The Request packets to send now, each for at most ``request_chunk`` missing
        messages; a range asked for and still missing ``retry_after`` later is asked again."""
        self._now = now
        if not self._holes:
            self._asks.clear()
            return []
        self._asks = [ask for ask in self._asks if ask[2] > now]
        self._drop_filled_asks()
        room = self._max_outstanding - len(self._asks)
        if room <= 0:
            return []
        requests = []
        expires = now + self._retry_after
        for start, end in self._due():
            requests.append(Request(self._session, start, end - start))
            self._asks.append((start, end, expires))
            if len(requests) == room:
                break
        self._asks.sort()
        self._requests += len(requests)
        return requests

    def next_deadline(self) -> float:
        """The earliest ``now`` at which :meth:`requests` has something to send: the time
        last passed in if something is due already, ``math.inf`` if nothing is missing."""
        if not self._holes:
            return math.inf
        if len(self._asks) < self._max_outstanding and next(self._due(), None) is not None:
            return self._now
        return min((ask[2] for ask in self._asks), default=math.inf)

    def _drop_filled_asks(self) -> None:
        """Forget requests for ranges that have no missing message left."""
        holes = self._holes
        kept = []
        h = 0
        for ask in self._asks:  # both sorted: one walk
            while h < len(holes) and holes[h][1] <= ask[0]:
                h += 1
            if h < len(holes) and holes[h][0] < ask[1]:
                kept.append(ask)
        self._asks = kept

    def _due(self) -> Iterator[tuple[int, int]]:
        """Missing ranges of the window not asked for yet, in chunks, lowest first."""
        limit = self._next_seq + self._max_cached
        asks = self._asks  # sorted and disjoint
        k = 0
        for start, hole_end in self._holes:
            if start >= limit:
                return
            end = min(hole_end, limit)
            while k < len(asks) and asks[k][1] <= start:
                k += 1
            position = start
            j = k
            while position < end:
                if j < len(asks) and asks[j][0] < end:
                    if asks[j][0] > position:
                        yield from self._chunks(position, asks[j][0])
                    position = max(position, asks[j][1])
                    j += 1
                else:
                    yield from self._chunks(position, end)
                    position = end

    def _chunks(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        chunk = self._per_reply
        for first in range(start, end, chunk):
            yield first, min(first + chunk, end)
