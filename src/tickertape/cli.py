"""The ``tickertape`` command: ``serve`` a data directory, ``tail`` a server, and look
after its ``sessions`` (list, show, roll, end, archive, verify, export)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import http.client
import json
import logging
import os
import resource
import signal
import ssl
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from tickertape import __version__, argtypes
from tickertape import sessions as offline
from tickertape.bench import add_bench_command, run_bench
from tickertape.cli_users import add_users_command, run_users
from tickertape.client.moldudp64 import DEFAULT_TCP_THRESHOLD, MoldSubscription
from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import (
    Message,
    Subscription,
    TLSRefused,
    describe_error,
    subscribe,
)
from tickertape.config import (
    MASK,
    UPSTREAM_PASSWORD_VARIABLE,
    add_config_options,
    add_password_file_option,
    apply_config,
    client_password,
    mask_url,
    render_config,
    upstream_from,
)
from tickertape.errors import ConfigError, LoginRejected, ProtocolError, StoreError, TickertapeError
from tickertape.logs import add_log_options, reopen_log_files, setup_logging
from tickertape.notify import Notifier, Rate
from tickertape.protocol.server import DEFAULT_IDLE_TIMEOUT, DEFAULT_LOGIN_TIMEOUT, ServerTimers
from tickertape.server.engine import Engine, EngineConfig
from tickertape.server.follower import Follower
from tickertape.server.moldudp64 import (
    DEFAULT_EOS_SECONDS,
    DEFAULT_REQUEST_RATE,
    DEFAULT_TTL,
    MoldPublisher,
    MoldRequestServer,
    PublisherConfig,
    RequestServerConfig,
    default_interface,
)
from tickertape.server.soupbintcp import (
    DEFAULT_HOST,
    DEFAULT_MAX_CLIENT_PACKET,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_PORT,
    DEFAULT_WRITE_BUFFER_HIGH,
    ServerConfig,
    SoupBinTCPServer,
)
from tickertape.sources.demo import DEFAULT_DEMO_SIZE, run_demo
from tickertape.sources.plugin import load_source, run_source
from tickertape.sources.upstream import first_session, run_upstream
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.store.retention import Retention
from tickertape.store.schedule import RollSchedule
from tickertape.text import plural
from tickertape.tls import client_context, reload_server_context, server_context
from tickertape.users import Users
from tickertape.wire.moldudp64 import MAX_MESSAGE as MOLD_MAX_MESSAGE
from tickertape.wire.publishing import END_OF_SESSION_MARKER
from tickertape.wire.soupbintcp import MAX_PAYLOAD, REJECT_NOT_AUTHORIZED

if TYPE_CHECKING:  # imported when serving it: the HTTP server is loaded only then
    from tickertape.server.admin import AdminServer

log = logging.getLogger("tickertape")

DEFAULT_DATA = Path("data")
PASSWORD_HELP: Final = "password (shows in the process list: prefer --password-file)"
ADMIN_HOST: Final = "127.0.0.1"
"""Where the admin API listens (``server.admin.ADMIN_HOST``, not imported: it would
load the HTTP server into every command)."""
DEFAULT_ADMIN_TIMEOUT: Final = 120.0
"""Seconds to wait for the admin API: a roll drains the publishing queue, an archive
compresses a whole session."""


def _add_tls_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS (1.2 or later), checking the server's certificate against "
        "the system's trust store (or --ca) and its name against --host",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="with --tls, trust only the CA certificates in this PEM file",
    )


def _tls_client(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client TLS context ``--tls`` and ``--ca`` ask for, if any."""
    return client_context(args.ca) if args.tls else None


def _add_token_options(parser: argparse.ArgumentParser, what: str, *, user: bool = True) -> None:
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


