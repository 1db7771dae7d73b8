"""``tickertape bench`` as a subprocess against a real ``tickertape serve``: the table, the
JSON report and its counts, what was really published (read back by a raw SoupBinTCP
client), a subscriber that misses a message, and the errors for a closed port and a
refused login. Counts are small; nothing is timed. The checking subscriber alone:
tests/client/load/test_load_clients.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import trustme

from tickertape.client.load.clients import HEADER, LAST

from support import ServerProcess, SoupClient, free_port

TIMEOUT = 120.0


def bench(port: int, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", "bench", "--port", str(port), *options],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def bench_json(port: int, *options: str) -> dict[str, Any]:
    done = bench(port, "--json", *options)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def session_messages(port: int, count: int) -> list[bytes]:
    """The active session's first ``count`` messages, read by a raw SoupBinTCP client."""

    async def read() -> list[bytes]:
        client = await SoupClient.login(port, seq=1)
        try:
            return await client.messages(count)
        finally:
            client.close()

    return asyncio.run(asyncio.wait_for(read(), TIMEOUT))


def test_the_table_is_printed_and_the_counts_match(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        done = bench(server.port, "--publishers", "2", "--subscribers", "3", "--count", "3000")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "2 publishers, 3 subscribers (live), 3,000 messages of 128 bytes" in out, out

    def row(name: str) -> list[str]:
        """A row's figures: messages, seconds, messages/s, MB/s."""
        (line,) = (line for line in out.splitlines() if line.startswith(f"{name}  "))
        return line[len(name) :].split()

    assert row("published")[0] == "3,000", out
    assert row("  publisher 1")[0] == row("  publisher 2")[0] == "1,500", out
    assert row("delivered")[0] == "9,000", out
    for index in (1, 2, 3):
        assert row(f"  subscriber {index}")[0] == "3,000", out
    assert "p50       p90       p99     p99.9       max" in out, out
    assert "latency, publish to receive, ms (9,000 messages)" in out, out
    assert "ok: each subscriber received all 3,000 messages, in order" in out, out


def test_the_json_report_counts_every_message_and_the_session_holds_them(
    tmp_path: Path,
) -> None:
    count, subscribers, size = 2500, 2, 64
    with ServerProcess(tmp_path / "data") as server:
        report = bench_json(
            server.port,
            *("--publishers", "3", "--subscribers", str(subscribers)),
            *("--count", str(count), "--size", str(size), "--batch", "100"),
        )
        payloads = session_messages(server.port, count)
    assert report["ok"] is True and report["errors"] == []
    assert report["published"]["messages"] == count
    assert [e["messages"] for e in report["published"]["each"]] == [834, 833, 833]
    assert report["delivered"]["messages"] == count * subscribers
    assert [e["messages"] for e in report["delivered"]["each"]] == [count] * subscribers
    assert report["delivered"]["other_messages"] == 0
    latency = report["latency_ms"]
    assert latency["samples"] == count * subscribers
    values = [latency[key] for key in ("p50", "p90", "p99", "p99.9", "max")]
    assert values == sorted(values) and values[0] >= 0
    assert report["published"]["rate"] > 0 and report["delivered"]["rate"] > 0
    assert (report["publishers"], report["subscribers"], report["from"]) == (3, subscribers, 0)
    assert report["session"] == report["session"].strip() and len(report["session"]) == 10
    # What the server holds: exactly the bench's messages, each publisher's in its order.
    numbers: dict[int, list[int]] = defaultdict(list)
    lasts = 0
    for payload in payloads:
        assert len(payload) == size
        _, publisher, flags, number, _ = HEADER.unpack_from(payload)
        numbers[publisher].append(number)
        lasts += flags & LAST
    assert dict(numbers) == {
        0: list(range(834)),
        1: list(range(833)),
        2: list(range(833)),
    }
    assert lasts == 3


def test_subscribers_from_1_replay_the_earlier_messages_and_count_them_apart(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path / "data") as server:
        bench_json(server.port, "--subscribers", "0", "--count", "700")
        report = bench_json(server.port, "--from", "1", "--subscribers", "2", "--count", "1000")
    assert report["ok"] is True, report["errors"]
    assert report["from"] == 1
    assert report["published"]["messages"] == 1000
    assert report["delivered"]["messages"] == 2000
    assert [e["other_messages"] for e in report["delivered"]["each"]] == [700, 700]


def test_a_duration_run_delivers_what_it_published(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        report = bench_json(
            server.port,
            *("--publishers", "2", "--subscribers", "2"),
            *("--duration", "0.5", "--rate", "2000", "--batch", "50"),
        )
    assert report["ok"] is True, report["errors"]
    assert report["count"] is None and report["duration"] == 0.5
    published = report["published"]["messages"]
    assert published > 0
    assert report["delivered"]["messages"] == 2 * published


def test_a_subscriber_that_misses_a_message_fails_the_bench(tmp_path: Path) -> None:
    # On a fresh session, --from 2 skips message 1: the bench's first.
    with ServerProcess(tmp_path / "data") as server:
        done = bench(server.port, "--from", "2", "--subscribers", "1", "--count", "200")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "publisher 1's message 2 arrived where 1 was due: 1 missing" in done.stderr
    assert "FAILED" in done.stdout


def test_a_closed_port_is_one_clear_error(tmp_path: Path) -> None:
    port = free_port()
    done = bench(port, "--count", "10")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"tickertape bench: cannot reach 127.0.0.1:{port}: connection refused "
        "(is tickertape serve running?)"
    )
    assert done.stdout == ""


def test_a_refused_login_is_one_clear_error(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", "--user", "alice:secret") as server:
        wrong = bench(server.port, "--user", "alice", "--password", "wrong", "--count", "10")
        anonymous = bench(server.port, "--count", "10")
        right = bench(server.port, "--user", "alice", "--password", "secret", "--count", "10")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"tickertape bench: 127.0.0.1:{server.port} rejected the login (user 'alice'): "
        "wrong username or password for user 'alice'"
    )
    assert anonymous.returncode == 1
    assert "rejected the login (an anonymous login)" in anonymous.stderr
    assert right.returncode == 0, right.stderr
    assert "ok: each subscriber received all 10 messages" in right.stdout


def test_over_tls_with_the_servers_ca_and_a_plain_client_is_told(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    key, cert, ca_file = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "ca.pem"
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    tls = ("--tls-cert", str(cert), "--tls-key", str(key))
    with ServerProcess(tmp_path / "data", *tls) as server:
        report = bench_json(server.port, "--tls", "--ca", str(ca_file), "--count", "500")
        plain = bench(server.port, "--count", "10")
    assert report["ok"] is True and report["delivered"]["messages"] == 500
    assert plain.returncode == 1
    assert plain.stderr.strip() == (
        f"tickertape bench: 127.0.0.1:{server.port}: the server closed the connection "
        "(it said: this port speaks TLS: connect with TLS (tickertape tail/publish --tls))"
    )


def test_options_that_cannot_work_are_refused_and_help_has_an_example() -> None:
    for options, said in [
        (("--size", "10"), "--size must be 27 to"),
        (("--publishers", "0"), "--publishers must be 1 or more"),
        (("--publishers", "3", "--count", "2"), "--count must be at least --publishers"),
        (("--ca", "x.pem"), "--ca needs --tls"),
        (("--count", "5", "--duration", "1"), "not allowed with argument"),
    ]:
        done = bench(free_port(), *options)
        assert done.returncode == 2, options
        assert said in done.stderr, done.stderr
    shown = bench(free_port(), "--help")
    assert shown.returncode == 0
    assert "tickertape bench --port 7411 --publishers 2 --subscribers 4" in shown.stdout
