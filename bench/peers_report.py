"""The comparison's figures as a Markdown table, a section of docs/benchmarks.md, and
plots (matplotlib PNGs next to it). Used by ``bench/peers.py``."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from peers import Figure, Results

SECTION_TITLE: Final = "## Against the alternatives"
BEGIN: Final = (
    "<!-- peers:begin (written by bench/peers.py: edits between these lines are lost) -->"
)
END: Final = "<!-- peers:end -->"
THROUGHPUT_PNG: Final = "benchmarks-peers-throughput.png"
LATENCY_PNG: Final = "benchmarks-peers-latency.png"
COLOURS: Final = {
    "tickertape": "#1b7837",
    "jetstream": "#2166ac",
    "redis": "#b2182b",
    "nasdaq": "#8c6d31",
}
NAMES: Final = {
    "tickertape": "tickertape",
    "jetstream": "NATS JetStream",
    "redis": "Redis Streams",
    "nasdaq": "nasdaq-protocols",
}
ALTS: Final = (
    "Throughput of each peer per workload: bars, log scale",
    "Latency percentiles of each peer: bars, log scale",
)
TARGETS: Final = {"replay": 10.0, "publish:batch": 3.0}
"""tickertape ÷ JetStream wanted, per row (issue 7)."""


def human(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def row_title(row: str, results: Results) -> str:
    s = results.settings
    size = f"{s.payload_size} B"
    if row.startswith("publish:"):
        durability = row.split(":", 1)[1]
        return f"persisted publishing, {s.messages:,} x {size} (tickertape durability {durability})"
    if row == "replay":
        return (
            f"late joiner catching up {s.messages:,} x {size} while "
            f"{s.background_rate:,} msg/s are published"
        )
    if row == "fanout":
        return f"live fan-out of {s.fanout_messages:,} x {size} to {s.subscribers} subscribers"
    if row.startswith("latency:"):
        durability = row.split(":", 1)[1]
        return (
            f"publish-to-receive latency at {s.latency_rate:,} msg/s (tickertape durability "
            f"{durability}), p50 / p99 / p99.9"
        )
    return row


def ordered_rows(results: Results) -> list[str]:
    durabilities = results.settings.durabilities
    order = [f"publish:{d}" for d in durabilities] + ["replay", "fanout"]
    order += [f"latency:{d}" for d in durabilities]
    return [row for row in order if row in results.rows]


def ratio(row: str, figure: Figure, base: Figure | None) -> float | None:
    """The peer's figure over tickertape's (latency: its p99 over tickertape's)."""
    if base is None or base.value is None or figure.value is None or not base.value:
        return None
    return figure.value / base.value


def cell(row: str, peer: str, results: Results) -> str:
    figures = results.rows[row]
    figure = figures.get(peer)
    if figure is None:
        return "-"
    if figure.error is not None:
        first = figure.error.strip().splitlines()[-1][:80] if figure.error.strip() else "?"
        return f"FAILED ({first})"
    mark = "" if figure.complete else " †"
    if row.startswith("latency"):
        stats = figure.latency or {}
        if not stats:
            return "no samples" + mark
        text = f"{stats['p50']:.2f} / {stats['p99']:.2f} / {stats['p99.9']:.2f} ms{mark}"
    else:
        assert figure.value is not None
        text = f"{human(figure.value)} {figure.unit}{mark}"
    if peer == "tickertape":
        return f"**{text}**"
    found = ratio(row, figure, figures.get("tickertape"))
    if found is not None:
        text += f" ({found:.2g}x)" if found < 10 else f" ({found:,.0f}x)"
    return text


def table(results: Results) -> str:
    peers = list(results.settings.peers)
    header = "| workload | " + " | ".join(NAMES[p] for p in peers) + " |"
    lines = [header, "|" + "---|" * (len(peers) + 1)]
    for row in ordered_rows(results):
        cells = [cell(row, peer, results) for peer in peers]
        lines.append(f"| {row_title(row, results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def against_jetstream(results: Results) -> list[str]:
    """tickertape ÷ JetStream for each row with a target (and the other publish rows)."""
    lines = []
    for row in ordered_rows(results):
        figures = results.rows[row]
        ours, theirs = figures.get("tickertape"), figures.get("jetstream")
        if row.startswith("latency") or ours is None or theirs is None:
            continue
        if ours.value is None or theirs.value is None or not theirs.value:
            lines.append(f"- {row_title(row, results)}: not measured (a run failed)")
            continue
        times = ours.value / theirs.value
        wanted = TARGETS.get(row)
        verdict = (
            f"target at least {wanted:g}x: **{'met' if times >= wanted else 'MISSED'}**"
            if wanted is not None
            else "no target"
        )
        stopped = "" if ours.complete and theirs.complete else " (a run was stopped: †)"
        lines.append(
            f"- {row_title(row, results)}: tickertape {times:,.1f}x JetStream; {verdict}{stopped}"
        )
    return lines


def setup_lines(results: Results) -> list[str]:
    s, v = results.settings, results.meta.get("versions", {})
    durabilities = ", ".join(s.durabilities)
    return [
        f"- **tickertape** {v.get('tickertape', '')}: `tickertape serve --durability "
        f"{s.durability}` in a subprocess (publishing also with each of: {durabilities}); "
        "`batch` fsyncs every batch before acknowledging or sending it, `none` leaves the "
        f"log to the page cache. Clients: tickertape's `Publisher` (`send_many` of "
        f"{s.batch:,}-message lists, acknowledgements awaited at the end with `flush`) and "
        "`Subscription` (`batches()`), logged in at sequence number 1.",
        f"- **NATS JetStream**: `nats-server -js` {v.get('nats-server', '')} (Debian's "
        "package), one stream on file storage, one replica. This version acknowledges a "
        "message once written to the operating system and fsyncs every 2 minutes; it has "
        "no setting to fsync before acknowledging (`sync_interval: always` came in 2.10), "
        "so its durability is that of tickertape's `none`, not `batch`. Client: nats-py "
        f"{v.get('nats-py', '')}, `publish_async` of every message with up to 20,000 "
        "awaiting acknowledgement (its fastest acknowledged publishing), "
        "`publish_async_completed` at the end; each subscriber an ordered push consumer "
        "(flow control, no acks) from start sequence 1 (`DeliverPolicy.BY_START_SEQUENCE`), "
        "messages taken in its callback.",
        f"- **Redis Streams**: `redis-server` {v.get('redis-server', '')} (Debian's package) "
        "with `appendonly yes` and `appendfsync` set to the setting closest to tickertape's "
        "durability: `always` for `batch` (Redis fsyncs the AOF once per event-loop turn "
        "before replying, so a pipeline shares a sync, as a tickertape batch does) and `no` "
        "for `none` (the page cache decides); no RDB snapshots. Client: redis-py "
        f"{v.get('redis', '')} with the hiredis {v.get('hiredis', '')} parser: `XADD` "
        f"pipelined {s.batch:,} at a time (`transaction=False`; the blocking client, which "
        "pipelines faster than the asyncio one), `XREAD COUNT 10000 BLOCK 200` from the last "
        "id received, starting at `0-0` (replay, then live; the asyncio client, a "
        "connection per subscriber).",
        f"- **nasdaq-protocols** {v.get('nasdaq-protocols', '')}: a SoupBinTCP server written "
        "in the benchmark as its documentation and tests show, a `SoupServerSession` "
        "subclass served with `common.start_server`, a Python list as the log: `on_login` "
        "sends what the list holds from the number asked for (`send_seq_msg`), "
        "`on_unsequenced` appends a message, sends it to every subscriber and acknowledges "
        "it in tickertape's publishing convention, so tickertape's own `Publisher` and "
        "`Subscription` are its clients. Nothing is written to disk. Its reader takes one "
        "incoming packet per event-loop turn and sleeps 0.1 ms between turns (1 ms once "
        "rounded by epoll), so anything published to it over the network goes at about "
        "1,000 messages a second; its late joiner's list is filled inside its process "
        "instead (a million messages over the network would take a quarter of an hour).",
    ]


def method_lines(results: Results) -> list[str]:
    s = results.settings
    return [
        "- Every peer is driven by the same three client processes (a publisher, a "
        "subscriber process holding every subscription, and a background publisher), "
        "spawned once; servers are started fresh for each workload on 127.0.0.1 with their "
        "data in a temporary directory (the late joiner reuses the server of the first "
        "publish run when that run published everything).",
        "- Publishing: from the first message handed to the client library to the last "
        "acknowledgement. Fan-out: subscribers subscribe first; from the first message "
        "handed over to the last one received by the last subscriber; deliveries are "
        "summed over the subscribers. Late joiner: from the moment it subscribes to its "
        f"receiving message {s.messages:,}. Latency: messages due at a steady rate, handed "
        f"over every millisecond; each carries when it came due, and the subscriber "
        "subtracts that from when the client library gave it the message (so time the "
        "publishing client spent blocked counts too); the first "
        f"{s.latency_warmup:g} s are left out.",
        "- Every subscriber checks every message against what was published: its number, "
        "its bytes, hence its order. A run that delivers a wrong message fails.",
        f"- A measurement still running after {s.time_limit:.0f} s is stopped and reported "
        "as far as it got (marked †, details below).",
        "- Clients and servers share the machine's CPUs: every figure includes the cost of "
        "the Python client library, which is often the bottleneck (in fan-out, one "
        "process reads all the subscriptions).",
    ]


def notes(results: Results) -> list[str]:
    lines: list[str] = []
    seen: set[tuple[str, str, str, str | None]] = set()  # a one-setting peer's figure
    for row in ordered_rows(results):  # stands in several rows: noted once
        for peer, figure in results.rows[row].items():
            key = (peer, figure.setting, figure.detail, figure.error)
            if key in seen:
                continue
            seen.add(key)
            if figure.error is not None:
                lines.append(f"- {NAMES[peer]}, {row}: FAILED: {figure.error.strip()[:300]}")
            elif figure.detail:
                mark = "" if figure.complete else " †"
                lines.append(f"- {NAMES[peer]}, {row} ({figure.setting}){mark}: {figure.detail}")
    return lines


def machine_line(results: Results) -> str:
    m = results.meta
    memory = f", {m['memory_mib'] / 1024:.0f} GiB" if m.get("memory_mib") else ""
    return (
        f"Run on {m.get('date', '?')}: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs"
        f"{memory}, {m.get('system', '?')}, {m.get('python', '?')}; tree "
        f"{m.get('tree', '?')}; `{m.get('command', '?')}`. Load: {m.get('load_before', '?')} "
        f"before, {m.get('load_after', '?')} after."
    )


def trial(results: Results) -> str:
    """A warning when the run used smaller counts than the comparison's defaults."""
    s = results.settings
    full = type(s)()  # the defaults
    smaller = [
        name
        for name in ("messages", "fanout_messages", "latency_seconds")
        if getattr(s, name) < getattr(full, name)
    ]
    if not smaller and s.peers == full.peers and s.workloads == full.workloads:
        return ""
    return (
        "**These figures are from a trial run** (smaller counts than the defaults, or "
        "not every peer or workload): run `bench/compare-peers` for the comparison.\n\n"
    )


def section(results: Results, images: Sequence[str]) -> str:
    s = results.settings
    parts = [
        "`bench/peers.py` runs the same workloads against tickertape and against what a "
        "user would otherwise pick (NATS JetStream, Redis Streams, and a SoupBinTCP server "
        "built on `nasdaq-protocols`), each started by the benchmark, each measured the "
        "same way from the same client processes, in one run. One command does all of it "
        "from a fresh clone, including installing the peers (`bench/install-peers`: Debian's "
        "`nats-server` and `redis-server`), and rewrites this section and its plots:",
        "",
        "```sh",
        "bench/compare-peers                        # the whole comparison (about 15 minutes)",
        ".venv/bin/python bench/peers.py --quick    # small counts, every peer: a smoke run",
        ".venv/bin/python bench/peers.py --replot   # this section and the plots again, "
        "from docs/benchmarks-peers.json",
        "```",
        "",
        "The smoke version runs in the test suite (`tests/bench/test_peers.py`).",
        "",
        trial(results) + machine_line(results),
        "",
        table(results),
        "",
        "Each peer's figure is followed by its ratio to tickertape's (throughput: the peer's "
        "÷ tickertape's, so below 1 is slower; latency: the peer's p99 ÷ tickertape's, so "
        "above 1 is slower). † marks a run stopped at the time limit, measured as far as "
        f"it got. {s.payload_size}-byte messages throughout.",
        "",
        *[f"![{alt}]({name})" for alt, name in zip(ALTS, images, strict=False)],
        "",
        "### Against JetStream's targets",
        "",
        *against_jetstream(results),
        "",
        "### What each peer ran",
        "",
        *setup_lines(results),
        "",
        "### How it is measured",
        "",
        *method_lines(results),
        "",
        "### This run, in detail",
        "",
        *notes(results),
    ]
    return "\n".join(parts)


def write_section(docs: Path, body: str) -> None:
    """Replace what is between the markers in ``docs`` (or add the section at its end)."""
    text = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n\n{body}\n\n{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION_TITLE}\n\n{block}\n"
    docs.write_text(text if text.endswith("\n") else text + "\n")


def write_docs(results: Results, docs: Path) -> list[Path]:
    """The section of ``docs`` and the two PNGs beside it."""
    out = docs.parent
    images = plot(results, out)
    write_section(docs, section(results, [path.name for path in images]))
    return [docs, *images]


# ---------------------------------------------------------------------------- plots


def plot(results: Results, out: Path) -> list[Path]:
    """Throughput bars per workload, and latency percentiles; PNGs in ``out``."""
    # Imported here, not at the top: the client processes import this module too.
    from matplotlib.figure import Figure as Chart  # noqa: PLC0415

    written = []
    rows = [row for row in ordered_rows(results) if not row.startswith("latency")]
    latency_rows = [row for row in ordered_rows(results) if row.startswith("latency")]
    peers = list(results.settings.peers)
    if rows:
        chart = Chart(figsize=(9, 1.15 + 1.45 * len(rows)))
        axes = chart.subplots(len(rows), 1, squeeze=False)
        for ax, row in zip(axes[:, 0], rows, strict=True):
            throughput_panel(ax, row, peers, results)
        chart.suptitle("Throughput (log scale; longer is better)", fontweight="bold")
        chart.tight_layout()
        path = out / THROUGHPUT_PNG
        chart.savefig(path, dpi=110)
        written.append(path)
    if latency_rows:
        chart = Chart(figsize=(9, 0.4 + 3.6 * len(latency_rows)))
        axes = chart.subplots(len(latency_rows), 1, squeeze=False)
        for ax, row in zip(axes[:, 0], latency_rows, strict=True):
            latency_panel(ax, row, peers, results)
        chart.suptitle(
            f"Publish-to-receive latency at {results.settings.latency_rate:,} msg/s\n"
            "(from when each message was due; log scale; lower is better)",
            fontweight="bold",
        )
        chart.tight_layout()
        path = out / LATENCY_PNG
        chart.savefig(path, dpi=110)
        written.append(path)
    return written


def throughput_panel(ax: Any, row: str, peers: list[str], results: Results) -> None:
    figures = results.rows[row]
    shown = [p for p in peers if p in figures]
    values = [figures[p].value or 0.0 for p in shown]
    positions = list(range(len(shown)))[::-1]
    bars = ax.barh(positions, [max(v, 1e-9) for v in values], color=[COLOURS[p] for p in shown])
    unit = next((figures[p].unit for p in shown if figures[p].unit), "")
    top = max(values, default=1.0) or 1.0
    for bar, peer, value in zip(bars, shown, values, strict=True):
        figure = figures[peer]
        if figure.error is not None:
            label = "failed"
        else:
            label = f"{human(value)} {unit}" + ("" if figure.complete else " (stopped)")
            base = figures.get("tickertape")
            if peer != "tickertape" and base is not None and base.value and value:
                label += f"  = {value / base.value:.2g}x tickertape"
            if not figure.complete:
                bar.set_hatch("//")
        ax.text(
            max(value, top * 1e-4) * 1.15,
            bar.get_y() + bar.get_height() / 2,
            label,
            va="center",
            fontsize=9,
        )
    ax.set_xscale("log")
    low = min((v for v in values if v > 0), default=1.0)
    ax.set_xlim(low / 3, top * 40)
    ax.set_yticks(positions, [NAMES[p] for p in shown])
    ax.set_title(row_title(row, results), fontsize=10, loc="left")
    ax.set_xlabel(unit, fontsize=9)
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def latency_panel(ax: Any, row: str, peers: list[str], results: Results) -> None:
    figures = results.rows[row]
    names = ["p50", "p90", "p99", "p99.9", "max"]
    shown = [p for p in peers if p in figures and figures[p].latency]
    width = 0.8 / max(1, len(shown))
    for n, peer in enumerate(shown):
        stats = figures[peer].latency or {}
        values = [stats.get(name, math.nan) for name in names]
        xs = [i + (n - (len(shown) - 1) / 2) * width for i in range(len(names))]
        label = NAMES[peer] + ("" if figures[peer].complete else " (fell behind)")
        ax.bar(xs, values, width, label=label, color=COLOURS[peer])
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("milliseconds")
    settings = [
        f"{NAMES[peer]} {figures[peer].setting}"
        for peer in shown
        if peer in ("tickertape", "redis")
    ]
    ax.set_title(", ".join(settings), fontsize=10, loc="left")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    highest = max((v for p in shown for v in (figures[p].latency or {}).values()), default=1.0)
    ax.set_ylim(top=highest * 25)  # room for the legend
    ax.legend(fontsize=9, frameon=False, ncols=len(shown), loc="upper left")
