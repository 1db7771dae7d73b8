"""One load-test client of each kind, and what they share: the message header, the target
and the plan.

:class:`LoadPublisher` publishes its share of the plan's messages, each stamped with
:data:`HEADER`; :class:`LoadSubscriber` takes batches from a
:class:`~tickertape.client.soupbintcp.Subscription` and checks and times every message
(see :mod:`tickertape.client.load`). Not here: the processes that run them
(:mod:`tickertape.client.load.workers`), the report (:mod:`tickertape.client.load.report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import struct
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Any, Final

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Subscription
from tickertape.errors import LoginRejected, ProtocolError
from tickertape.tls import client_context

HEADER: Final = struct.Struct("<8sHBQQ")  # at offsets 0, 8, 10, 11 and 19
"""Run tag, publisher (from 0), flags, number (from 0), send time (monotonic ns)."""
LAST: Final = 1
"""The flag on each publisher's last message."""
MAX_ERRORS: Final = 5
"""Errors kept per subscriber (the rest are counted)."""


class BenchError(Exception):
    """The bench cannot run, or a client failed: a one-line reason."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the clients connect, and as whom."""

    host: str
    port: int
    user: str = ""
    password: str = ""
    tls: bool = False
    ca: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        return client_context(self.ca) if self.tls else None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What every client is told."""

    target: Target
    tag: bytes
    publishers: int
    subscribers: int
    size: int
    count: int | None
    duration: float | None
    seq: int
    batch: int
    rate: float | None

    def share(self, publisher: int) -> int | None:
        """How many messages ``publisher`` publishes (None: for ``duration``)."""
        if self.count is None:
            return None
        return self.count // self.publishers + (publisher < self.count % self.publishers)


class LoadPublisher:
    """One publisher of the plan: :meth:`connect`, then :meth:`run` publishes its share
    (or for the plan's duration), at the plan's rate if it has one; its result says how
    many were acknowledged and when it started and finished."""

    def __init__(self, plan: Plan, index: int) -> None:
        self.plan = plan
        self.index = index
        self.client: Publisher | None = None
        self.started_ns = 0
        self.finished_ns = 0

    @property
    def sent(self) -> int:
        return self.client.sent if self.client is not None else 0

    @property
    def acked(self) -> int:
        return self.client.acked if self.client is not None else 0

    def progress(self) -> tuple[int, int]:
        return self.sent, self.acked

    async def connect(self) -> None:
        target = self.plan.target
        self.client = await Publisher.connect(
            target.host,
            target.port,
            username=target.user,
            password=target.password,
            ssl=target.ssl_context(),
        )

    async def run(self) -> dict[str, Any]:
        assert self.client is not None
        plan, client, index = self.plan, self.client, self.index
        pack, tag = HEADER.pack, plan.tag
        filler = bytes(plan.size - HEADER.size)
        share = plan.share(index)
        per_second = plan.rate / plan.publishers if plan.rate else None
        self.started_ns = time.monotonic_ns()
        started = time.monotonic()
        deadline = started + plan.duration if plan.duration is not None else math.inf
        number = 0
        while True:
            size = plan.batch if share is None else min(plan.batch, share - number)
            if per_second is not None:  # the messages due by now, at the steady rate
                due = int((time.monotonic() - started) * per_second)
                while due <= number:
                    await asyncio.sleep(
                        max(0.001, (number + 1) / per_second - (time.monotonic() - started))
                    )
                    due = int((time.monotonic() - started) * per_second)
                size = min(size, due - number)
            final = number + size >= share if share is not None else time.monotonic() >= deadline
            end = number + size
            sent_ns = time.monotonic_ns()
            payloads = [pack(tag, index, 0, n, sent_ns) + filler for n in range(number, end)]
            if final:
                payloads[-1] = pack(tag, index, LAST, end - 1, sent_ns) + filler
            await client.send_many(payloads)
            number += size
            if final:
                break
        await client.flush()
        self.finished_ns = time.monotonic_ns()
        return {
            "messages": client.acked,
            "sent": client.sent,
            "started_ns": self.started_ns,
            "finished_ns": self.finished_ns,
            "session": client.session,
        }

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class LoadSubscriber:
    """One subscriber of the plan: :meth:`start` logs in, :meth:`run` takes messages
    until every publisher's last one arrived, checking each (:meth:`take`) and counting
    its latency; its result says what it received and what was wrong."""

    def __init__(self, plan: Plan, index: int) -> None:
        self.plan = plan
        self.index = index
        target = plan.target
        self.subscription = Subscription(
            target.host,
            target.port,
            "",
            plan.seq,
            username=target.user,
            password=target.password,
            reconnect=False,
            ssl=target.ssl_context(),
        )
        self.received = 0
        """Every message received, the bench's and others."""
        self.delivered = 0
        """Bench messages received."""
        self.other = 0
        self.expected = [0] * plan.publishers
        self.lasts = 0
        self.next_seq: int | None = plan.seq if plan.seq > 0 else None
        self.latency: Counter[int] = Counter()
        self.errors: list[str] = []
        self.error_count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.task: asyncio.Task[None] | None = None

    def progress(self) -> tuple[int, int]:
        return self.received, self.delivered

    async def start(self, within: float) -> None:
        """Log in and start taking messages; return once the login is accepted."""
        self.task = asyncio.create_task(self._consume())
        deadline = time.monotonic() + within
        # The client says nothing when its login is accepted, but counts logins.
        while self.subscription.logins == 0 and not self.task.done():
            if time.monotonic() > deadline:
                raise BenchError(f"the login was not accepted within {within:g} s")
            await asyncio.sleep(0.002)
        if self.task.done():
            self.task.result()

    async def run(self) -> dict[str, Any]:
        assert self.task is not None
        await self.task
        return {
            "received": self.received,
            "messages": self.delivered,
            "other_messages": self.other,
            "per_publisher": list(self.expected),
            "complete": self.lasts == self.plan.publishers,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latency_us": dict(self.latency),
            "errors": self.errors,
            "error_count": self.error_count,
            "session": self.subscription.session,
        }

    def _error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(text)

    async def _consume(self) -> None:
        try:
            async for batch in self.subscription.batches():
                self.take(batch.first_seq, batch.payloads, time.monotonic_ns())
                if self.lasts == self.plan.publishers:
                    return
        except (OSError, ProtocolError, LoginRejected) as exc:
            raise BenchError(f"{exc} (after {self.received:,} messages)") from None
        raise BenchError(
            f"the session ended (End of Session) after {self.received:,} messages, before "
            "every publisher's last message arrived"
        )

    def take(self, first_seq: int, payloads: list[bytes], now_ns: int) -> None:
        """Take a batch that starts at sequence number ``first_seq``, received at
        ``now_ns`` (monotonic): count it, check it, note each message's latency."""
        if self.next_seq is not None and first_seq != self.next_seq:
            self._error(
                f"sequence numbers jump from {self.next_seq - 1} to {first_seq}"
                if first_seq > self.next_seq
                else f"sequence number {first_seq} came again (expected {self.next_seq})"
            )
        self.next_seq = first_seq + len(payloads)
        self.received += len(payloads)
        if not self.first_ns:
            self.first_ns = now_ns
        if not self._take_all_in_order(payloads, now_ns):
            self._take_one_by_one(first_seq, payloads, now_ns)

    def _take_all_in_order(self, payloads: list[bytes], now_ns: int) -> bool:
        """The common case, checked without a Python step per message: every message is
        the bench's and each publisher's follow on from the last. False (nothing taken)
        if not: :meth:`_take_one_by_one` then says what is wrong."""
        tag, size, count = self.plan.tag, self.plan.size, len(payloads)
        joined = b"".join(payloads)
        if not count or len(joined) != size * count:
            return False  # not every message is `size` bytes long
        # The messages as columns (a strided slice per byte of a field, in C): the tag's
        # bytes, and each field of the header made into an array.
        if any(joined[i::size] != tag[i : i + 1] * count for i in range(len(tag))):
            return False
        publishers = _column(joined, 8, "H", size)
        flags = joined[10::size]
        numbers = _column(joined, 11, "Q", size)
        sent = _column(joined, 19, "Q", size)
        expected = self.expected
        if max(publishers) >= len(expected):
            return False
        ranges: list[tuple[int, int]] = []
        for publisher in set(publishers):
            mine = (
                array("Q", compress(numbers, map(publisher.__eq__, publishers)))
                if ranges or publishers.count(publisher) != count
                else numbers
            )
            first = expected[publisher]
            if mine != array("Q", range(first, first + len(mine))):
                return False
            ranges.append((publisher, first + len(mine)))
        for publisher, following in ranges:
            expected[publisher] = following
        self.lasts += flags.count(LAST)
        latency = self.latency
        for sent_ns, messages in Counter(sent).items():  # a batch shares its send time
            latency[(now_ns - sent_ns) // 1000] += messages
        self.delivered += count
        self.last_ns = now_ns
        return True

    def _take_one_by_one(self, first_seq: int, payloads: list[bytes], now_ns: int) -> None:
        tag, size, unpack = self.plan.tag, self.plan.size, HEADER.unpack_from
        expected, publishers = self.expected, self.plan.publishers
        latencies: list[int] = []
        delivered = 0
        for seq, payload in enumerate(payloads, first_seq):
            if not payload.startswith(tag):
                self.other += 1
                continue
            if len(payload) != size:
                self._error(f"message {seq} is {len(payload)} bytes, not {size}")
                continue
            _, publisher, flags, number, sent_ns = unpack(payload)
            delivered += 1
            if publisher >= publishers:
                self._error(f"message {seq} names publisher {publisher + 1} of {publishers}")
                continue
            if number != expected[publisher]:
                want = expected[publisher]
                self._error(
                    f"message {seq}: publisher {publisher + 1}'s message {number + 1} arrived "
                    + (
                        f"where {want + 1} was due: {number - want:,} missing"
                        if number > want
                        else f"again or out of order (after its message {want})"
                    )
                )
            expected[publisher] = number + 1
            if flags & LAST:
                self.lasts += 1
            latencies.append((now_ns - sent_ns) // 1000)
        if delivered:
            self.delivered += delivered
            self.last_ns = now_ns
            self.latency.update(latencies)

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        with contextlib.suppress(Exception):
            await self.subscription.close()


def _column(joined: bytes, offset: int, typecode: str, size: int) -> array[int]:
    """The little-endian field at ``offset`` of each ``size``-byte record of ``joined``."""
    column = array(typecode)
    width = column.itemsize
    packed = bytearray(width * (len(joined) // size))
    for i in range(width):
        packed[i::width] = joined[offset + i :: size]
    column.frombytes(packed)
    if sys.byteorder != "little":
        column.byteswap()
    return column
