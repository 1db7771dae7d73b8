"""The users file: reading and checking it, and writing it atomically.

A users file is TOML, written by :func:`write_users_file` (``tickertape users`` manages
it)::

    [users.alice]
    password = "scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>"
    roles = ["subscriber"]
    sessions = ["2026*"]          # optional: only these sessions (fnmatch patterns)

Every error is a :class:`~tickertape.errors.ConfigError` that names the file and says
what is wrong with it. The users read are :class:`~tickertape.auth.user.User` values;
:class:`~tickertape.auth.users.Users` (``Users.load``, ``Users.save``) is what the rest
of tickertape calls. Not here: what a user may do (:mod:`tickertape.auth.user`), hashing
(:mod:`tickertape.auth.passwords`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from tickertape.auth.passwords import normalise_username
from tickertape.auth.user import ROLE_NAMES, Role, User, check_sessions, parse_roles
from tickertape.errors import ConfigError

log = logging.getLogger(__name__)

HEADER: Final = """\
# tickertape users file: who may log in to the SoupBinTCP server, and what they may do.
# Written by `tickertape users add|remove|passwd|roles` (see `tickertape users --help`);
# keep it private (mode 0600): it holds password hashes.
#
# [users.NAME]   NAME: 1 to 6 letters or digits, case-insensitive (kept in lower case)
# password       scrypt$n=N,r=R,p=P$SALT$HASH (base64): a hash of the upper-cased
#                password; the password itself is never stored
# roles          any of "subscriber" (may log in and read sessions), "publisher"
#                (may publish) and "admin" (may do everything)
# sessions       optional, for subscribers: the sessions they may read, ids or
#                patterns such as "2026*" (default: every session)
"""
"""What every users file written starts with: what it is and what each key means."""

_USER_KEYS: Final = frozenset({"password", "roles", "sessions"})


# ---------------------------------------------------------------------------- reading


def read_users_file(path: str | os.PathLike[str]) -> list[User]:
    """The users of a users file. :class:`ConfigError` names the file and says what is
    wrong: it cannot be read, is not TOML, or has an unknown key or role, a bad name, a
    malformed hash or a user twice. Logs a warning if others may read it."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(
            f"users file {path}: no such file (tickertape users add creates it)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"users file {path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"users file {path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"users file {path}: not valid TOML: not UTF-8") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ConfigError(
            f"users file {path}: not valid TOML: arrays or tables nested too deeply"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "users file %s may be read by others (mode %o): it holds password hashes; chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )
    return _from_document(document, path)


def _from_document(document: dict[str, Any], path: Path) -> list[User]:
    unknown = sorted(set(document) - {"users"})
    if unknown:
        raise ConfigError(
            f"users file {path}: unknown key {unknown[0]!r}: only [users.NAME] tables"
        )
    table = document.get("users", {})
    if not isinstance(table, dict):
        raise ConfigError(f"users file {path}: 'users' must be tables [users.NAME]")
    users: dict[str, User] = {}
    for raw_name, entry in table.items():
        where = f"users file {path}: user {raw_name!r}"
        try:
            user = _user_from_table(raw_name, entry)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if user.name in users:
            raise ConfigError(f"{where}: listed twice (names are case-insensitive)")
        users[user.name] = user
    return list(users.values())


def _user_from_table(raw_name: str, entry: object) -> User:
    if not isinstance(entry, dict):
        raise ConfigError("must be a table [users.NAME] with password and roles")
    unknown = sorted(set(entry) - _USER_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}: the keys are password, roles, sessions")
    if "password" not in entry:
        raise ConfigError("has no password (tickertape users passwd sets one)")
    password = entry["password"]
    if not isinstance(password, str):
        raise ConfigError("password must be a string scrypt$...")
    roles = entry.get("roles")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise ConfigError(f"roles must be a list of strings, of {ROLE_NAMES}")
    sessions = entry.get("sessions")
    if sessions is not None and not isinstance(sessions, list):
        raise ConfigError('sessions must be a list of session ids or patterns, such as ["2026*"]')
    return User(
        normalise_username(raw_name),
        password,
        parse_roles(roles),
        None if sessions is None else check_sessions(sessions),
    )


# ---------------------------------------------------------------------------- writing


def users_file_text(users: Iterable[User]) -> str:
    """A users file's text: :data:`HEADER`, then a table per user, in the order given."""
    parts = [HEADER]
    for user in users:
        lines = [
            "",
            f"[users.{user.name}]",
            f"password = {_toml_string(user.password_hash)}",
            f"roles = {_toml_array(role.value for role in Role if role in user.roles)}",
        ]
        if user.sessions is not None:
            lines.append(f"sessions = {_toml_array(user.sessions)}")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def write_users_file(path: str | os.PathLike[str], text: str) -> None:
    """Write a users file's ``text`` atomically, mode 0600: a temporary file in the same
    directory, synced, renamed over ``path``. :class:`ConfigError` if it cannot be."""
    path = Path(path)
    data = text.encode("utf-8")
    directory = path.parent
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"users file {path}: cannot write it: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ConfigError(f"users file {path}: cannot write it: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # the rename itself durable, where it can be
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _toml_string(text: str) -> str:
    """A TOML basic string."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _toml_array(items: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_string(item) for item in items) + "]"
