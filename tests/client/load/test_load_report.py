"""The load test's report (tickertape.client.load.report), made from results given by hand:
the sums and rates, the latency percentiles by nearest rank, and the errors a count that
does not match makes."""

from __future__ import annotations

from typing import Any

from tickertape.client.load.clients import Plan, Target
from tickertape.client.load.report import make_report
from tickertape.client.load.workers import Run


def plan(subscribers: int = 1) -> Plan:
    return Plan(
        target=Target("127.0.0.1", 7300),
        tag=b"RUNTAG01",
        publishers=1,
        subscribers=subscribers,
        size=100,
        count=100,
        duration=None,
        seq=0,
        batch=10,
        rate=None,
    )


def publisher(messages: int, sent: int) -> dict[str, Any]:
    return {
        "messages": messages,
        "sent": sent,
        "started_ns": 1_000_000_000,
        "finished_ns": 2_000_000_000,
        "session": "2026120701",
    }


def subscriber(per_publisher: int, latency_us: dict[int, int]) -> dict[str, Any]:
    return {
        "received": per_publisher,
        "messages": per_publisher,
        "other_messages": 0,
        "per_publisher": [per_publisher],
        "complete": True,
        "first_ns": 1_000_000_000,
        "last_ns": 3_000_000_000,
        "latency_us": latency_us,
        "errors": [],
        "error_count": 0,
        "session": "2026120701",
    }


def test_a_clean_run_is_ok_with_its_rates_and_percentiles() -> None:
    run = Run(plan())
    run.results[("publisher", 0)] = publisher(100, 100)
    # 100 latencies: 90 of 1 ms, 9 of 2 ms, 1 of 50 ms.
    run.results[("subscriber", 0)] = subscriber(100, {1000: 90, 2000: 9, 50_000: 1})
    report = make_report(plan(), "2026120701", run)
    assert report["ok"] is True and report["errors"] == []
    assert report["published"]["messages"] == 100
    assert report["published"]["seconds"] == 1.0
    assert report["published"]["rate"] == 100.0
    assert report["published"]["mb_per_second"] == 0.01
    assert (report["delivered"]["messages"], report["delivered"]["seconds"]) == (100, 2.0)
    latency = report["latency_ms"]
    assert latency["samples"] == 100
    assert (latency["p50"], latency["p90"], latency["p99"], latency["p99.9"]) == (1, 1, 2, 50)
    assert latency["max"] == 50


def test_missing_and_unacknowledged_messages_are_errors() -> None:
    run = Run(plan(subscribers=2))
    run.results[("publisher", 0)] = publisher(98, 100)
    run.results[("subscriber", 0)] = subscriber(97, {1000: 97})
    run.failures.append("subscriber 2: it went away")
    report = make_report(plan(subscribers=2), "2026120701", run)
    assert report["ok"] is False
    assert report["errors"] == [
        "subscriber 2: it went away",
        "subscriber 1: 97 of publisher 1's 100 messages",
        "publisher 1: 2 of 100 messages were not acknowledged",
    ]
    assert report["delivered"]["each"][1] is None
