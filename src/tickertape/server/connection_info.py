"""What the status view shows of a SoupBinTCP connection: who, where, how far behind.

Plain records, built by :class:`~tickertape.server.connection.Connection` and listed by
:class:`~tickertape.server.soupbintcp.SoupBinTCPServer`; nothing here acts on a
connection.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PublisherInfo", "SubscriberInfo"]


@dataclass(frozen=True, slots=True)
class SubscriberInfo:
    """One logged-in connection, as the status view shows it."""

    address: str
    user: str
    session: str
    next_seq: int
    """The next sequence number it will be sent."""
    lag: int
    """Messages published in its session that it has not been sent yet."""
    live: bool
    """At the tail, taking each batch as it is published (else reading the log)."""
    state: str = ""
    """live, catching up, blocked (its write buffer is full) or closed session."""
    since: float = 0.0
    """When it logged in (UNIX time)."""
    tls: bool = False
    """Connected over TLS."""


@dataclass(frozen=True, slots=True)
class PublisherInfo:
    """A connection publishing, as the status view shows it."""

    address: str
    user: str
    published: int
    """Messages it sent that were published (acknowledged)."""
    since: float
    """When it logged in (UNIX time)."""
