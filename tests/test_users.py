"""The users file: password hashes, roles, sessions, the TOML file, authentication."""

from __future__ import annotations

import base64
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertape import users as users_module
from tickertape.errors import ConfigError
from tickertape.users import (
    SCRYPT_N,
    Role,
    User,
    Users,
    hash_password,
    normalise_password,
    normalise_username,
    verify_password,
)

# One hash for the tests that only need a valid one: each costs about 30 ms.
PASSWORD = "Secret42"
HASH = hash_password(PASSWORD)


def make_user(
    name: str = "alice",
    roles: frozenset[Role] = frozenset({Role.SUBSCRIBER}),
    sessions: tuple[str, ...] | None = None,
) -> User:
    return User(name, HASH, roles, sessions)


# ---------------------------------------------------------------------------- hashing


def test_hash_then_verify_round_trip() -> None:
    assert verify_password(PASSWORD, HASH)


def test_a_hash_says_how_it_was_made() -> None:
    scheme, params, salt, digest = HASH.split("$")
    assert scheme == "scrypt"
    assert params == f"n={SCRYPT_N},r=8,p=1"
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32


def test_two_hashes_of_one_password_differ_by_their_salt() -> None:
    again = hash_password(PASSWORD)
    assert again != HASH
    assert verify_password(PASSWORD, again)


@pytest.mark.parametrize("spelling", ["secret42", "SECRET42", "sEcReT42"])
def test_passwords_are_case_insensitive(spelling: str) -> None:
    assert verify_password(spelling, HASH)


@pytest.mark.parametrize("wrong", ["Secret43", "Secret4", "Secret420", "x"])
def test_a_wrong_password_does_not_verify(wrong: str) -> None:
    assert not verify_password(wrong, HASH)


@pytest.mark.parametrize("odd", ["", "Secret42 ", "Secret42xyz", "Sécret42", "Secret-4"])
def test_a_password_soupbintcp_cannot_carry_does_not_verify(odd: str) -> None:
    assert not verify_password(odd, HASH)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "the password is empty"),
        ("abcdefghijk", "the password is 11 characters; SoupBinTCP allows at most 10"),
        ("abc def", "characters other than letters or digits"),
        ("pässword", "characters other than letters or digits"),
    ],
)
def test_hashing_refuses_a_password_soupbintcp_cannot_carry(password: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        hash_password(password)
    if password:
        assert password not in str(caught.value)


def test_a_password_is_kept_upper_cased() -> None:
    assert normalise_password("abc123XYZ") == "ABC123XYZ"


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "bcrypt$n=16384,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43 + "=",
        "scrypt$n=16384,r=8,p=1$not base64!$abc",
        "scrypt$n=1000,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43 + "=",
        "scrypt$n=16777216,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 43 + "=",
        "scrypt$n=16384,r=8,p=1$c2FsdA==$" + "A" * 43 + "=",
        "scrypt$n=16384,r=8,p=1$c2FsdHNhbHRzYWx0$QUJD",
    ],
)
def test_verify_refuses_a_malformed_hash(encoded: str) -> None:
    with pytest.raises(ConfigError, match="password hash"):
        verify_password(PASSWORD, encoded)


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "stored"), [("alice", "alice"), ("ALICE", "alice"), ("b0B9", "b0b9")]
)
def test_a_username_is_kept_in_lower_case(name: str, stored: str) -> None:
    assert normalise_username(name) == stored


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "the username is empty"),
        ("ALICEBOB", "username 'ALICEBOB' is 8 characters; SoupBinTCP allows at most 6"),
        ("al-ce", "characters other than letters or digits"),
        ("al ce", "characters other than letters or digits"),
        ("\u212aate", "characters other than letters or digits"),  # Kelvin sign: lower() is k
    ],
)
def test_a_username_soupbintcp_cannot_carry_is_refused(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        normalise_username(name)


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
    real = users_module.verify_password

    def spy(password: str, encoded: str) -> bool:
        checked.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(users_module, "verify_password", spy)
    result = users.authenticate(username, password)
    assert len(checked) == 1
    known = username == "alice"
    assert checked[0] == (HASH if known else users_module._DUMMY_HASH)
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

    monkeypatch.setattr(users_module, "verify_password", broken)
    assert users.authenticate("alice", PASSWORD) is None


def test_authenticate_from_several_threads() -> None:
    users = Users([make_user("alice"), User("bob", hash_password("Bob1"), frozenset({Role.ADMIN}))])
    attempts = [("alice", PASSWORD), ("bob", "bob1"), ("alice", "bob1"), ("carol", "x")] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda attempt: users.authenticate(*attempt), attempts))
    names = [None if user is None else user.name for user in results]
    assert names == ["alice", "bob", None, None] * 3


# ---------------------------------------------------------------------------- the file


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_save_then_load(tmp_path: Path) -> None:
    users = Users()
    users.add("Alice", "pw1", ["subscriber"], ["2026*", "2025123101"])
    users.add("bob", "pw2", ["publisher", "admin"])
    path = tmp_path / "users.toml"
    users.save(path)
    assert Users.load(path) == users
    text = path.read_text()
    assert text.startswith("# tickertape users file")
    assert "[users.alice]" in text
    assert 'roles = ["publisher", "admin"]' in text
    assert 'sessions = ["2026*", "2025123101"]' in text
    loaded = Users.load(path)
    assert loaded.authenticate("ALICE", "PW1") == loaded.get("alice")


def test_save_is_mode_0600_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = write(tmp_path / "users.toml", "")
    path.chmod(0o644)
    Users([make_user()]).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["users.toml"]


def test_save_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "users.toml"
    with pytest.raises(ConfigError, match=f"users file {path}: cannot write it"):
        Users([make_user()]).save(path)


