"""The ``tickertape`` command: ``serve`` a data directory, ``tail`` a server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tickertape import __version__
from tickertape.client.soupbintcp import subscribe
from tickertape.errors import TickertapeError
from tickertape.server.engine import Engine, EngineConfig
from tickertape.server.soupbintcp import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Credentials,
    ServerConfig,
    SoupBinTCPServer,
)
from tickertape.sources.demo import DEFAULT_DEMO_SIZE, run_demo
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.wire.soupbintcp import MAX_PAYLOAD

log = logging.getLogger("tickertape")

DEFAULT_DATA = Path("data")


def _credentials(text: str) -> Credentials:
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    if len(username) > 6 or len(password) > 10:
        raise argparse.ArgumentTypeError(
            "SoupBinTCP allows usernames of at most 6 characters and passwords of at most 10"
        )
    return Credentials(username, password)


def _payload_size(text: str) -> int:
    value = int(text)
    if not 0 < value <= MAX_PAYLOAD:
        raise argparse.ArgumentTypeError(
            f"{text}: a SoupBinTCP message holds 1 to {MAX_PAYLOAD} bytes"
        )
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


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
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")
    serve.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="data directory (%(default)s)"
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
        type=_positive,
        metavar="RATE",
        help="publish RATE demo messages a second into the active session",
    )
    serve.add_argument(
        "--demo-size",
        type=_payload_size,
        default=DEFAULT_DEMO_SIZE,
        metavar="N",
        help="bytes per demo message (%(default)s)",
    )
    serve.add_argument(
        "--demo-count",
        type=int,
        metavar="N",
        help="stop the demo source after N messages (default: run forever)",
    )
    serve.add_argument(
        "--user",
        type=_credentials,
        metavar="NAME:PASSWORD",
        help="accept only this username and password (default: accept any)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")

    tail = verbs.add_parser(
        "tail",
        help="print the messages of a session",
        description="Log in to a SoupBinTCP server and print one message a line: SEQ PAYLOAD. "
        "Reconnects by itself, with no gap and no duplicate; stops at End of Session.",
    )
    tail.add_argument("--host", default=DEFAULT_HOST, help="server address (%(default)s)")
    tail.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")
    tail.add_argument("--session", default="", help="session id (default: the active session)")
    tail.add_argument(
        "--from",
        dest="seq",
        type=int,
        default=1,
        metavar="N",
        help="first sequence number; 0 means from the next message published (%(default)s)",
    )
    tail.add_argument("--count", type=int, metavar="N", help="stop after N messages")
    tail.add_argument(
        "--format",
        choices=["text", "hex", "raw"],
        default="text",
        help="text: payload as text; hex: payload in hex; raw: payloads only, length-prefixed",
    )
    tail.add_argument("--user", default="", metavar="NAME", help="username")
    tail.add_argument("--password", default="", help="password")
    tail.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.verb == "serve":
            return asyncio.run(_serve(args))
        return asyncio.run(_tail(args))
    except KeyboardInterrupt:
        return 130
    except TickertapeError as exc:
        print(f"tickertape: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace) -> int:
    durability = Durability(args.durability)
    engine = Engine(Catalogue(args.data, durability), EngineConfig(durability=durability))
    try:
        await engine.start()
    except OSError as exc:
        print(f"tickertape: cannot use data directory {args.data}: {exc}", file=sys.stderr)
        return 1
    server = SoupBinTCPServer(
        engine, ServerConfig(host=args.host, port=args.port, credentials=args.user)
    )
    try:
        await server.start()
    except OSError as exc:
        await engine.close()
        print(f"tickertape: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    failed: list[BaseException] = []
    demo = None
    if args.demo:
        demo = asyncio.create_task(
            run_demo(engine, args.demo, args.demo_size, args.demo_count), name="demo"
        )

        def demo_done(task: asyncio.Task[None]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failed.append(error)
                log.error("demo source failed, stopping: %s", error)
                stop.set()

        demo.add_done_callback(demo_done)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        if demo is not None and not demo.done():
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await demo
        await server.close()
        await engine.close()
    return 1 if failed else 0


async def _tail(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    shown = 0
    if args.count is not None and args.count <= 0:
        return 0
    async with subscribe(
        args.host, args.port, args.session, args.seq, username=args.user, password=args.password
    ) as messages:
        async for message in messages:
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
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
