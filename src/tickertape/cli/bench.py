"""``tickertape bench``: a load test against a running server, in the manner of ``nats bench``.

The verb's options, its checks of them, the progress line on stderr and the table (or JSON)
on stdout. The workload itself (the clients, their processes, the report) is
:mod:`tickertape.client.load`, which says what every message carries and what each
subscriber checks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Final

from tickertape.client.load.clients import HEADER, BenchError, Plan, Target
from tickertape.client.load.report import PERCENTILES, make_report
from tickertape.client.load.workers import (
    PROGRESS_EVERY,
    Run,
    go,
    probe,
    start_workers,
    stop_workers,
    wait_ready,
)
from tickertape.defaults import DEFAULT_HOST, DEFAULT_PORT
from tickertape.errors import ConfigError
from tickertape.wire.soupbintcp import MAX_PAYLOAD

DEFAULT_COUNT: Final = 100_000
DEFAULT_SIZE: Final = 128
DEFAULT_BATCH: Final = 1000
DEFAULT_TIMEOUT: Final = 30.0
MAX_PROCESSES: Final = 64
PROGRESS_LINE_EVERY: Final = 5.0
"""Seconds between progress lines when stderr is not a terminal."""

EXAMPLE: Final = """\
example, against a server started with `tickertape serve --port 7411`:

  $ tickertape bench --port 7411 --publishers 2 --subscribers 4 --count 500000
  (a table: published and delivered messages a second, per publisher and per
  subscriber, and the publish-to-receive latency: p50, p90, p99, p99.9, max)

  $ tickertape bench --duration 10 --rate 50000 --subscribers 1 --json

