"""``tickertape users``, run as a user would: a real subprocess, the password on stdin
(or typed at a terminal)."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tickertape.auth.user import Role
from tickertape.auth.users import Users


def users(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", "users", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
        check=False,
    )


def add(path: Path, name: str, password: str, *options: str) -> None:
    done = users("add", name, "--file", str(path), *options, stdin=password + "\n")
    assert done.returncode == 0, done.stderr


def test_add_stores_only_a_hash_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    done = users(
        "add", "Alice", "--role", "subscriber", "--session", "2026*", "--file", str(path),
        stdin="Secret42\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"added user alice (subscriber; sessions 2026*) to {path}\n"
    add(path, "bob", "PubPass9", "--role", "publisher,admin")
    text = path.read_text()
    assert "secret42" not in text.lower()
    assert "pubpass9" not in text.lower()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]
    loaded = Users.load(path)
    alice = loaded.authenticate("ALICE", "secret42")
    assert alice is not None
    assert alice.roles == {Role.SUBSCRIBER}
    assert alice.sessions == ("2026*",)
    bob = loaded.authenticate("bob", "PUBPASS9")
    assert bob is not None
    assert bob.roles == {Role.PUBLISHER, Role.ADMIN}


def test_list_shows_names_roles_and_sessions_never_hashes(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    add(path, "alice", "pw1", "--role", "subscriber", "--session", "2026*", "--session", "2025*")
    add(path, "bob", "pw2", "--role", "publisher", "--role", "admin")
    add(path, "carol", "pw3", "--role", "publisher")
    add(path, "dave", "pw4", "--role", "subscriber")
    done = users("list", "--file", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "NAME   ROLES            SESSIONS",
        "alice  subscriber       2026*,2025*",
        "bob    publisher,admin  all",
        "carol  publisher        -",
        "dave   subscriber       all",
    ]
    assert "scrypt" not in done.stdout + done.stderr


def test_the_file_defaults_to_users_toml(tmp_path: Path) -> None:
    done = users("add", "alice", "--role", "admin", stdin="pw\n", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "users.toml").exists()
    listed = users("list", cwd=tmp_path)
    assert listed.stdout.splitlines()[1].startswith("alice  admin")


def test_passwd_changes_the_password_and_keeps_the_roles(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    add(path, "alice", "Old1", "--role", "subscriber", "--session", "2026*")
    done = users("passwd", "ALICE", "--file", str(path), stdin="New2\r\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"changed the password of user alice in {path}\n"
    loaded = Users.load(path)
    assert loaded.authenticate("alice", "Old1") is None
    alice = loaded.authenticate("alice", "new2")
    assert alice is not None
    assert alice.sessions == ("2026*",)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_roles_replaces_roles_and_sessions_keeping_the_password(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    add(path, "alice", "pw1", "--role", "publisher")
    done = users(
        "roles", "alice", "--role", "subscriber", "--session", "2026*", "--file", str(path)
    )
    assert done.returncode == 0, done.stderr
    alice = Users.load(path).authenticate("alice", "pw1")
    assert alice is not None
    assert alice.roles == {Role.SUBSCRIBER}
    assert alice.sessions == ("2026*",)


def test_remove(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    add(path, "alice", "pw1", "--role", "admin")
    add(path, "bob", "pw2", "--role", "admin")
    done = users("remove", "ALICE", "--file", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"removed user alice from {path}\n"
    assert [user.name for user in Users.load(path)] == ["bob"]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ["add", "ALICEBOB", "--role", "admin"],
            "pw\n",
            "username 'ALICEBOB' is 8 characters; SoupBinTCP allows at most 6 letters or digits",
        ),
        (["add", "al-ce", "--role", "admin"], "pw\n", "letters or digits"),
        (
            ["add", "carol", "--role", "admin"],
            "Secret42\x21\n",
            "the password has characters other than letters or digits; SoupBinTCP allows 1 to 10",
        ),
        (
            ["add", "carol", "--role", "admin"],
            "Secret424242\n",
            "the password is 12 characters; SoupBinTCP allows at most 10 letters or digits",
        ),
        (["add", "carol", "--role", "admin"], "\n", "the password is empty"),
        (["add", "carol", "--role", "admin"], "", "no password on standard input"),
        (
            ["add", "carol", "--role", "reader"],
            "pw\n",
            "unknown role 'reader': the roles are subscriber, publisher, admin",
        ),
        (
            ["add", "carol", "--role", "publisher", "--session", "2026*"],
            "pw\n",
            "--session limits what a subscriber may read",
        ),
        (
            ["add", "carol", "--role", "subscriber", "--session", "20 26"],
            "pw\n",
            "session pattern '20 26'",
        ),
        (["add", "ALICE", "--role", "admin"], "pw\n", "user 'alice' exists"),
        (["remove", "bob"], "", "there is no user 'bob'"),
        (["passwd", "bob"], "pw\n", "there is no user 'bob'"),
        (["roles", "bob", "--role", "admin"], "", "there is no user 'bob'"),
    ],
)
def test_bad_input_is_a_one_line_error_and_exit_status_2(
    tmp_path: Path, args: list[str], stdin: str, message: str
) -> None:
    path = tmp_path / "users.toml"
    add(path, "alice", "pw1", "--role", "subscriber")
    before = path.read_bytes()
    done = users(*args, "--file", str(path), stdin=stdin)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"tickertape users {args[0]}: ")
    assert message in done.stderr
    if stdin.strip():
        assert stdin.strip() not in done.stderr
    assert path.read_bytes() == before


def test_a_password_is_never_taken_from_the_command_line(tmp_path: Path) -> None:
    done = users(
        "add", "alice", "--role", "admin", "--password", "pw", "--file", str(tmp_path / "u")
    )
    assert done.returncode == 2
    assert "unrecognized arguments: --password" in done.stderr
    assert not (tmp_path / "u").exists()


def test_a_damaged_file_is_exit_status_1(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("[users.alice]\npassword = 'plain'\nroles = ['admin']\n")
    done = users("list", "--file", str(path))
    assert done.returncode == 1
    assert f"users file {path}: user 'alice': the password hash is not of the form" in done.stderr
    missing = users("list", "--file", str(tmp_path / "none.toml"))
    assert missing.returncode == 1
    assert "no such file (tickertape users add creates it)" in missing.stderr


@pytest.mark.parametrize("action", ["add", "remove", "passwd", "roles", "list"])
def test_every_users_action_has_help(action: str) -> None:
    done = users(action, "--help")
    assert done.returncode == 0
    assert f"usage: tickertape users {action}" in done.stdout
    assert "--file FILE" in done.stdout


# ---------------------------------------------------------------------------- a terminal


class Terminal:
    """The command run with a pseudo-terminal as stdin, stdout and stderr, in a session
    of its own (so that it never prompts on the terminal running the tests)."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tickertape", "users", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} in {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the command has exited
                    chunk = b""
                assert chunk, f"no {text!r} in {self.seen!r}"
                self.seen += chunk

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def wait(self) -> int:
        code = self.process.wait(timeout=20)
        while select.select([self.master], [], [], 0)[0]:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.seen += chunk
        os.close(self.master)
        return code


def test_on_a_terminal_the_password_is_asked_for_twice_unechoed(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    terminal = Terminal("add", "alice", "--role", "admin", "--file", str(path))
    terminal.expect("password for alice: ")
    terminal.type("Typed42")
    terminal.expect("password for alice (again): ")
    terminal.type("Typed43")
    assert terminal.wait() == 2
    assert b"the two passwords differ" in terminal.seen
    assert not path.exists()

    terminal = Terminal("add", "alice", "--role", "admin", "--file", str(path))
    terminal.expect("password for alice: ")
    terminal.type("Typed42")
    terminal.expect("password for alice (again): ")
    terminal.type("Typed42")
    assert terminal.wait() == 0, terminal.seen
    assert b"added user alice (admin)" in terminal.seen
    assert b"Typed42" not in terminal.seen  # not echoed
    assert Users.load(path).authenticate("alice", "typed42") is not None


def test_users_added_at_the_same_time_are_all_kept(tmp_path: Path) -> None:
    """Eight ``users add`` at once on one file: each waits for the one before it."""
    file = tmp_path / "users.toml"
    names = [f"user{i}" for i in range(8)]
    command = [sys.executable, "-m", "tickertape", "users", "add"]
    runs = [
        subprocess.Popen(
            [*command, name, "--role", "subscriber", "--file", str(file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    for run in runs:  # every password first: the one holding the lock reads its own
        assert run.stdin is not None
        run.stdin.write("secret\n")
        run.stdin.close()
    for run in runs:
        assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
    assert sorted(user.name for user in Users.load(file)) == names
