"""The session writer's units of work: a publish call waiting in its queue
(:class:`PublishRequest`), and a batch taken from the queue and encoded once
(:class:`WriterBatch`, :func:`take_batch`).

What it does not do: write, sync, number or publish (the
:class:`~tickertape.server.writer.SessionWriter` does).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from tickertape.wire.soupbintcp import encode_sequenced_many


class PublishRequest:
    """One publish call: its messages, the number of the first, and how far the writer
    has got with it (a call larger than a batch is split over several)."""

    __slots__ = ("done", "first_seq", "future", "payloads", "queued", "size", "taken")

    def __init__(
        self, payloads: Sequence[bytes], size: int, first_seq: int, future: asyncio.Future[int]
    ) -> None:
        self.payloads = payloads
        self.size = size
        self.first_seq = first_seq
        self.future = future
        self.taken = 0
        self.done = 0
        self.queued = time.perf_counter()  # for the publish-to-handoff latency


@dataclass(slots=True)
class WriterBatch:
    """Messages taken from one or more requests, encoded, on their way to the log."""

    parts: list[tuple[PublishRequest, int, int]]
    """Each request's messages ``start`` to ``stop`` (as slice bounds) are in the batch."""
    data: bytes
    count: int
    crc: int

    @property
    def first_seq(self) -> int:
        """The number of the batch's first message."""
        request, start, _ = self.parts[0]
        return request.first_seq + start


def take_batch(
    queue: deque[PublishRequest], max_messages: int, max_bytes: int, *, one_call: bool
) -> WriterBatch:
    """Take queued messages for one batch and encode them: everything queued, up to
    ``max_messages`` and about ``max_bytes`` (at least one message); with ``one_call``
    (durability ``always``), one publish call at most."""
    parts: list[tuple[PublishRequest, int, int]] = []
    payloads: list[bytes] = []
    messages_left = max_messages
    bytes_left = max_bytes
    while queue and messages_left > 0:
        request = queue[0]
        start = request.taken
        stop = len(request.payloads)
        if start or stop - start > messages_left or request.size > bytes_left:
            # Only a call that does not fit whole is measured message by message.
            stop = min(stop, start + messages_left)
            sizes = list(accumulate(map(len, request.payloads[start:stop])))
            fit = bisect_right(sizes, bytes_left)
            if fit == 0 and parts:
                break
            stop = start + max(fit, 1)
            taken_bytes = sizes[stop - start - 1]
        else:
            taken_bytes = request.size
        parts.append((request, start, stop))
        payloads += request.payloads[start:stop]
        request.taken = stop
        messages_left -= stop - start
        bytes_left -= taken_bytes
        if stop < len(request.payloads):
            break  # the batch is full; the rest of this call goes in the next one
        queue.popleft()
        if one_call:
            break
    data = encode_sequenced_many(payloads, checked=True)
    return WriterBatch(parts, data, len(payloads), zlib.crc32(data))


__all__ = ["PublishRequest", "WriterBatch", "take_batch"]
