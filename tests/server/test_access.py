"""Who may log in and how failed logins are slowed down, with time as a plain number."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.auth.user import Role, User
from tickertape.auth.users import Users
from tickertape.errors import ConfigError
from tickertape.server.access import (
    ANONYMOUS,
    Access,
    Credentials,
    Grant,
    LoginThrottle,
    PasswordChecks,
    is_loopback,
)
from tickertape.server.soupbintcp import ServerConfig

EVERYONE = frozenset({Role.SUBSCRIBER, Role.PUBLISHER})


def test_the_delay_doubles_with_each_failure_up_to_the_limit() -> None:
    throttle = LoginThrottle(base=0.25, limit=8.0)
    delays = [throttle.failed("10.0.0.1", now=float(i)) for i in range(8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert throttle.failures("10.0.0.1", now=8.0) == 8
    # Another address is not slowed down by the first one's failures.
    assert throttle.failed("10.0.0.2", now=8.0) == 0.25


def test_a_good_login_or_a_quiet_spell_clears_an_address() -> None:
    throttle = LoginThrottle(base=1.0, limit=8.0, forget_after=300.0)
    throttle.failed("a", 0.0)
    throttle.failed("a", 1.0)
    throttle.succeeded("a")
    assert throttle.failed("a", 2.0) == 1.0
    assert throttle.failed("a", 3.0) == 2.0
    assert throttle.failures("a", 303.0) == 0
    assert throttle.failed("a", 303.0) == 1.0


def test_the_addresses_remembered_are_bounded() -> None:
    throttle = LoginThrottle(base=1.0, limit=8.0, max_tracked=3)
    for i in range(10):
        throttle.failed(f"10.0.0.{i}", float(i))
    assert [throttle.failures(f"10.0.0.{i}", 10.0) for i in range(10)] == [0] * 7 + [1] * 3


@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=50), st.floats(0, 5))
def test_a_delay_is_never_negative_nor_past_the_limit(sources: list[str], base: float) -> None:
    throttle = LoginThrottle(base=base, limit=max(base, 1.0))
    for now, source in enumerate(sources):
        assert 0 <= throttle.failed(source, float(now)) <= max(base, 1.0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.1.2.3", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_with_no_one_configured_anyone_may_log_in_if_anonymous_logins_are_allowed() -> None:
    access = Access(anonymous=EVERYONE)
    grant = access.authenticate("whoever", "whatever")
    assert grant == Grant("whoever", EVERYONE)
    assert grant.may_publish() and grant.may_read("2026112901")
    assert Access(anonymous=frozenset({Role.SUBSCRIBER})).authenticate("", "") == Grant(
        ANONYMOUS, frozenset({Role.SUBSCRIBER})
    )
    assert Access().authenticate("", "") is None
    assert not access.slow


def test_one_account_has_every_role_and_a_case_insensitive_password() -> None:
    access = Access(credentials=Credentials("ann", "Secret"))
    grant = access.authenticate("ANN", "SECRET")
    assert grant is not None and grant.may_publish() and grant.may_read("x")
    assert access.authenticate("ann", "wrong") is None
    assert access.authenticate("bob", "Secret") is None


def test_with_a_users_file_every_login_is_checked_and_may_be_replaced() -> None:
    ann = User.create("ann", "annpass", ["subscriber"])
    access = Access(users=Users([ann]))
    assert access.slow
    assert access.authenticate("ann", "annpass") == ann
    assert access.authenticate("", "") is None  # no anonymous logins unless allowed
    assert access.authenticate("ann", "nope") is None
    bob = User.create("bob", "bobpass", ["publisher"])
    access.replace_users(Users([bob]))
    assert access.authenticate("ann", "annpass") is None
    assert access.authenticate("bob", "bobpass") == bob
    anonymous = Access(users=Users([ann]), anonymous=frozenset({Role.SUBSCRIBER}))
    assert anonymous.authenticate("", "") == Grant(ANONYMOUS, frozenset({Role.SUBSCRIBER}))


def test_a_publisher_only_grant_reads_nothing() -> None:
    grant = Grant("p", frozenset({Role.PUBLISHER}))
    assert grant.may_publish() and not grant.may_read("2026112901")


def test_a_server_config_checks_its_limits() -> None:
    with pytest.raises(ConfigError, match="max_connections is 0"):
        ServerConfig(max_connections=0)
    with pytest.raises(ConfigError, match="max_client_packet"):
        ServerConfig(max_client_packet=70_000)
    with pytest.raises(ConfigError, match="not both"):
        ServerConfig(users=Users(), credentials=Credentials("a", "b"))
    with pytest.raises(ConfigError, match="--allow-anonymous"):
        ServerConfig(host="0.0.0.0")


class InstantAccess(Access):
    """Credentials checked at once: only "right" is right."""

    def authenticate(self, username: str, password: str) -> Grant | None:
        return Grant(username, EVERYONE) if password == "right" else None


def test_password_checks_from_one_address_wait_for_a_failures_delay() -> None:
    """The second check from an address starts only once the first failure has been
    answered (its delay over): guessing in parallel is no faster than in turn. Another
    address is not held back."""
    events: list[str] = []

    async def main() -> None:
        checks = PasswordChecks(InstantAccess(), slots=4)

        async def guess(number: int, source: str, password: str) -> None:
            def failed() -> float:
                events.append(f"failed {number}")
                return 1.0

            found = await checks.check(source, "ann", password, failed)
            events.append(f"answered {number}: {found is not None}")

        await asyncio.gather(
            guess(1, "10.0.0.9", "nope"),
            guess(2, "10.0.0.9", "wrong"),
            guess(3, "10.0.0.9", "right"),
            guess(4, "10.0.0.8", "right"),
        )

    asyncio.run(main())
    one_address = [event for event in events if event != "answered 4: True"]
    assert one_address == [
        "failed 1",
        "answered 1: False",
        "failed 2",
        "answered 2: False",
        "answered 3: True",
    ]
    assert events.index("answered 4: True") < events.index("answered 1: False")