Exits 1 if a subscriber missed a message, got one twice or out of order, or anything
failed; 2 for options that do not go together.
"""


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, else now and then."""

    def __init__(self, plan: Plan, started: float) -> None:
        self.plan = plan
        self.started = started
        self.tty = sys.stderr.isatty()
        self.shown = started
        self.drawn = False

    def show(self, run: Run, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown < (PROGRESS_EVERY if self.tty else PROGRESS_LINE_EVERY):
            return
        self.shown = now
        plan = self.plan
        sent = sum(v[0] for k, v in run.progress.items() if k[0] == "publisher")
        acked = sum(v[1] for k, v in run.progress.items() if k[0] == "publisher")
        delivered = sum(v[1] for k, v in run.progress.items() if k[0] == "subscriber")
        of = f" of {plan.count:,}" if plan.count is not None else ""
        line = f"bench: {now - self.started:5.1f} s  published {acked:,}{of} (sent {sent:,})"
        if plan.subscribers:
            of = f" of {plan.count * plan.subscribers:,}" if plan.count is not None else ""
            line += f"  delivered {delivered:,}{of}"
        if self.tty:
            sys.stderr.write(f"\r{line}\x1b[K")
            self.drawn = True
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def run_bench(args: argparse.Namespace) -> int:
    """``tickertape bench``: the exit status."""
    try:
        plan = _plan(args)
    except ConfigError as exc:
        args.subparser.error(str(exc))
    try:
        session = asyncio.run(probe(plan, args.timeout))
    except BenchError as exc:
        print(f"tickertape bench: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a CA file that does not load
        print(f"tickertape bench: {exc}", file=sys.stderr)
        return 1
    processes = min(args.processes or MAX_PROCESSES, plan.publishers + plan.subscribers)
    run = Run(plan)
    workers = start_workers(plan, processes, args.timeout)
    progress: Progress | None = None
    try:
        wait_ready(run, workers, args.timeout)
        if not run.failures:
            progress = Progress(plan, time.monotonic())
            go(run, workers, args.timeout, progress.show)
            progress.show(run, force=True)
            progress.end()
    except KeyboardInterrupt:
        if progress is not None:
            progress.end()
        print("tickertape bench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still clean up
        stop_workers(workers)
    report = make_report(plan, session, run)
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["published"]["messages"] or not run.failures:
        print(_table(report))
    for error in report["errors"]:
        print(f"tickertape bench: {error}", file=sys.stderr)
    return 0 if report["ok"] else 1


def _plan(args: argparse.Namespace) -> Plan:
    if args.publishers < 1:
        raise ConfigError("--publishers must be 1 or more")
    if args.subscribers < 0:
        raise ConfigError("--subscribers cannot be negative")
    if not HEADER.size <= args.size <= MAX_PAYLOAD:
        raise ConfigError(
            f"--size must be {HEADER.size} to {MAX_PAYLOAD} bytes (each message carries a "
            f"{HEADER.size}-byte header: the run, its publisher and number, the send time)"
        )
    if args.count is not None and args.count < args.publishers:
        raise ConfigError("--count must be at least --publishers (each publishes one or more)")
    if args.duration is not None and not args.duration > 0:
        raise ConfigError("--duration must be more than 0 seconds")
    if args.batch < 1:
        raise ConfigError("--batch must be 1 or more")
    if args.rate is not None and not args.rate > 0:
        raise ConfigError("--rate must be more than 0")
    if args.seq < 0:
        raise ConfigError("--from must be 0 (live) or a sequence number")
    if args.processes is not None and args.processes < 1:
        raise ConfigError("--processes must be 1 or more")
    if not args.timeout > 0:
        raise ConfigError("--timeout must be more than 0 seconds")
    if args.ca is not None and not args.tls:
        raise ConfigError("--ca needs --tls")
    count = DEFAULT_COUNT if args.count is None and args.duration is None else args.count
    return Plan(
        target=Target(args.host, args.port, args.user, args.password, args.tls, args.ca),
        tag=secrets.token_bytes(8),
        publishers=args.publishers,
        subscribers=args.subscribers,
        size=args.size,
        count=count,
        duration=args.duration,
        seq=args.seq,
        batch=args.batch,
        rate=args.rate,
    )


def _table(report: dict[str, Any]) -> str:
    how = (
        f"{report['count']:,} messages of {report['size']} bytes"
        if report["count"] is not None
        else f"messages of {report['size']} bytes for {report['duration']:g} s"
    )
    if report["rate"]:
        how += f" at {report['rate']:,.0f} a second"
    start = "live" if report["from"] == 0 else f"from {report['from']}"
    lines = [
        f"tickertape bench: {report['server']}, session {report['session']}",
        f"{_count(report['publishers'], 'publisher')}, "
        f"{_count(report['subscribers'], 'subscriber')} ({start}), "
        f"{how}, in batches of up to {report['batch']:,}",
        "",
        f"{'':16}{'messages':>12}{'seconds':>10}{'messages/s':>13}{'MB/s':>9}",
    ]

    def row(name: str, entry: dict[str, Any] | None) -> str:
        if entry is None:
            return f"{name:16}{'(failed)':>12}"
        return (
            f"{name:16}{entry['messages']:>12,}{entry['seconds']:>10.2f}"
            f"{entry['rate']:>13,.0f}{entry['mb_per_second']:>9.1f}"
        )

    lines.append(row("published", report["published"]))
    if report["publishers"] > 1:
        lines += [row(f"  publisher {i + 1}", e) for i, e in enumerate(report["published"]["each"])]
    if report["subscribers"]:
        lines.append(row("delivered", report["delivered"]))
        if report["subscribers"] > 1:
            lines += [
                row(f"  subscriber {i + 1}", e) for i, e in enumerate(report["delivered"]["each"])
            ]
        latency = report["latency_ms"]
        lines += [
            "",
            f"latency, publish to receive, ms ({latency['samples']:,} messages):",
            "".join(f"{name:>10}" for name, _ in PERCENTILES) + f"{'max':>10}",
        ]
        if latency["samples"]:
            lines.append(
                "".join(f"{latency[name]:>10.3f}" for name, _ in PERCENTILES)
                + f"{latency['max']:>10.3f}"
            )
        other = report["delivered"]["other_messages"]
        if other:
            lines.append(
                f"(and {other:,} messages of the session that this bench did not publish, "
                "summed over the subscribers: earlier ones, or another publisher's)"
            )
    lines.append("")
    if report["ok"]:
        if report["subscribers"]:
            lines.append(
                f"ok: each subscriber received all {report['published']['messages']:,} "
                "messages, in order, with no gap and no duplicate"
            )
        else:
            lines.append(f"ok: all {report['published']['messages']:,} messages acknowledged")
    else:
        lines.append(f"FAILED: {len(report['errors'])} errors (on stderr)")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


# ---------------------------------------------------------------------------- the command line


def add_bench_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` verb to the ``tickertape`` parser's subparsers; run the parsed
    arguments with :func:`run_bench`."""
    bench: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="load-test a running server: publish and subscribe rates, latency",
        description="Load-test a running tickertape server: N publishers publish (each "
        "message durable before it counts) while M subscribers receive, each client in a "
        "process of its own. Prints the publish rate, the delivery rate and the "
        "publish-to-receive latency (each message carries its send time); every subscriber "
        "checks that it received every message, in order, with no gap. Progress goes to "
        "stderr, the table (or --json) to stdout.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--host", default=DEFAULT_HOST, help="server address (%(default)s)")
    bench.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (%(default)s)")
    bench.add_argument("--user", default="", metavar="NAME", help="username (for every client)")
    bench.add_argument("--password", default="", help="password")
    bench.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS, checking the server's certificate (against --ca if given)",
    )
    bench.add_argument(
        "--ca", type=Path, metavar="FILE", help="with --tls, trust only the CAs in this PEM file"
    )
    bench.add_argument(
        "--publishers", type=int, default=1, metavar="N", help="publishers (%(default)s)"
    )
    bench.add_argument(
        "--subscribers", type=int, default=1, metavar="M", help="subscribers (%(default)s)"
    )
    bench.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        metavar="BYTES",
        help=f"message size, {HEADER.size} or more (%(default)s)",
    )
    amount = bench.add_mutually_exclusive_group()
    amount.add_argument(
        "--count",
        type=int,
        metavar="N",
        help=f"messages to publish, shared among the publishers ({DEFAULT_COUNT:,})",
    )
    amount.add_argument(
        "--duration", type=float, metavar="S", help="publish for S seconds instead of --count"
    )
    bench.add_argument(
        "--from",
        dest="seq",
        type=int,
        default=0,
        metavar="N",
        help="where subscribers start: 0, live, logged in before anyone publishes "
        "(%(default)s); 1, the session from its first message (replayed, then live), "
        "logged in as publishing starts",
    )
    bench.add_argument(
        "--rate",
        type=float,
        metavar="N",
        help="publish N messages a second in all, at a steady pace (default: as fast as "
        "the server takes them; latency is then mostly queueing)",
    )
    bench.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        metavar="N",
        help="messages per send_many call (%(default)s)",
    )
    bench.add_argument(
        "--processes",
        type=int,
        metavar="P",
        help="run the clients in at most P processes (default: one per client, "
        f"up to {MAX_PROCESSES})",
    )
    bench.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="give up when nothing moves for S seconds (%(default)s)",
    )
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(subparser=bench)
    return bench
