"""The admin API and users with the admin role: HTTP Basic over real HTTP on 127.0.0.1,
and ``tickertape sessions roll --admin-user`` against a real server."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tickertape.auth.user import User
from tickertape.auth.users import Users
from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.soupbintcp import ServerConfig

from support import ServerProcess, free_port, running_server

TIMEOUT = 30.0
TICKERTAPE = (sys.executable, "-m", "tickertape")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def users() -> Users:
    return Users(
        [
            User.create("boss", "bosspass", ["admin"]),
            User.create("sub", "subpass", ["subscriber"]),
        ]
    )


def test_a_user_with_the_admin_role_may_change_things(tmp_path: Path, users: Users) -> None:
    async def scenario() -> None:
        config = ServerConfig(port=0, users=users, login_delay=0.0)
        async with running_server(tmp_path, config) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig(token=None))
            await admin.start()
            try:
                base = f"http://127.0.0.1:{admin.port}"
                async with aiohttp.ClientSession() as http:

                    async def roll(headers: dict[str, str] | None) -> tuple[int, str]:
                        async with http.post(base + "/roll", headers=headers) as response:
                            answer = await response.json()
                            return response.status, str(answer.get("error", answer))

                    first = engine.session_id
                    status, error = await roll(None)
                    assert status == 401 and "admin role" in error, error
                    status, error = await roll(basic("boss", "wrong"))
                    assert (status, error) == (401, "bad username or password")
                    status, error = await roll(basic("sub", "subpass"))
                    assert status == 403 and "does not have the admin role" in error, error
                    assert engine.session_id == first
                    # Case-insensitive, as SoupBinTCP logins are.
                    status, _ = await roll(basic("BOSS", "BossPass"))
                    assert status == 200
                    assert engine.session_id != first
                    async with http.post(
                        base + "/roll", headers={"Authorization": "Basic !!!"}
                    ) as response:
                        assert response.status == 400
            finally:
                await admin.close()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_sessions_roll_as_an_admin_user(tmp_path: Path, users: Users) -> None:
    users_file = tmp_path / "users.toml"
    users.save(users_file)
    port = free_port()
    with ServerProcess(
        tmp_path / "data", "--users", str(users_file), "--admin-port", str(port)
    ) as server:
        server.wait_for_log("admin API listening")

        def roll(user: str, password: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*TICKERTAPE, "sessions", "roll", "--admin-port", str(port), "--admin-user", user],
                input=password + "\n",
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )

        refused = roll("sub", "subpass")
        assert refused.returncode != 0
        assert "does not have the admin role" in refused.stderr
        done = roll("boss", "bosspass")
        assert done.returncode == 0, done.stderr
        assert "2026" in done.stdout