def _add_sessions_parsers(verbs: Any) -> None:
    sessions = verbs.add_parser(
        "sessions",
        help="list, show, roll, end, archive, verify and export sessions",
        description="Look after the sessions of a data directory: offline with --data, or "
        "through a running server's admin API with --admin-port.",
    )
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=description
        )
        return parser

    def data_or_server(parser: argparse.ArgumentParser) -> None:
        where = parser.add_mutually_exclusive_group()
        where.add_argument(
            "--data",
            type=Path,
            metavar="DIR",
            help=f"read this data directory, no server needed (default: {DEFAULT_DATA})",
        )
        where.add_argument(
            "--admin-port",
            type=argtypes.remote_port,
            metavar="PORT",
            help=f"ask the server whose admin API listens on {ADMIN_HOST}:PORT instead",
        )

    def data_only(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data",
            type=Path,
            default=DEFAULT_DATA,
            metavar="DIR",
            help="data directory (%(default)s)",
        )

    def server_only(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--admin-port",
            type=argtypes.remote_port,
            required=True,
            metavar="PORT",
            help=f"the server's admin API port (on {ADMIN_HOST})",
        )

    def verbose(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")

    listing = action(
        "list",
        "list every session: id, state, messages, bytes on disk",
        "List every session: its id, state (active, ended or archived), number of messages "
        "and bytes on disk. A damaged session is pointed out on stderr; messages past a "
        "session's last index record (being written, or never acknowledged) are named there "
        "too, and are not damage. Exit status: 0 listed; 1 an error.",
    )
    data_or_server(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    verbose(listing)

    show = action(
        "show",
        "show one session in detail",
        "Show one session: state, messages, bytes on disk and in its log, where it is, when "
        "it was last written to (the log file's modification time), when it ended, its "
        "problems (damage), its tail (messages past the last index record: not damage) and "
        "its on-disk format version (1 for a session made before the format file). "
        "Exit status: 0 shown; 1 an error (no such session: the message names those there).",
    )
    show.add_argument(
        "session", metavar="ID", type=argtypes.session_id, help="session id (YYYYMMDDNN)"
    )
    data_or_server(show)
    show.add_argument("--json", action="store_true", help="print JSON")
    verbose(show)

    rolling = action(
        "roll",
        "end the running server's active session and open the next",
        "Roll the running server's session: every subscriber gets the last message, then "
        "End of Session, then the connection closes; the next session of the day opens at "
        "once, and publishing goes on in it. (There is no separate 'end': a server always "
        "has a session open, and a session that ends is followed by the next.) Needs the "
        "admin token.",
    )
    server_only(rolling)
    _add_token_options(rolling, "the token the server was started with")
    verbose(rolling)

    archive = action(
        "archive",
        "compress an ended session into log.zst",
        "Archive an ended session: its log and index become one compressed, checksummed "
        "log.zst, still served by pull. Offline with --data (refused while a server uses "
        "the directory: then use --admin-port), or by the running server with --admin-port.",
    )
    archive.add_argument(
        "session", metavar="ID", type=argtypes.session_id, help="session id (YYYYMMDDNN)"
    )
    data_or_server(archive)
    _add_token_options(archive, "the token the server was started with (with --admin-port)")
    verbose(archive)

    verify = action(
        "verify",
        "check a session's log and index (or archive) against their checksums",
        "Read a session's log and index, or its archive, and check every checksum and "
        "record, changing nothing. Prints each problem with its offset and sequence numbers. "
        "Bytes past the last index record are not damage: a batch being written, or one never "
        "acknowledged if the writer stopped (a server sets them aside when it next starts); "
        "they are named, not served. Exit status: 0 clean (a tail included); 1 damaged (a "
        "checksum fails, indexed data is missing, ...) or not read (no such session: the "
        "message says); 2 bad usage.",
    )
    verify.add_argument(
        "session", metavar="ID", type=argtypes.session_id, help="session id (YYYYMMDDNN)"
    )
    data_only(verify)
    verbose(verify)

    export = action(
        "export",
        "write a session's messages to stdout",
        "Write the messages of a session (archived or not) to stdout, read from the data "
        "directory. A progress bar goes to stderr when it is a terminal. Only messages an "
        "index checksum vouches for are exported; stderr says so if there is damage, and names "
        "a tail past the last index record (not damage). Exit status: 0 exported; 1 an error.",
    )
    export.add_argument(
        "session", metavar="ID", type=argtypes.session_id, help="session id (YYYYMMDDNN)"
    )
    data_only(export)
    export.add_argument(
        "--from", dest="seq_from", type=argtypes.sequence, metavar="N", help="first message (1)"
    )
    export.add_argument(
        "--to",
        dest="seq_to",
        type=argtypes.sequence,
        metavar="N",
        help="last message (the last one)",
    )
    export.add_argument(
        "--format",
        choices=offline.EXPORT_FORMATS,
        default="text",
        help="text: SEQ PAYLOAD a line, as tail prints; hex: SEQ HEX a line; raw: payloads "
        "only, each after its u16 length; soupbin: the SoupBinTCP Sequenced Data packets "
        "exactly as in the log (%(default)s)",
    )
    verbose(export)
    export.set_defaults(subparser=export)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickertape",
        description="Sequenced, session-based message streams over SoupBinTCP: "
        "persisted before they are published, replayed to late subscribers with no gap.",
    )
    parser.add_argument("--version", action="version", version=f"tickertape {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    serve = verbs.add_parser(
        "serve",
        help="run the server on a data directory",
        description="Serve the sessions in a data directory over SoupBinTCP. Today's session "
        "is continued if it was not ended, else the next session of the day is opened.",
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    serve.add_argument(
        "--port",
        type=argtypes.port,
        default=DEFAULT_PORT,
        help="port (%(default)s; 0: any free port)",
    )
    serve.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="data directory (%(default)s)"
    )
    serve.add_argument(
        "--follow",
        type=Path,
        metavar="DIR",
        help="instead of --data: serve, read-only, the data directory DIR that another "
        "tickertape server on this host is writing, its new messages, new sessions and "
        "ended sessions as they come; nothing in DIR is changed (takes --host, --port, "
        "the options for who may connect, TLS, --admin-port (read-only) and --verbose; "
        "the others are for the server writing DIR)",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="re-serve another SoupBinTCP server's sessions (same ids and sequence "
        "numbers, each message persisted here first): soupbintcp://HOST:PORT"
        "[?user=NAME&password=SECRET&session=ID]; sessions then roll with the upstream's",
    )
    serve.add_argument(
        "--upstream-password-file",
        type=Path,
        metavar="FILE",
        help="the --upstream password, from FILE's first line instead of the URL (default: "
        f"${UPSTREAM_PASSWORD_VARIABLE} if set)",
    )
    serve.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default=Durability.BATCH.value,
        help="when messages are synced to disk before they are published: none (the page "
        "cache decides), batch (one fdatasync per batch, the default), always (every "
        "publish call synced on its own)",
    )
    serve.add_argument(
        "--demo",
        type=argtypes.positive,
        metavar="RATE",
        help="publish RATE demo messages a second into the active session",
    )
    serve.add_argument(
        "--demo-size",
        type=argtypes.payload_size,
        default=DEFAULT_DEMO_SIZE,
        metavar="N",
        help="bytes per demo message (%(default)s)",
    )
    serve.add_argument(
        "--demo-count",
        type=argtypes.count,
        metavar="N",
        help="stop the demo source after N messages (default: run forever)",
    )
    serve.add_argument(
        "--demo-end",
        action="store_true",
        help="end the session when the demo source has published --demo-count messages "
        "(a finite input ends its session; the next one opens)",
    )
    serve.add_argument(
        "--source",
        metavar="SPEC",
        help="publish what a Python callable makes: python:MODULE:FUNCTION or "
        "python:FILE.py:FUNCTION, an async generator of payloads (or, with --source-rate, "
        "a function called at that rate); see tickertape.sources.plugin",
    )
    serve.add_argument(
        "--source-rate",
        type=argtypes.positive,
        metavar="N",
        help="call the --source function N times a second (a plain function, called on a "
        "thread of its own so that one that blocks holds up only itself; or an async "
        "function, on the event loop, which it must not block; not an async generator)",
    )
    serve.add_argument(
        "--archive-after",
        type=argtypes.days,
        metavar="DAYS",
        help="archive (compress) ended sessions DAYS days old or more, by the date in their "
        "id (0: every ended session, today's too; default: never)",
    )
    serve.add_argument(
        "--delete-after",
        type=argtypes.days,
        metavar="DAYS",
        help="delete ended sessions DAYS days old or more, by the date in their id (0: "
        "every ended session, today's too; default: never; nothing is deleted unless "
        "this is given)",
    )
    serve.add_argument(
        "--user",
        type=argtypes.credentials,
        metavar="NAME:PASSWORD",
        help="accept only this one account, with every role (the password shows in the "
        "process list: prefer --users). Without --user or --users, a server on a loopback "
        "address accepts anyone",
    )
    serve.add_argument(
        "--roll-at",
        default="00:00",
        metavar="HH:MM",
        help="roll to a new session every day at this local time; after a time other than "
        "midnight the new session carries the next day's date (%(default)s)",
    )
    serve.add_argument(
        "--timezone",
        metavar="ZONE",
        help="the IANA time zone --roll-at is read in, such as Europe/London "
        "(default: this machine's)",
    )
    serve.add_argument(
        "--admin-port",
        type=argtypes.port,
        default=0,
        metavar="PORT",
        help=f"serve the admin HTTP API, a live status page at http://{ADMIN_HOST}:PORT/ "
        "and Prometheus metrics at /metrics, on "
        f"{ADMIN_HOST}:PORT (default 0: none of them)",
    )
    _add_token_options(
        serve,
        "allow changes (roll, end, archive) through the admin API to callers that send "
        "'Authorization: Bearer TOKEN' (default: the admin API only reads; with --users, "
        "users with the admin role may change things too)",
        user=False,
    )
    serve.add_argument(
        "--mold",
        type=argtypes.mold_group,
        metavar="GROUP:PORT",
        help="also multicast the active session as MoldUDP64 to GROUP:PORT (from the "
        "moment the server starts; earlier messages by re-request)",
    )
    serve.add_argument(
        "--mold-iface",
        type=argtypes.ipv4,
        metavar="ADDR",
        help="send MoldUDP64 from the interface with this local IPv4 address (default: "
        "the loopback if --host is a loopback address, so that it works on one machine; "
        "else the route to the group decides)",
    )
    serve.add_argument(
        "--mold-ttl",
        type=argtypes.ttl,
        metavar="N",
        help=f"multicast TTL, how many routers the packets may cross ({DEFAULT_TTL})",
    )
    serve.add_argument(
        "--mold-eos-seconds",
        type=argtypes.not_negative,
        metavar="S",
        help="after a session ends, repeat its MoldUDP64 End of Session once a second "
        f"for S seconds ({DEFAULT_EOS_SECONDS:g})",
    )
    serve.add_argument(
        "--mold-request",
        type=argtypes.port,
        metavar="PORT",
        help="answer MoldUDP64 re-requests on UDP --host:PORT, for the active session and "
        "every closed one on disk",
    )
    serve.add_argument(
        "--mold-request-rate",
        type=argtypes.positive,
        metavar="N",
        help=f"messages a second each re-requester may be sent ({DEFAULT_REQUEST_RATE:g})",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve SoupBinTCP over TLS (1.2 or later) with this certificate chain (PEM); "
        "needs --tls-key; both are read again on SIGHUP (for new connections)",
    )
    serve.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)"
    )
    _add_access_options(serve)
    serve.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    add_log_options(serve)
    add_config_options(serve)
    serve.set_defaults(subparser=serve)  # to report errors found after parsing

    _add_publish_parser(verbs)

    tail = verbs.add_parser(
        "tail",
        help="print the messages of a session",
        description="Log in to a SoupBinTCP server and print one message a line: SEQ PAYLOAD. "
        "Once logged in, reconnects by itself when the connection drops, with no gap and no "
        "duplicate, and says when it is back; stops at End of Session, saying on stderr "
        "where the session ended (exit status 0). A first login that cannot be made "
        "(nothing listens, a TLS port without --tls) is an error (exit 1), unless --wait; "
        "a rejected login is an error with the server's reason.",
    )
    tail.add_argument("--host", default=DEFAULT_HOST, help="server address (%(default)s)")
    tail.add_argument(
        "--port", type=argtypes.remote_port, default=DEFAULT_PORT, help="port (%(default)s)"
    )
    tail.add_argument(
        "--session",
        type=argtypes.session_id,
        metavar="ID",
        help="session id, YYYYMMDDNN (default: the active session)",
    )
    tail.add_argument(
        "--from",
        dest="seq",
        type=argtypes.start_sequence,
        default=1,
        metavar="N",
        help="first sequence number; 0 means from the next message published (%(default)s)",
    )
    tail.add_argument("--count", type=argtypes.count, metavar="N", help="stop after N messages")
    tail.add_argument(
        "--format",
        choices=["text", "hex", "raw"],
        default="text",
        help="text: payload as text; hex: payload in hex; raw: payloads only, length-prefixed",
    )
    tail.add_argument("--user", default="", metavar="NAME", help="username")
    tail.add_argument("--password", default="", help=PASSWORD_HELP)
    add_password_file_option(tail)
    tail.add_argument(
        "--wait",
        action="store_true",
        help="if the server cannot be reached, keep trying (with a warning each time) until "
        "it can, instead of exiting with an error",
    )
    _add_tls_client_options(tail)
    mold = tail.add_argument_group(
        "MoldUDP64",
        "with --mold, follow a MoldUDP64 group instead of logging in over SoupBinTCP "
        "(--host, --port, --user and --password are then not used)",
    )
    mold.add_argument(
        "--mold",
        type=argtypes.mold_group,
        metavar="GROUP:PORT",
        help="join this MoldUDP64 group (as given to serve --mold)",
    )
    mold.add_argument(
        "--request",
        type=argtypes.request_address,
        metavar="HOST:PORT",
        help="the server's MoldUDP64 re-request address (serve --mold-request), for gaps "
        "and late joins; needed with --mold",
    )
    mold.add_argument(
        "--iface",
        type=argtypes.ipv4,
        metavar="ADDR",
        help="join the group on the interface with this local IPv4 address (default: "
        "the loopback if the --request host is a loopback address; else the route to "
        "the group decides)",
    )
    mold.add_argument(
        "--tcp",
        type=argtypes.tcp_address,
        metavar="HOST:PORT",
        help="catch up a gap of more than "
        f"{DEFAULT_TCP_THRESHOLD:,} messages from this SoupBinTCP server, then follow the group",
    )
    tail.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    tail.set_defaults(subparser=tail)
    _add_sessions_parsers(verbs)
    add_users_command(verbs)
    add_bench_command(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verb == "users":  # its own errors and exit statuses; no logging
        return run_users(args)
    if args.verb == "bench":  # its own errors, progress and exit statuses
        return run_bench(args)
    if args.verb == "serve":
        words = list(sys.argv[1:] if argv is None else argv)
        if args.config is not None:
            try:
                in_file = apply_config(
                    args.subparser, args.config, words[words.index("serve") + 1 :]
                )
            except ConfigError as exc:
                print(f"tickertape serve: {exc}", file=sys.stderr)
                return 2
            args = parser.parse_args(argv)  # the file's values as defaults: words win
            if args.follow is not None and set(in_file) - _FOLLOW_TAKES:
                named = ", ".join(sorted(d.replace("_", "-") for d in set(in_file) - _FOLLOW_TAKES))
                args.subparser.error(f"--follow takes none of {named} (in {args.config})")
        if args.follow is not None:
            _check_follow(args, words)
        try:
            args.schedule = RollSchedule.parse(args.roll_at, args.timezone)
        except ConfigError as exc:
            args.subparser.error(str(exc))
        if args.demo_end and args.demo_count is None:
            args.subparser.error("--demo-end needs --demo-count: a demo without one never ends")
        if not args.admin_port and (args.admin_token or args.admin_token_file):
            args.subparser.error("--admin-token and --admin-token-file need --admin-port")
        if args.mold is None and not all(
            value is None for value in (args.mold_iface, args.mold_ttl, args.mold_eos_seconds)
        ):
            args.subparser.error("--mold-iface, --mold-ttl and --mold-eos-seconds need --mold")
        if args.mold_request is None and args.mold_request_rate is not None:
            args.subparser.error("--mold-request-rate needs --mold-request")
        if args.upstream_password_file is not None and not args.upstream:
            args.subparser.error("--upstream-password-file needs --upstream")
    if args.verb == "tail":
        args.session = args.session or ""  # blank: the active session
        _check_tail(args)
    if args.verb == "sessions" and args.action == "export":
        _check_export(args)
    try:
        _check_tls(args)
        if args.verb in ("tail", "publish") and getattr(args, "mold", None) is None:
            if args.password and args.password_file is not None:
                args.subparser.error("give --password or --password-file, not both")
            args.password = client_password(args.user, args.password, args.password_file)
        if args.verb == "serve" and args.check_config:
            return _check_config(args)
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
            return asyncio.run(_serve(args))
        if args.verb == "tail":
            try:
                return asyncio.run(_tail(args))
            except OSError as exc:  # a port that cannot be bound, a server not there
                raise ConfigError(f"tail: {exc.strerror or exc}") from None
        if args.verb == "publish":
            return asyncio.run(_publish(args))
        return _sessions(args)
    except KeyboardInterrupt:
        return 130
    except TickertapeError as exc:
        print(f"tickertape: {exc}", file=sys.stderr)
        return 1


def _check_config(args: argparse.Namespace) -> int:
    """``serve --check-config``: check what can be checked without serving (files that
    are read, options that go together), print the effective options, secrets masked."""
    _read_token(args)
    if args.users is not None:
        Users.load_to_serve(args.users)
    if args.source_rate is not None and args.source is None:
        raise ConfigError("--source-rate needs --source")
    if args.upstream:
        upstream_from(args.upstream, args.upstream_password_file)
        if args.demo or args.source:
            raise ConfigError(
                "--upstream fills the sessions: it cannot be combined with --demo or --source"
            )
    masks = {
        "admin_token": lambda _: MASK,
        "user": lambda credentials: f"{credentials.username}:{MASK}",
        "upstream": mask_url,
    }
    sys.stdout.write(render_config(args.subparser, args, masks))
    return 0


def _read_token(args: argparse.Namespace) -> str | None:
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


_FOLLOW_TAKES: Final = frozenset(
    {
        "help",
        "host",
        "port",
        "user",
        "verbose",
        "follow",
        "tls_cert",
        "tls_key",
        "users",
        "allow_anonymous",
        "max_connections",
        "max_connections_per_source",
        "max_client_packet",
        "login_timeout",
        "idle_timeout",
        "max_write_buffer",
        "admin_port",
        "log_level",
        "log_format",
        "log_file",
        "config",
        "check_config",
    }
)
"""The ``serve`` options that make sense with ``--follow``: the others are for the server
that writes the directory."""


def _add_access_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "who may connect",
        "SoupBinTCP usernames have at most 6 letters or digits, passwords at most 10; both "
        "are case-insensitive. Each limit closes a connection that passes it with a Debug "
        "packet saying why.",
    )
    group.add_argument(
        "--users",
        type=Path,
        metavar="FILE",
        help="the users who may log in, with their roles (made with 'tickertape users'); "
        "read again on SIGHUP",
    )
    group.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="accept anonymous subscribers (a blank username) even when --host is not a "
        "loopback address. Without --users or --user, a server on a loopback address "
        "accepts anyone; elsewhere it refuses to start without this",
    )
    group.add_argument(
        "--max-connections",
        type=argtypes.count,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections open at once (%(default)s)",
    )
    group.add_argument(
        "--max-connections-per-source",
        type=argtypes.count,
        default=DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        metavar="N",
        help="connections open at once from one IP address (%(default)s)",
    )
    group.add_argument(
        "--max-client-packet",
        type=argtypes.count,
        default=DEFAULT_MAX_CLIENT_PACKET,
        metavar="BYTES",
        help="the longest packet a logged-in client that may not publish can send; before "
        "its login a client may send only a Login Request, a publisher messages as long as "
        "the server accepts (%(default)s)",
    )
    group.add_argument(
        "--max-write-buffer",
        type=argtypes.count,
        default=DEFAULT_WRITE_BUFFER_HIGH,
        metavar="BYTES",
        help="a subscriber's unsent bytes past which it leaves the live stream and reads "
        "the log once they drain: with one batch on top, its memory bound (%(default)s)",
    )
    group.add_argument(
        "--idle-timeout",
        type=argtypes.positive,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="drop a logged-in client silent this long, unless its SoupBinTCP 4.10 login "
        "asks for another timeout (%(default)g)",
    )
    group.add_argument(
        "--login-timeout",
        type=argtypes.positive,
        default=DEFAULT_LOGIN_TIMEOUT,
        metavar="SECONDS",
        help="close a connection whose login is not done this long after it opened (%(default)g)",
    )


