"""Options and answers that several ``tickertape`` verbs share: the data directory's
default, the server a client connects to (or several), TLS for a client, the admin
token, and the hint a rejected login gets.

The kinds of value an option takes are in :mod:`tickertape.cli.argtypes`; the options
of one verb alone are in that verb's module.
"""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Final

from tickertape.cli import argtypes
from tickertape.defaults import DEFAULT_HOST, DEFAULT_PORT
from tickertape.errors import ConfigError, LoginRejected, TickertapeError
from tickertape.tls import client_context
from tickertape.wire.soupbintcp import REJECT_NOT_AUTHORIZED

DEFAULT_DATA: Final = Path("data")
PASSWORD_HELP: Final = "password (shows in the process list: prefer --password-file)"


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")


def add_server_options(parser: argparse.ArgumentParser, several: str) -> None:
    """``--host`` and ``--port``, or ``--server`` for several servers (``several`` says
    what the command does with them); :func:`check_servers` makes ``args.servers``."""
    parser.add_argument("--host", help=f"the server's address ({DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=argtypes.remote_port, help=f"the server's port ({DEFAULT_PORT})"
    )
    parser.add_argument(
        "--server",
        dest="server",
        action="extend",
        type=argtypes.servers,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="instead of --host and --port: several servers of the same sessions, such as "
        "the nodes of a cluster, comma-separated or the option repeated (an IPv6 address in "
        f"brackets: [::1]:7300); {several}",
    )


def check_servers(args: argparse.Namespace) -> None:
    """Refuse ``--server`` with ``--host`` or ``--port``, or naming a server twice; set
    ``args.servers``, the servers' ``(host, port)`` in the order given."""
    if args.server is None:
        args.servers = [(args.host or DEFAULT_HOST, args.port or DEFAULT_PORT)]
        return
    if args.host is not None or args.port is not None:
        args.subparser.error("give --server, or --host and --port, not both")
    seen = set()
    for host, port in args.server:
        if (host, port) in seen:
            args.subparser.error(f"--server names {host}:{port} twice")
        seen.add((host, port))
    args.servers = list(args.server)


def add_tls_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS (1.2 or later), checking the server's certificate against "
        "the system's trust store (or --ca) and its name against --host (or each --server's "
        "host)",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="with --tls, trust only the CA certificates in this PEM file",
    )


def check_tls_client(args: argparse.Namespace) -> None:
    """Refuse ``--ca`` without ``--tls``; load the client TLS context they ask for, if
    any, into ``args.tls_context`` (:class:`ConfigError` if a file cannot be read)."""
    if args.ca is not None and not args.tls:
        args.subparser.error("--ca needs --tls")
    args.tls_context = tls_client(args)


def tls_client(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client TLS context ``--tls`` and ``--ca`` ask for, if any."""
    return client_context(args.ca) if args.tls else None


def add_token_options(parser: argparse.ArgumentParser, what: str, *, user: bool = True) -> None:
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--admin-token", metavar="TOKEN", help=what)
    token.add_argument(
        "--admin-token-file",
        type=Path,
        metavar="FILE",
        help="read the token from FILE (its first line), which keeps it out of the process list",
    )
    if user:
        token.add_argument(
            "--admin-user",
            metavar="NAME",
            help="instead of a token, log in as NAME, a user with the admin role in the "
            "server's users file; the password is asked for (or read as one line of stdin)",
        )


def read_token(args: argparse.Namespace) -> str | None:
    """The admin token from ``--admin-token`` or ``--admin-token-file``, if either."""
    if args.admin_token_file is None:
        token: str | None = args.admin_token
        if token is not None and not token.strip():
            raise ConfigError("--admin-token is empty")
        return token.strip() if token is not None else None
    try:
        lines = args.admin_token_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the admin token file {args.admin_token_file}: {exc}"
        ) from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"the admin token file {args.admin_token_file} is empty")
    return token


def rejected(exc: LoginRejected, args: argparse.Namespace) -> TickertapeError:
    """A rejected login, with a hint if no --user was given and the server wants one."""
    if exc.reason == REJECT_NOT_AUTHORIZED and not args.user:
        return ConfigError(f"{exc} (give --user NAME and --password SECRET)")
    return exc
