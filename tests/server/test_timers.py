"""Heartbeats and timeouts of the SoupBinTCP endpoint, on a fake clock.

The event loop's clock is made to jump: ``loop.advance(15)`` makes every timer due within
15 s fire at once, with real sockets, in milliseconds of real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from tickertape.server.engine import Engine
from tickertape.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
    Framer,
    LoginAccepted,
    LoginRequest,
    SequencedData,
    ServerHeartbeat,
    ServerPacket,
    decode_server_packet,
)

from support import JumpingLoop, running_server

REAL_TIMEOUT = 10.0


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


def run(tmp_path: Path, scenario: Callable[..., Awaitable[None]]) -> None:
    """Run ``scenario(loop, port)`` (or ``scenario(loop, port, engine)``) on a jumping
    clock against an in-process server."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        async with running_server(tmp_path) as (engine, server):
            if scenario.__code__.co_argcount == 3:
                await scenario(loop, server.port, engine)
            else:
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


def test_a_client_is_not_judged_silent_while_a_catch_up_chunk_is_in_flight(
    tmp_path: Path,
) -> None:
    """asyncio reads nothing from a client while a sendfile to it is in flight, so its
    heartbeats wait unread: the 4.10 timeout is judged only between chunks."""

    async def scenario(loop: JumpingLoop, port: int, engine: Engine) -> None:
        message = b"x" * 1000
        for _ in range(60):
            await engine.publish_many([message] * 500)  # 30 MB: more than sockets hold
        # A small read buffer: the client's transport stops reading at 128 KiB unread.
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        writer.write(LoginRequest("", "", "", 1, 2000).encode())
        first = await asyncio.wait_for(reader.read(64), REAL_TIMEOUT)  # then stop reading
        loop.advance(5.0)  # far past the 2 s timeout, with a chunk stuck in flight
        for _ in range(5):
            await asyncio.sleep(0.01)
        writer.write(ClientHeartbeat().encode())
        client = Client(reader, writer)
        client.framer.feed(first)
        received = 0
        while received < 30_000:
            packet = await client.packet()
            assert packet is not None, "dropped as silent while it could not be heard"
            if isinstance(packet, SequencedData):
                received += 1
                if received % 1000 == 0:
                    writer.write(ClientHeartbeat().encode())
        writer.close()

    run(tmp_path, scenario)
