"""The load test's results as a report: publish and delivery rates, each client's,
the publish-to-receive latency percentiles, and every error the clients found.

:func:`make_report` turns a :class:`~tickertape.client.load.workers.Run` into a plain dict
(what ``tickertape bench --json`` prints). Not here: the table printed from it
(``tickertape.cli.bench``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Final

from tickertape.client.load.clients import Plan
from tickertape.client.load.workers import Run

PERCENTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))


def _percentiles(latency: Counter[int]) -> dict[str, Any]:
    samples = sum(latency.values())
    out: dict[str, Any] = {"samples": samples}
    if not samples:
        return out | {name: None for name, _ in PERCENTILES} | {"max": None}
    ordered = sorted(latency.items())
    for name, q in PERCENTILES:
        rank, seen = math.ceil(q * samples), 0  # nearest rank
        for value, count in ordered:
            seen += count
            if seen >= rank:
                out[name] = value / 1000
                break
    out["max"] = ordered[-1][0] / 1000
    return out


def _rate(messages: int, nanoseconds: int, size: int) -> dict[str, Any]:
    seconds = max(0, nanoseconds) / 1e9
    per_second = messages / seconds if seconds > 0 else 0.0
    return {
        "messages": messages,
        "seconds": round(seconds, 4),
        "rate": round(per_second, 1),
        "mb_per_second": round(per_second * size / 1e6, 2),
    }


def make_report(plan: Plan, session: str, run: Run) -> dict[str, Any]:
    """The run's results: what was published and delivered (in all and by each client,
    with rates), the latency percentiles in milliseconds (nearest rank), every error
    (a failure, a subscriber's finding, a count that does not match), and ``ok``."""
    pubs = [run.results.get(("publisher", i)) for i in range(plan.publishers)]
    subs = [run.results.get(("subscriber", i)) for i in range(plan.subscribers)]
    errors = list(run.failures)
    done_pubs = [p for p in pubs if p is not None]
    start = min((p["started_ns"] for p in done_pubs), default=0)
    published = sum(p["messages"] for p in done_pubs)
    publish_end = max((p["finished_ns"] for p in done_pubs), default=start)
    each_pub = [
        None if p is None else _rate(p["messages"], p["finished_ns"] - p["started_ns"], plan.size)
        for p in pubs
    ]
    sent = [p["sent"] if p is not None else None for p in pubs]
    latency: Counter[int] = Counter()
    each_sub: list[dict[str, Any] | None] = []
    for index, s in enumerate(subs):
        if s is None:
            each_sub.append(None)
            continue
        latency.update({int(k): v for k, v in s["latency_us"].items()})
        entry = _rate(s["messages"], s["last_ns"] - start, plan.size)
        entry["other_messages"] = s["other_messages"]
        entry["errors"] = s["error_count"]
        each_sub.append(entry)
        name = f"subscriber {index + 1}"
        errors.extend(f"{name}: {text}" for text in s["errors"])
        if s["error_count"] > len(s["errors"]):
            errors.append(f"{name}: and {s['error_count'] - len(s['errors'])} more errors")
        for pub, (got, want) in enumerate(zip(s["per_publisher"], sent, strict=True)):
            if want is not None and got != want and not s["error_count"]:
                errors.append(f"{name}: {got:,} of publisher {pub + 1}'s {want:,} messages")
    for index, p in enumerate(pubs):
        if p is not None and p["messages"] != p["sent"]:
            errors.append(
                f"publisher {index + 1}: {p['sent'] - p['messages']:,} of {p['sent']:,} "
                "messages were not acknowledged"
            )
    done_subs = [s for s in subs if s is not None]
    delivered = sum(s["messages"] for s in done_subs)
    deliver_end = max((s["last_ns"] for s in done_subs), default=start)
    return {
        "server": plan.target.where,
        "session": session,
        "publishers": plan.publishers,
        "subscribers": plan.subscribers,
        "from": plan.seq,
        "size": plan.size,
        "batch": plan.batch,
        "count": plan.count,
        "duration": plan.duration,
        "rate": plan.rate,
        "published": _rate(published, publish_end - start, plan.size) | {"each": each_pub},
        "delivered": _rate(delivered, deliver_end - start, plan.size)
        | {
            "other_messages": sum(s["other_messages"] for s in done_subs),
            "each": each_sub,
        },
        "latency_ms": _percentiles(latency),
        "errors": errors,
        "ok": not errors,
    }
