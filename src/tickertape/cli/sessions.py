"""``tickertape sessions ACTION``: list, show, roll, archive, verify and export the
sessions of a data directory, offline (``--data``) or through a running server's admin
API (``--admin-port``).

What is read and checked on disk is the store's (:mod:`tickertape.store.inspect`), the
HTTP requests the admin client's (:mod:`tickertape.client.admin`): this module holds the
options, the password prompt, the progress bar, and the printing of what was found.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO, Final

from tickertape.cli import argtypes
from tickertape.cli.options import DEFAULT_DATA, add_token_options, add_verbose, read_token
from tickertape.client.admin import ADMIN_HOST, AdminClient, basic, bearer
from tickertape.errors import ConfigError, TickertapeError
from tickertape.store.inspect import (
    EXPORT_FORMATS,
    STATE_ACTIVE,
    archive_offline,
    data_directory_in_use,
    export,
    export_range,
    find_session,
    list_sessions,
    show_session,
    state_of,
    verify_session,
)
from tickertape.store.opening import open_session_log
from tickertape.text import plural

PROGRESS_INTERVAL: Final = 0.1
"""Seconds between two drawings of the progress bar."""


def add_parser(verbs: Any) -> None:
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
    add_verbose(listing)

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
    add_verbose(show)

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
    add_token_options(rolling, "the token the server was started with")
    add_verbose(rolling)

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
    add_token_options(archive, "the token the server was started with (with --admin-port)")
    add_verbose(archive)

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
    add_verbose(verify)

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
        choices=EXPORT_FORMATS,
        default="text",
        help="text: SEQ PAYLOAD a line, as tail prints; hex: SEQ HEX a line; raw: payloads "
        "only, each after its u16 length; soupbin: the SoupBinTCP Sequenced Data packets "
        "exactly as in the log (%(default)s)",
    )
    add_verbose(export)
    export.set_defaults(subparser=export)


def check(args: argparse.Namespace) -> None:
    """Refuse a range that ends before it starts, before the session is read."""
    if args.seq_from is not None and args.seq_to is not None and args.seq_to < args.seq_from:
        args.subparser.error(f"--to {args.seq_to} is before --from {args.seq_from}")


def run(args: argparse.Namespace) -> int:
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
        summaries = list_sessions(root)
        rows = [summary.brief() for summary in summaries]
        where = str(root)
        rows_to_check = rows
        if data_directory_in_use(root) is not None:
            # A batch being appended as the log was read need not be damage: the
            # server checked its active session when it opened it, and logged it.
            rows_to_check = [row for row in rows if row["state"] != STATE_ACTIVE]
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
        detail = show_session(args.data or DEFAULT_DATA, args.session).detail()
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
        result = archive_offline(args.data or DEFAULT_DATA, args.session)
        messages, original, archived = result.messages, result.original_bytes, result.archived_bytes
    ratio = f" ({100 * archived / original:.0f}%)" if original else ""
    what = f"{plural(messages, 'message')}, {original} bytes"
    print(f"session {args.session} archived: {what}", end="")
    print(f" into {archived}{ratio}")
    return 0


def _sessions_verify(args: argparse.Namespace) -> int:
    report = verify_session(args.data, args.session)
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
    directory = find_session(args.data, args.session)
    _warn_if_written(args.data, args.session)
    with open_session_log(directory) as session_log:
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
        first, last = export_range(session_log, args.seq_from, args.seq_to)
        progress = Progress(last - first + 1) if sys.stderr.isatty() else None
        out = sys.stdout.buffer
        export(session_log, first, last, args.format, out, progress)
        out.flush()
    return 0


def _warn_if_written(root: Path, session: str) -> None:
    """Say so when a server is appending to the session being read."""
    holder = data_directory_in_use(root)
    if holder is not None and state_of(root / session) == STATE_ACTIVE:
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
    return basic(user, password)


def _admin_call(args: argparse.Namespace, method: str, path: str) -> dict[str, Any]:
    """Ask the admin API of the server on ``--admin-port``; its JSON answer, or a
    :class:`TickertapeError` saying why there is none."""
    authorization = None
    if method == "POST":
        token = read_token(args)
        if token is not None:
            authorization = bearer(token)
        elif getattr(args, "admin_user", None):
            authorization = _basic_credentials(args.admin_user)
    return AdminClient(args.admin_port, authorization=authorization).call(method, path)


class Progress:
    """A one-line progress bar, redrawn at most ten times a second (an
    :class:`~tickertape.store.inspect.ExportProgress`)."""

    def __init__(self, total: int, stream: BinaryIO | None = None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr.buffer
        self.width = width
        self._drawn = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < PROGRESS_INTERVAL:
            return
        self._drawn = now
        filled = self.width * done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r[{bar}] {100 * done // self.total:3d}% {done}/{self.total} messages"
        self.stream.write(line.encode())
        self.stream.flush()

    def finish(self, done: int) -> None:
        self.update(done, force=True)
        self.stream.write(b"\n")
        self.stream.flush()
