"""Users (tickertape.auth.users): found by name, changed, and authenticated against in
constant work whatever the input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from tickertape.auth import passwords
from tickertape.auth.passwords import DUMMY_HASH, hash_password
from tickertape.auth.user import Role, User
from tickertape.auth.users import Users
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


# ---------------------------------------------------------------------------- Users


def test_users_are_found_by_any_case_of_their_name() -> None:
    users = Users([make_user("alice"), make_user("bob")])
    alice = users.get("ALICE")
    assert alice is not None
    assert alice.name == "alice"
    assert "Bob" in users
    assert users.get("carol") is None
    assert users.get("") is None
    assert [user.name for user in users] == ["alice", "bob"]
    assert len(users) == 2


def test_add_refuses_an_existing_user_and_remove_a_missing_one() -> None:
    users = Users()
    users.add("Alice", "pw1", ["subscriber"], ["2026*"])
    with pytest.raises(ConfigError, match="exists: change its password with passwd"):
        users.add("ALICE", "pw2", ["admin"])
    with pytest.raises(ConfigError, match="no user 'bob'"):
        users.remove("bob")
    assert users.remove("alice").name == "alice"
    assert len(users) == 0


def test_add_refuses_unknown_roles_and_no_role() -> None:
    users = Users()
    with pytest.raises(ConfigError, match="unknown role 'reader'"):
        users.add("alice", "pw", ["reader"])
    with pytest.raises(ConfigError, match="at least one role"):
        users.add("alice", "pw", [])
    assert len(users) == 0


def test_set_password_changes_the_hash_and_keeps_the_roles() -> None:
    users = Users([make_user(roles=frozenset({Role.SUBSCRIBER}), sessions=("2026*",))])
    changed = users.set_password("ALICE", "NewPass1")
    assert changed.roles == {Role.SUBSCRIBER}
    assert changed.sessions == ("2026*",)
    assert users.authenticate("alice", "newpass1") == changed
    assert users.authenticate("alice", PASSWORD) is None
    with pytest.raises(ConfigError, match="no user"):
        users.set_password("bob", "x")


def test_set_roles_keeps_the_password() -> None:
    users = Users([make_user(sessions=("2026*",))])
    changed = users.set_roles("alice", ["publisher", "ADMIN"])
    assert changed.roles == {Role.PUBLISHER, Role.ADMIN}
    assert changed.sessions is None
    assert changed.password_hash == HASH


def test_authenticate_a_known_user_any_case() -> None:
    users = Users([make_user("alice")])
    assert users.authenticate("alice", PASSWORD) == users.get("alice")
    assert users.authenticate("ALICE", "secret42") == users.get("alice")
    assert users.authenticate("alice", "Secret43") is None


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "Secret42"),  # known: its hash
        ("carol", "Secret42"),  # unknown: the dummy hash
        ("carol", ""),
        ("", ""),
        ("alicebobcarol", "Secret42"),
        ("alice", "x" * 10_000),
        ("al\x00ce", "Secret\x0042"),
        ("\u212aate", "Secret42"),
        ("alice", "Sécret42"),
    ],
)
def test_authenticate_verifies_one_hash_whatever_the_input(
    monkeypatch: pytest.MonkeyPatch, username: str, password: str
) -> None:
    """The same work (one scrypt) for unknown users and odd input as for a known user."""
    users = Users([make_user("alice")])
    checked: list[str] = []
    real = passwords.verify_password

    def spy(password: str, encoded: str) -> bool:
        checked.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(passwords, "verify_password", spy)
    result = users.authenticate(username, password)
    assert len(checked) == 1
    known = username == "alice"
    assert checked[0] == (HASH if known else DUMMY_HASH)
    assert (result is not None) is (known and password == "Secret42")


@pytest.mark.parametrize("odd", [None, 42, b"alice", ["alice"], object()])
def test_authenticate_never_raises(odd: object) -> None:
    users = Users([make_user("alice")])
    assert users.authenticate(cast(Any, odd), PASSWORD) is None
    assert users.authenticate("alice", cast(Any, odd)) is None


def test_authenticate_is_none_when_the_hash_cannot_be_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = Users([make_user("alice")])

    def broken(password: str, encoded: str) -> bool:
        raise MemoryError

    monkeypatch.setattr(passwords, "verify_password", broken)
    assert users.authenticate("alice", PASSWORD) is None


def test_authenticate_from_several_threads() -> None:
    users = Users([make_user("alice"), User("bob", hash_password("Bob1"), frozenset({Role.ADMIN}))])
    attempts = [("alice", PASSWORD), ("bob", "bob1"), ("alice", "bob1"), ("carol", "x")] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda attempt: users.authenticate(*attempt), attempts))
    names = [None if user is None else user.name for user in results]
    assert names == ["alice", "bob", None, None] * 3


def test_changes_between_two_sets_of_users_are_said_in_a_few_words() -> None:
    ann = User.create("ann", "annpass", ["subscriber"])
    bob = User.create("bob", "bobpass", ["subscriber"])
    old = Users([ann, bob])
    new = Users([User(ann.name, ann.password_hash, frozenset({Role.ADMIN}))])
    new.add("cy", "cypass", ["publisher"])
    assert new.changes_from(old) == "added cy; removed bob; changed ann (roles)"
    assert new.admins() == ["ann"]
    assert old.changes_from(old) == "no change"
