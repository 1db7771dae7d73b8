"""Who may try to write: the sequencer's lease, one key in a JetStream key-value bucket.

The bucket keeps a key only for ``ttl`` seconds after it was last written. A node takes
the lease by creating the key (which fails while another holds it), keeps it by
rewriting it with compare-and-set on the revision it last wrote (which fails once
anyone else has written it, or once it has lapsed), and loses it by not doing so in
time: if the holder dies or is cut off, the key lapses and another node can create it.

The lease decides who *tries* to write; the journal's expected-last-sequence check
decides who *succeeds* (:mod:`tickertape.cluster.journal`). A holder counts itself the
holder only until ``ttl`` minus a margin after it sent its last successful write: the
key cannot lapse on the servers before then, since it was written after that moment.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from tickertape.cluster.journal import IN_USE_OTHERWISE, Misconfigured
from tickertape.errors import TickertapeError

KEY: Final = "sequencer"


class LeaseLost(TickertapeError):
    """The lease was not kept: another node holds it, or it lapsed before it was renewed."""


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """How long a lease lasts and how often its holder renews it."""

    name: str = "tickertape"
    """Names the bucket (``tickertape-<name>-lease``)."""
    replicas: int = 3
    ttl: float = 3.0
    """A lease not renewed for this long lapses, and another node may take it."""
    renew_every: float = 1.0
    margin: float = 0.5
    """How long before the lease could lapse its holder stops counting on it."""
    timeout: float = 1.0
    """How long a take or a renewal waits for JetStream."""

    @property
    def bucket(self) -> str:
        return f"tickertape-{self.name}-lease"


@dataclass(frozen=True, slots=True)
class Holder:
    """A node that holds (or wants) the lease, and where its publishers connect."""

    node: str
    address: str

    def encode(self) -> bytes:
        return json.dumps({"node": self.node, "address": self.address}).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> Holder | None:
        try:
            fields = json.loads(value or b"")
            return cls(str(fields["node"]), str(fields["address"]))
        except (ValueError, KeyError, TypeError):
            return None


class Lease:
    """This node's view of the lease: taking it, keeping it, knowing who holds it."""

    def __init__(
        self,
        kv: KeyValue,
        me: Holder,
        config: LeaseConfig,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kv = kv
        self.me = me
        self.config = config
        self._monotonic = monotonic
        self._revision = 0
        self._valid_until = float("-inf")
        self.term = 0
        """The revision at which this node last took the lease: a new holder's is larger."""

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        me: Holder,
        config: LeaseConfig,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> Lease:
        """The lease in its bucket, created if this is the cluster's first node."""
        try:
            kv = await js.create_key_value(
                bucket=config.bucket, history=1, ttl=config.ttl, replicas=config.replicas
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == IN_USE_OTHERWISE:
                raise Misconfigured(
                    f"the lease bucket {config.bucket} exists with other settings than "
                    f"this node's ({config.replicas} replicas, a lease of {config.ttl:g} s): "
                    "give every node of the cluster the same --cluster-replicas and "
                    "--lease-ttl"
                ) from exc
            raise TickertapeError(f"cannot create the lease bucket {config.bucket}: {exc}") from exc
        return cls(kv, me, config, monotonic)

    def held(self) -> bool:
        """Whether this node may count on holding the lease now."""
        return self.remaining() > 0

    def remaining(self) -> float:
        """Seconds this node may still count on holding the lease (not above 0 once it
        may not)."""
        return self._valid_until - self._monotonic()

    async def take(self) -> bool:
        """Take the lease if no one holds it; whether this node holds it now."""
        sent = self._monotonic()
        try:
            revision = await self._kv.create(KEY, self.me.encode())
        except nats.errors.Error:  # held by another node, or JetStream did not answer
            return await self._reclaim()
        self._kept(revision, sent)
        self.term = revision
        return True

    async def _reclaim(self) -> bool:
        """Whether the lease is this node's after all: a take JetStream stored but did
        not answer (or this node's, restarted, under the same name). Kept only by a
        compare-and-set on the revision read, which fails if anyone wrote since."""
        try:
            entry = await self._kv.get(KEY)
        except nats.errors.Error:
            return False
        if Holder.decode(entry.value) != self.me or entry.revision is None:
            return False
        sent = self._monotonic()
        try:
            revision = await self._kv.update(KEY, self.me.encode(), last=entry.revision)
        except nats.errors.Error:
            return False
        self._kept(revision, sent)
        self.term = revision
        return True

    async def renew(self) -> None:
        """Keep the lease; :class:`LeaseLost` if it is no longer this node's."""
        if self._revision == 0:
            raise LeaseLost("this node has not taken the lease")
        sent = self._monotonic()
        try:
            revision = await self._kv.update(KEY, self.me.encode(), last=self._revision)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            self._lose()
            raise LeaseLost("another node took the lease, or it lapsed") from exc
        except nats.errors.Error as exc:  # no answer in time: no quorum, or no server
            if not self.held():
                self._lose()
                raise LeaseLost(f"the lease could not be renewed in time: {exc}") from exc
            return  # try again at the next renewal, while it still holds
        self._kept(revision, sent)

    async def release(self) -> None:
        """Give the lease up at once (a clean stop), so another node need not wait."""
        if self._revision == 0:
            return
        revision, self._revision = self._revision, 0
        self._lose()
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await self._kv.delete(KEY, last=revision)  # if not, it lapses by itself

    async def holder(self) -> Holder | None:
        """Who holds the lease now, as the bucket says (None: no one)."""
        try:
            entry = await self._kv.get(KEY)
        except nats.js.errors.KeyNotFoundError:  # also when deleted, or lapsed
            return None
        return Holder.decode(entry.value)

    def _kept(self, revision: int, sent: float) -> None:
        self._revision = revision
        self._valid_until = sent + self.config.ttl - self.config.margin

    def _lose(self) -> None:
        self._revision = 0
        self._valid_until = float("-inf")
