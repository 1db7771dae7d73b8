"""The admin API over real HTTP on 127.0.0.1, against an engine and SoupBinTCP server in
this event loop: what it shows, what it changes, and whom it refuses."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.store.archive import ARCHIVE_FILE
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.wire.soupbintcp import (
    LoginAccepted,
    SequencedData,
    encode_sequenced_many,
)

from support import SoupClient, running_server, until

TOKEN = "s3cret-admin-token"
TIMEOUT = 10.0
_UNSET: Any = object()


class Api:
    """The admin API, as a client sees it: (status, JSON answer)."""

    def __init__(self, http: aiohttp.ClientSession, port: int, token: str | None) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.get(self.base + path, headers=headers) as response:
            return response.status, await response.json()

    async def post(self, path: str, token: str | None = _UNSET) -> tuple[int, Any]:
        token = self.token if token is _UNSET else token
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.http.post(self.base + path, headers=headers) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()


Scenario = Callable[[Engine, SoupBinTCPServer, Api], Awaitable[None]]


def run(data: Path, scenario: Scenario, token: str | None = TOKEN) -> None:
    async def main() -> None:
        async with running_server(data) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig(token=token))
            await admin.start()
            try:
                async with aiohttp.ClientSession() as http:
                    await scenario(engine, server, Api(http, admin.port, token))
            finally:
                await admin.close()

    asyncio.run(asyncio.wait_for(main(), 60))


Client = SoupClient


def payloads(tag: str, count: int) -> list[bytes]:
    return [f"{tag} {n}".encode() for n in range(1, count + 1)]


def files_size(directory: Path) -> int:
    return sum(entry.stat().st_size for entry in directory.iterdir() if entry.is_file())


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

        await until(live, "the subscriber shown live", TIMEOUT)
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
