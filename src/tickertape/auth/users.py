"""The users of a users file, by name: what a server authenticates a login against.

:meth:`Users.authenticate` is what the server calls for a login. It is CPU bound (one
scrypt, about 30 ms), releases the GIL while hashing, and is safe to call from several
threads at once, even while another changes the set. :meth:`Users.load` and
:meth:`Users.save` read and write the users file (:mod:`tickertape.auth.usersfile`).

Not here: one user and its roles (:mod:`tickertape.auth.user`), hashing
(:mod:`tickertape.auth.passwords`), the file's format (:mod:`tickertape.auth.usersfile`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

from tickertape.auth.passwords import (
    check_login_password,
    hash_password,
    is_alphanumeric,
    normalise_username,
)
from tickertape.auth.user import Role, User, check_sessions, parse_roles
from tickertape.auth.usersfile import read_users_file, users_file_text, write_users_file
from tickertape.errors import ConfigError

log = logging.getLogger(__name__)


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
        if not isinstance(name, str) or not is_alphanumeric(name):
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
            matches = check_login_password(
                password, user.password_hash if user is not None else None
            )
            return user if matches else None
        except Exception:  # the login is refused, whatever went wrong
            log.exception("could not check the password of user %r", username)
            return None

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
        """Read a users file (see :func:`~tickertape.auth.usersfile.read_users_file`):
        :class:`ConfigError` names the file and says what is wrong with it."""
        return cls(read_users_file(path))

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

    def dumps(self) -> str:
        """The users file's text: a header explaining it, then a table per user."""
        return users_file_text(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the users file atomically, mode 0600 (see
        :func:`~tickertape.auth.usersfile.write_users_file`); :class:`ConfigError` if it
        cannot be."""
        write_users_file(path, self.dumps())
