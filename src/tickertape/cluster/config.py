"""What a node of a cluster is told: where the NATS servers are, its name, where its
publishers connect, and how the journal and the lease behave.

Plain values only (no NATS import): ``tickertape serve`` builds a :class:`ClusterConfig`
from its options whether or not the ``cluster`` extra is installed, and the node
(:mod:`tickertape.cluster.node`) turns it into the journal's and the lease's settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_NAME: Final = "tickertape"
DEFAULT_RETENTION_DAYS: Final = 3.0
DEFAULT_LEASE_TTL: Final = 3.0
DEFAULT_RENEW_EVERY: Final = 1.0


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """A node of the cluster whose NATS servers are ``servers``."""

    servers: tuple[str, ...]
    """``nats://host:port`` URLs of the NATS servers (any of them will do)."""
    node: str
    """This node's name, unique in the cluster (the lease says who holds it by name)."""
    address: str
    """``host:port`` where this node takes publishers while it is the sequencer: what
    the other nodes send publishers to."""
    credentials: Path | None = None
    """A NATS credentials file (``.creds``: a user JWT and its NKey seed)."""
    name: str = DEFAULT_NAME
    """The cluster's name: its journal is the stream ``TICKERTAPE-<name>``."""
    replicas: int = 3
    """Replicas of the journal and the lease (the number of NATS servers, at most 5)."""
    retention_days: float = DEFAULT_RETENTION_DAYS
    """How long JetStream keeps the journal; each node keeps its own logs longer."""
    lease_ttl: float = DEFAULT_LEASE_TTL
    """A sequencer that has not renewed its lease for this long is replaced."""
    renew_every: float = DEFAULT_RENEW_EVERY
    """How often the sequencer renews its lease."""
    take_every: float = 0.25
    """How often a follower tries to take a lapsed lease."""
    timeout: float = 2.0
    """How long an append to the journal waits for JetStream's acknowledgement."""
    start_timeout: float = 30.0
    """How long a starting node waits for JetStream to answer (a cluster electing its
    leader) before it gives up."""


__all__ = ["ClusterConfig"]
