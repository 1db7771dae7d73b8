"""``tickertape users``: add, remove, re-password and list the users of a users file.

A password is read from a prompt (twice) when standard input is a terminal, else as
one line of standard input; never from the command line, and only its hash is written.
Input the file cannot take (a name or password SoupBinTCP cannot carry, an unknown
role, a user that exists or does not) is a one-line error and exit status 2; a file
that cannot be read or written, exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from tickertape.auth.passwords import (
    PASSWORD_LENGTH,
    USERNAME_LENGTH,
    normalise_password,
    normalise_username,
)
from tickertape.auth.user import ROLE_NAMES, Role, User, check_sessions, parse_roles
from tickertape.auth.users import Users
from tickertape.errors import ConfigError

DEFAULT_USERS_FILE: Final = Path("users.toml")

_P = ParamSpec("_P")
_T = TypeVar("_T")

EXIT_FILE: Final = 1
EXIT_USAGE: Final = 2


class _UsageError(Exception):
    """Input the command refuses: exit status 2."""


def add_users_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``users`` verb to the ``tickertape`` parser's subparsers; run the parsed
    arguments with :func:`run_users`."""
    users: argparse.ArgumentParser = subparsers.add_parser(
        "users",
        help="add, remove, re-password and list the users allowed to log in",
        description="Manage a users file: who may log in to the server and with which roles "
        f"({ROLE_NAMES}). SoupBinTCP limits a username to {USERNAME_LENGTH} and a password "
        f"to {PASSWORD_LENGTH} letters or digits, both case-insensitive. Passwords are read "
        "from a prompt, or from standard input when it is not a terminal; only their scrypt "
        "hashes are stored.",
    )
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=description
        )
        if name != "list":
            parser.add_argument(
                "name",
                metavar="NAME",
                help=f"username: 1 to {USERNAME_LENGTH} letters or digits, case-insensitive",
            )
        parser.add_argument(
            "--file",
            type=Path,
            default=DEFAULT_USERS_FILE,
            metavar="FILE",
            help="the users file (%(default)s)",
        )
        return parser

    def role_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--role",
            action="append",
            required=True,
            metavar="ROLE[,ROLE]",
            help=f"what the user may do, any of {ROLE_NAMES}: a subscriber may log in and read "
            "sessions, a publisher may publish, an admin may do everything (repeatable)",
        )
        parser.add_argument(
            "--session",
            action="append",
            metavar="PATTERN",
            help="a subscriber may read only the sessions matching PATTERN, a session id or a "
            "pattern such as '2026*' (repeatable; default: every session)",
        )

    add = action(
        "add",
        "add a user, asking for its password",
        "Add a user with the roles given. The password (1 to "
        f"{PASSWORD_LENGTH} letters or digits, case-insensitive) is asked for twice, or read "
        "as one line of standard input when that is not a terminal. The file is created, "
        "mode 0600, if it does not exist.",
    )
    role_options(add)
    action(
        "remove",
        "remove a user",
        "Remove a user from the users file.",
    )
    action(
        "passwd",
        "give a user a new password",
        "Give a user a new password, asked for twice, or read as one line of standard input "
        "when that is not a terminal. Its roles are kept.",
    )
    roles = action(
        "roles",
        "give a user new roles and sessions",
        "Replace a user's roles and sessions with those given (without --session: every "
        "session), keeping its password.",
    )
    role_options(roles)
    action(
        "list",
        "list the users: names, roles, sessions",
        "List the users of the file: name, roles and the sessions each may read. Never the "
        "password hashes.",
    )
    return users


