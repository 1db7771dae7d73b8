"""``GET /metrics`` of a real ``tickertape serve``, scraped while it works.

The scrape is parsed with prometheus-client's own parser. What was published and what
subscribers were sent is counted exactly; a rejected login counts its reason; a
subscriber that stops reading shows as the largest lag; a full disk (the tmpfs of the
disk-full test) shows publishing paused and no free bytes.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import re
import socket
import ssl
import struct
import time
import urllib.request
from pathlib import Path

import pytest
import trustme
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tickertape.client.publisher import Publisher
from tickertape.errors import LocalProtocolError
from tickertape.protocol.server import ServerTimers
from tickertape.server.moldudp64.publisher import MoldPublisher
from tickertape.server.moldudp64.rerequest import MoldRequestServer
from tickertape.server.moldudp64.settings import PublisherConfig, RequestServerConfig
from tickertape.server.soupbintcp import ServerConfig
from tickertape.store.layout import LOG_FILE
from tickertape.wire.soupbintcp import LoginAccepted, LoginRejected, SequencedData

from support import (
    FileSizeLimit,
    ServerProcess,
    SmallDisk,
    SoupClient,
    free_port,
    running_server,
    until,
)

TIMEOUT = 90.0
USER, PASSWORD = "alice", "secret"
SIZE = 1000
COUNT = 16_000
"""16 MB: more than a subscriber that stops reading can have in flight (its socket
buffers and the server's 4 MiB write buffer), so it must fall behind."""
PAYLOADS = [b"%08d " % n + b"m" * (SIZE - 9) for n in range(1, COUNT + 1)]

FILLING = [b"%04d " % n + b"f" * (mmap.PAGESIZE // 4 - 3 - 5) for n in range(40)]
"""Four packets to a page: the log ends on a page boundary, so a full tmpfs has no room
left in its last page (see :class:`support.SmallDisk`)."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(admin: int) -> Samples:
    """Every sample of ``GET /metrics``, parsed by prometheus-client's parser, by name
    and labels."""
    url = f"http://127.0.0.1:{admin}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def status(admin: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as answer:
        result = json.load(answer)
    assert isinstance(result, dict)
    return result


async def until_scraped(admin: int, name: str, wanted: float, **labels: str) -> Samples:
    """Scrape until ``name{labels}`` is ``wanted`` (within 30 s)."""

    async def scraped() -> Samples | None:
        samples = await asyncio.to_thread(scrape, admin)
        return samples if value(samples, name, **labels) == wanted else None

    return await until(scraped, f"{name}{labels} at {wanted}", 30, 0.05)


def login_request(user: str, password: str, session: str, seq: int) -> bytes:
    """A SoupBinTCP Login Request, from the spec: alpha fields left-justified and padded
    with spaces, the sequence number right-justified."""
    body = b"L" + b"%-6s%-10s%-10s%20d" % (user.encode(), password.encode(), session.encode(), seq)
    return struct.pack(">H", len(body)) + body


async def stalled_subscriber(port: int) -> socket.socket:
    """A raw subscriber from 1 that reads its Login Accepted, then nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, login_request(USER, PASSWORD, "", 1))
    header = b""
    while len(header) < 3:
        header += await loop.sock_recv(sock, 3 - len(header))
    length, kind = struct.unpack(">Hc", header)
    assert kind == b"A", header  # Login Accepted: 10 + 20 bytes follow
    assert length == 31
    return sock


def test_metrics_count_what_was_published_and_delivered(tmp_path: Path) -> None:
    admin = free_port()
    args = ("--user", f"{USER}:{PASSWORD}", "--admin-port", str(admin), "--idle-timeout", "600")
    with ServerProcess(tmp_path / "data", *args) as server:
        server.wait_for_log("admin API listening")
        asyncio.run(asyncio.wait_for(counting(server.port, admin), TIMEOUT))
        assert server.stop() == 0


async def counting(port: int, admin: int) -> None:
    before = await asyncio.to_thread(scrape, admin)
    session = next(labels[0][1] for name, labels in before if name == "tickertape_active_session")
    assert value(before, "tickertape_next_sequence") == 1
    assert value(before, "tickertape_logins_accepted_total") == 0
    assert ("tickertape_published_messages_total", (("session", session),)) not in before

    # Two subscribers at the tail before anything is published: one reads, one does not.
    live = await SoupClient.login(port, seq=1, user=USER, password=PASSWORD)
    stalled = await stalled_subscriber(port)
    reading = asyncio.create_task(live.messages(COUNT))
    await until_scraped(admin, "tickertape_subscribers", 2, state="live", transport="plain")

    async with await Publisher.connect(
        "127.0.0.1", port, username=USER, password=PASSWORD
    ) as publisher:
        await publisher.send_many(PAYLOADS)
        ack = await publisher.flush()
    assert ack is not None and (ack.count, ack.seq) == (COUNT, COUNT)
    assert await reading == PAYLOADS

    # One more, from 1 now: all of it read back from the log.
    late = await SoupClient.login(port, seq=1, user=USER, password=PASSWORD)
    assert await late.messages(COUNT) == PAYLOADS

    # A wrong password: Login Rejected "A" (after the failure's delay).
    wrong = await SoupClient.login(port, user=USER, password="wrong")
    assert await wrong.answer() == LoginRejected("A")
    wrong.close()

    after = await until_scraped(admin, "tickertape_subscribers", 2, state="live", transport="plain")
    subscribers = (await asyncio.to_thread(status, admin))["subscribers"]
    assert isinstance(subscribers, list)
    lags = {s["address"]: s for s in subscribers}
    behind = lags[f"127.0.0.1:{stalled.getsockname()[1]}"]
    stalled_sent = int(behind["next_seq"]) - 1

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    # Published: exactly the messages and payload bytes acknowledged, in whole batches.
    assert moved("tickertape_published_messages_total", session=session) == COUNT
    assert moved("tickertape_published_bytes_total", session=session) == COUNT * SIZE
    batches = moved("tickertape_batches_written_total")
    assert 1 <= batches <= COUNT
    assert moved("tickertape_batch_messages_count") == batches
    assert moved("tickertape_batch_messages_sum") == COUNT
    assert moved("tickertape_write_sync_seconds_count") == batches
    assert moved("tickertape_publish_to_handoff_seconds_count") == batches
    assert value(after, "tickertape_next_sequence") == COUNT + 1
    assert value(after, "tickertape_publishing_paused") == 0
    assert all(
        moved("tickertape_publish_failures_total", reason=reason) == 0
        for reason in ("too_long", "write_failed", "stopped", "not_permitted", "relay")
    )

    # Delivered: the reading subscriber everything live, the late one everything from the
    # log, the stalled one what it was sent before its buffers filled; 3 bytes of header
    # a packet.
    assert 0 < stalled_sent < COUNT
    # The stalled one may have fallen back to the log (catch-up) once its buffer filled:
    # what it was sent counts in one mode or the other, never in both.
    sent_live = moved("tickertape_subscriber_messages_sent_total", mode="live")
    caught_up = moved("tickertape_subscriber_messages_sent_total", mode="catch_up")
    assert sent_live >= COUNT and caught_up >= COUNT
    assert sent_live + caught_up == 2 * COUNT + stalled_sent
    live_bytes = moved("tickertape_subscriber_bytes_sent_total", mode="live")
    caught_up_bytes = moved("tickertape_subscriber_bytes_sent_total", mode="catch_up")
    assert live_bytes == sent_live * (SIZE + 3)
    assert caught_up_bytes == caught_up * (SIZE + 3)

    # Logins: the three subscribers and the publisher accepted; the wrong password
    # rejected as such.
    assert moved("tickertape_logins_accepted_total") == 4
    assert moved("tickertape_logins_rejected_total", reason="bad_credentials") == 1
    assert moved("tickertape_logins_rejected_total", reason="not_permitted") == 0
    assert moved("tickertape_logins_rejected_total", reason="session_not_available") == 0
    assert moved("tickertape_heartbeat_timeouts_total") == 0

    # The stalled subscriber: not live, and the largest lag.
    assert value(after, "tickertape_subscribers", state="catching_up", transport="plain") == 1
    assert value(after, "tickertape_subscribers", state="pulling", transport="plain") == 0
    assert behind["lag"] == COUNT - stalled_sent
    assert value(after, "tickertape_subscriber_lag_max_messages") == COUNT - stalled_sent

    assert value(after, "tickertape_active_session", session=session) == 1
    assert value(after, "tickertape_data_disk_free_bytes") > 0
    assert 0 < value(after, "tickertape_start_time_seconds") <= time.time()
    assert value(after, "tickertape_build_info", version=_version()) == 1
    live.close()
    late.close()
    stalled.close()


def _version() -> str:
    from tickertape import __version__  # noqa: PLC0415

    return __version__


def test_a_full_disk_shows_publishing_paused(tmp_path: Path) -> None:
    with SmallDisk.mounted(tmp_path / "disk") as small:
        disk: SmallDisk | FileSizeLimit = small if small is not None else FileSizeLimit()
        data = tmp_path / "disk" / "data"
        admin = free_port()
        with ServerProcess(data, "--admin-port", str(admin)) as server:
            server.wait_for_log("admin API listening")
            asyncio.run(asyncio.wait_for(filling(server, disk, data, admin), TIMEOUT))
            assert server.stop() == 0


async def publish(port: int, payloads: list[bytes]) -> tuple[int, int]:
    """Publish and wait for the acknowledgement: (count acknowledged, last number)."""
    async with await Publisher.connect("127.0.0.1", port) as publisher:
        await publisher.send_many(payloads)
        ack = await publisher.flush()
    assert ack is not None
    return ack.count, ack.seq


async def publish_refused(port: int, payloads: list[bytes]) -> None:
    """Publish into a full disk: the server closes the connection, acknowledging nothing."""
    publisher = await Publisher.connect("127.0.0.1", port)
    try:
        await publisher.send_many(payloads)
        with pytest.raises(ConnectionError, match="the server closed the connection"):
            await publisher.flush()
    finally:
        await publisher.close()
    assert publisher.acked == 0


async def filling(
    server: ServerProcess, disk: SmallDisk | FileSizeLimit, data: Path, admin: int
) -> None:
    port = server.port
    assert await publish(port, FILLING) == (40, 40)
    before = await asyncio.to_thread(scrape, admin)
    assert value(before, "tickertape_publishing_paused") == 0
    session = next(labels[0][1] for name, labels in before if name == "tickertape_active_session")

    disk.fill(server.pid, data / session / LOG_FILE)
    await publish_refused(port, [b"refused"])
    full = await asyncio.to_thread(scrape, admin)
    assert value(full, "tickertape_publishing_paused") == 1
    assert value(full, "tickertape_publish_failures_total", reason="write_failed") == 1
    assert value(full, "tickertape_next_sequence") == 41
    assert value(full, "tickertape_published_messages_total", session=session) == 40
    if isinstance(disk, SmallDisk):
        assert value(full, "tickertape_data_disk_free_bytes") == 0

    disk.free(server.pid)
    assert await publish(port, [b"room again"]) == (1, 41)
    again = await asyncio.to_thread(scrape, admin)
    assert value(again, "tickertape_publishing_paused") == 0
    assert value(again, "tickertape_data_disk_free_bytes") > 0
    assert value(again, "tickertape_published_messages_total", session=session) == 41


DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
_METRIC = re.compile(r"\b((?:tickertape|process)_[a-z0-9_]+)")


def test_the_grafana_dashboard_queries_only_metrics_a_server_has(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    queries = [variable["definition"] for variable in dashboard["templating"]["list"][1:]]
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            queries += [target["expr"] for target in panel["targets"]]
    queried = {name for query in queries for name in _METRIC.findall(query)}
    assert len(queried) >= 25

    admin = free_port()
    args = ("--admin-port", str(admin), "--demo", "1000", "--demo-count", "10")
    with ServerProcess(tmp_path / "data", *args) as server:
        server.wait_for_log("admin API listening")
        # Published messages are counted by session once there are some.
        asyncio.run(until_scraped(admin, "tickertape_next_sequence", 11))
        scraped = {name for name, _ in scrape(admin)}
        # A scraper that asks for OpenMetrics gets it.
        asked = urllib.request.Request(
            f"http://127.0.0.1:{admin}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        with urllib.request.urlopen(asked, timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
            families = list(openmetrics_families(answer.read().decode()))  # type: ignore[no-untyped-call]
        assert "tickertape_next_sequence" in {family.name for family in families}
        assert server.stop() == 0
    assert queried <= scraped, sorted(queried - scraped)
    # Every metric of tickertape's own is on the dashboard.
    own = {name for name in scraped if name.startswith("tickertape_")}
    shown = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in queried}
    unshown = {n for n in own if re.sub(r"_(bucket|count|sum|created)$", "", n) not in shown}
    assert not {n for n in unshown if not n.endswith("_created")}, sorted(unshown)


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        data += chunk
    return data


def test_refusals_timeouts_and_rerequests_are_counted(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = ServerConfig(
            port=0, max_connections_per_source=2, timers=ServerTimers(idle_timeout=0.5)
        )
        async with running_server(tmp_path / "data", config) as (engine, server):
            metrics = engine.metrics
            metrics.watch(engine, server)
            requests = MoldRequestServer(engine)
            await requests.start()
            try:

                def scraped() -> Samples:
                    text = generate_latest(metrics.registry).decode()
                    return {
                        (s.name, tuple(sorted(s.labels.items()))): s.value
                        for family in text_string_to_metric_families(text)
                        for s in family.samples
                    }

                # A message too long to publish.
                with pytest.raises(LocalProtocolError):
                    await engine.publish(b"x" * 70_000)
                # A login to a session that does not exist: Login Rejected "S".
                nowhere = await SoupClient.login(server.port, session="2001010101", seq=1)
                assert await nowhere.answer() == LoginRejected("S")
                nowhere.close()
                # A silent client, logged in: dropped after the idle timeout.
                silent = await SoupClient.login(server.port, seq=0)
                assert isinstance(await silent.packet(), LoginAccepted)
                # Over the limit of connections from one address: refused at once.
                # the rejected login's connection is gone:
                await until(lambda: server.connections == 1, "one connection", 10, 0.01)
                other = await asyncio.open_connection("127.0.0.1", server.port)
                third = await asyncio.open_connection("127.0.0.1", server.port)
                assert b"too many connections from 127.0.0.1" in await _closed(third[0])
                other[1].close()
                assert b"client silent" in await _closed(silent.reader)
                # A re-request that is not one.
                loop = asyncio.get_running_loop()
                transport, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=("127.0.0.1", requests.port)
                )
                transport.sendto(b"not a re-request")
                await until(lambda: requests.stats.malformed, "a malformed request", 10, 0.01)
                transport.close()

                samples = scraped()
                assert value(samples, "tickertape_publish_failures_total", reason="too_long") == 1
                assert (
                    value(
                        samples, "tickertape_logins_rejected_total", reason="session_not_available"
                    )
                    == 1
                )
                assert value(samples, "tickertape_logins_accepted_total") == 1
                assert (
                    value(samples, "tickertape_connections_refused_total", limit="per_address") == 1
                )
                assert value(samples, "tickertape_connections_refused_total", limit="total") == 0
                assert value(samples, "tickertape_heartbeat_timeouts_total") == 1
                assert value(samples, "tickertape_mold_rerequests_total", outcome="malformed") == 1
                assert value(samples, "tickertape_mold_rerequests_total", outcome="answered") == 0
            finally:
                await requests.close()
                metrics.unwatch()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


class _Datagrams:
    """A UDP socket on 127.0.0.1 that keeps what it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    async def receive(self) -> bytes:
        loop = asyncio.get_running_loop()
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), 10)
        return bytes(data)


def test_moldudp64_packets_bytes_and_re_requests_are_counted(tmp_path: Path) -> None:
    """MoldUDP64 from the spec: a downstream packet is session (10), sequence number
    (u64), message count (u16), then each message as a u16 length and its bytes; a
    re-request is session, sequence number, count."""
    count = 500
    messages = [b"%05d" % n + b"." * 95 for n in range(1, count + 1)]

    async def scenario() -> None:
        async with running_server(tmp_path / "data") as (engine, server):
            group = _Datagrams()
            asker = _Datagrams()
            publisher = MoldPublisher(engine, PublisherConfig("127.0.0.1", group.port))
            requests = MoldRequestServer(engine, RequestServerConfig(rate=1.0))
            publisher.start()
            await requests.start()
            engine.metrics.watch(engine, server)
            try:
                await engine.publish_many(messages)
                await publisher.flush()
                packets = sizes = got = 0
                while got < count:
                    packet = await group.receive()
                    in_it = struct.unpack_from(">10sQH", packet)[2]
                    if in_it and in_it != 0xFFFF:  # not a heartbeat, not End of Session
                        packets, sizes, got = packets + 1, sizes + len(packet), got + in_it
                assert got == count
                session = engine.session_id.encode()
                asker.sock.sendto(
                    struct.pack(">10sQH", session, 1, 1), ("127.0.0.1", requests.port)
                )
                answer = await asker.receive()
                assert struct.unpack_from(">10sQH", answer) == (session, 1, 1)
                # At once again: over the requester's rate of one message a second.
                asker.sock.sendto(
                    struct.pack(">10sQH", session, 2, 1), ("127.0.0.1", requests.port)
                )
                await until(lambda: requests.stats.rate_limited, "a rate-limited one", 10, 0.01)

                samples = {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(
                        generate_latest(engine.metrics.registry).decode()
                    )
                    for s in family.samples
                }
                assert value(samples, "tickertape_mold_packets_sent_total") == packets
                assert value(samples, "tickertape_mold_bytes_sent_total") == sizes
                assert value(samples, "tickertape_mold_messages_sent_total") == count
                assert value(samples, "tickertape_mold_rerequests_total", outcome="answered") == 1
                assert value(samples, "tickertape_mold_rerequests_total", outcome="throttled") == 1
            finally:
                engine.metrics.unwatch()
                await requests.close()
                await publisher.close()
                group.sock.close()
                asker.sock.close()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_subscribers_by_state_over_tls(tmp_path: Path) -> None:
    """Over TLS (catching up reads and writes instead of ``sendfile``): a subscriber
    live in the active session, and one pulling a closed session that stops reading."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    closed = [b"%08d " % n + b"c" * (SIZE - 9) for n in range(1, COUNT + 1)]

    async def tls_login(port: int, session: str, seq: int) -> SoupClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="127.0.0.1"
        )
        writer.write(login_request("", "", session, seq))
        return SoupClient(reader, writer)

    async def scenario() -> None:
        config = ServerConfig(port=0, ssl=server_context)
        async with running_server(tmp_path / "data", config) as (engine, server):
            engine.metrics.watch(engine, server)

            def scraped() -> Samples:
                return {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(
                        generate_latest(engine.metrics.registry).decode()
                    )
                    for s in family.samples
                }

            try:
                await engine.publish_many(closed)
                ended = engine.session_id
                await engine.roll()
                await engine.publish_many(PAYLOADS[:5])
                live = await tls_login(server.port, "", 1)
                assert await live.messages(5) == PAYLOADS[:5]
                await until(
                    lambda: (
                        value(scraped(), "tickertape_subscribers", state="live", transport="tls")
                        == 1
                    ),
                    "one live TLS subscriber",
                    30,
                    0.01,
                )
                await engine.publish_many(PAYLOADS[5:10])
                for expected in PAYLOADS[5:10]:
                    packet = await live.packet()
                    assert isinstance(packet, SequencedData) and packet.payload == expected
                pulling = await tls_login(server.port, ended, 1)
                assert isinstance(await pulling.packet(), LoginAccepted)  # then reads no more
                # It can take only part of the closed session: the rest waits for it to
                # read (16 MB: more than its socket buffers and the server's write buffer).
                samples = scraped()  # and, with no await in between, the server's view:
                stuck = next(info for info in server.subscribers() if info.session == ended)
                assert stuck.lag == COUNT + 1 - stuck.next_seq > 0
                for state, count in (("live", 1), ("pulling", 1), ("catching_up", 0)):
                    assert (
                        value(samples, "tickertape_subscribers", state=state, transport="tls")
                        == count
                    )
                    assert (
                        value(samples, "tickertape_subscribers", state=state, transport="plain")
                        == 0
                    )
                assert value(samples, "tickertape_subscriber_lag_max_messages") == stuck.lag
                sent = stuck.next_seq - 1
                assert value(samples, "tickertape_subscriber_messages_sent_total", mode="live") == 5
                assert (
                    value(samples, "tickertape_subscriber_messages_sent_total", mode="catch_up")
                    == 5 + sent
                )
                assert value(
                    samples, "tickertape_subscriber_bytes_sent_total", mode="catch_up"
                ) == ((5 + sent) * (SIZE + 3))
                live.close()
                pulling.close()
            finally:
                engine.metrics.unwatch()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
