"""The users file (tickertape.auth.usersfile, through Users.load and Users.save): written
atomically and privately, read back the same, and every error names the file."""

from __future__ import annotations

import base64
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickertape.auth.passwords import hash_password
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