def _server_config(args: argparse.Namespace) -> ServerConfig:
    """The SoupBinTCP endpoint's configuration from ``serve``'s options."""
    users = Users.load_to_serve(args.users) if args.users is not None else None
    return ServerConfig(
        host=args.host,
        port=args.port,
        users=users,
        credentials=args.user,
        allow_anonymous=args.allow_anonymous,
        ssl=args.tls_context,
        timers=ServerTimers(login_timeout=args.login_timeout, idle_timeout=args.idle_timeout),
        write_buffer_high=args.max_write_buffer,
        max_connections=args.max_connections,
        max_connections_per_source=args.max_connections_per_source,
        max_client_packet=args.max_client_packet,
    )


class _Hangup:
    """``kill -HUP``, from the moment ``serve`` starts: it never stops the server. With
    ``--users`` the users file is read again (a file that does not load leaves the users
    as they were), with ``--tls-cert`` the certificate and key (likewise); either way one
    line says what was reloaded, or why nothing was."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._users_file: Path | None = args.users
        self._tls: tuple[Path, Path, ssl.SSLContext] | None = (
            None if args.tls_context is None else (args.tls_cert, args.tls_key, args.tls_context)
        )
        self.server: SoupBinTCPServer | None = None
        """Set once the SoupBinTCP server runs: until then there is nothing to reload."""
        self.admin: str | None = None
        """How the admin API takes changes besides admin users: None (no admin API, or
        one that never takes changes), "token" or "read-only"."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self._soon)

    def _soon(self) -> None:
        reopened = reopen_log_files()  # first: the SIGHUP line goes into the new file
        task = self._loop.create_task(self._reload(reopened))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self, reopened: list[str]) -> None:
        said = [f"log file {name} reopened" for name in reopened]
        if self.server is None:
            nothing = "nothing else" if said else "nothing"
            said.append(f"{nothing} reloaded: the server is still starting")
            log.info("SIGHUP: %s", "; ".join(said))
            return
        failed = False
        if self._users_file is not None:
            try:
                said.append(await self._reload_users(self.server, self._users_file))
            except Exception as exc:  # whatever it is, it must not stop the server
                why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                said.append(f"the users file was not reloaded, the old users stay: {why}")
                failed = True
        if self._tls is not None:
            cert, key, context = self._tls
            try:
                await self._loop.run_in_executor(None, reload_server_context, context, cert, key)
                said.append(f"TLS certificate {cert} reloaded, for new connections")
            except Exception as exc:
                why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                said.append(f"the TLS certificate was not reloaded, the old one stays: {why}")
                failed = True
        if not said:
            said.append("nothing to reload (no --users file, no --tls-cert); serving on")
        log.log(logging.ERROR if failed else logging.INFO, "SIGHUP: %s", "; ".join(said))

    async def _reload_users(self, server: SoupBinTCPServer, path: Path) -> str:
        """Read the users file again and use it; what changed, in a few words."""
        users = await self._loop.run_in_executor(None, Users.load_to_serve, path)
        old = server.access.users or Users()
        server.reload_users(users)
        said = f"users file {path} reloaded: {plural(len(users), 'user')}; "
        said += users.changes_from(old)
        before, after = old.admins(), users.admins()
        if self.admin is not None and before != after:
            if after:
                said += f"; the admin API now accepts changes from {', '.join(after)}"
            elif self.admin == "token":
                said += "; no user has the admin role: the admin API takes the token only"
            else:
                said += "; no user has the admin role: the admin API is read-only"
        return said


