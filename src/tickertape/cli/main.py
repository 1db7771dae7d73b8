"""The ``tickertape`` command: the top parser, the checks every verb shares (TLS, the
client password, logging), and the dispatch to the verb's module (``serve``, ``publish``,
``tail``, ``sessions``, ``users``, ``bench``, ``cluster``).

What each verb takes and does is in its own module of :mod:`tickertape.cli`; the
console script ``tickertape`` and ``python -m tickertape.cli`` both call :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from tickertape import __version__
from tickertape.cli import cluster, publish, serve, serve_options, sessions, tail
from tickertape.cli.bench import add_bench_command, run_bench
from tickertape.cli.config import client_password
from tickertape.cli.users import add_users_command, run_users
from tickertape.errors import ConfigError, TickertapeError
from tickertape.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb's options."""
    parser = argparse.ArgumentParser(
        prog="tickertape",
        description="Sequenced, session-based message streams over SoupBinTCP: "
        "persisted before they are published, replayed to late subscribers with no gap.",
    )
    parser.add_argument("--version", action="version", version=f"tickertape {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve_options.add_parser(verbs)
    publish.add_parser(verbs)
    tail.add_parser(verbs)
    sessions.add_parser(verbs)
    add_users_command(verbs)
    add_bench_command(verbs)
    cluster.add_parser(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb == "users":  # its own errors and exit statuses; no logging
        return run_users(args)
    if args.verb == "bench":  # its own errors, progress and exit statuses
        return run_bench(args)
    if args.verb == "cluster":  # its own errors, output and exit statuses
        return cluster.run(args)
    if args.verb == "serve":
        try:
            args = serve.apply_config_file(parser, args, argv)
        except ConfigError as exc:
            print(f"tickertape serve: {exc}", file=sys.stderr)
            return 2
        serve.check(args, argv)
    if args.verb == "tail":
        tail.check(args)
    if args.verb == "publish":
        publish.check(args)
    if args.verb == "sessions" and args.action == "export":
        sessions.check(args)
    try:
        if args.verb == "serve":
            serve.check_tls(args)
        elif args.verb == "tail":
            tail.check_tls(args)
        elif args.verb == "publish":
            publish.check_tls(args)
        if args.verb in ("tail", "publish") and getattr(args, "mold", None) is None:
            if args.password and args.password_file is not None:
                args.subparser.error("give --password or --password-file, not both")
            args.password = client_password(args.user, args.password, args.password_file)
        if args.verb == "serve" and args.check_config:
            return serve.check_config(args)
    except ConfigError as exc:
        print(f"tickertape: {exc}", file=sys.stderr)
        return 2
    quiet = args.verb == "sessions"  # the store's warnings repeat what the command says
    try:
        setup_logging(
            getattr(args, "log_level", None),
            getattr(args, "log_format", "text"),
            getattr(args, "log_file", None),
            verbose=args.verbose,
            quiet=quiet,
        )
    except OSError as exc:
        print(f"tickertape: cannot open the log file: {exc}", file=sys.stderr)
        return 2
    if quiet and not args.verbose:
        # What in the data directory is not a session, and so is skipped, is said.
        logging.getLogger("tickertape.store.catalogue").setLevel(logging.WARNING)
    try:
        if args.verb == "serve":
            return asyncio.run(serve.run(args))
        if args.verb == "tail":
            try:
                return asyncio.run(tail.run(args))
            except OSError as exc:  # a port that cannot be bound, a server not there
                raise ConfigError(f"tail: {exc.strerror or exc}") from None
        if args.verb == "publish":
            return asyncio.run(publish.run(args))
        return sessions.run(args)
    except KeyboardInterrupt:
        return 130
    except TickertapeError as exc:
        print(f"tickertape: {exc}", file=sys.stderr)
        return 1
