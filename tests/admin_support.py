"""What the admin API's tests share: a server with its admin API in this event loop, and
the API as a client sees it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer

from support import SoupClient, running_server

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
    """Run ``scenario`` with an engine, its SoupBinTCP server and an admin API on ``token``."""

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
