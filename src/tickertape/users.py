"""Who may log in to the SoupBinTCP server, and what each user may do.

A users file is TOML, written by :meth:`Users.save` (``tickertape users`` manages it)::

    [users.alice]
    password = "scrypt$n=16384,r=8,p=1$<salt, base64>$<hash, base64>"
    roles = ["subscriber"]
    sessions = ["2026*"]          # optional: only these sessions (fnmatch patterns)

Roles: ``subscriber`` may log in and read sessions (all of them, or only those
``sessions`` matches), ``publisher`` may publish, ``admin`` may do everything.

SoupBinTCP's Username (6) and Password (10) fields are alphanumeric, case-insensitive
and space padded: a name is 1 to 6 ASCII letters or digits, kept in lower case; a
password is 1 to 10 ASCII letters or digits, hashed upper-cased, so that ``secret`` and
``SECRET`` are the same password. Only an scrypt hash is stored, never the password.

:meth:`Users.authenticate` is what the server calls for a login. It is CPU bound (one
scrypt, about 30 ms: see :data:`SCRYPT_N`), releases the GIL while hashing, and is safe
to call from several threads at once.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import fnmatch
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tickertape.errors import ConfigError

log = logging.getLogger(__name__)

USERNAME_LENGTH: Final = 6
PASSWORD_LENGTH: Final = 10

SCRYPT_N: Final = 2**14
"""scrypt's cost: one hash or verification takes about 28 ms of one core (measured on a
2-core build machine) and 16 MiB of memory (128 * r * n bytes)."""
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32

MAX_SCRYPT_MEMORY: Final = 256 << 20
"""A hash in a users file that needs more memory than this to verify is refused on
load: one login must not be able to take a server's memory."""

SESSION_PATTERN_LENGTH: Final = 32

_HEADER: Final = """\
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

_HASH_FORMAT: Final = re.compile(
    r"scrypt\$n=(?P<n>[0-9]{1,8}),r=(?P<r>[0-9]{1,3}),p=(?P<p>[0-9]{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]+={0,2})\$(?P<hash>[A-Za-z0-9+/]+={0,2})"
)
_SESSION_PATTERN: Final = re.compile(r"[A-Za-z0-9*?\[\]!_-]+")
_USER_KEYS: Final = frozenset({"password", "roles", "sessions"})


class Role(enum.StrEnum):
    """What a user may do."""

    SUBSCRIBER = "subscriber"
    """May log in and read sessions: every one, or those the user's ``sessions`` match."""
    PUBLISHER = "publisher"
    """May publish into the active session."""
    ADMIN = "admin"
    """May do everything, read every session included."""


ROLE_NAMES: Final = ", ".join(role.value for role in Role)


class Permissions:
    """What someone may do, from their ``roles`` and the ``sessions`` they may read
    (None: every one): a :class:`User`, or a login with no users file behind it."""

    __slots__ = ()
    roles: frozenset[Role]
    sessions: tuple[str, ...] | None

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def may_publish(self) -> bool:
        """A publisher or an admin."""
        return bool(self.roles & {Role.PUBLISHER, Role.ADMIN})

    def may_read(self, session_id: str) -> bool:
        """Whether they may read (subscribe to) session ``session_id``: an admin reads
        every session; a subscriber every one, or those its ``sessions`` match."""
        if self.is_admin:
            return True
        if Role.SUBSCRIBER not in self.roles:
            return False
        if self.sessions is None:
            return True
        return any(fnmatch.fnmatchcase(session_id, pattern) for pattern in self.sessions)


# ---------------------------------------------------------------------------- validation


def _is_alphanumeric(text: str) -> bool:
    return text.isascii() and text.isalnum()


def normalise_username(name: str) -> str:
    """``name`` as stored: lower case. :class:`ConfigError` if SoupBinTCP cannot carry it."""
    _check_field(name, "the username", f"username {name!r}", USERNAME_LENGTH)
    return name.lower()


def normalise_password(password: str) -> str:
    """``password`` as hashed: upper case. :class:`ConfigError` if SoupBinTCP cannot carry
    it; the message never quotes the password."""
    _check_field(password, "the password", "the password", PASSWORD_LENGTH)
    return password.upper()