def _raise_file_limit(config: ServerConfig) -> None:
    """Let the server hold as many connections as it is configured for, as far as the
    hard limit on open files allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.max_connections + 256  # logs, listening sockets, the executor
    if soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < wanted:
        log.warning(
            "only %d files may be open (ulimit -n): fewer than --max-connections %d",
            soft,
            config.max_connections,
        )


def _check_follow(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Refuse ``--follow`` with an option only a server writing its directory takes."""
    serve: argparse.ArgumentParser = args.subparser
    others = [a for a in serve._actions if a.option_strings and a.dest not in _FOLLOW_TAKES]
    unset = object()
    given = argparse.Namespace(**{action.dest: unset for action in others})
    words = list(argv)
    # Defaults are not applied over attributes the namespace already has: whatever is
    # no longer ``unset`` was on the command line.
    serve.parse_known_args(words[words.index("serve") + 1 :], namespace=given)
    named = [a.option_strings[-1] for a in others if getattr(given, a.dest) is not unset]
    if named:
        serve.error(
            f"--follow serves a directory another process writes, read-only: it takes no "
            f"{', '.join(named)} (give those to the server writing it)"
        )


async def _serve_follow(args: argparse.Namespace) -> int:
    """``serve --follow DIR``: the sessions another process writes, read-only."""
    hangup = _Hangup(args)
    config = _server_config(args)
    _raise_file_limit(config)
    follower = Follower(args.follow)
    await follower.start()  # a StoreError says what is wrong with DIR
    server = SoupBinTCPServer(follower, config)
    try:
        await server.start()
    except OSError as exc:
        await follower.close()
        print(f"tickertape: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    admin = None
    if args.admin_port:
        from tickertape.server.admin import AdminConfig, AdminServer  # noqa: PLC0415

        admin = AdminServer(follower, server, AdminConfig(port=args.admin_port))
        try:
            _bind_admin(admin, args.admin_port)
        except OSError:
            await server.close()
            await follower.close()
            return 1
        await admin.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    hangup.server = server
    notifier = Notifier()
    notifier.ready(Rate(lambda: follower.session_id, lambda: follower.next_seq))
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await notifier.stopping()
        if admin is not None:
            await admin.close()
        await server.close()
        await follower.close()
        notifier.close()
    return 0


class _Inputs:
    """The tasks that feed the engine (demo, upstream, plug-in source): one that fails
    stops the server, saying why; at shutdown they are cancelled."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: list[BaseException] = []

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=name)

        def done(task: asyncio.Task[None]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self.failed.append(error)
                log.error("%s failed, stopping: %s", name, error)
                self._stop.set()

        task.add_done_callback(done)
        self._tasks.append(task)

    async def stop(self) -> None:
        for task in reversed(self._tasks):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def _serve(args: argparse.Namespace) -> int:
    if args.follow is not None:
        return await _serve_follow(args)
    hangup = _Hangup(args)
    if args.source_rate is not None and args.source is None:
        raise ConfigError("--source-rate needs --source")
    source = load_source(args.source, args.source_rate) if args.source else None
    durability = Durability(args.durability)
    token = _read_token(args)
    config = _server_config(args)
    _raise_file_limit(config)
    engine = Engine(
        Catalogue(args.data, durability),
        EngineConfig(
            durability=durability,
            # MoldUDP64 does not fragment: refuse at publish time what it cannot carry
            # (a relay takes what its upstream has; longer messages skip the multicast).
            max_message=MOLD_MAX_MESSAGE if args.mold and not args.upstream else MAX_PAYLOAD,
        ),
        schedule=args.schedule,
        retention=Retention(args.archive_after, args.delete_after),
    )
    upstream = upstream_from(args.upstream, args.upstream_password_file) if args.upstream else None
    if upstream is not None and (args.demo or args.source):
        raise ConfigError(
            "--upstream fills the sessions: it cannot be combined with --demo or --source"
        )
    first: str | None = None
    if upstream is not None:
        # Ids come from the upstream: continue the local session it fed last, if any,
        # else start with the upstream's.
        resumed = next((i for i in reversed(engine.catalogue.sessions()) if not i.ended), None)
        try:
            first = str(resumed.id) if resumed else await first_session(upstream)
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the upstream {upstream.host}:{upstream.port}: {exc}"
            ) from None
    # Every port is bound before the session is opened: a taken one leaves nothing behind.
    server = SoupBinTCPServer(engine, config)
    try:
        await server.start(serving=False)
    except OSError as exc:
        print(f"tickertape: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    admin = None
    if args.admin_port:
        # Imported here: the HTTP server is loaded only by a server that serves it.
        from tickertape.server.admin import AdminConfig, AdminServer  # noqa: PLC0415

        admin = AdminServer(engine, server, AdminConfig(port=args.admin_port, token=token))
        try:
            _bind_admin(admin, args.admin_port)
        except OSError:
            await server.close()
            return 1
    try:
        if first is None:
            await engine.start()
        else:
            await engine.start(roll_on_schedule=False, session=first)
    except BaseException as exc:
        if admin is not None:
            await admin.close()
        await server.close()
        if not isinstance(exc, OSError):
            raise
        print(f"tickertape: cannot use data directory {args.data}: {exc}", file=sys.stderr)
        return 1
    await server.start_serving()
    if admin is not None:
        await admin.start()
    try:
        mold = await _start_mold(args, engine)
    except OSError as exc:
        if admin is not None:
            await admin.close()
        await server.close()
        await engine.close()
        print(f"tickertape: cannot start MoldUDP64: {exc}", file=sys.stderr)
        return 1
    if admin is not None:  # the status page shows their counters
        admin.mold_publisher, admin.mold_requests = mold.publisher, mold.requests
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    hangup.server = server
    hangup.admin = None if admin is None else "token" if token else "read-only"
    inputs = _Inputs(stop)
    if args.demo:

        async def demo_source() -> None:
            await run_demo(engine, args.demo, args.demo_size, args.demo_count)
            if args.demo_end:
                with contextlib.suppress(StoreError):  # the engine logged why; it goes on
                    await engine.end_session()

        inputs.start("demo source", demo_source())
    if upstream is not None:
        inputs.start("upstream feed", run_upstream(engine, upstream))
    if source is not None:
        # A source that fails is logged and stopped by run_source: what stops the server
        # here is the engine failing under it.
        inputs.start(f"source {args.source}", run_source(engine, source))
    notifier = Notifier()
    notifier.ready(Rate(lambda: engine.session_id, lambda: engine.next_seq))
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await notifier.stopping()
        await inputs.stop()
        if admin is not None:
            await admin.close()
        await server.close()
        await mold.close_requests()  # before the engine closes the log it reads
        await engine.close()
        await mold.close()  # after: the last batches go out too
        notifier.close()
    return 1 if inputs.failed else 0


def _bind_admin(admin: AdminServer, port: int) -> None:
    """Bind the admin API's port (it serves once started); OSError (said on stderr) if it
    cannot listen."""
    try:
        admin.bind()
    except OSError as exc:
        print(
            f"tickertape: cannot listen for the admin API on {ADMIN_HOST}:{port}: {exc}",
            file=sys.stderr,
        )
        raise


class _Mold:
    """The MoldUDP64 publisher and re-request server ``serve`` was asked for, if any."""

    def __init__(self) -> None:
        self.publisher: MoldPublisher | None = None
        self.requests: MoldRequestServer | None = None

    async def close_requests(self) -> None:
        if self.requests is not None:
            await self.requests.close()

    async def close(self) -> None:
        await self.close_requests()
        if self.publisher is not None:
            await self.publisher.close()


async def _start_mold(args: argparse.Namespace, engine: Engine) -> _Mold:
    """Start what ``--mold`` and ``--mold-request`` ask for; OSError if a socket cannot be
    set up (what was started is closed again)."""
    mold = _Mold()
    if args.mold is None and args.mold_request is None:
        return mold
    try:
        if args.mold_request is not None:
            mold.requests = MoldRequestServer(
                engine,
                RequestServerConfig(
                    host=args.host,
                    port=args.mold_request,
                    rate=args.mold_request_rate or DEFAULT_REQUEST_RATE,
                ),
            )
            await mold.requests.start()
        if args.mold is not None:
            group, port = args.mold
            mold.publisher = MoldPublisher(
                engine,
                PublisherConfig(
                    group,
                    port,
                    interface=(
                        default_interface(args.host) if args.mold_iface is None else args.mold_iface
                    ),
                    ttl=DEFAULT_TTL if args.mold_ttl is None else args.mold_ttl,
                    eos_seconds=(
                        DEFAULT_EOS_SECONDS
                        if args.mold_eos_seconds is None
                        else args.mold_eos_seconds
                    ),
                ),
            )
            mold.publisher.start()
    except BaseException:
        await mold.close()
        raise
    return mold


def _check_tls(args: argparse.Namespace) -> None:
    """Refuse TLS options that do not go together, and load the files they name: into
    ``args.tls_context`` (a server's or a client's). A file that cannot be
    read, or a key that is not the certificate's, raises :class:`ConfigError`."""
    if args.verb == "serve":
        if (args.tls_cert is None) != (args.tls_key is None):
            args.subparser.error("--tls-cert and --tls-key go together: give both, or neither")
        args.tls_context = (
            None if args.tls_cert is None else server_context(args.tls_cert, args.tls_key)
        )
    elif args.verb in ("tail", "publish"):
        if args.ca is not None and not args.tls:
            args.subparser.error("--ca needs --tls")
        if args.verb == "tail" and args.mold is not None and args.tls:
            args.subparser.error("--tls and --ca are for SoupBinTCP, not --mold")
        args.tls_context = _tls_client(args)


def _check_export(args: argparse.Namespace) -> None:
    """Refuse a range that ends before it starts, before the session is read."""
    if args.seq_from is not None and args.seq_to is not None and args.seq_to < args.seq_from:
        args.subparser.error(f"--to {args.seq_to} is before --from {args.seq_from}")


def _check_tail(args: argparse.Namespace) -> None:
    """Refuse MoldUDP64 options that do not go together."""
    if args.mold is None:
        if args.request is not None or args.iface is not None or args.tcp is not None:
            args.subparser.error("--request, --iface and --tcp need --mold")
        return
    if args.request is None:
        args.subparser.error(
            "--mold needs --request HOST:PORT, the server's re-request address "
            "(serve --mold-request)"
        )
    if args.seq < 0:
        args.subparser.error(
            "with --mold, --from is 0 (live only) or more (MoldUDP64 numbers from 1)"
        )
    if args.user or args.password:
        args.subparser.error("--user and --password are for SoupBinTCP, not --mold")


async def _tail(args: argparse.Namespace) -> int:
    source: Subscription | MoldSubscription
    if args.mold is not None:
        group, port = args.mold
        source = MoldSubscription(
            group,
            port,
            args.request,
            iface=args.iface,
            session=args.session,
            seq=args.seq,
            tcp=args.tcp,
        )
    else:
        source = subscribe(
            args.host,
            args.port,
            args.session,
            args.seq,
            username=args.user,
            password=args.password,
            ssl=args.tls_context,
            wait=args.wait,
        )
    try:
        await _print_messages(args, source)
    except LoginRejected as exc:
        raise _rejected(exc, args) from None
    except TLSRefused:
        raise
    except ConnectionError as exc:
        if not (isinstance(source, Subscription) and source.logins == 0):
            raise
        if args.wait or "TLS" in str(exc):  # waiting would not mend TLS
            raise ConfigError(str(exc)) from None
        raise ConfigError(f"{exc} (tail --wait keeps trying)") from None
    return 0


async def _print_messages(
    args: argparse.Namespace, source: Subscription | MoldSubscription
) -> None:
    """Print what ``source`` yields as ``--format`` says, up to ``--count``."""
    out = sys.stdout.buffer
    shown = 0
    last: Message | None = None
    async with source as messages:
        async for message in messages:
            last = message
            if args.format == "text":
                out.write(b"%d %s\n" % (message.seq, message.payload.rstrip(b" ")))
            elif args.format == "hex":
                out.write(b"%d %s\n" % (message.seq, message.payload.hex().encode()))
            else:
                out.write(len(message.payload).to_bytes(2, "big") + message.payload)
            shown += 1
            if args.count is not None and shown >= args.count:
                break
            if shown % 256 == 0:
                out.flush()
        else:
            out.flush()
            print(_ended(source, last), file=sys.stderr)
    out.flush()


def _rejected(exc: LoginRejected, args: argparse.Namespace) -> TickertapeError:
    """A rejected login, with a hint if no --user was given and the server wants one."""
    if exc.reason == REJECT_NOT_AUTHORIZED and not args.user:
        return ConfigError(f"{exc} (give --user NAME and --password SECRET)")
    return exc


def _ended(source: Subscription | MoldSubscription, last: Message | None) -> str:
    """What ``tail`` says when the server ends the session it follows."""
    if isinstance(source, Subscription):
        session, seq = source.session, source.next_seq - 1
    else:
        session, seq = (last.session, last.seq) if last is not None else ("", 0)
    session = session or "(active)"
    if seq < 1:
        return f"session {session} ended with no messages"
    return f"session {session} ended at sequence {seq}"


# ---------------------------------------------------------------------------- sessions


def _sessions(args: argparse.Namespace) -> int:
    """``tickertape sessions ACTION``: errors a person can meet become one line."""
    handlers = {
        "list": _sessions_list,
        "show": _sessions_show,
        "roll": _sessions_roll,
        "archive": _sessions_archive,
        "verify": _sessions_verify,
        "export": _sessions_export,
    }
    try:
        return handlers[args.action](args)
    except BrokenPipeError:
        # The reader went away (``export ... | head``): what it wanted, it has.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except OSError as exc:
        raise TickertapeError(str(exc)) from None


def _sessions_list(args: argparse.Namespace) -> int:
    if args.admin_port is not None:
        rows: list[dict[str, Any]] = _admin_call(args, "GET", "/sessions")["sessions"]
        where = f"the server at {ADMIN_HOST}:{args.admin_port}"
        rows_to_check = rows
    else:
        root = args.data or DEFAULT_DATA
        summaries = offline.list_sessions(root)
        rows = [summary.brief() for summary in summaries]
        where = str(root)
        rows_to_check = rows
        if offline.data_directory_in_use(root) is not None:
            # A batch being appended as the log was read need not be damage: the
            # server checked its active session when it opened it, and logged it.
            rows_to_check = [row for row in rows if row["state"] != offline.STATE_ACTIVE]
    if args.admin_port is None:
        for summary in summaries:
            if summary.tail:
                print(f"tickertape: session {summary.id}: {summary.tail}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no sessions in {where}")
        return 0
    print(f"{'ID':<12}{'STATE':<10}{'MESSAGES':>12}{'BYTES':>16}")
    for row in rows:
        print(f"{row['id']:<12}{row['state']:<10}{row['messages']:>12}{row['bytes']:>16}")
    for row in rows_to_check:
        if row.get("problems"):
            problems = plural(row["problems"], "problem")
            print(
                f"tickertape: session {row['id']} fails its checks ({problems}); "
                f"tickertape sessions verify {row['id']} says where",
                file=sys.stderr,
            )
    return 0


def _sessions_show(args: argparse.Namespace) -> int:
    if args.admin_port is not None:
        path = "/sessions/" + urllib.parse.quote(args.session, safe="")
        detail: dict[str, Any] = _admin_call(args, "GET", path)
    else:
        detail = offline.show_session(args.data or DEFAULT_DATA, args.session).detail()
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    lines = [
        ("session", detail["id"]),
        ("state", detail["state"]),
        ("messages", detail["messages"]),
        ("bytes on disk", detail["bytes"]),
        ("log bytes", detail["log_bytes"]),
        ("directory", detail["path"]),
        ("last published", detail["last_published"] or "-"),
        ("ended at", detail["ended_at"] or "-"),
        ("format", detail.get("format", 1)),
    ]
    for name, value in lines:
        print(f"{name + ':':<16}{value}")
    problems = detail["problems"]
    print(f"{'problems:':<16}{len(problems) or 'none'}")
    for problem in problems:
        print(f"  {problem}")
    if detail.get("tail"):
        print(f"{'tail:':<16}{detail['tail']}")
    return 0


def _sessions_roll(args: argparse.Namespace) -> int:
    answer = _admin_call(args, "POST", "/roll")
    print(f"session {answer['ended']} ended; session {answer['session']} is active")
    return 0


def _sessions_archive(args: argparse.Namespace) -> int:
    if args.admin_port is not None:
        path = "/sessions/" + urllib.parse.quote(args.session, safe="") + "/archive"
        answer = _admin_call(args, "POST", path)
        messages, original, archived = (
            answer["messages"],
            answer["original_bytes"],
            answer["archived_bytes"],
        )
    else:
        if args.admin_token or args.admin_token_file or args.admin_user:
            raise ConfigError("--admin-token is for --admin-port: offline, no token is needed")
        result = offline.archive_offline(args.data or DEFAULT_DATA, args.session)
        messages, original, archived = result.messages, result.original_bytes, result.archived_bytes
    ratio = f" ({100 * archived / original:.0f}%)" if original else ""
    what = f"{plural(messages, 'message')}, {original} bytes"
    print(f"session {args.session} archived: {what}", end="")
    print(f" into {archived}{ratio}")
    return 0


def _sessions_verify(args: argparse.Namespace) -> int:
    report = offline.verify_session(args.data, args.session)
    _warn_if_written(args.data, args.session)
    checked = " and ".join(report.checked)
    if report.clean:
        held = plural(report.messages, "message")
        print(f"session {report.session}: clean: {held} ({checked} checked)")
        if report.tail:
            print(f"  {report.tail}")
        return 0
    damage = plural(len(report.problems), "problem")
    print(f"session {report.session}: DAMAGED: {damage} ({checked} checked)")
    for problem in report.problems:
        print(f"  {problem}")
    intact = f"messages 1..{report.messages}" if report.messages else "no message"
    print(f"{intact} intact; nothing was changed (verify only reads)")
    return 1


def _sessions_export(args: argparse.Namespace) -> int:
    directory = offline.find_session(args.data, args.session)
    _warn_if_written(args.data, args.session)
    with offline.open_read_only(directory) as session_log:
        problems = session_log.recovery.problems
        tail = session_log.recovery.tail_note()
        if tail:
            print(f"tickertape: session {args.session}: {tail}", file=sys.stderr)
        if problems:
            print(
                f"tickertape: session {args.session} fails its checks "
                f"({plural(len(problems), 'problem')}): "
                f"exporting the {plural(session_log.recovery.messages, 'intact message')} only; "
                f"tickertape sessions verify {args.session} says where",
                file=sys.stderr,
            )
        first, last = offline.export_range(session_log, args.seq_from, args.seq_to)
        progress = offline.Progress(last - first + 1) if sys.stderr.isatty() else None
        out = sys.stdout.buffer
        offline.export(session_log, first, last, args.format, out, progress)
        out.flush()
    return 0


def _warn_if_written(root: Path, session: str) -> None:
    """Say so when a server is appending to the session being read."""
    holder = offline.data_directory_in_use(root)
    if holder is not None and offline.state_of(root / session) == offline.STATE_ACTIVE:
        print(
            f"tickertape: session {session} is being written by tickertape process {holder}: "
            "what was read is a snapshot",
            file=sys.stderr,
        )


def _basic_credentials(user: str) -> str:
    """``Authorization: Basic`` for ``user``, its password asked for on a terminal or
    read as the first line of stdin."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {user}: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ConfigError(f"no password given for {user}")
    pair = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _admin_call(args: argparse.Namespace, method: str, path: str) -> dict[str, Any]:
    """Ask the admin API of the server on ``--admin-port``; its JSON answer, or a
    :class:`TickertapeError` saying why there is none."""
    port = args.admin_port
    where = f"{ADMIN_HOST}:{port}"
    headers = {"Accept": "application/json"}
    if method == "POST":
        token = _read_token(args)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        elif getattr(args, "admin_user", None):
            headers["Authorization"] = _basic_credentials(args.admin_user)
    request = urllib.request.Request(
        f"http://{where}{path}",
        data=b"" if method == "POST" else None,
        headers=headers,
        method=method,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(request, timeout=DEFAULT_ADMIN_TIMEOUT) as response:
            answer: dict[str, Any] = json.load(response)
            return answer
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                message = json.load(exc)["error"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code} {exc.reason}"
        if exc.code in (401, 403):
            message = f"the server refused: {message}"
        raise TickertapeError(message) from None
    except urllib.error.URLError as exc:
        raise TickertapeError(
            f"cannot reach a tickertape admin API at {where} ({exc.reason}): is the server "
            f"running, started with --admin-port {port}?"
        ) from None
    except (http.client.HTTPException, ValueError) as exc:
        raise TickertapeError(
            f"what answers at {where} is not a tickertape admin API ({exc or type(exc).__name__}); "
            "is that the SoupBinTCP port?"
        ) from None
    except TimeoutError:
        raise TickertapeError(
            f"the admin API at {where} did not answer in {DEFAULT_ADMIN_TIMEOUT:.0f} s"
        ) from None


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------- publish


def _add_publish_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = verbs.add_parser(
        "publish",
        help="publish the lines of a file or of stdin",
        description="Log in to a tickertape server as a publisher and publish each line of "
        "FILE (or stdin) as one message of the active session, in order: the bytes between "
        "two \\n, as they are. Exits non-zero if any message was not acknowledged as durable.",
    )
    publish.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="(stdin)")
    publish.add_argument("--host", default=DEFAULT_HOST, help="server address (%(default)s)")
    publish.add_argument(
        "--port", type=argtypes.remote_port, default=DEFAULT_PORT, help="port (%(default)s)"
    )
    publish.add_argument("--user", default="", metavar="NAME", help="username")
    publish.add_argument("--password", default="", help=PASSWORD_HELP)
    add_password_file_option(publish)
    publish.add_argument(
        "--binary",
        action="store_true",
        help="records are a 2-byte big-endian length, then that many bytes, published as "
        "they are (without it: each line, without its \\n, byte for byte; a \\r before it "
        "is kept and said)",
    )
    publish.add_argument(
        "--end-session",
        action="store_true",
        help="end the session once every message is published",
    )
    publish.add_argument(
        "--marker-ends-session",
        action="store_true",
        help="a line (or --binary record) that is exactly ESC 'END OF SESSION', the "
        "publishing convention's marker, ends the session there, and what follows goes "
        "into the next session (default: such a line is refused, with its number, and "
        "nothing from it on is published)",
    )
    publish.add_argument(
        "--timeout",
        type=argtypes.positive,
        default=60.0,
        metavar="S",
        help="seconds to wait for the last acknowledgement (%(default)s)",
    )
    _add_tls_client_options(publish)
    publish.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    publish.set_defaults(subparser=publish)


class _Rate:
    """A progress line for a stream of unknown length: counts and the rate, redrawn at
    most ten times a second."""

    def __init__(self) -> None:
        self.started = self.drawn = time.monotonic()

    def show(self, sent: int, acked: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn < 0.1:
            return
        self.drawn = now
        rate = acked / (now - self.started) if now > self.started else 0.0
        sys.stderr.write(f"\rsent {sent:,}  durable {acked:,}  {rate:,.0f} messages/s ")
        sys.stderr.flush()


class _MarkerRefused(Exception):
    """The input holds the END OF SESSION marker as a record, and the user did not ask
    for it to end the session."""

    def __init__(self, what: str, number: int) -> None:
        super().__init__(what, number)
        self.what = what
        self.number = number


class _Records:
    r"""The input's messages, in lists of up to ``batch``: each line without its
    ``\n``, byte for byte (a ``\r`` before it is kept, and counted in
    :attr:`carriage_returns`), or with ``binary`` each 2-byte-length-prefixed record.
    A record that is the END OF SESSION marker is passed on if ``marker_ends`` is
    set; else what comes before it is, then :class:`_MarkerRefused`."""

    def __init__(self, stream: BinaryIO, binary: bool, marker_ends: bool) -> None:
        self._stream = stream
        self._binary = binary
        self._marker_ends = marker_ends
        self.read = 0
        """Records (lines) read so far."""
        self.carriage_returns = 0
        self._refused: _MarkerRefused | None = None

    def next_batch(self, batch: int = 2000) -> list[bytes] | None:
        """The next records, or None at the end of the input."""
        if self._refused is not None:
            raise self._refused
        records = self._read_binary(batch) if self._binary else self._read_lines(batch)
        if not records:
            return None
        if not self._marker_ends and END_OF_SESSION_MARKER in records:
            index = records.index(END_OF_SESSION_MARKER)
            number = self.read - len(records) + index + 1
            self._refused = _MarkerRefused("record" if self._binary else "line", number)
            if index == 0:
                raise self._refused
            return records[:index]
        return records

    def _read_lines(self, batch: int) -> list[bytes]:
        lines = self._stream.readlines(batch * 64)
        if not lines:
            return []
        records = [line.rstrip(b"\r\n") for line in lines]  # fast, and right without \r
        newlines = len(lines) - (not lines[-1].endswith(b"\n"))
        if sum(map(len, lines)) - sum(map(len, records)) != newlines:  # a \r was stripped
            records = [line[:-1] if line.endswith(b"\n") else line for line in lines]
            self.carriage_returns += sum(record.endswith(b"\r") for record in records)
        self.read += len(records)
        return records

    def _read_binary(self, batch: int) -> list[bytes]:
        header = struct.Struct(">H")
        records: list[bytes] = []
        while len(records) < batch and (head := self._stream.read(2)):
            if len(head) < 2:
                raise ConfigError("the input ends inside a record's length (--binary)")
            (size,) = header.unpack(head)
            record = self._stream.read(size)
            if len(record) < size:
                raise ConfigError(f"the input ends inside a record of {size} bytes (--binary)")
            records.append(record)
        self.read += len(records)
        return records


def _open_input(name: str) -> BinaryIO:
    if name == "-":
        return sys.stdin.buffer
    try:
        return open(name, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror}") from None


def _unacked(publisher: Publisher, binary: bool) -> str:
    """Which input records the messages not acknowledged are: `` (lines 5 to 9)``."""
    if publisher.sent <= publisher.acked:
        return ""
    what = "records" if binary else "lines"
    return f" ({what} {publisher.acked + 1} to {publisher.sent})"


async def _send_checked(
    publisher: Publisher, records: list[bytes], binary: bool, flush_within: float
) -> None:
    """Send ``records``; one too long for a SoupBinTCP packet stops the command, once
    what comes before it is acknowledged, saying which record it is."""
    if not records or max(map(len, records)) <= MAX_PAYLOAD:  # no loop per record
        await publisher.send_many(records)
        return
    too_long = next(n for n, r in enumerate(records) if len(r) > MAX_PAYLOAD)
    await publisher.send_many(records[:too_long])
    number = publisher.sent + 1
    try:
        async with asyncio.timeout(flush_within):
            await publisher.flush()
    except TimeoutError:
        pass  # said below: how many were acknowledged
    what = "record" if binary else "line"
    done = (
        f"nothing from {what} {number} on was published; {what}s 1 to {publisher.acked} were"
        if publisher.acked
        else "nothing was published"
    ) + _unacked(publisher, binary).replace(" (", "; not acknowledged: ").rstrip(")")
    raise ConfigError(
        f"{what} {number}: a message of {len(records[too_long]):,} bytes does not fit a "
        f"SoupBinTCP packet (at most {MAX_PAYLOAD:,} bytes): {done}"
    )


async def _publish(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stream = await loop.run_in_executor(None, _open_input, args.file)
    progress = _Rate() if sys.stderr.isatty() else None
    started = time.monotonic()
    try:
        publisher = await Publisher.connect(
            args.host,
            args.port,
            username=args.user,
            password=args.password,
            ssl=args.tls_context,
        )
    except LoginRejected as exc:
        raise _rejected(exc, args) from None
    except TLSRefused as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot log in to {args.host}:{args.port}: {describe_error(exc)}"
        ) from None
    refused: _MarkerRefused | None = None
    reader = _Records(stream, args.binary, args.marker_ends_session)
    try:
        # Reading runs on a thread: a slow pipe must not stop heartbeats and acknowledgements.
        while True:
            try:
                # Large reads: each hand-over between the threads costs a GIL switch.
                records = await loop.run_in_executor(None, reader.next_batch, 16384)
            except _MarkerRefused as exc:
                refused = exc
                break
            if records is None:
                break
            await _send_checked(publisher, records, args.binary, args.timeout)
            if progress is not None:
                progress.show(publisher.sent, publisher.acked)
        try:
            async with asyncio.timeout(args.timeout):
                last = await publisher.flush()
                if args.end_session and refused is None:
                    await publisher.end_session()
        except TimeoutError:
            raise ConfigError(
                f"{publisher.sent - publisher.acked} of {publisher.sent} messages"
                f"{_unacked(publisher, args.binary)} were not acknowledged within "
                f"{args.timeout} s"
            ) from None
    except (OSError, ProtocolError) as exc:
        raise ConfigError(
            f"{publisher.sent - publisher.acked} of {publisher.sent} messages"
            f"{_unacked(publisher, args.binary)} were not acknowledged: {exc}"
        ) from None
    finally:
        await publisher.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    if progress is not None:
        progress.show(publisher.sent, publisher.acked, force=True)
        sys.stderr.write("\n")
    elapsed = time.monotonic() - started
    where = f" into session {last.session}, the last as {last.seq}" if last else ""
    print(
        f"published {plural(publisher.acked, 'message')}{where} in {elapsed:.2f} s "
        f"({publisher.acked / elapsed if elapsed else 0:,.0f} a second)"
        + "".join(f"; session {session} ended" for session in publisher.ended),
        file=sys.stderr,
    )
    returns = reader.carriage_returns
    if returns:
        print(
            f"note: {plural(returns, 'line')} end{'s' if returns == 1 else ''} with a carriage "
            "return (\\r), kept in the message: only \\n ends a line (--binary publishes "
            "records of any bytes)",
            file=sys.stderr,
        )
    if refused is not None:
        raise ConfigError(
            f"{refused.what} {refused.number} is the END OF SESSION marker (ESC 'END OF "
            f"SESSION'), which would end the session: it and every {refused.what} after it "
            f"were not published (give --marker-ends-session to let it end the session)"
        )
    return 0
