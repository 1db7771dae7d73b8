"""``tickertape tail``: print the messages of a session, over SoupBinTCP or from a
MoldUDP64 group, one a line.

The subscribing itself is the clients' (:mod:`tickertape.client.soupbintcp`,
:mod:`tickertape.client.moldudp64`); this module holds the verb's options, their checks
and the printing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tickertape.cli import argtypes
from tickertape.cli.config import add_password_file_option
from tickertape.cli.options import (
    PASSWORD_HELP,
    add_server_options,
    add_tls_client_options,
    add_verbose,
    check_servers,
    check_tls_client,
    rejected,
)
from tickertape.client.moldudp64 import DEFAULT_TCP_THRESHOLD, MoldSubscription
from tickertape.client.soupbintcp import Message, Subscription, TLSRefused, subscribe
from tickertape.errors import ConfigError, LoginRejected


def add_parser(verbs: Any) -> None:
    tail = verbs.add_parser(
        "tail",
        help="print the messages of a session",
        description="Log in to a SoupBinTCP server and print one message a line: SEQ PAYLOAD. "
        "Once logged in, reconnects by itself when the connection drops, with no gap and no "
        "duplicate, and says when it is back; stops at End of Session, saying on stderr "
        "where the session ended (exit status 0). A first login that cannot be made "
        "(nothing listens, a TLS port without --tls; with --server, at any of them) is an "
        "error (exit 1), unless --wait; "
        "a rejected login is an error with the server's reason.",
    )
    add_server_options(
        tail,
        "tail logs in to the first, and when a connection is lost, to the next in turn, at "
        "the next sequence number (a first login tries each)",
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
    add_tls_client_options(tail)
    mold = tail.add_argument_group(
        "MoldUDP64",
        "with --mold, follow a MoldUDP64 group instead of logging in over SoupBinTCP "
        "(--host, --port, --server, --user and --password are then not used)",
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
    add_verbose(tail)
    tail.set_defaults(subparser=tail)


def check(args: argparse.Namespace) -> None:
    """Refuse MoldUDP64 options that do not go together."""
    args.session = args.session or ""  # blank: the active session
    if args.mold is None:
        if args.request is not None or args.iface is not None or args.tcp is not None:
            args.subparser.error("--request, --iface and --tcp need --mold")
        check_servers(args)
        return
    if args.server is not None:
        args.subparser.error("--server is for SoupBinTCP, not --mold")
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


def check_tls(args: argparse.Namespace) -> None:
    """Refuse TLS options that do not go together; load the client context."""
    if args.mold is not None and args.tls:
        args.subparser.error("--tls and --ca are for SoupBinTCP, not --mold")
    check_tls_client(args)


async def run(args: argparse.Namespace) -> int:
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
        (host, port), *alternates = args.servers
        source = subscribe(
            host,
            port,
            args.session,
            args.seq,
            username=args.user,
            password=args.password,
            ssl=args.tls_context,
            wait=args.wait,
            alternates=alternates,
        )
    try:
        await _print_messages(args, source)
    except LoginRejected as exc:
        raise rejected(exc, args) from None
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
