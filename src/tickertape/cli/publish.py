"""``tickertape publish``: publish the lines of a file or of stdin, as a publisher
logged in over SoupBinTCP, and say how many were acknowledged as durable.

The publishing itself is the client's
(:class:`~tickertape.client.failover.FailoverPublisher`, one server or several);
this module holds the verb's options, the reading of the input into records (lines or
``--binary`` records, the END OF SESSION marker refused unless asked for) and what is
said at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from typing import Any, BinaryIO

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
from tickertape.client.connecting import TLSRefused, describe_error
from tickertape.client.failover import FailoverPublisher, NoPublishingServer
from tickertape.errors import ConfigError, LoginRejected, ProtocolError
from tickertape.text import plural
from tickertape.wire.publishing import END_OF_SESSION_MARKER
from tickertape.wire.soupbintcp import MAX_PAYLOAD


def add_parser(verbs: Any) -> None:
    publish = verbs.add_parser(
        "publish",
        help="publish the lines of a file or of stdin",
        description="Log in to a tickertape server as a publisher and publish each line of "
        "FILE (or stdin) as one message of the active session, in order: the bytes between "
        "two \\n, as they are. If the connection is lost, logs in again (to the server "
        "that takes publishers now, with --server) and sends again every message not yet "
        "acknowledged, which may then be published twice (carry an id in each message to "
        "tell). Exits non-zero if any message was not acknowledged as durable.",
    )
    publish.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="(stdin)")
    add_server_options(
        publish,
        "publish logs in to the one that takes publishers (a cluster node that does not "
        "take them names the one that does), waiting up to --timeout while none does",
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
        help="seconds to wait for the last acknowledgement, and for a server to take the "
        "publisher when none does (%(default)s)",
    )
    add_tls_client_options(publish)
    add_verbose(publish)
    publish.set_defaults(subparser=publish)


def check(args: argparse.Namespace) -> None:
    """Refuse server options that do not go together; make ``args.servers``."""
    check_servers(args)


def check_tls(args: argparse.Namespace) -> None:
    """Refuse TLS options that do not go together; load the client context."""
    check_tls_client(args)


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


def _unacked(publisher: FailoverPublisher, binary: bool) -> str:
    """Which input records the messages not acknowledged are: `` (lines 5 to 9)``."""
    if publisher.sent <= publisher.acked:
        return ""
    what = "records" if binary else "lines"
    return f" ({what} {publisher.acked + 1} to {publisher.sent})"


async def _send_checked(
    publisher: FailoverPublisher, records: list[bytes], binary: bool, flush_within: float
) -> None:
    """Send ``records``; one too long for a SoupBinTCP packet stops the command, once
    what comes before it is acknowledged, saying which record it is."""
    too_long = next((n for n, r in enumerate(records) if len(r) > MAX_PAYLOAD), None)
    if too_long is None:
        await publisher.send_many(records)
        return
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


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stream = await loop.run_in_executor(None, _open_input, args.file)
    progress = _Rate() if sys.stderr.isatty() else None
    started = time.monotonic()
    try:
        publisher = await FailoverPublisher.connect(
            args.servers,
            username=args.user,
            password=args.password,
            ssl=args.tls_context,
            failover_timeout=args.timeout,
        )
    except LoginRejected as exc:
        raise rejected(exc, args) from None
    except (TLSRefused, NoPublishingServer) as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot log in: {describe_error(exc)}") from None
    refused: _MarkerRefused | None = None
    reader = _Records(stream, args.binary, args.marker_ends_session)
    try:
        # Reading runs on a thread: a slow pipe must not stop heartbeats and acknowledgements.
        while True:
            try:
                records = await loop.run_in_executor(None, reader.next_batch)
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
