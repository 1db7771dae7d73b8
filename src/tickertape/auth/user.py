"""One user of a users file, and what someone may do.

Roles: ``subscriber`` may log in and read sessions (all of them, or only those its
``sessions`` patterns match), ``publisher`` may publish, ``admin`` may do everything.
:class:`Permissions` answers "may they read this session, may they publish" for a
:class:`User` and for a login with no users file behind it.

Not here: password hashing (:mod:`tickertape.auth.passwords`), the set of users
(:mod:`tickertape.auth.users`), the file (:mod:`tickertape.auth.usersfile`).
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from tickertape.auth.passwords import (
    check_hash,
    hash_password,
    normalise_username,
    verify_password,
)
from tickertape.errors import ConfigError

SESSION_PATTERN_LENGTH: Final = 32

_SESSION_PATTERN: Final = re.compile(r"[A-Za-z0-9*?\[\]!_-]+")


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
        check_hash(self.password_hash)
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
