"""The admin API's reading endpoints (tickertape.server.admin_status): GET /status/live (the
status page's data), GET /status, GET /sessions and GET /sessions/{id}, over real HTTP on
127.0.0.1 against an engine and SoupBinTCP server in this event loop. The page itself, in a
browser: tests/server/test_status_page_browser.py; its files: test_admin_page.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import ServerConfig, SoupBinTCPServer
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import ARCHIVE_FILE
from tickertape.store.log import SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.tls import client_context, server_context
from tickertape.wire.publishing import NO_STREAM
from tickertape.wire.soupbintcp import (
    LoginAccepted,
    LoginRequest,
    SequencedData,
    UnsequencedData,
    encode_sequenced_many,
)

from admin_support import TIMEOUT, Api, Client, payloads, run
from support import ServerProcess, SoupClient, free_port, running_server, until, until_sync


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not await check():
            await asyncio.sleep(0.01)


def files_size(directory: Path) -> int:
    return sum(entry.stat().st_size for entry in directory.iterdir() if entry.is_file())


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

        async def settled() -> dict[str, Any] | None:
            # The subscriber live, bob's message acknowledged, a rate sampled.
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
            return None

        answer = await until(settled, "a settled status", TIMEOUT, 0.05)
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
                    while not admin.status.rates:
                        await asyncio.sleep(0.01)
                    seen = len(admin.status.rates)
                    await engine.publish_many([b"x"] * 300)
                    while len(admin.status.rates) == seen:
                        await asyncio.sleep(0.01)
                _, rate = admin.status.rates[-1]
                # 300 messages over the time between two samples (about a second).
                assert 100 < rate <= 300 / 0.5
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

            def sampled() -> dict[str, Any] | None:
                with urllib.request.urlopen(base + "/status/live", timeout=TIMEOUT) as answer:
                    live: dict[str, Any] = json.load(answer)
                return live if any(rate > 0 for _, rate in live["rate"]) else None

            live = until_sync(sampled, "a sample seeing the demo's messages", 30, 0.1)
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
                async with aiohttp.ClientSession() as http:

                    async def live() -> dict[str, Any] | None:
                        _, answer = await get(http, admin.port, "/status/live")
                        shown = answer["clients"] and answer["clients"][0]["live"]
                        return dict(answer) if shown else None

                    answer = await until(live, "the TLS client shown live", TIMEOUT, 0.05)
                (shown,) = answer["clients"]
                assert (shown["user"], shown["tls"], shown["state"]) == ("tls", True, "live")
            finally:
                writer.close()
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 60))


# ---------------------------------------------------------------------------- reading


def test_status_lists_a_connected_subscriber(tmp_path: Path) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        await engine.publish_many(payloads("m", 5))
        subscriber = await Client.login(server.port, seq=1, user="alice")
        assert await subscriber.packet() == LoginAccepted(engine.session_id, 1)
        for expected in payloads("m", 5):
            assert await subscriber.packet() == SequencedData(expected)

        async def live() -> bool:
            _, answer = await api.get("/status")
            return bool(answer["subscribers"]) and answer["subscribers"][0]["live"]

        await eventually(live)
        status, answer = await api.get("/status")
        assert status == 200
        host, port = subscriber.writer.get_extra_info("sockname")[:2]
        assert answer == {
            "session": engine.session_id,
            "next_seq": 6,
            "messages": 5,
            "publishing_error": None,
            "subscribers": [
                {
                    "address": f"{host}:{port}",
                    "user": "alice",
                    "session": engine.session_id,
                    "next_seq": 6,
                    "lag": 0,
                    "live": True,
                }
            ],
        }
        subscriber.close()

    run(tmp_path, scenario)


def test_sessions_lists_every_session_with_its_state_and_size(tmp_path: Path) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        first = engine.session_id
        await engine.publish_many(payloads("one", 3))
        await api.post("/roll")
        second = engine.session_id
        await engine.publish_many(payloads("two", 2))

        status, answer = await api.get("/sessions")

        assert status == 200
        assert answer == {
            "active": second,
            "sessions": [
                {
                    "id": first,
                    "state": "ended",
                    "messages": 3,
                    "bytes": files_size(tmp_path / first),
                    "problems": 0,
                },
                {
                    "id": second,
                    "state": "active",
                    "messages": 2,
                    "bytes": files_size(tmp_path / second),
                    "problems": 0,
                },
            ],
        }

    run(tmp_path, scenario)


def test_one_session_in_detail(tmp_path: Path) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        first = engine.session_id
        await engine.publish_many(payloads("one", 3))
        await api.post("/roll")

        status, ended = await api.get(f"/sessions/{first}")
        assert status == 200
        assert ended["id"] == first
        assert ended["state"] == "ended"
        assert ended["messages"] == 3
        assert ended["log_bytes"] == sum(len(p) + 3 for p in payloads("one", 3))
        assert ended["path"] == str(tmp_path / first)
        assert ended["last_published"] is not None
        assert ended["ended_at"] is not None
        assert ended["last_published"] <= ended["ended_at"]
        assert ended["problems"] == []

        status, active = await api.get(f"/sessions/{engine.session_id}")
        assert status == 200
        assert (active["state"], active["messages"], active["ended_at"]) == ("active", 0, None)

    run(tmp_path, scenario)


@pytest.mark.parametrize("session", ["2000010101", "not-an-id"])
def test_an_unknown_session_is_404(tmp_path: Path, session: str) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        status, answer = await api.get(f"/sessions/{session}")
        assert status == 404
        assert session in answer["error"]

    run(tmp_path, scenario)


def test_a_damaged_ended_session_shows_its_problems_and_is_not_archived(tmp_path: Path) -> None:
    directory = tmp_path / "2000010101"
    with SessionLog.open(directory, create=True) as session_log:
        for batch in range(4):
            data = encode_sequenced_many(payloads(f"b{batch}", 10))
            session_log.append(data, 10)
    Catalogue(tmp_path).mark_ended(SessionId.parse("2000010101"))
    log_path = directory / "log"
    os.truncate(log_path, log_path.stat().st_size - 5)  # into the last batch

    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        status, answer = await api.get("/sessions/2000010101")
        assert status == 200
        assert answer["state"] == "ended"
        assert answer["messages"] == 30  # its record no longer vouches for the last batch
        assert any("sequence 31" in problem for problem in answer["problems"])
        _, answer = await api.get("/sessions")
        assert answer["sessions"][0]["problems"] == len(
            (await api.get("/sessions/2000010101"))[1]["problems"]
        )

        status, answer = await api.post("/sessions/2000010101/archive")
        assert status == 409
        assert "fails its checks" in answer["error"]
        assert not (directory / ARCHIVE_FILE).exists()

    run(tmp_path, scenario)


def test_listing_rereads_a_session_only_when_its_files_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Path] = []
    real_open = SessionLog.open

    def counting_open(directory: Path, **kwargs: Any) -> SessionLog:
        opened.append(directory)
        return real_open(directory, **kwargs)

    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        first = engine.session_id
        await engine.publish_many(payloads("one", 3))
        await api.post("/roll")
        monkeypatch.setattr(SessionLog, "open", counting_open)
        await api.get("/sessions")
        await api.get("/sessions")
        assert opened == [tmp_path / first]  # once; the active one not at all
        await engine.publish_many(payloads("two", 3))
        await api.get("/sessions")
        assert opened == [tmp_path / first]
        monkeypatch.undo()
        await api.post(f"/sessions/{first}/archive")
        _, answer = await api.get("/sessions")
        assert (answer["sessions"][0]["state"], answer["sessions"][0]["messages"]) == (
            "archived",
            3,
        )

    run(tmp_path, scenario)