def _check_field(value: str, empty: str, named: str, limit: int) -> None:
    """A SoupBinTCP username or password field: 1 to ``limit`` ASCII letters or digits.
    ``empty`` and ``named`` say what it is in the messages."""
    rule = f"SoupBinTCP allows 1 to {limit} letters or digits"
    if not value:
        raise ConfigError(f"{empty} is empty; {rule}")
    if len(value) > limit:
        raise ConfigError(
            f"{named} is {len(value)} characters; SoupBinTCP allows at most {limit} letters "
            "or digits"
        )
    if not _is_alphanumeric(value):
        raise ConfigError(f"{named} has characters other than letters or digits; {rule}")


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    """The roles named (each name case-insensitive); :class:`ConfigError` for an unknown
    one or none at all."""
    roles: set[Role] = set()
    for name in names:
        try:
            roles.add(Role(name.strip().lower()))
        except ValueError:
            raise ConfigError(f"unknown role {name!r}: the roles are {ROLE_NAMES}") from None
    if not roles:
        raise ConfigError(f"a user needs at least one role: {ROLE_NAMES}")
    return frozenset(roles)


def check_sessions(patterns: Iterable[str]) -> tuple[str, ...]:
    """Session ids or fnmatch patterns, checked: :class:`ConfigError` for an empty list or
    a pattern with characters a session id never has."""
    checked: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not _SESSION_PATTERN.fullmatch(pattern):
            raise ConfigError(
                f"session pattern {pattern!r}: use a session id (YYYYMMDDNN) or a pattern "
                "with * ? [...], such as 2026*"
            )
        if len(pattern) > SESSION_PATTERN_LENGTH:
            raise ConfigError(
                f"session pattern {pattern!r} is longer than {SESSION_PATTERN_LENGTH} characters"
            )
        if pattern not in checked:
            checked.append(pattern)
    if not checked:
        raise ConfigError("the list of sessions is empty: leave it out for every session")
    return tuple(checked)


# ---------------------------------------------------------------------------- hashing


