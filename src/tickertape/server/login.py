"""What a SoupBinTCP login asks for, and whether it gets it: pure functions, no I/O.

:func:`classify_login` turns a Login Request, the sessions the server has (its
:class:`~tickertape.server.session_source.SessionProvider`) and who logged in (a
:class:`~tickertape.server.access.Principal`, or None for bad credentials) into one of:

- :class:`Live`: the active session (a blank session, or its id), from the requested
  sequence number (0: the next message published; 1..next: replay, then live; above
  next: accepted, and sent from that number once it exists); or, with the publishing
  convention's "no stream" number, to publish only;
- :class:`Pull`: another session, from the requested number to its end, then End of
  Session (whether it exists is known once its log is opened: :func:`pull_unavailable`);
- :class:`Reject`: Login Rejected, with the code, the reason said in a Debug packet
  before it (``J`` has only a code), and the metrics label.

It also holds the other answers the endpoint gives in words (why a connection may not
publish, the longest packet a client may send). Checking passwords, opening logs and
sending are not here: they are :mod:`~tickertape.server.access`'s,
:mod:`~tickertape.server.pulls`' and the connection's.
"""

from __future__ import annotations

from dataclasses import dataclass

from tickertape.errors import SessionNotFound
from tickertape.server.access import Principal, may_not_publish, may_not_read
from tickertape.server.provider import SessionProvider
from tickertape.wire.publishing import NO_STREAM
from tickertape.wire.soupbintcp import (
    MAX_PACKET_LENGTH,
    REJECT_NOT_AUTHORIZED,
    REJECT_SESSION_NOT_AVAILABLE,
    LoginRequest,
)

__all__ = [
    "Live",
    "Login",
    "Pull",
    "Reject",
    "bad_credentials",
    "classify_login",
    "first_of_pull",
    "limit_reason",
    "packet_limit",
    "publish_refusal",
    "pull_unavailable",
    "user_of",
]


@dataclass(frozen=True, slots=True)
class Live:
    """Accepted into the active session."""

    session: str
    first: int
    """The first sequence number it is sent (Login Accepted says it)."""
    may_publish: bool
    publish_only: bool
    """It asked for no stream: it publishes, and is sent nothing but acknowledgements."""


@dataclass(frozen=True, slots=True)
class Pull:
    """Asks for a session other than the active one: accepted if its log opens."""

    session: str
    sequence: int
    """The requested sequence number (0: the end)."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Login Rejected ``code``, after a Debug packet saying ``reason``."""

    code: str
    reason: str
    label: str
    """Why, for the metrics: bad_credentials, not_permitted, session_not_available."""


Login = Live | Pull | Reject


def classify_login(
    request: LoginRequest, provider: SessionProvider, principal: Principal | None
) -> Login:
    """What the login ``request`` of ``principal`` (None: the credentials are wrong)
    gets from a server serving ``provider``'s sessions."""
    if principal is None:
        return Reject(REJECT_NOT_AUTHORIZED, bad_credentials(request), "bad_credentials")
    active = provider.session_id
    wanted = request.session or active
    publish_only = wanted == active and request.sequence == NO_STREAM
    if publish_only and not principal.may_publish():
        return Reject(REJECT_SESSION_NOT_AVAILABLE, may_not_publish(principal), "not_permitted")
    if publish_only and (elsewhere := provider.publish_refusal) is not None:
        return Reject(REJECT_SESSION_NOT_AVAILABLE, elsewhere, "not_sequencer")
    if not publish_only and not principal.may_read(wanted):
        return Reject(
            REJECT_SESSION_NOT_AVAILABLE, may_not_read(principal, wanted), "not_permitted"
        )
    if wanted != active:
        return Pull(wanted, request.sequence)
    return Live(
        wanted, request.sequence or provider.next_seq, principal.may_publish(), publish_only
    )


def first_of_pull(sequence: int, end: int) -> int:
    """The first number a pull from ``sequence`` is sent, of a session ending before
    ``end``: a closed session has nothing past its end."""
    return min(sequence or end, end)


def pull_unavailable(session: str, error: Exception) -> Reject:
    """The answer to a pull of ``session`` whose log could not be opened."""
    why = (
        "this server has no such session"
        if isinstance(error, SessionNotFound)
        else "it cannot be opened (the server's log says why)"
    )
    return Reject(
        REJECT_SESSION_NOT_AVAILABLE,
        f"session {session} is not available: {why}",
        "session_not_available",
    )


def bad_credentials(request: LoginRequest) -> str:
    """Why a login with wrong credentials is rejected, in words."""
    if not request.username:
        return "this server needs a username and password: anonymous logins are refused"
    return f"wrong username or password for user {request.username!r}"


def packet_limit(may_publish: bool, max_client_packet: int, max_message: int | None) -> int:
    """The longest packet a logged-in client may send: ``max_client_packet`` unless it
    may publish messages of up to ``max_message`` bytes (None: any the wire frames)."""
    if not may_publish:
        return max_client_packet
    longest = MAX_PACKET_LENGTH - 1 if max_message is None else max_message
    return min(MAX_PACKET_LENGTH, max(longest + 1, max_client_packet))


def limit_reason(may_publish: bool, max_message: int | None) -> str:
    """Why a publisher may send no longer message (said to one that does)."""
    if not may_publish or max_message is None or max_message >= MAX_PACKET_LENGTH - 1:
        return ""  # no longer packet can be framed
    return (
        f"this server publishes at most {max_message} bytes a message (with --mold, what "
        "one MoldUDP64 packet carries; MoldUDP64 does not fragment); nothing from this "
        "message on was published"
    )


def publish_refusal(
    may_publish: bool, principal: Principal | None, session: str | None, relay_from: object
) -> tuple[str, str]:
    """Why a connection that sent Unsequenced Data may not publish (the metrics' label,
    and the reason said to it): it may not (its role, or the session it is logged in
    to), or this server relays ``relay_from``."""
    if not may_publish:
        if principal is not None and not principal.may_publish():
            return "not_permitted", may_not_publish(principal)
        return "not_permitted", (
            "publishing goes into the active session; this connection is logged in to "
            f"{session or 'no session'}"
        )
    return "relay", f"this server relays {relay_from}: publish there"


def user_of(request: LoginRequest | None) -> str:
    """Who a login is, for the logs and the status view."""
    return (request.username if request is not None else "") or "(anonymous)"
