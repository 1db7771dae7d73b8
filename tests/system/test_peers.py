"""The comparison with the alternatives (``bench/peers.py``), in small: every peer for
real (``tickertape serve``, ``nats-server`` with JetStream, ``redis-server`` and a
nasdaq-protocols server, each started on 127.0.0.1 with its data in a temporary
directory), every workload, small counts. What is asserted is what each peer delivered:
every message, in order, the bytes published; not how fast.

``nats-server`` and ``redis-server`` come from Debian's packages: ``bench/install-peers``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import peers
import peers_report

MESSAGES = 1000
FANOUT_MESSAGES = 200
SUBSCRIBERS = 10
SIZE = 100
LATENCY_RATE = 1000
LATENCY_SECONDS = 0.5


def test_a_missing_reordered_or_altered_message_is_caught() -> None:
    sent = peers.payloads(0, 4, SIZE)
    whole = peers.Checker(4, SIZE)
    whole.feed(sent[:2], 0)
    for data in sent[2:]:
        whole.feed_one(data, 0)
    assert whole.error is None and whole.done

    for received in (
        [sent[0], sent[2], sent[3]],  # one missing
        [sent[1], sent[0], sent[2], sent[3]],  # out of order
        [sent[0], sent[1][:-1] + b"!", sent[2], sent[3]],  # one byte changed
    ):
        checker = peers.Checker(4, SIZE)
        checker.feed(received, 0)
        assert checker.error is not None, received


@pytest.fixture(scope="module")
def results() -> peers.Results:
    missing = peers.check_peers_installed(peers.PEERS)
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: run bench/install-peers "
            "(apt-get install nats-server redis-server)"
        )
    settings = peers.Settings(
        durabilities=("batch", "none"),
        messages=MESSAGES,
        fanout_messages=FANOUT_MESSAGES,
        subscribers=SUBSCRIBERS,
        payload_size=SIZE,
        batch=100,
        background_rate=500,
        latency_rate=LATENCY_RATE,
        latency_seconds=LATENCY_SECONDS,
        latency_warmup=0.0,
        time_limit=20.0,
        keep=True,
    )
    return peers.run(settings)


def figure(results: peers.Results, row: str, peer: str) -> peers.Figure:
    found = results.rows.get(row, {}).get(peer)
    assert found is not None, f"{peer}: no {row} figure"
    assert found.error is None, f"{peer}, {row}: {found.error}"
    assert found.complete, f"{peer}, {row}: did not finish: {found.detail}"
    assert found.value is not None and found.value > 0
    return found


@pytest.mark.parametrize("peer", peers.PEERS)
def test_every_peer_publishes_everything_with_each_durability(
    results: peers.Results, peer: str
) -> None:
    for durability in ("batch", "none"):
        published = figure(results, f"publish:{durability}", peer)
        assert published.unit == "msg/s"
        assert f"{MESSAGES:,} acknowledged" in published.detail


@pytest.mark.parametrize("peer", peers.PEERS)
def test_every_peer_gives_the_late_joiner_every_message_in_order(
    results: peers.Results, peer: str
) -> None:
    replayed = figure(results, "replay", peer)
    assert replayed.delivered == [peers.payloads(0, MESSAGES, SIZE)]


@pytest.mark.parametrize("peer", peers.PEERS)
def test_every_peer_fans_every_message_out_to_every_subscriber(
    results: peers.Results, peer: str
) -> None:
    fanned = figure(results, "fanout", peer)
    expected = peers.payloads(0, FANOUT_MESSAGES, SIZE)
    assert fanned.delivered is not None and len(fanned.delivered) == SUBSCRIBERS
    for number, got in enumerate(fanned.delivered):
        assert got == expected, f"{peer}: subscriber {number + 1} got something else"


@pytest.mark.parametrize("peer", peers.PEERS)
def test_every_peer_delivers_the_latency_messages_as_published(
    results: peers.Results, peer: str
) -> None:
    for durability in ("batch", "none"):
        timed = figure(results, f"latency:{durability}", peer)
        assert timed.published is not None
        assert len(timed.published) == int(LATENCY_RATE * LATENCY_SECONDS)
        assert timed.delivered == [timed.published]
        assert timed.latency is not None and 0 < timed.latency["p50"] <= timed.latency["max"]


def test_the_report_has_a_table_plots_and_its_own_section(
    results: peers.Results, tmp_path: Path
) -> None:
    table = peers_report.table(results)
    for name in peers_report.NAMES.values():
        assert name in table.splitlines()[0]
    assert len(table.splitlines()) == 2 + 6  # header, rule; publish x 2, replay, fan-out,
    # latency x 2 (publishing and latency with each durability)

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nHand-written figures.\n")
    written = peers_report.write_docs(results, docs)
    first = docs.read_text()
    assert first.startswith("# Benchmarks\n\nHand-written figures.\n")
    assert first.count(peers_report.SECTION_TITLE) == 1
    for name in (peers_report.THROUGHPUT_PNG, peers_report.LATENCY_PNG):
        png = tmp_path / name
        assert png in written and png.read_bytes().startswith(b"\x89PNG")
        assert f"]({name})" in first

    # Saved and read back (--replot), the same section replaces the first one.
    saved = json.loads(json.dumps(peers.to_json(results)))
    peers_report.write_docs(peers.from_json(saved), docs)
    assert docs.read_text() == first
