"""The status page's data (GET /status/live) and files (GET /, GET /static/...), over real
HTTP on 127.0.0.1 against an engine and SoupBinTCP server in this event loop. The page
itself, in a browser: tests/server/test_status_page_browser.py."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from tickertape.protocol.publishing import NO_STREAM
from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.wire.soupbintcp import LoginAccepted, SequencedData, UnsequencedData

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
