"""The cluster's journal: one replicated JetStream stream of :mod:`records`.

Appending is fenced by the journal itself: every append carries
``Nats-Expected-Last-Sequence``, the journal position the writer last saw, so that an
append from anyone who is not the writer of the latest state fails with
:class:`Fenced` and changes nothing. An append counts once JetStream acknowledges it,
which it does when a quorum of the stream's replicas hold it.

An append that was not acknowledged (:class:`Unavailable`) may still be stored, later,
when a quorum is back: even after the writer's retry of the same batch. So a writer
that gets no answer reads the journal again before it goes on, and a reader applies a
batch only once, by its session and first number, skipping a later copy.

Reading is in journal order from any position, with an ordered consumer (JetStream
restarts it by itself after a gap), which is how every node follows the sequencer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from tickertape.cluster import records
from tickertape.errors import TickertapeError

WRONG_LAST_SEQUENCE: Final = 10071
"""JetStream's error code for an append whose expected last sequence does not hold."""

IN_USE_OTHERWISE: Final = 10058
"""JetStream's error code for a stream (or key-value bucket) made again with another
configuration than the one it has."""

SECONDS_A_DAY: Final = 86_400.0


class JournalError(TickertapeError):
    """The journal could not be reached or refused an operation."""


class Fenced(JournalError):
    """An append was refused: the journal no longer ends where the writer last saw it,
    so another node has written since (it holds, or held, the lease)."""


class Misconfigured(JournalError):
    """The journal or the lease exists with another configuration than this node's:
    nodes of one cluster must be given the same settings."""


class Unavailable(JournalError):
    """JetStream did not acknowledge in time: no quorum of the stream's replicas (or no
    server) answered. The append may or may not have been stored; the writer must read
    the journal again before it appends anything else."""


@dataclass(frozen=True, slots=True)
class JournalConfig:
    """Where the journal is and how much of it JetStream keeps."""

    name: str = "tickertape"
    """Names the stream (``TICKERTAPE-<name>``) and its subject (``tickertape.<name>``)."""
    replicas: int = 3
    retention_days: float = 3.0
    """JetStream keeps records this long; each node keeps its own logs for longer."""
    timeout: float = 2.0
    """How long an append or a read of the journal's state waits for JetStream."""

    @property
    def stream(self) -> str:
        return f"TICKERTAPE-{self.name}"

    @property
    def subject(self) -> str:
        return f"tickertape.{self.name}"


class Journal:
    """Appending to and reading the cluster's journal through one JetStream context."""

    def __init__(self, js: JetStreamContext, config: JournalConfig) -> None:
        self._js = js
        self.config = config

    @classmethod
    async def open(cls, js: JetStreamContext, config: JournalConfig) -> Journal:
        """The journal, its stream created if this is the cluster's first node."""
        stream = api.StreamConfig(
            name=config.stream,
            subjects=[config.subject],
            num_replicas=config.replicas,
            max_age=config.retention_days * SECONDS_A_DAY,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            allow_direct=True,
        )
        try:
            await js.add_stream(stream)
        except nats.js.errors.APIError as exc:
            if exc.err_code == IN_USE_OTHERWISE:
                raise Misconfigured(
                    f"the journal {config.stream} exists with other settings than this "
                    f"node's ({config.replicas} replicas, kept {config.retention_days:g} "
                    "days): give every node of the cluster the same --cluster-replicas "
                    "and --cluster-retention"
                ) from exc
            raise JournalError(f"cannot create the journal {config.stream}: {exc}") from exc
        except nats.errors.TimeoutError as exc:
            raise Unavailable(f"JetStream did not answer: {exc}") from exc
        return cls(js, config)

    async def end(self) -> int:
        """The journal's last position (0 if it is empty)."""
        return (await self.span())[1]

    async def span(self) -> tuple[int, int]:
        """The journal's first position still held and its last (``(0, 0)``, or a first
        past the last, when it holds nothing)."""
        try:
            info = await self._js.stream_info(self.config.stream)
        except nats.errors.Error as exc:
            raise Unavailable(f"JetStream did not answer: {exc}") from exc
        return info.state.first_seq, info.state.last_seq

    async def first_session(self, scan: int = 16) -> str | None:
        """The session of the journal's first batch or roll among its first ``scan``
        records (None if there is none: an empty journal, or only fences)."""
        first, last = await self.span()
        first = max(first, 1)
        try:
            for position in range(first, min(last, first + scan - 1) + 1):
                try:
                    message = await self._js.get_msg(self.config.stream, position)
                except nats.js.errors.NotFoundError:
                    continue  # expired since the stream was asked
                match records.decode(message.headers, message.data or b""):
                    case records.Batch(session=session) | records.Roll(ended=session):
                        return session
        except nats.errors.Error as exc:
            raise Unavailable(f"JetStream did not answer: {exc}") from exc
        return None

    async def append(self, record: records.Record, after: int) -> int:
        """Append ``record`` where the journal ends at ``after``; its position.

        :class:`Fenced` if the journal has moved past ``after`` (nothing is stored),
        :class:`Unavailable` if JetStream did not acknowledge in time."""
        headers, payload = records.encode(record)
        headers[api.Header.EXPECTED_LAST_SEQUENCE] = str(after)
        try:
            ack = await self._js.publish(
                self.config.subject, payload, timeout=self.config.timeout, headers=headers
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise Fenced(f"the journal has moved past {after}: {exc.description}") from exc
            raise JournalError(f"JetStream refused the append: {exc.description}") from exc
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError) as exc:
            raise Unavailable(
                "JetStream did not acknowledge the append in "
                f"{self.config.timeout:g} s: fewer than a quorum of its servers answer?"
            ) from exc
        return ack.seq

    async def read(self, start: int) -> AsyncGenerator[tuple[int, records.Record]]:
        """Every record from position ``start`` on, in order, with its position; waits
        for new ones when it reaches the end. Raises :class:`~records.CorruptRecord`
        on a message that is not a record, :class:`Unavailable` if JetStream cannot
        start a reader."""
        try:
            subscription = await self._js.subscribe(
                self.config.subject,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                config=api.ConsumerConfig(opt_start_seq=max(start, 1)),
            )
        except nats.errors.Error as exc:
            raise Unavailable(f"JetStream did not start a reader: {exc}") from exc
        try:
            while True:
                try:
                    message = await subscription.next_msg(timeout=None)
                except nats.errors.TimeoutError:
                    continue
                position = message.metadata.sequence.stream
                yield position, records.decode(message.headers, message.data)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
