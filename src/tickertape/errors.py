"""Every error tickertape raises on purpose.

::

    TickertapeError
    ├── ProtocolError            bytes that break the SoupBinTCP or MoldUDP64 rules
    │   ├── LocalProtocolError   we were asked to encode something the protocol cannot carry
    │   └── RemoteProtocolError  the peer sent something malformed
    ├── StoreError               the session store cannot do what was asked
    │   ├── CorruptLogError      a log or index failed its checks
    │   └── SessionNotFound      no session with that id is on disk
    ├── LoginRejected            the server refused a client's login (client side)
    └── ConfigError              a command-line option or setting is invalid

Each message says what was wrong and, where a person can act on it, what to do.
"""

from __future__ import annotations


class TickertapeError(Exception):
    """Base class of every error tickertape raises on purpose."""


class ProtocolError(TickertapeError):
    """Bytes that break the rules of the wire protocol."""


class LocalProtocolError(ProtocolError):
    """Our fault: a packet with fields the protocol cannot carry was to be encoded."""


class RemoteProtocolError(ProtocolError):
    """The peer's fault: it sent a malformed packet."""


class StoreError(TickertapeError):
    """The session store cannot do what was asked."""


class CorruptLogError(StoreError):
    """A session log or its index failed a structural or checksum check."""


class SessionNotFound(StoreError):
    """No session with the requested id exists in the data directory."""


class LoginRejected(TickertapeError):
    """The server answered a login with Login Rejected."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigError(TickertapeError):
    """An option or setting is invalid."""
