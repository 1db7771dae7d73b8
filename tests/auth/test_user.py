"""One user (tickertape.auth.user): it is built from checked values only, and its roles and
sessions say what it may read and publish."""

from __future__ import annotations

import pytest

from tickertape.auth.passwords import hash_password
from tickertape.auth.user import Role, User
from tickertape.errors import ConfigError

# One hash for the tests that only need a valid one: each costs about 30 ms.
PASSWORD = "Secret42"
HASH = hash_password(PASSWORD)


def make_user(
    name: str = "alice",
    roles: frozenset[Role] = frozenset({Role.SUBSCRIBER}),
    sessions: tuple[str, ...] | None = None,
) -> User:
    return User(name, HASH, roles, sessions)


def test_a_user_must_be_built_from_checked_values() -> None:
    with pytest.raises(ConfigError, match="lower case"):
        User("Alice", HASH, frozenset({Role.ADMIN}))
    with pytest.raises(ConfigError, match="password hash"):
        User("alice", "plain", frozenset({Role.ADMIN}))
    with pytest.raises(ConfigError, match="at least one role"):
        User("alice", HASH, frozenset())
    with pytest.raises(ConfigError, match="not the subscriber role"):
        User("alice", HASH, frozenset({Role.PUBLISHER}), ("2026*",))


# ---------------------------------------------------------------------------- roles


@pytest.mark.parametrize(
    ("sessions", "session", "allowed"),
    [
        (None, "2026010101", True),
        (("2026*",), "2026010101", True),
        (("2026*",), "2025123101", False),
        (("2026010101",), "2026010101", True),
        (("2026010101",), "2026010102", False),
        (("202601??01", "2025*"), "2026013101", True),
        (("202601??01", "2025*"), "2025060602", True),
        (("202601??01", "2025*"), "2026020101", False),
        (("2026010[1-3]*",), "2026010201", True),
        (("2026010[1-3]*",), "2026010401", False),
    ],
)
def test_a_subscriber_reads_the_sessions_its_patterns_match(
    sessions: tuple[str, ...] | None, session: str, allowed: bool
) -> None:
    assert make_user(sessions=sessions).may_read(session) is allowed


def test_an_admin_reads_every_session_and_publishes() -> None:
    admin = make_user(roles=frozenset({Role.ADMIN}))
    assert admin.is_admin
    assert admin.may_read("1999010101")
    assert admin.may_publish()
    limited = make_user(roles=frozenset({Role.ADMIN, Role.SUBSCRIBER}), sessions=("2026*",))
    assert limited.may_read("1999010101")


def test_a_publisher_publishes_but_does_not_read() -> None:
    publisher = make_user(roles=frozenset({Role.PUBLISHER}))
    assert publisher.may_publish()
    assert not publisher.may_read("2026010101")
    assert not publisher.is_admin


def test_a_subscriber_does_not_publish() -> None:
    subscriber = make_user()
    assert not subscriber.may_publish()
    assert not subscriber.is_admin
