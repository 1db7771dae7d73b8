"""Login classification (tickertape.server.login): pure functions, no sockets."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tickertape.auth.user import Role
from tickertape.errors import SessionNotFound, StoreError
from tickertape.server.access import ANONYMOUS, Grant
from tickertape.server.login import (
    Live,
    Pull,
    Reject,
    bad_credentials,
    classify_login,
    first_of_pull,
    limit_reason,
    packet_limit,
    publish_refusal,
    pull_unavailable,
    user_of,
)
from tickertape.server.provider import SessionProvider
from tickertape.wire.publishing import NO_STREAM, redirect_text
from tickertape.wire.soupbintcp import (
    MAX_PACKET_LENGTH,
    REJECT_NOT_AUTHORIZED,
    REJECT_SESSION_NOT_AVAILABLE,
    LoginRequest,
)

ACTIVE = "2026120702"
CLOSED = "2026120701"


@dataclass
class Provider:
    """The two fields of a session provider a classification reads."""

    session_id: str = ACTIVE
    next_seq: int = 42
    publish_refusal: str | None = None


def provider(publish_refusal: str | None = None) -> SessionProvider:
    found: SessionProvider = Provider(publish_refusal=publish_refusal)  # type: ignore[assignment]
    return found


SUBSCRIBER = Grant("sam", frozenset({Role.SUBSCRIBER}))
PUBLISHER = Grant("pat", frozenset({Role.PUBLISHER}))
BOTH = Grant("bo", frozenset({Role.SUBSCRIBER, Role.PUBLISHER}))
ONLY_CLOSED = Grant("ola", frozenset({Role.SUBSCRIBER}), (CLOSED,))
ANONYMOUS_SUBSCRIBER = Grant(ANONYMOUS, frozenset({Role.SUBSCRIBER}))


@pytest.mark.parametrize(
    ("request_", "principal", "expected"),
    [
        # Blank session, or the active one's id: live, from the requested number.
        (LoginRequest("sam", "pw", "", 0), SUBSCRIBER, Live(ACTIVE, 42, False, False)),
        (LoginRequest("sam", "pw", ACTIVE, 7), SUBSCRIBER, Live(ACTIVE, 7, False, False)),
        (LoginRequest("sam", "pw", "", 1000), SUBSCRIBER, Live(ACTIVE, 1000, False, False)),
        (LoginRequest("bo", "pw", "", 1), BOTH, Live(ACTIVE, 1, True, False)),
        # No stream: publish only.
        (
            LoginRequest("pat", "pw", "", NO_STREAM),
            PUBLISHER,
            Live(ACTIVE, NO_STREAM, True, True),
        ),
        # Another session: a pull, whatever the number.
        (LoginRequest("sam", "pw", CLOSED, 0), SUBSCRIBER, Pull(CLOSED, 0)),
        (LoginRequest("ola", "pw", CLOSED, 5), ONLY_CLOSED, Pull(CLOSED, 5)),
        (LoginRequest("sam", "pw", "2099010101", 3), SUBSCRIBER, Pull("2099010101", 3)),
    ],
)
def test_a_login_is_live_or_a_pull(
    request_: LoginRequest, principal: Grant, expected: Live | Pull
) -> None:
    assert classify_login(request_, provider(), principal) == expected


def test_wrong_credentials_are_rejected_not_authorized_saying_which_user() -> None:
    named = classify_login(LoginRequest("eve", "guess", "", 1), provider(), None)
    assert named == Reject(
        REJECT_NOT_AUTHORIZED, "wrong username or password for user 'eve'", "bad_credentials"
    )
    blank = classify_login(LoginRequest("", "", "", 1), provider(), None)
    assert isinstance(blank, Reject) and blank.code == REJECT_NOT_AUTHORIZED
    assert blank.reason == bad_credentials(LoginRequest("", "", "", 1))
    assert "anonymous logins are refused" in blank.reason


@pytest.mark.parametrize(
    ("request_", "principal", "words"),
    [
        (LoginRequest("sam", "pw", "", NO_STREAM), SUBSCRIBER, "user 'sam' may not publish"),
        (
            LoginRequest("", "", "", NO_STREAM),
            ANONYMOUS_SUBSCRIBER,
            "anonymous logins may not publish",
        ),
        (LoginRequest("pat", "pw", "", 1), PUBLISHER, "may not read sessions"),
        (LoginRequest("pat", "pw", CLOSED, 1), PUBLISHER, "may not read sessions"),
        (LoginRequest("ola", "pw", "", 1), ONLY_CLOSED, f"may not read session {ACTIVE}"),
        # Publish-only is for the active session: elsewhere it is a read, refused.
        (LoginRequest("pat", "pw", CLOSED, NO_STREAM), PUBLISHER, "may not read sessions"),
    ],
)
def test_what_a_user_may_not_do_is_rejected_session_not_available_saying_why(
    request_: LoginRequest, principal: Grant, words: str
) -> None:
    found = classify_login(request_, provider(), principal)
    assert isinstance(found, Reject)
    assert found.code == REJECT_SESSION_NOT_AVAILABLE
    assert found.label == "not_permitted"
    assert words in found.reason


def test_a_node_that_is_not_the_sequencer_rejects_a_publisher_saying_where_to_go() -> None:
    elsewhere = redirect_text("127.0.0.1:7301")
    publisher = LoginRequest("pat", "pw", "", NO_STREAM)
    found = classify_login(publisher, provider(elsewhere), PUBLISHER)
    assert found == Reject(REJECT_SESSION_NOT_AVAILABLE, elsewhere, "not_sequencer")
    # Subscribers, even ones that may publish, are served by every node.
    subscriber = LoginRequest("bo", "pw", "", 1)
    assert classify_login(subscriber, provider(elsewhere), BOTH) == Live(ACTIVE, 1, True, False)


def test_a_pull_starts_no_later_than_the_end_of_its_session() -> None:
    assert first_of_pull(0, 100) == 100  # 0: the end (only End of Session follows)
    assert first_of_pull(1, 100) == 1
    assert first_of_pull(100, 100) == 100
    assert first_of_pull(500, 100) == 100  # nothing past its end


def test_a_pull_of_a_session_that_cannot_be_opened_says_why() -> None:
    missing = pull_unavailable(CLOSED, SessionNotFound(CLOSED))
    assert missing == Reject(
        REJECT_SESSION_NOT_AVAILABLE,
        f"session {CLOSED} is not available: this server has no such session",
        "session_not_available",
    )
    broken = pull_unavailable(CLOSED, StoreError("bad index"))
    assert broken.reason.endswith("it cannot be opened (the server's log says why)")
    assert "bad index" not in broken.reason  # the details go to the server's log


def test_the_longest_packet_a_client_may_send() -> None:
    assert packet_limit(False, 1024, 1000) == 1024  # a subscriber: heartbeats, a logout
    assert packet_limit(True, 1024, 1450) == 1451  # a publisher: a message and its type
    assert packet_limit(True, 1024, 100) == 1024  # never less than a subscriber's
    assert packet_limit(True, 1024, None) == MAX_PACKET_LENGTH
    assert limit_reason(False, 1450) == ""
    assert limit_reason(True, None) == ""
    assert limit_reason(True, MAX_PACKET_LENGTH - 1) == ""  # no longer one can be framed
    assert "at most 1450 bytes a message" in limit_reason(True, 1450)


def test_why_a_connection_may_not_publish() -> None:
    assert publish_refusal(False, SUBSCRIBER, ACTIVE, None) == (
        "not_permitted",
        "user 'sam' may not publish (the publisher role is needed)",
    )
    label, reason = publish_refusal(False, BOTH, CLOSED, None)
    assert label == "not_permitted"
    assert reason.endswith(f"this connection is logged in to {CLOSED}")
    assert publish_refusal(True, BOTH, ACTIVE, "upstream:7300") == (
        "relay",
        "this server relays upstream:7300: publish there",
    )


def test_who_a_login_is() -> None:
    assert user_of(None) == "(anonymous)"
    assert user_of(LoginRequest("", "", "", 0)) == "(anonymous)"
    assert user_of(LoginRequest("ann", "pw", "", 0)) == "ann"
