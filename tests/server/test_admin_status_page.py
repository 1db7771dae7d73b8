"""The status page's data (GET /status/live) and files (GET /, GET /static/...), over real
HTTP on 127.0.0.1 against an engine and SoupBinTCP server in this event loop. The page
itself, in a browser: tests/server/test_status_page_browser.py."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import ServerConfig, SoupBinTCPServer
from tickertape.tls import client_context, server_context
from tickertape.wire.publishing import NO_STREAM
from tickertape.wire.soupbintcp import (
    LoginAccepted,
    LoginRequest,
    SequencedData,
    UnsequencedData,
)

from support import ServerProcess, SoupClient, free_port, running_server

TIMEOUT = 10.0


async def get(http: aiohttp.ClientSession, port: int, path: str) -> tuple[int, Any]:
    async with http.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.json()


def test_status_live_has_every_field_of_the_page(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig())
            await admin.start()
            try:
                async with aiohttp.ClientSession() as http:
                    await scenario(engine, server, admin, http)
            finally:
                await admin.close()

    async def scenario(
        engine: Engine, server: SoupBinTCPServer, admin: AdminServer, http: aiohttp.ClientSession
    ) -> None:
        await engine.publish_many([b"m%d" % n for n in range(1, 6)])
        before = time.time()
        subscriber = await SoupClient.login(server.port, seq=1, user="alice")
        assert await subscriber.packet() == LoginAccepted(engine.session_id, 1)
        for n in range(1, 6):
            assert await subscriber.packet() == SequencedData(b"m%d" % n)
        # Anonymous clients may publish on this server: one that does not take the stream.
        publisher = await SoupClient.login(server.port, seq=NO_STREAM, user="bob")
        assert isinstance(await publisher.packet(), LoginAccepted)
        publisher.writer.write(UnsequencedData(b"from bob").encode())
        assert await subscriber.packet() == SequencedData(b"from bob")

        async def settled() -> dict[str, Any]:
            # Until the subscriber is live, bob's message acknowledged, a rate sampled.
            async with asyncio.timeout(TIMEOUT):
                while True:
                    status, answer = await get(http, admin.port, "/status/live")
                    assert status == 200
                    if (
                        answer["clients"]
                        and answer["clients"][0]["live"]
                        and answer["publishers"]
                        and answer["publishers"][0]["published"] == 1
                        and answer["rate"]
                    ):
                        return dict(answer)
                    await asyncio.sleep(0.05)

        answer = await settled()
        assert set(answer) == {
            "version",
            "time",
            "started",
            "read_only",
            "session",
            "next_seq",
            "messages",
            "publishing_error",
            "rate",
            "clients",
            "publishers",
            "connections",
            "refused_connections",
            "mold",
            "disk",
        }
        assert answer["session"] == engine.session_id
        assert (answer["next_seq"], answer["messages"]) == (7, 6)
        assert answer["publishing_error"] is None
        assert answer["read_only"] is False
        assert answer["mold"] is None  # no MoldUDP64 here
        assert answer["connections"] == 2
        (client,) = answer["clients"]
        host, port = subscriber.writer.get_extra_info("sockname")[:2]
        assert client == {
            "address": f"{host}:{port}",
            "user": "alice",
            "session": engine.session_id,
            "next_seq": 7,
            "lag": 0,
            "live": True,
            "state": "live",
            "since": client["since"],
            "tls": False,
        }
        assert before <= client["since"] <= answer["time"]
        (publishing,) = answer["publishers"]
        assert publishing["user"] == "bob"
        assert publishing["published"] == 1
        host, port = publisher.writer.get_extra_info("sockname")[:2]
        assert publishing["address"] == f"{host}:{port}"
        at, rate = answer["rate"][-1]
        assert before - 5 <= at <= answer["time"]
        assert rate >= 0
        disk = answer["disk"]
        assert disk["path"] == str(engine.catalogue.root)
        assert 0 < disk["free"] <= disk["total"]
        subscriber.close()
        publisher.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_rate_is_the_messages_published_each_second(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig())
            await admin.start()
            try:
                # Sampled each second: wait for a first sample, publish 300, wait for the
                # sample that saw them.
                async with asyncio.timeout(TIMEOUT):
                    while not admin._rates:
                        await asyncio.sleep(0.01)
                    seen = len(admin._rates)
                    await engine.publish_many([b"x"] * 300)
                    while len(admin._rates) == seen:
                        await asyncio.sleep(0.01)
                _, rate = admin._rates[-1]
                # 300 messages over the time between two samples (about a second).
                assert 100 < rate <= 300 / 0.5
            finally:
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_page_and_its_files_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig())
            await admin.start()
            base = f"http://127.0.0.1:{admin.port}"
            try:
                async with aiohttp.ClientSession() as http:
                    for path, kind, text in [
                        ("/", "text/html", '<canvas id="rate-chart"'),
                        ("/static/status.js", "text/javascript", "/status/live"),
                        ("/static/status.css", "text/css", "body"),
                    ]:
                        async with http.get(base + path) as response:
                            assert response.status == 200
                            assert response.content_type == kind
                            assert text in await response.text()
                            policy = response.headers["Content-Security-Policy"]
                            assert "default-src 'none'" in policy
                            assert "frame-ancestors 'none'" in policy
                    for path in ["/static/other.js", "/static/..%2Fadmin.py"]:
                        async with http.get(base + path) as response:
                            assert response.status == 404
                            assert "no such file" in (await response.json())["error"]
            finally:
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_follower_shows_its_status_page_read_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    with ServerProcess(data, "--demo", "200"):
        with ServerProcess(data, "--admin-port", str(port), follow=True) as follower:
            follower.wait_for_log("admin API listening")
            base = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(base + "/", timeout=TIMEOUT) as page:
                assert b'<canvas id="rate-chart"' in page.read()
            deadline = time.monotonic() + 30
            while True:  # until a sample saw the demo's messages arrive
                with urllib.request.urlopen(base + "/status/live", timeout=TIMEOUT) as answer:
                    live = json.load(answer)
                if any(rate > 0 for _, rate in live["rate"]):
                    break
                assert time.monotonic() < deadline, live
                time.sleep(0.1)
            assert live["read_only"] is True
            assert live["publishing_error"] is None
            assert live["disk"]["path"] == str(data)


def test_a_stalled_subscriber_shows_blocked_with_its_lag(tmp_path: Path) -> None:
    # A subscriber that stops reading once live: its socket buffers fill, then the
    # server's write buffer passes the high-water mark and it leaves the live set.
    async def main() -> None:
        config = ServerConfig(port=0, write_buffer_high=16 << 10)
        async with running_server(tmp_path, config) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig())
            await admin.start()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                loop = asyncio.get_running_loop()
                await loop.sock_connect(sock, ("127.0.0.1", server.port))
                await loop.sock_sendall(sock, LoginRequest("slow", "", "", 0).encode())
                async with aiohttp.ClientSession() as http:
                    shown: list[dict[str, Any]] = []
                    for _ in range(64):  # at most 64 MiB: far more than the buffers hold
                        await engine.publish_many([b"x" * 1024] * 1024)
                        _, answer = await get(http, admin.port, "/status/live")
                        shown = answer["clients"]
                        if shown and shown[0]["state"] == "blocked":
                            break
                    # Blocked: what it was handed waits in its buffer; what comes now
                    # waits in the log, as its lag.
                    assert shown and shown[0]["state"] == "blocked", shown
                    await engine.publish_many([b"x" * 1024] * 1024)
                    _, answer = await get(http, admin.port, "/status/live")
                    (client,) = answer["clients"]
                assert client["state"] == "blocked"
                assert client["live"] is False
                assert client["user"] == "slow"
                assert client["lag"] == engine.next_seq - client["next_seq"] >= 1024
            finally:
                sock.close()
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_subscriber_over_tls_shows_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.private_key_pem.write_to_path(str(key))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    ca.cert_pem.write_to_path(str(ca_file))

    async def main() -> None:
        config = ServerConfig(port=0, ssl=server_context(cert, key))
        async with running_server(tmp_path / "data", config) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig())
            await admin.start()
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_context(ca_file)
            )
            try:
                writer.write(LoginRequest("tls", "", "", 1).encode())
                client = SoupClient(reader, writer)
                assert isinstance(await client.packet(), LoginAccepted)
                async with aiohttp.ClientSession() as http, asyncio.timeout(TIMEOUT):
                    while True:
                        _, answer = await get(http, admin.port, "/status/live")
                        if answer["clients"] and answer["clients"][0]["live"]:
                            break
                        await asyncio.sleep(0.05)
                (shown,) = answer["clients"]
                assert (shown["user"], shown["tls"], shown["state"]) == ("tls", True, "live")
            finally:
                writer.close()
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 60))