def run_users(args: argparse.Namespace) -> int:
    """Run a parsed ``tickertape users`` command; its exit status."""
    command = f"tickertape users {args.action}"
    handlers = {
        "add": _add,
        "remove": _remove,
        "passwd": _passwd,
        "roles": _roles,
        "list": _list,
    }
    try:
        if args.action == "list":
            return _list(args)
        with _locked(args.file):
            return handlers[args.action](args)
    except _UsageError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_FILE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Held while one ``users`` command reads, changes and writes ``path``: two at once
    (two operators, a script) would otherwise lose one's change. The lock is ``flock``
    on the file's directory, which the atomic rename of a save leaves in place."""
    directory = path.parent
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError(
            f"cannot use {directory} for {path.name}: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(path: Path, *, create: bool = False) -> Users:
    if create and not path.exists():
        return Users()
    return Users.load(path)


def _usage(call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``call(*args)``, its :class:`ConfigError` (bad input, not a bad file) a usage error."""
    try:
        return call(*args, **kwargs)
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None


def _roles_of(args: argparse.Namespace) -> list[str]:
    return [name for text in args.role for name in text.split(",") if name.strip()]


def _describe(user: User) -> str:
    roles = ",".join(role.value for role in Role if role in user.roles)
    sessions = f"; sessions {', '.join(user.sessions)}" if user.sessions is not None else ""
    return f"{user.name} ({roles}{sessions})"


def _add(args: argparse.Namespace) -> int:
    users = _load(args.file, create=True)
    name = _usage(_check_new_user, users, args)
    password = _read_password(name)
    user = _usage(users.add, name, password, _roles_of(args), args.session)
    users.save(args.file)
    print(f"added user {_describe(user)} to {args.file}")
    return 0


def _check_new_user(users: Users, args: argparse.Namespace) -> str:
    """Everything about ``add`` but the password, checked before it is asked for."""
    name = normalise_username(args.name)
    if name in users:
        raise ConfigError(
            f"user {name!r} exists in {args.file}: change its password with "
            f"'tickertape users passwd {name}', its roles with 'tickertape users roles {name}'"
        )
    roles = parse_roles(_roles_of(args))
    if args.session is not None:
        check_sessions(args.session)
        if Role.SUBSCRIBER not in roles:
            raise ConfigError("--session limits what a subscriber may read: add --role subscriber")
    return name


def _remove(args: argparse.Namespace) -> int:
    users = _load(args.file)
    user = _usage(_existing, users, args)
    users.remove(user.name)
    users.save(args.file)
    print(f"removed user {user.name} from {args.file}")
    return 0


def _passwd(args: argparse.Namespace) -> int:
    users = _load(args.file)
    user = _usage(_existing, users, args)
    password = _read_password(user.name)
    _usage(users.set_password, user.name, password)
    users.save(args.file)
    print(f"changed the password of user {user.name} in {args.file}")
    return 0


def _roles(args: argparse.Namespace) -> int:
    users = _load(args.file)
    _usage(_existing, users, args)
    user = _usage(users.set_roles, args.name, _roles_of(args), args.session)
    users.save(args.file)
    print(f"user {_describe(user)} in {args.file}")
    return 0


def _existing(users: Users, args: argparse.Namespace) -> User:
    key = normalise_username(args.name)
    user = users.get(key)
    if user is None:
        raise ConfigError(f"there is no user {key!r} in {args.file}")
    return user


def _list(args: argparse.Namespace) -> int:
    users = _load(args.file)
    if not len(users):
        print(f"no users in {args.file}", file=sys.stderr)
        return 0
    rows = [("NAME", "ROLES", "SESSIONS")]
    for user in users:
        roles = ",".join(role.value for role in Role if role in user.roles)
        if Role.ADMIN in user.roles or (Role.SUBSCRIBER in user.roles and user.sessions is None):
            sessions = "all"
        elif user.sessions is not None:
            sessions = ",".join(user.sessions)
        else:
            sessions = "-"
        rows.append((user.name, roles, sessions))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for name, roles, sessions in rows:
        print(f"{name:<{widths[0]}}  {roles:<{widths[1]}}  {sessions}")
    return 0


def _read_password(name: str) -> str:
    """The new password of user ``name``: asked for twice on a terminal, else the first
    line of standard input. Checked, so that a bad one is refused before anything is
    written; never echoed, never in a message."""
    if sys.stdin.isatty():
        try:
            password = getpass.getpass(f"password for {name}: ")
            again = getpass.getpass(f"password for {name} (again): ")
        except EOFError:
            raise _UsageError("no password given") from None
        if password != again:
            raise _UsageError("the two passwords differ; nothing was changed")
    else:
        line = sys.stdin.readline()
        if not line:
            raise _UsageError(
                "no password on standard input (give it as one line, or run on a terminal "
                "to be asked for it)"
            )
        password = line.rstrip("\r\n")
    _usage(normalise_password, password)
    return password
