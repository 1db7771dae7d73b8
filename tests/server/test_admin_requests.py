"""The admin API against requests no well-behaved client sends, written byte by byte on
a plain socket: each is answered 4xx and logged as one WARNING line, never a traceback;
and wrong tokens are slowed down per address, as failed SoupBinTCP logins are."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pytest

from tickertape.auth.user import User
from tickertape.auth.users import Users
from tickertape.server.admin import AdminConfig, AdminServer
from tickertape.server.soupbintcp import ServerConfig

from support import JumpingLoop, running_server

TOKEN = "s3cret-admin-token"
TIMEOUT = 30.0


async def exchange(port: int, request: bytes) -> int:
    """Send ``request`` as it is; the status code of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    finally:
        writer.close()
    version, status, *_ = status_line.split(b" ", 2)
    assert version.startswith(b"HTTP/1."), status_line
    return int(status)


def post(path: str, authorization: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        + b"Authorization: "
        + authorization
        + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )


def answers(tmp_path: Path, requests: list[bytes], config: ServerConfig | None = None) -> list[int]:
    """The status of each request, sent on a connection of its own to a real admin API."""

    async def main() -> list[int]:
        async with running_server(tmp_path, config) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig(token=TOKEN))
            await admin.start()
            try:
                return [await exchange(admin.port, request) for request in requests]
            finally:
                await admin.close()

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def warnings_and_worse(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [record for record in records if record.levelno >= logging.WARNING]


def assert_one_warning_each(records: list[logging.LogRecord], count: int) -> None:
    loud = warnings_and_worse(records)
    assert [record.levelname for record in loud] == ["WARNING"] * count, [
        record.getMessage() for record in loud
    ]
    assert all(record.exc_info is None for record in loud), "no traceback is logged"
    assert all("admin API" in record.getMessage() for record in loud)


def test_a_latin1_byte_in_a_bearer_token_is_a_wrong_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = ServerConfig(port=0, login_delay=0.0)
    statuses = answers(tmp_path, [post("/roll", b"Bearer caf\xe9")], config)
    assert statuses == [401]
    assert_one_warning_each(caplog.records, 1)
    assert "wrong token" in warnings_and_worse(caplog.records)[0].getMessage()


def test_a_latin1_byte_in_basic_credentials_is_a_bad_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    users = Users([User.create("boss", "bosspass", ["admin"])])
    config = ServerConfig(port=0, users=users, login_delay=0.0)
    latin1_name = base64.b64encode(b"b\xf6ss:bosspass")
    statuses = answers(
        tmp_path,
        [post("/roll", b"Basic \xe9\xe9\xe9\xe9"), post("/roll", b"Basic " + latin1_name)],
        config,
    )
    assert all(400 <= status < 500 for status in statuses), statuses
    assert_one_warning_each(caplog.records, 2)


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # TLS hello
    b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
    b"GET /status HTTP/9.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 20_000 + b"\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: caf\xe9\r\n\r\n",
    b"GET /st\xe9tus HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_request_is_a_4xx_and_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    statuses = answers(tmp_path, [request_bytes])
    assert 400 <= statuses[0] < 500, statuses
    assert_one_warning_each(caplog.records, 1)
    assert "malformed request from 127.0.0.1" in warnings_and_worse(caplog.records)[0].getMessage()


def test_wrong_tokens_are_slowed_down_per_address(tmp_path: Path) -> None:
    """On an event loop whose clock jumps: the answer to a wrong token waits for the
    throttle's delay (here 5 s, doubling), which passes only when the clock is moved on."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        config = ServerConfig(port=0, login_delay=5.0, max_login_delay=20.0)
        async with running_server(tmp_path, config) as (engine, server):
            admin = AdminServer(engine, server, AdminConfig(token=TOKEN))
            await admin.start()
            throttle = server.login_throttle
            try:
                for failures, delay in enumerate([5.0, 10.0, 20.0], start=1):
                    answer = asyncio.create_task(
                        exchange(admin.port, post("/roll", b"Bearer wrong"))
                    )
                    async with asyncio.timeout(TIMEOUT):
                        while throttle.failures("127.0.0.1", loop.time()) < failures:
                            await asyncio.sleep(0.005)
                    await asyncio.sleep(0.05)
                    assert not answer.done(), "a wrong token is answered only after a delay"
                    loop.advance(delay - 1.0)
                    await asyncio.sleep(0.05)
                    assert not answer.done(), f"failure {failures} waits {delay} s"
                    loop.advance(1.0)
                    assert await asyncio.wait_for(answer, TIMEOUT) == 401
                # The right token is not held back, and clears the address's failures.
                before = engine.session_id
                assert await exchange(admin.port, post("/roll", f"Bearer {TOKEN}".encode())) == 200
                assert engine.session_id != before
                assert throttle.failures("127.0.0.1", loop.time()) == 0
            finally:
                await admin.close()

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))  # the clock jumps 35 s