@dataclass(frozen=True, slots=True)
class _Scrypt:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @property
    def maxmem(self) -> int:
        """OpenSSL's measure of the memory a hash takes (its limit must be above it)."""
        return 128 * self.r * (self.n + self.p + 2) + (1 << 20)

    def derive(self, normalised: str) -> bytes:
        return hashlib.scrypt(
            normalised.encode("ascii"),
            salt=self.salt,
            n=self.n,
            r=self.r,
            p=self.p,
            maxmem=self.maxmem,
            dklen=len(self.digest),
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_hash(encoded: str) -> _Scrypt:
    """The parts of an encoded hash; :class:`ConfigError` saying what is wrong with it."""
    shape = "scrypt$n=N,r=R,p=P$SALT$HASH"
    match = _HASH_FORMAT.fullmatch(encoded) if isinstance(encoded, str) else None
    if match is None:
        raise ConfigError(f"the password hash is not of the form {shape}")
    n, r, p = int(match["n"]), int(match["r"]), int(match["p"])
    if n < 2 or n & (n - 1):
        raise ConfigError(f"the password hash's n={n} is not a power of 2")
    if not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ConfigError(f"the password hash's r={r}, p={p}: r must be 1 to 64, p 1 to 16")
    if 128 * r * n > MAX_SCRYPT_MEMORY:
        raise ConfigError(
            f"the password hash's n={n}, r={r} need {128 * r * n >> 20} MiB to verify, "
            f"more than {MAX_SCRYPT_MEMORY >> 20} MiB"
        )
    try:
        salt = base64.b64decode(match["salt"], validate=True)
        digest = base64.b64decode(match["hash"], validate=True)
    except binascii.Error:
        raise ConfigError(f"the password hash's salt or hash is not base64 ({shape})") from None
    if len(salt) < 8:
        raise ConfigError(f"the password hash's salt is {len(salt)} bytes: at least 8 are needed")
    if not 16 <= len(digest) <= 64:
        raise ConfigError(f"the password hash is {len(digest)} bytes: 16 to 64 are allowed")
    return _Scrypt(n, r, p, salt, digest)


def hash_password(password: str) -> str:
    """A new scrypt hash of ``password`` (case-insensitive), with a random salt:
    ``scrypt$n=16384,r=8,p=1$<salt>$<hash>``. :class:`ConfigError` if SoupBinTCP cannot
    carry the password."""
    normalised = normalise_password(password)
    params = _Scrypt(
        SCRYPT_N, SCRYPT_R, SCRYPT_P, secrets.token_bytes(SALT_BYTES), bytes(HASH_BYTES)
    )
    digest = params.derive(normalised)
    return f"scrypt$n={params.n},r={params.r},p={params.p}${_b64(params.salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` (case-insensitive) is the one ``encoded`` was made from,
    compared in constant time. False for a password SoupBinTCP cannot carry, at once;
    :class:`ConfigError` if ``encoded`` is not a hash :func:`hash_password` could make."""
    params = _parse_hash(encoded)
    try:
        normalised = normalise_password(password)
    except ConfigError:
        return False
    return hmac.compare_digest(params.derive(normalised), params.digest)


_DUMMY_HASH: Final = (
    f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"
    f"${_b64(secrets.token_bytes(SALT_BYTES))}${_b64(secrets.token_bytes(HASH_BYTES))}"
)
"""What an unknown user's password is checked against, so that a login takes as long
whether the user exists or not. No password hashes to it (it was never made from one)."""
_DUMMY_PASSWORD: Final = "X" * PASSWORD_LENGTH


# ---------------------------------------------------------------------------- users


@dataclass(frozen=True, slots=True)
class User(Permissions):
    """One user of the users file. Construct it with checked values (see
    :meth:`User.create`): ``__post_init__`` refuses anything else with :class:`ConfigError`."""

    name: str
    """1 to 6 letters or digits, lower case."""
    password_hash: str
    """``scrypt$n=...,r=...,p=...$<salt>$<hash>``, of the upper-cased password."""
    roles: frozenset[Role]
    sessions: tuple[str, ...] | None = None
    """The sessions a subscriber may read, ids or fnmatch patterns; None: every one."""

    def __post_init__(self) -> None:
        if normalise_username(self.name) != self.name:
            raise ConfigError(f"username {self.name!r} is not in lower case")
        _parse_hash(self.password_hash)
        if not self.roles or not all(isinstance(role, Role) for role in self.roles):
            raise ConfigError(f"a user needs at least one role: {ROLE_NAMES}")
        if self.sessions is not None:
            if check_sessions(self.sessions) != self.sessions:
                raise ConfigError(f"user {self.name!r} lists a session pattern twice")
            if Role.SUBSCRIBER not in self.roles:
                raise ConfigError(
                    f"user {self.name!r} has sessions but not the subscriber role: "
                    "sessions limit what a subscriber may read"
                )

    @classmethod
    def create(
        cls,
        name: str,
        password: str,
        roles: Iterable[Role | str],
        sessions: Iterable[str] | None = None,
    ) -> User:
        """A new user: ``name`` and ``password`` checked and normalised, the password
        hashed (about 30 ms). :class:`ConfigError` says what is wrong with any of them."""
        return cls(
            normalise_username(name),
            hash_password(password),
            parse_roles(roles),
            None if sessions is None else check_sessions(sessions),
        )

    def check_password(self, password: str) -> bool:
        """Whether ``password`` (case-insensitive) is this user's, in constant time."""
        return verify_password(password, self.password_hash)


class Users:
    """The users of a users file, by name (case-insensitive).

    Mutations replace whole :class:`User` values, each one step, so :meth:`authenticate`
    and :meth:`get` are safe from any thread, even while another changes the set.
    """

    def __init__(self, users: Iterable[User] = ()) -> None:
        self._users: dict[str, User] = {}
        for user in users:
            if user.name in self._users:
                raise ConfigError(f"user {user.name!r} is listed twice")
            self._users[user.name] = user

    # ------------------------------------------------------------------ queries

    def get(self, name: str) -> User | None:
        """The user called ``name`` (any case), or None."""
        if not isinstance(name, str) or not _is_alphanumeric(name):
            return None
        return self._users.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[User]:
        """The users, sorted by name (a snapshot)."""
        return iter(sorted(self._users.values(), key=lambda user: user.name))

    def __len__(self) -> int:
        return len(self._users)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Users) and self._users == other._users

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Users({', '.join(user.name for user in self)})"

    def authenticate(self, username: str, password: str) -> User | None:
        """The user ``username`` if ``password`` is theirs (both case-insensitive), else
        None. One scrypt verification whether or not the user exists, whatever the input,
        so that the time taken does not tell; never raises. CPU bound (about 30 ms) and
        thread-safe: call it from an executor thread."""
        try:
            user = self.get(username)
            try:
                normalised = normalise_password(password) if isinstance(password, str) else None
            except ConfigError:
                normalised = None
            encoded = user.password_hash if user is not None else _DUMMY_HASH
            matches = verify_password(normalised or _DUMMY_PASSWORD, encoded)
            if user is None or normalised is None or not matches:
                return None
            return user
        except Exception:  # the login is refused, whatever went wrong
            log.exception("could not check the password of user %r", username)
            return None

    # ------------------------------------------------------------------ changes

    def add(
        self,
        name: str,
        password: str,
        roles: Iterable[Role | str],
        sessions: Iterable[str] | None = None,
    ) -> User:
        """Add a user; :class:`ConfigError` if one of that name exists, or if the name,
        password, roles or sessions are not valid."""
        key = normalise_username(name)
        if key in self._users:
            raise ConfigError(
                f"user {key!r} exists: change its password with passwd, its roles with roles"
            )
        user = User.create(key, password, roles, sessions)
        self._users[key] = user
        return user

    def remove(self, name: str) -> User:
        """Remove a user and return it; :class:`ConfigError` if there is none of that name."""
        return self._users.pop(self._existing(name).name)

    def set_password(self, name: str, password: str) -> User:
        """Give a user a new password (and a new salt)."""
        user = self._existing(name)
        changed = User(user.name, hash_password(password), user.roles, user.sessions)
        self._users[user.name] = changed
        return changed

    def set_roles(
        self, name: str, roles: Iterable[Role | str], sessions: Iterable[str] | None = None
    ) -> User:
        """Give a user new roles and sessions (None: every session), keeping its password."""
        user = self._existing(name)
        changed = User(
            user.name,
            user.password_hash,
            parse_roles(roles),
            None if sessions is None else check_sessions(sessions),
        )
        self._users[user.name] = changed
        return changed

    def _existing(self, name: str) -> User:
        user = self._users.get(normalise_username(name))
        if user is None:
            raise ConfigError(f"there is no user {name.lower()!r}")
        return user

    # ------------------------------------------------------------------ the file

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Users:
        """Read a users file. :class:`ConfigError` names the file and says what is wrong:
        it cannot be read, is not TOML, or has an unknown key or role, a bad name, a
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
                "users file %s may be read by others (mode %o): it holds password hashes; "
                "chmod 600 it",
                path,
                stat.S_IMODE(mode),
            )
        return cls._from_document(document, path)

    @classmethod
    def load_to_serve(cls, path: str | os.PathLike[str]) -> Users:
        """Read a users file for a server: as :meth:`load`, and a :class:`ConfigError` if
        it has no users (every login would be refused)."""
        users = cls.load(path)
        if not users:
            raise ConfigError(
                f"users file {path} has no users: every login would be refused (add one with "
                f"tickertape users add NAME --role ROLE --file {path})"
            )
        return users

    def admins(self) -> list[str]:
        """The names of the users with the admin role, sorted."""
        return [user.name for user in self if user.is_admin]

    def changes_from(self, old: Users) -> str:
        """What changed from ``old`` to these users, in a few words: who was added,
        removed, or given other roles, sessions or password."""
        added = sorted(set(self._users) - set(old._users))
        removed = sorted(set(old._users) - set(self._users))
        changed = []
        for name in sorted(set(self._users) & set(old._users)):
            before, after = old._users[name], self._users[name]
            what = [
                label
                for label, differs in (
                    ("roles", before.roles != after.roles),
                    ("sessions", before.sessions != after.sessions),
                    ("password", before.password_hash != after.password_hash),
                )
                if differs
            ]
            if what:
                changed.append(f"{name} ({', '.join(what)})")
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (("added", added), ("removed", removed), ("changed", changed))
            if names
        ]
        return "; ".join(parts) or "no change"

    @classmethod
    def _from_document(cls, document: dict[str, Any], path: Path) -> Users:
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
        return cls(users.values())

    def dumps(self) -> str:
        """The users file's text: a header explaining it, then a table per user."""
        parts = [_HEADER]
        for user in self:
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

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the users file atomically, mode 0600: a temporary file in the same
        directory, synced, renamed over ``path``. :class:`ConfigError` if it cannot be."""
        path = Path(path)
        text = self.dumps().encode("utf-8")
        directory = path.parent
        try:
            fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise ConfigError(
                f"users file {path}: cannot write it: {exc.strerror or exc}"
            ) from None
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise ConfigError(
                f"users file {path}: cannot write it: {exc.strerror or exc}"
            ) from None
        with contextlib.suppress(OSError):  # the rename itself durable, where it can be
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


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
