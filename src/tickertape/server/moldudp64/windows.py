"""The re-request server's windows: runs of a session's messages read from its log,
already framed as MoldUDP64 message blocks, kept so that many answers cost one read.

A :class:`Window` holds about ``window_bytes`` of whole messages (more for a read that
goes on where a window ends, as a client catching up in order makes); :func:`read_window`
reads one from a log (on whichever thread calls it); :class:`Windows` keeps the most
recently used ones, finds the one holding a message, and cuts an :class:`Answer` (the
messages from a number that fit one packet) out of a window as one slice. Nothing here
touches a socket, counts a budget or decides which session may be read.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass

from tickertape.errors import CorruptLogError
from tickertape.store.log import ReadableLog
from tickertape.wire.framing import packet_offsets
from tickertape.wire.moldudp64 import HEADER, MAX_MESSAGES, blocks_from_soupbintcp


@dataclass(slots=True)
class Window:
    """Messages ``first`` .. ``next_seq - 1`` of a session read from its log, already
    framed as MoldUDP64 message blocks (``u16`` length, data) in ``blocks``, the block of
    each at ``offsets`` (one more offset than messages: where the last one ends). An
    answer is then a header and one slice."""

    session: str
    first: int
    blocks: bytes
    offsets: list[int]
    next_seq: int = 0
    """Set from the others: one past the last message."""

    def __post_init__(self) -> None:
        self.next_seq = self.first + len(self.offsets) - 1


def read_window(
    session_log: ReadableLog, session: str, seq: int, tail: int, window_bytes: int
) -> Window:
    """About ``window_bytes`` of whole packets from message ``seq`` (at least one), none
    at or past ``tail``."""
    start, end_seq, end_offset = session_log.span(seq, window_bytes, tail)
    data = session_log.read_range(start, min(end_offset - start, window_bytes))
    offsets = packet_offsets(data)
    if len(offsets) == 1 and len(data) >= 2:  # the first message alone is longer
        data = session_log.read_range(
            start, min(end_offset - start, 2 + ((data[0] << 8) | data[1]))
        )
        offsets = packet_offsets(data)
    count = min(len(offsets) - 1, end_seq - seq)
    if count < 1:
        raise CorruptLogError(f"session {session}: no whole packet at message {seq}")
    blocks, block_offsets = blocks_from_soupbintcp(data, offsets, count)
    return Window(session, seq, blocks, block_offsets)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one answer holds: ``count`` message blocks, ``blocks[start:end]``."""

    blocks: bytes
    start: int
    end: int
    count: int


class Windows:
    """The most recently used windows, at most ``max_windows`` of them."""

    def __init__(
        self, max_datagram: int, window_bytes: int, read_ahead: int, max_windows: int
    ) -> None:
        self.max_datagram = max_datagram
        self.window_bytes = window_bytes
        self.read_ahead = read_ahead
        self.max_windows = max_windows
        self._windows: OrderedDict[tuple[str, int], Window] = OrderedDict()

    def size_to_read(self, session: str, seq: int, ahead: bool) -> int:
        """What to read from ``seq``: a window; more for a client reading on in order
        (``seq`` is where a window ends, or the rest of a packet is wanted), so that
        catching up costs few reads, while scattered requests each read little."""
        size = self.window_bytes
        if ahead or any(w.session == session and w.next_seq == seq for w in self._windows.values()):
            return size * max(1, self.read_ahead)
        return size

    def find(self, session: str, seq: int) -> Window | None:
        """The window holding message ``seq`` of ``session``, if one is kept."""
        for key in reversed(self._windows):
            window = self._windows[key]
            if window.session == session and window.first <= seq < window.next_seq:
                self._windows.move_to_end(key)
                return window
        return None

    def keep(self, window: Window) -> None:
        """Keep ``window``, forgetting the least recently used past ``max_windows``."""
        self._windows[(window.session, window.first)] = window
        self._windows.move_to_end((window.session, window.first))
        while len(self._windows) > self.max_windows:
            self._windows.popitem(last=False)

    def fill(self, window: Window, seq: int, count: int) -> tuple[Answer, bool]:
        """The messages from ``seq`` that fit a packet, up to ``count``; and whether the
        window ran out before the packet or the count was full."""
        room = self.max_datagram - HEADER.size
        wanted = min(count, MAX_MESSAGES)
        offsets = window.offsets
        number = seq - window.first
        last = len(offsets) - 1
        # The last message whose block ends within the room, at most ``wanted`` of them.
        stop = bisect_right(offsets, offsets[number] + room, number, min(last, number + wanted) + 1)
        stop -= 1
        answer = Answer(window.blocks, offsets[number], offsets[stop], stop - number)
        return answer, stop >= last and stop - number < wanted

    def forget(self, session: str) -> None:
        """Drop the windows of ``session`` (its log was closed)."""
        for key in [k for k in self._windows if k[0] == session]:
            del self._windows[key]

    def clear(self) -> None:
        self._windows.clear()


__all__ = ["Answer", "Window", "Windows", "read_window"]
