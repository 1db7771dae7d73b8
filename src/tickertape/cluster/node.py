"""A node of a cluster: the engine of one data directory, kept in step with the
cluster's journal, and the sequencer when it holds the lease.

Every node runs the same loop:

- **Following.** It applies the journal's records in order to its own data directory
  (a batch is written to the active session's log and handed to its subscribers, a
  roll ends the session and opens the next), and tries to take the lease now and then.
  Publishers are refused, told where the sequencer takes them (or, while JetStream
  does not answer, why no node does).
- **Taking over.** Once it holds the lease, it applies what is left of the journal,
  then appends a :class:`~tickertape.cluster.records.Fence` where the journal ends: an
  append the sequencer before it had prepared (which expects the journal to end
  earlier) is refused from then on.
- **Sequencing.** Its writer replicates each batch (and its roller each roll) to the
  journal before writing it locally (:class:`~tickertape.server.replication.Replicator`):
  only then is it written, published and acknowledged. It renews the lease every
  ``renew_every`` seconds, and rolls on the schedule.
- **Stepping down.** If the lease is lost, or an append is refused or not acknowledged,
  it stops taking publishers at once (what its writer has in hand fails, unless the
  journal took it), gives the lease up and follows again, from where it is.

How far it has applied is saved in the data directory every second and when it stops
(:mod:`~tickertape.cluster.position`), and it starts on the session it was in, or the
journal's first, never on one of its clock's day.

What it does not do: elect (the lease does), replicate (JetStream does), check and
apply a record (:mod:`~tickertape.cluster.apply` does), serve clients (the endpoints
do, from the engine, as on a single server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from pathlib import Path
from typing import Final

import nats
import nats.errors
from nats.aio.client import Client

from tickertape.cluster import records
from tickertape.cluster.apply import ClusterError, apply
from tickertape.cluster.config import ClusterConfig
from tickertape.cluster.journal import (
    Fenced,
    Journal,
    JournalConfig,
    JournalError,
    Misconfigured,
    Unavailable,
)
from tickertape.cluster.lease import Holder, Lease, LeaseConfig, LeaseLost
from tickertape.cluster.position import SavedPosition
from tickertape.errors import StoreError, TickertapeError
from tickertape.server.engine import Engine
from tickertape.wire.publishing import redirect_text

log = logging.getLogger(__name__)

SAVE_EVERY: Final = 1.0
"""Seconds between saves of the applied position (a lagging one is read again)."""
HEADROOM: Final = 8192
"""Bytes of a NATS message left for a record's headers."""
CANCEL_AGAIN: Final = 0.5
"""Seconds before a task told to stop and still running is cancelled again."""


class Role(enum.Enum):
    FOLLOWER = "follower"
    TAKING_OVER = "taking over"
    SEQUENCER = "sequencer"


