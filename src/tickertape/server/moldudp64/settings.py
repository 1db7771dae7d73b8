"""The settings and counters of the two MoldUDP64 endpoints.

:class:`PublisherConfig` and :class:`PublisherStats` are the multicast publisher's
(:mod:`.publisher`, :mod:`.sender`); :class:`RequestServerConfig` and
:class:`RequestStats` the re-request server's (:mod:`.rerequest`). Each ``DEFAULT_*`` is
a default of one of them (the command line's defaults too). ``GET /metrics`` and the
status page read the stats. Nothing here sends or reads anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tickertape.wire.moldudp64 import MAX_DATAGRAM

DEFAULT_TTL: Final = 1
DEFAULT_HEARTBEAT_INTERVAL: Final = 1.0
DEFAULT_EOS_SECONDS: Final = 10.0
"""How long End of Session packets are repeated (once a second) after a session ends."""
DEFAULT_MAX_QUEUED_BYTES: Final = 64 << 20
"""Batches the sending thread may fall behind by before whole batches are dropped."""
DEFAULT_SEND_TIMEOUT: Final = 1.0
"""Seconds the sending thread waits for room in its socket's buffer before it drops a
datagram."""
DEFAULT_SOCKET_BUFFER: Final = 4 << 20
DEFAULT_CLOSE_GRACE: Final = 5.0
"""Seconds the publisher may take, when closing, to send what it has queued."""
DEFAULT_REQUEST_RATE: Final = 50_000.0
"""Messages a second each requester may be sent by the re-request server."""
DEFAULT_WINDOW_BYTES: Final = 16 << 10
"""Bytes read from a log at a time for re-requests (about ten full packets' worth)."""
DEFAULT_READ_AHEAD: Final = 8
"""A read that goes on where a window ends (a client catching up in order) reads this
many windows' worth at once."""
DEFAULT_MAX_WINDOWS: Final = 64
DEFAULT_CLOSED_IDLE: Final = 60.0
"""Seconds a closed session's log stays open after its last request."""
DEFAULT_MAX_OPEN_CLOSED: Final = 8
DEFAULT_MAX_PENDING_PER_REQUESTER: Final = 64
"""Requests for closed sessions queued per requester (a pipelining client keeps 64 in
flight)."""
DEFAULT_MAX_PENDING: Final = 4096
DEFAULT_UNKNOWN_SESSION_MEMORY: Final = 5.0


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """Where and how the MoldUDP64 publisher sends."""

    group: str
    port: int
    interface: str | None = None
    """The local address of the interface to send from (``IP_MULTICAST_IF``); None: the
    system picks (by the route to the group)."""
    ttl: int = DEFAULT_TTL
    loopback: bool = True
    """Whether receivers on this host get the packets (``IP_MULTICAST_LOOP``)."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    eos_seconds: float = DEFAULT_EOS_SECONDS
    max_datagram: int = MAX_DATAGRAM
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    socket_buffer: int = DEFAULT_SOCKET_BUFFER


@dataclass(slots=True)
class PublisherStats:
    """What the publisher sent and what it could not."""

    packets: int = 0
    """Downstream packets holding messages, sent."""
    bytes: int = 0
    """...and their bytes."""
    messages: int = 0
    heartbeats: int = 0
    end_of_session: int = 0
    oversized: int = 0
    """Messages longer than a packet holds: skipped (receivers get them by SoupBinTCP)."""
    dropped_batches: int = 0
    """Batches dropped because the sending thread was too far behind."""
    dropped_messages: int = 0
    failed_sends: int = 0
    """Datagrams the socket did not take (buffer full past the timeout, or an error)."""


@dataclass(frozen=True, slots=True)
class RequestServerConfig:
    """Where the re-request server listens and how much it gives each requester."""

    host: str = "127.0.0.1"
    port: int = 0
    rate: float = DEFAULT_REQUEST_RATE
    """Messages a second each requester (address and port) may be sent."""
    burst: float | None = None
    """Messages a requester may be sent at once after a quiet spell (None: ``rate``)."""
    max_datagram: int = MAX_DATAGRAM
    window_bytes: int = DEFAULT_WINDOW_BYTES
    read_ahead: int = DEFAULT_READ_AHEAD
    """A read that goes on where a window ends reads ``read_ahead`` windows' worth."""
    max_windows: int = DEFAULT_MAX_WINDOWS
    closed_idle: float = DEFAULT_CLOSED_IDLE
    max_open_closed: int = DEFAULT_MAX_OPEN_CLOSED
    max_pending_per_requester: int = DEFAULT_MAX_PENDING_PER_REQUESTER
    max_pending: int = DEFAULT_MAX_PENDING
    socket_buffer: int = DEFAULT_SOCKET_BUFFER


@dataclass(slots=True)
class RequestStats:
    """What the re-request server received and what it did with it."""

    requests: int = 0
    answered: int = 0
    messages: int = 0
    malformed: int = 0
    unknown_session: int = 0
    out_of_range: int = 0
    rate_limited: int = 0
    oversized: int = 0
    """Requests whose first message is too long for a packet: not answered."""
    dropped: int = 0
    """Requests not answered for want of room: a full queue, a full socket buffer."""
    failed: int = 0
    """Requests not answered because reading the session failed."""


__all__ = [
    "DEFAULT_CLOSED_IDLE",
    "DEFAULT_CLOSE_GRACE",
    "DEFAULT_EOS_SECONDS",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_MAX_OPEN_CLOSED",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_PENDING_PER_REQUESTER",
    "DEFAULT_MAX_QUEUED_BYTES",
    "DEFAULT_MAX_WINDOWS",
    "DEFAULT_READ_AHEAD",
    "DEFAULT_REQUEST_RATE",
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_SOCKET_BUFFER",
    "DEFAULT_TTL",
    "DEFAULT_UNKNOWN_SESSION_MEMORY",
    "DEFAULT_WINDOW_BYTES",
    "PublisherConfig",
    "PublisherStats",
    "RequestServerConfig",
    "RequestStats",
]