def test_load_warns_when_others_may_read_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "users.toml"
    Users([make_user()]).save(path)
    path.chmod(0o644)
    Users.load(path)
    assert "may be read by others (mode 644)" in caplog.text


def test_an_empty_file_has_no_users(tmp_path: Path) -> None:
    assert len(Users.load(write(tmp_path / "users.toml", "# nothing yet\n"))) == 0


def test_a_hand_written_name_in_upper_case_is_found(tmp_path: Path) -> None:
    path = write(tmp_path / "u.toml", f'[users.ALICE]\npassword = "{HASH}"\nroles = ["admin"]\n')
    assert Users.load(path).authenticate("alice", PASSWORD) is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[users.alice\n", "not valid TOML"),
        ('users = "alice"\n', "'users' must be tables"),
        ("[groups.x]\n", "unknown key 'groups'"),
        ("[users.alicebob]\npassword = '{hash}'\nroles = ['admin']\n", "is 8 characters"),
        ("[users.'al ce']\npassword = '{hash}'\nroles = ['admin']\n", "letters or digits"),
        ("[users.alice]\nroles = ['admin']\n", "user 'alice': has no password"),
        ("[users.alice]\npassword = 'secret'\nroles = ['admin']\n", "not of the form scrypt$"),
        ("[users.alice]\npassword = 42\nroles = ['admin']\n", "password must be a string"),
        ("[users.alice]\npassword = '{hash}'\n", "roles must be a list"),
        ("[users.alice]\npassword = '{hash}'\nroles = ['root']\n", "unknown role 'root'"),
        ("[users.alice]\npassword = '{hash}'\nroles = []\n", "at least one role"),
        ("[users.alice]\npassword = '{hash}'\nrole = ['admin']\n", "unknown key 'role'"),
        (
            "[users.alice]\npassword = '{hash}'\nroles = ['publisher']\nsessions = ['2026*']\n",
            "not the subscriber role",
        ),
        (
            "[users.alice]\npassword = '{hash}'\nroles = ['subscriber']\nsessions = '2026*'\n",
            "sessions must be a list",
        ),
        (
            "[users.alice]\npassword = '{hash}'\nroles = ['subscriber']\nsessions = []\n",
            "the list of sessions is empty",
        ),
        (
            "[users.alice]\npassword = '{hash}'\nroles = ['subscriber']\nsessions = ['20 26']\n",
            "session pattern '20 26'",
        ),
        (
            "[users.alice]\npassword = '{hash}'\nroles = ['admin']\n"
            "[users.ALICE]\npassword = '{hash}'\nroles = ['admin']\n",
            "user 'ALICE': listed twice",
        ),
        (
            "[users.alice]\npassword = '{hash}'\nroles = ['admin']\n"
            "[users.alice]\npassword = '{hash}'\nroles = ['admin']\n",
            "not valid TOML",
        ),
    ],
)
def test_load_says_which_file_and_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "users.toml", text.replace("{hash}", HASH))
    with pytest.raises(ConfigError) as caught:
        Users.load(path)
    assert str(caught.value).startswith(f"users file {path}: ")
    assert message in str(caught.value)


def test_load_of_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file \\(tickertape users add creates it\\)"):
        Users.load(tmp_path / "users.toml")


# ---------------------------------------------------------------------------- round trip

_NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_PATTERNS = st.text("0123456789*?[]!-_abcXYZ", min_size=1, max_size=32)


@st.composite
def _hashes(draw: st.DrawFn) -> str:
    """Valid encoded hashes: the file round trip checks their form, not their value."""
    n = 2 ** draw(st.integers(1, 16))
    r = draw(st.integers(1, 8))
    p = draw(st.integers(1, 16))
    salt = draw(st.binary(min_size=8, max_size=32))
    digest = draw(st.binary(min_size=16, max_size=64))
    encode = base64.b64encode
    return f"scrypt$n={n},r={r},p={p}${encode(salt).decode()}${encode(digest).decode()}"


@st.composite
def _users(draw: st.DrawFn) -> User:
    roles = draw(st.frozensets(st.sampled_from(Role), min_size=1))
    sessions = None
    if Role.SUBSCRIBER in roles and draw(st.booleans()):
        sessions = tuple(draw(st.lists(_PATTERNS, min_size=1, max_size=4, unique=True)))
    return User(draw(_NAMES), draw(_hashes()), roles, sessions)


@settings(max_examples=60, deadline=None)
@given(st.lists(_users(), max_size=8, unique_by=lambda user: user.name))
def test_save_then_load_any_valid_users(users: list[User]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "users.toml"
        Users(users).save(path)
        loaded = Users.load(path)
    assert loaded == Users(users)
    assert list(loaded) == sorted(users, key=lambda user: user.name)


def test_a_users_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[users.ann]\nroles = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        Users.load(path)


def test_a_server_refuses_a_users_file_with_no_users(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("# nobody\n")
    assert len(Users.load(path)) == 0  # `tickertape users add` starts from such a file
    with pytest.raises(ConfigError, match="has no users: every login would be refused"):
        Users.load_to_serve(path)


def test_changes_between_two_sets_of_users_are_said_in_a_few_words() -> None:
    ann = User.create("ann", "annpass", ["subscriber"])
    bob = User.create("bob", "bobpass", ["subscriber"])
    old = Users([ann, bob])
    new = Users([User(ann.name, ann.password_hash, frozenset({Role.ADMIN}))])
    new.add("cy", "cypass", ["publisher"])
    assert new.changes_from(old) == "added cy; removed bob; changed ann (roles)"
    assert new.admins() == ["ann"]
    assert old.changes_from(old) == "no change"
