"""Heartbeats and timeouts of the SoupBinTCP endpoint, on a fake clock.

The event loop's clock is made to jump: ``loop.advance(15)`` makes every timer due within
15 s fire at once, with real sockets, in milliseconds of real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from tickertape.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
    Framer,
    LoginAccepted,
    LoginRequest,
    ServerHeartbeat,
    ServerPacket,
    decode_server_packet,
)

from support import running_server

REAL_TIMEOUT = 10.0


class JumpingLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs with real time plus jumps made by :meth:`advance`."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer()

    @classmethod
    async def connect(cls, port: int, login: LoginRequest | None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if login is not None:
            writer.write(login.encode())
        return cls(reader, writer)

    async def packet(self) -> ServerPacket | None:
        """The next packet, or None once the server has closed the connection."""
        while True:
            for frame in self.framer:
                return decode_server_packet(frame)
            data = await asyncio.wait_for(self.reader.read(65536), REAL_TIMEOUT)
            if not data:
                return None
            self.framer.feed(data)


def run(tmp_path: Path, scenario: Callable[[JumpingLoop, int], Awaitable[None]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        async with running_server(tmp_path) as (_, server):
            await scenario(loop, server.port)

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(main())


async def logged_in(port: int, timeout_ms: int | None = None) -> Client:
    client = await Client.connect(port, LoginRequest("", "", "", 1, timeout_ms))
    assert isinstance(await client.packet(), LoginAccepted)
    return client


def test_a_heartbeat_after_each_second_of_sending_nothing(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, port: int) -> None:
        client = await logged_in(port)
        for _ in range(3):
            loop.advance(1.0)
            assert await client.packet() == ServerHeartbeat()
            client.writer.write(ClientHeartbeat().encode())
        client.writer.close()

    run(tmp_path, scenario)


def test_a_silent_client_is_dropped_after_15_s(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, port: int) -> None:
        client = await logged_in(port)
        loop.advance(14.0)
        assert await client.packet() == ServerHeartbeat()  # still there at 14 s
        loop.advance(1.0)
        assert await client.packet() == Debug(b"client silent for 15.0 s")
        assert await client.packet() is None

    run(tmp_path, scenario)


def test_client_heartbeats_keep_a_connection_alive(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, port: int) -> None:
        client = await logged_in(port)
        for _ in range(20):
            loop.advance(1.0)
            assert await client.packet() == ServerHeartbeat()
            client.writer.write(ClientHeartbeat().encode())
            await client.writer.drain()
        client.writer.close()

    run(tmp_path, scenario)


def test_the_4_10_heartbeat_timeout_replaces_15_s(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, port: int) -> None:
        client = await logged_in(port, timeout_ms=2500)
        loop.advance(2.5)
        packets = [await client.packet(), await client.packet(), await client.packet()]
        assert Debug(b"client silent for 2.5 s") in packets
        assert packets[-1] is None

    run(tmp_path, scenario)


def test_no_login_within_30_s_closes_the_connection(tmp_path: Path) -> None:
    async def scenario(loop: JumpingLoop, port: int) -> None:
        client = await Client.connect(port, None)
        loop.advance(29.0)
        client.writer.write(b"\x00")  # half a packet: not a login
        loop.advance(1.0)
        assert await client.packet() == Debug(b"no Login Request within 30.0 s")
        assert await client.packet() is None

    run(tmp_path, scenario)
