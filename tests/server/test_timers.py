"""Heartbeats and timeouts of the SoupBinTCP endpoint, on a fake clock.

The event loop's clock is made to jump: ``loop.advance(15)`` makes every timer due within
15 s fire at once, with real sockets, in milliseconds of real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from tickertape.server.engine import Engine
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
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


def test_a_client_is_heard_while_a_catch_up_chunk_is_in_flight(tmp_path: Path) -> None:
    """A client that reads its catch-up in bursts, so that the sendfile waits on it in
    between, and heartbeats: its heartbeats are read meanwhile, and it is not dropped as
    silent, long past its 4.10 timeout."""

    async def scenario(loop: JumpingLoop, port: int, engine: Engine) -> None:
        message = b"x" * 1000
        for _ in range(60):
            await engine.publish_many([message] * 500)  # 30 MB: more than sockets hold
        client = await Client.connect(port, LoginRequest("", "", "", 1, 3000))
        writer = client.writer
        received = 0
        for step in range(1, 7):  # 6 s, far past the 3 s timeout
            while received < 4_000 * step:  # about 4 MB more: the sendfile moves
                packet = await client.packet()
                assert packet is not None, "dropped as silent while it sent heartbeats"
                received += isinstance(packet, SequencedData)
            writer.write(ClientHeartbeat().encode())
            await asyncio.sleep(0.05)
            loop.advance(1.0)
        writer.write(ClientHeartbeat().encode())
        while received < 30_000:
            packet = await client.packet()
            assert packet is not None, "dropped as silent while it sent heartbeats"
            if isinstance(packet, SequencedData):
                received += 1
                if received % 1000 == 0:
                    writer.write(ClientHeartbeat().encode())
        writer.close()

    run(tmp_path, scenario)


def test_a_client_silent_during_a_catch_up_is_told_so_and_closed_then(tmp_path: Path) -> None:
    """A client that reads its catch-up but sends nothing past its 4.10 timeout is
    dropped then, with a Debug packet saying why after whole packets, not once the
    catch-up is over."""

    async def scenario(loop: JumpingLoop, port: int, engine: Engine) -> None:
        for _ in range(60):
            await engine.publish_many([b"x" * 1000] * 500)  # 30 MB: more than sockets hold
        client = await Client.connect(port, LoginRequest("", "", "", 1, 2000))
        assert isinstance(await client.packet(), LoginAccepted)
        received = 0
        while received < 1000:  # well into the catch-up
            packet = await client.packet()
            assert isinstance(packet, SequencedData), packet
            received += 1
        loop.advance(3.0)  # past its 2 s timeout, without a heartbeat
        while isinstance(packet := await client.packet(), SequencedData):
            received += 1
        assert packet == Debug(b"client silent for 2.0 s")
        assert await client.packet() is None
        assert received < 30_000, "told only once the catch-up was over"
        client.writer.close()

    run(tmp_path, scenario)