class ClusterNode:
    """The node of ``config`` keeping ``engine`` (of data directory ``data``) in step
    with the cluster. :meth:`connect` before the engine starts, :meth:`start` after,
    :meth:`close` before it closes. A failure it cannot go on from is kept in
    :attr:`failure`, and sets ``stop``."""

    def __init__(
        self, engine: Engine, data: Path, config: ClusterConfig, stop: asyncio.Event
    ) -> None:
        self.engine = engine
        self.config = config
        self._stop = stop
        self._saved = SavedPosition(data, JournalConfig(config.name).stream)
        self.role = Role.FOLLOWER
        self.sequencer: str | None = None
        """Where the sequencer takes publishers, as the journal last said."""
        self.position = 0
        """The journal position of the last record applied to the local data directory."""
        self._after = 0  # where the journal ended after this node's last append
        self._applying = asyncio.Lock()  # held while a record is applied
        self._lost = asyncio.Event()  # the sequencer must step down
        self._client: Client | None = None
        self._journal: Journal | None = None
        self._lease: Lease | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._unanswered: str | None = None  # why JetStream did not answer, if it did not
        self.failure: BaseException | None = None
        engine.active.writer.replicator = self

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Connect to NATS and open the journal and the lease (created by the first node
        of the cluster). Raises ``OSError`` if no NATS server answers, a
        :class:`JournalError` if JetStream does not answer in ``start_timeout``."""
        config = self.config
        self.position = self._saved.read()
        try:
            client = await nats.connect(
                servers=list(config.servers),
                name=f"tickertape {config.node}",
                user_credentials=str(config.credentials) if config.credentials else None,
                connect_timeout=max(1, round(config.timeout)),
                reconnect_time_wait=0.25,
                max_reconnect_attempts=-1,
                error_cb=_nats_error,
                disconnected_cb=self._disconnected,
                closed_cb=self._closed,
                reconnected_cb=_reconnected,
            )
        except (nats.errors.Error, OSError) as exc:
            raise OSError(f"cannot reach NATS at {', '.join(config.servers)}: {exc}") from exc
        self._client = client
        self._fit_batches(client.max_payload)
        js = client.jetstream(timeout=config.timeout)
        journal_config = JournalConfig(
            config.name, config.replicas, config.retention_days, config.timeout
        )
        lease_config = LeaseConfig(
            config.name,
            config.replicas,
            config.lease_ttl,
            config.renew_every,
            margin=min(0.5, config.lease_ttl / 4),
            timeout=min(1.0, config.renew_every),
        )
        me = Holder(config.node, config.address)
        deadline = asyncio.get_running_loop().time() + config.start_timeout
        while True:
            try:
                self._journal = await Journal.open(js, journal_config)
                self._lease = await Lease.open(js, me, lease_config)
                break
            except (Unavailable, TickertapeError, nats.errors.Error) as exc:
                if isinstance(exc, Misconfigured):
                    await client.close()
                    raise
                if asyncio.get_running_loop().time() > deadline:
                    await client.close()
                    raise JournalError(
                        f"JetStream at {', '.join(config.servers)} did not answer in "
                        f"{config.start_timeout:g} s: {exc}"
                    ) from exc
                log.info("waiting for JetStream: %s", exc)
                await asyncio.sleep(0.5)
        log.info(
            "node %s joined cluster %s (journal %s, applied up to %d)",
            config.node,
            config.name,
            journal_config.stream,
            self.position,
        )

    async def session_to_open(self) -> str | None:
        """The session this node's engine starts on: the latest in its data directory,
        else the journal's first, else None (today's: the cluster has none yet).

        Never a session of this machine's day: a node that comes back after midnight, or
        whose clock is ahead, goes on with the cluster's session, which ends only when
        the journal says so."""
        local = await asyncio.to_thread(self.engine.catalogue.sessions)
        if local:
            return str(max(info.id for info in local))
        assert self._journal is not None, "connect() first"
        return await self._journal.first_session()

    def start(self) -> None:
        """Follow the journal, and sequence when this node holds the lease."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="cluster-node"),
            loop.create_task(self._save_now_and_then(), name="cluster-position"),
        ]

    async def close(self) -> None:
        """Step down (the lease is given up, so another node takes over at once), stop
        following, save the position and disconnect."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await asyncio.to_thread(self._saved.save, self.position)
        if self._client is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._client.close()

    async def _disconnected(self) -> None:
        if not self._closing:
            log.warning("disconnected from NATS; reconnecting")

    async def _closed(self) -> None:
        """NATS's client gave up its connection for good (a server's ``-ERR``): this
        node can neither follow nor sequence, so it stops, saying why."""
        if self._closing or self._client is None:
            return
        self._step_down("the connection to NATS was closed")
        why = self._client.last_error or "no reason given"
        self._fail(ClusterError(f"the connection to NATS was closed: {why}"))

    # ------------------------------------------------------------------ Replicator

    def refusal(self) -> str | None:
        if self.role is Role.SEQUENCER:
            return None
        elsewhere = self.sequencer if self.sequencer != self.config.address else None
        if elsewhere is None and self._unanswered is not None:
            return f"{redirect_text(None)} ({self._unanswered})"
        return redirect_text(elsewhere)

    async def batch(self, session: str, first: int, count: int, data: bytes) -> None:
        await self._append(records.Batch(session, first, count, data))

    def written(self) -> None:
        self.position = self._after

    def not_written(self, error: BaseException) -> None:
        # The journal has the record this node just appended; its log does not: it is
        # applied again from the journal (or the node stops, if the disk still fails).
        self._step_down(f"the local data directory could not be written: {error}")

    async def roll(self, ended: str, next_session: str) -> None:
        await self._append(records.Roll(ended, next_session))

    async def _append(self, record: records.Record) -> None:
        journal, lease = self._journal, self._lease
        assert journal is not None and lease is not None
        if self.role is not Role.SEQUENCER or not lease.held():
            self._step_down("the lease is no longer held")
            raise StoreError(redirect_text(None))
        try:
            position = await journal.append(record, self._after)
        except JournalError as exc:
            self._step_down(str(exc))
            # Said to its publishers: what sends them to look for the sequencer.
            raise StoreError(f"{redirect_text(None)} (not replicated: {exc})") from exc
        self._after = position  # self.position moves once it is written here too

    def _step_down(self, why: str) -> None:
        if self.role is not Role.FOLLOWER:
            level = logging.INFO if self._closing else logging.WARNING
            log.log(level, "node %s stops sequencing: %s", self.config.node, why)
            self.role = Role.FOLLOWER
            self.sequencer = None
        self._lost.set()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            hold_off = 0.0  # after a term that failed, before taking the lease again
            while True:
                await self._follow(hold_off)
                try:
                    await self._lead()
                    hold_off = 0.0
                except (JournalError, LeaseLost, nats.errors.Error) as exc:
                    hold_off = min(self.config.lease_ttl, max(2 * hold_off, self.config.take_every))
                    log.warning(
                        "node %s: %s; following again (not taking the lease for %g s)",
                        self.config.node,
                        exc,
                        hold_off,
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc)

    def _fail(self, error: Exception) -> None:
        """Stop the node (the server with it): it cannot go on in the cluster."""
        self.failure = error
        log.error("node %s cannot go on in the cluster, stopping: %s", self.config.node, error)
        self._stop.set()

    async def _follow(self, hold_off: float = 0.0) -> None:
        """Apply the journal until this node takes the lease (not for ``hold_off``
        seconds: a node whose term just failed leaves the lease to the others)."""
        lease = self._lease
        assert lease is not None
        self.role = Role.FOLLOWER
        applier = asyncio.create_task(self._apply_all(), name="cluster-applier")
        try:
            if hold_off:
                await asyncio.wait((applier,), timeout=hold_off)
                if applier.done():
                    applier.result()  # raises why it stopped
            while not await lease.take():
                try:
                    holder = await lease.holder()  # sooner than the journal's Fence
                except nats.errors.Error as exc:
                    self._unanswering(exc)
                else:
                    self._unanswering(None)
                    self.sequencer = None if holder is None else holder.address
                await asyncio.wait((applier,), timeout=self.config.take_every)
                if applier.done():
                    applier.result()  # raises why it stopped
            self._unanswering(None)  # it answered: the lease is this node's
        finally:
            async with self._applying:  # never in the middle of a record
                await _stopped(applier)

    def _unanswering(self, error: Exception | None) -> None:
        """Note that JetStream did not answer (``error``) or did (None); log the change.
        Unanswered, no node can sequence: publishers are told why, not sent to one."""
        if error is None:
            if self._unanswered is not None:
                log.warning("node %s: JetStream answers again", self.config.node)
            self._unanswered = None
            return
        self.sequencer = None
        if self._unanswered is None:
            self._unanswered = (
                f"JetStream does not answer ({str(error) or type(error).__name__}): no quorum "
                "of the cluster's NATS servers is reachable, or a leader is being elected"
            )
            log.warning(
                "node %s: %s; no node takes publishers until it answers",
                self.config.node,
                self._unanswered,
            )

    async def _lead(self) -> None:
        """Take over, then sequence until the lease is lost or an append fails."""
        lease = self._lease
        assert lease is not None
        self._lost.clear()
        self.role = Role.TAKING_OVER
        keeping = asyncio.create_task(self._keep_lease(), name="cluster-lease")
        lost = asyncio.create_task(self._lost.wait())
        taking = asyncio.create_task(self._take_over(), name="cluster-take-over")
        try:
            await asyncio.wait((taking, keeping), return_when=asyncio.FIRST_COMPLETED)
            if not taking.done():
                keeping.result()  # raises LeaseLost (the take-over is stopped below)
            taking.result()
            if self.role is not Role.TAKING_OVER:
                return
            self.role = Role.SEQUENCER
            self.sequencer = self.config.address
            self.engine.roller.roll_on_schedule()
            log.warning(
                "node %s is the sequencer (term %d): session %s goes on at %d, journal position %d",
                self.config.node,
                lease.term,
                self.engine.session_id,
                self.engine.next_seq,
                self.position,
            )
            await asyncio.wait((keeping, lost), return_when=asyncio.FIRST_COMPLETED)
            if keeping.done():
                keeping.result()
        finally:
            if not taking.done():  # the lease was lost, or this node is closing
                async with self._applying:  # never in the middle of a record
                    await _stopped(taking)
            self._step_down("shutting down" if self._closing else "stepping down")
            await _stopped(keeping)
            await _stopped(lost)
            await self.engine.roller.stop_schedule()
            await self._settle_writer()
            await lease.release()

    async def _keep_lease(self) -> None:
        """Renew the lease every ``renew_every`` seconds, and raise :class:`LeaseLost`
        once this node may no longer count on it: as soon as that happens, not at the
        next renewal (a node cut off from NATS gets no answer to its renewals)."""
        lease = self._lease
        assert lease is not None
        while True:
            await asyncio.sleep(max(0.0, min(self.config.renew_every, lease.remaining())))
            if not lease.held():
                raise LeaseLost("the lease could not be renewed in time")
            try:
                await asyncio.wait_for(lease.renew(), max(0.0, lease.remaining()))
            except TimeoutError:
                raise LeaseLost("the lease could not be renewed in time") from None

    async def _take_over(self) -> None:
        """Apply the journal to its end, then fence it there."""
        journal, lease = self._journal, self._lease
        assert journal is not None and lease is not None
        fence = records.Fence(self.config.node, self.config.address, lease.term)
        while True:
            await self._catch_up()
            try:
                self._after = self.position = await journal.append(fence, self.position)
                return
            except Fenced:
                continue  # a record landed after the end it read: apply it too

    async def _settle_writer(self) -> None:
        """Let the writer finish what it has in hand (a batch the journal took is
        written and acknowledged; the rest fail), so the applier is the only writer."""
        writer = self.engine.active.writer
        await writer.drain()
        writer.release()
        writer.resume()

    # ------------------------------------------------------------------ applying

    async def _catch_up(self) -> None:
        journal = self._journal
        assert journal is not None
        end = await self._check_span()
        if end == self.position:
            return
        async with contextlib.aclosing(journal.read(self.position + 1)) as stored:
            async for position, record in stored:
                async with self._applying:
                    await self._apply(position, record)
                if position >= end:
                    return

    async def _check_span(self) -> int:
        """The journal's last position, once it is known to hold what this node has
        not applied yet; a :class:`ClusterError` if it does not."""
        journal = self._journal
        assert journal is not None
        first, end = await journal.span()
        if end < self.position:
            raise ClusterError(
                f"the journal {journal.config.stream} ends at {end}, and this node has applied "
                f"it up to {self.position}: it is not the journal this node followed (was it "
                "deleted and made again?); start the node on a copy of another node's data "
                "directory"
            )
        # The first record this node needs (a node that has applied nothing needs the
        # journal to hold something, wherever it starts).
        needed = self.position + 1 if self.position else end
        if end > self.position and first > needed:
            raise ClusterError(
                f"the journal {journal.config.stream} holds positions {first} to {end}, and "
                f"this node has applied it up to {self.position}: what it missed has expired "
                "(--cluster-retention); start the node on a copy of another node's data "
                "directory"
            )
        return end

    async def _apply_all(self) -> None:
        """Apply the journal as it grows; a reader JetStream cannot start is tried again."""
        journal = self._journal
        assert journal is not None
        while True:
            try:
                await self._check_span()
                async with contextlib.aclosing(journal.read(self.position + 1)) as stored:
                    async for position, record in stored:
                        async with self._applying:
                            await self._apply(position, record)
            except (Unavailable, nats.errors.Error) as exc:
                log.warning("cannot read the journal (%s); trying again", exc)
                await asyncio.sleep(self.config.renew_every)

    async def _apply(self, position: int, record: records.Record) -> None:
        """Apply one record at journal ``position`` to the local data directory."""
        await apply(self.engine, position, record)
        match record:
            case records.Fence(node, address, term) if node != self.config.node:
                self.sequencer = address
                log.info(
                    "node %s is the sequencer (term %d, journal position %d): publishers go to %s",
                    node,
                    term,
                    position,
                    address,
                )
        self.position = position

    # ------------------------------------------------------------------ the position

    async def _save_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY)
            await asyncio.to_thread(self._saved.save, self.position)

    def _fit_batches(self, max_payload: int) -> None:
        """Make the writer's batches fit in one NATS message of ``max_payload`` bytes."""
        writer = self.engine.active.writer
        config = writer.config
        # A batch's packets: its payloads, 3 bytes of header each, and perhaps one
        # message over the byte bound.
        room = max_payload - HEADROOM - 3 * config.max_batch_messages - config.max_message
        if room < config.max_batch_bytes:
            if room <= 0:
                raise StoreError(
                    f"the NATS servers' max_payload ({max_payload} bytes) is too small "
                    "for a batch: set it to 8MB (see docs/cluster.md)"
                )
            writer.config = dataclasses.replace(config, max_batch_bytes=room)


async def _stopped(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it is done, cancelling it again while it runs: a
    cancellation can be lost (Python 3.11's ``asyncio.wait_for``, with which nats-py
    waits for NATS's answers, drops one that comes as the answer does)."""
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=CANCEL_AGAIN)


async def _nats_error(error: Exception) -> None:
    # A server that cannot be reached is tried again, and said by the disconnect; what
    # a server says is wrong (a permission refused, say) is worth a warning.
    level = logging.DEBUG if isinstance(error, OSError | asyncio.TimeoutError) else logging.WARNING
    log.log(level, "NATS: %s", error)


async def _reconnected() -> None:
    log.warning("reconnected to NATS")


__all__ = ["ClusterError", "ClusterNode", "Role"]
