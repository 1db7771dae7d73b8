"""The admin API over real HTTP on 127.0.0.1, against an engine and SoupBinTCP server in
this event loop: what it shows, what it changes, and whom it refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.store.layout import ARCHIVE_FILE
from tickertape.store.sessionid import SessionId
from tickertape.wire.soupbintcp import (
    LoginAccepted,
)

from admin_support import TOKEN, Api, Client, payloads, run
from support import running_server

# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("path", ["/roll", "/sessions/2000010101/archive"])
def test_without_a_configured_token_every_change_is_refused(tmp_path: Path, path: str) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        before = engine.session_id
        status, answer = await api.post(path, token="anything")
        assert status == 403
        assert "--admin-token" in answer["error"]
        assert engine.session_id == before
        status, _ = await api.get("/status")  # reading needs no token
        assert status == 200

    run(tmp_path, scenario, token=None)


@pytest.mark.parametrize("path", ["/roll"])
def test_a_change_without_the_right_token_is_refused(tmp_path: Path, path: str) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        before = engine.session_id
        status, answer = await api.post(path, token=None)
        assert status == 401
        assert "Authorization: Bearer TOKEN" in answer["error"]
        status, answer = await api.post(path, token=TOKEN + "x")
        assert status == 401
        assert "wrong admin token" in answer["error"]
        async with api.http.post(
            api.base + path, headers={"Authorization": f"Basic {TOKEN}"}
        ) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert engine.session_id == before

    run(tmp_path, scenario)


def test_unknown_endpoints_and_methods_are_answered_in_json(tmp_path: Path) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        status, answer = await api.get("/nothing")
        assert status == 404
        assert "no such endpoint: GET /nothing" in answer["error"]
        assert "GET /status" in answer["error"]
        status, answer = await api.get("/roll")
        assert status == 405
        assert "use POST" in answer["error"]

    run(tmp_path, scenario)


def test_requests_addressed_to_another_host_are_refused(tmp_path: Path) -> None:
    # A browser led there by DNS rebinding says the name it looked up.
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        status, answer = await api.get("/status", headers={"Host": "evil.example"})
        assert status == 403
        assert "127.0.0.1 only" in answer["error"]
        status, _ = await api.get("/status", headers={"Host": "localhost"})
        assert status == 200

    run(tmp_path, scenario)


def test_it_listens_on_the_loopback_address_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(tmp_path) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig())
            await admin.start()
            try:
                assert admin.address == ("127.0.0.1", admin.port)
            finally:
                await admin.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------- changes


@pytest.mark.parametrize("verb", ["roll"])
def test_roll_ends_the_session_for_its_subscribers(tmp_path: Path, verb: str) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        ended = engine.session_id
        await engine.publish_many(payloads("before", 3))
        subscriber = await Client.login(server.port, seq=1)
        assert await subscriber.packet() == LoginAccepted(ended, 1)

        status, answer = await api.post(f"/{verb}")

        assert status == 200, answer
        following = str(SessionId.parse(ended).next_roll())
        assert answer == {"ended": ended, "session": following}
        assert engine.session_id == following
        assert await subscriber.until_end() == payloads("before", 3)
        assert (tmp_path / ended / "ended").exists()
        await engine.publish_many(payloads("after", 2))  # publishing goes on
        status, answer = await api.get("/status")
        assert (answer["session"], answer["next_seq"]) == (following, 3)

    run(tmp_path, scenario)


def test_there_is_one_way_to_end_a_session_roll(tmp_path: Path) -> None:
    """POST /end did what POST /roll does, under another name: only /roll is kept."""

    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        before = engine.session_id
        status, answer = await api.post("/end")
        assert status == 404
        assert "no such endpoint: POST /end" in answer["error"]
        assert "POST /roll" in answer["error"]
        assert engine.session_id == before

    run(tmp_path, scenario)


def test_archive_an_ended_session_then_pull_it(tmp_path: Path) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        ended = engine.session_id
        await engine.publish_many(payloads("kept", 50))
        await api.post("/roll")

        status, answer = await api.post(f"/sessions/{ended}/archive")

        assert status == 200, answer
        assert answer["session"] == ended
        assert answer["state"] == "archived"
        assert answer["messages"] == 50
        assert answer["archived_bytes"] == (tmp_path / ended / ARCHIVE_FILE).stat().st_size
        assert not (tmp_path / ended / "log").exists()
        status, answer = await api.get(f"/sessions/{ended}")
        assert (answer["state"], answer["messages"]) == ("archived", 50)
        # Served as before, byte for byte.
        puller = await Client.login(server.port, ended, 1)
        assert await puller.packet() == LoginAccepted(ended, 1)
        assert await puller.until_end() == payloads("kept", 50)

        status, answer = await api.post(f"/sessions/{ended}/archive")
        assert status == 409
        assert "already archived" in answer["error"]

    run(tmp_path, scenario)


def test_the_active_session_is_not_archived(tmp_path: Path) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        status, answer = await api.post(f"/sessions/{engine.session_id}/archive")
        assert status == 409
        assert "is the active session" in answer["error"]
        assert "roll it first (POST /roll" in answer["error"]
        assert (tmp_path / engine.session_id / "log").exists()

    run(tmp_path, scenario)


def test_archiving_an_unknown_session_is_404(tmp_path: Path) -> None:
    async def scenario(engine: Engine, server: SoupBinTCPServer, api: Api) -> None:
        status, answer = await api.post("/sessions/2000010101/archive")
        assert status == 404
        assert "no session 2000010101" in answer["error"]

    run(tmp_path, scenario)
