"""The SoupBinTCP endpoint over real sockets on 127.0.0.1, with an in-process engine."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
from pathlib import Path

import pytest

from tickertape.server.soupbintcp import Credentials, ServerConfig
from tickertape.store.log import SessionLog
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    SequencedData,
    ServerHeartbeat,
    ServerPacket,
    decode_server_packet,
    encode_sequenced_many,
)

from support import running_server, until

TIMEOUT = 10.0


class RawClient:
    """A minimal SoupBinTCP client that hands out every packet, heartbeats excepted."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer()
        self.pending: list[ServerPacket] = []

    @classmethod
    async def login(cls, port: int, request: LoginRequest) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request.encode())
        return cls(reader, writer)

    async def packet(self) -> ServerPacket | None:
        """The next packet, or None at end of stream."""
        while not self.pending:
            for frame in self.framer:
                packet = decode_server_packet(frame)
                if not isinstance(packet, ServerHeartbeat):
                    self.pending.append(packet)
            if self.pending:
                break
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                return None
            self.framer.feed(data)
        return self.pending.pop(0)

    async def messages(self, count: int) -> list[bytes]:
        payloads: list[bytes] = []
        while len(payloads) < count:
            packet = await self.packet()
            assert isinstance(packet, SequencedData), packet
            payloads.append(packet.payload)
        return payloads

    def close(self) -> None:
        self.writer.close()


def payloads(first: int, count: int) -> list[bytes]:
    return [b"message %d" % seq for seq in range(first, first + count)]


def test_replay_then_live_from_sequence_1(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            await engine.publish_many(payloads(1, 10))
            client = await RawClient.login(server.port, LoginRequest("", "", "", 1))
            assert await client.packet() == LoginAccepted(engine.session_id, 1)
            assert await client.messages(10) == payloads(1, 10)
            await engine.publish_many(payloads(11, 5))
            assert await client.messages(5) == payloads(11, 5)
            client.close()

    asyncio.run(scenario())


def test_sequence_0_is_live_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            await engine.publish_many(payloads(1, 7))
            client = await RawClient.login(server.port, LoginRequest("", "", "", 0))
            assert await client.packet() == LoginAccepted(engine.session_id, 8)
            await engine.publish_many(payloads(8, 3))
            assert await client.messages(3) == payloads(8, 3)
            client.close()

    asyncio.run(scenario())


def test_sequence_in_the_middle_and_beyond_the_tail(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            await engine.publish_many(payloads(1, 10))
            middle = await RawClient.login(server.port, LoginRequest("", "", "", 6))
            ahead = await RawClient.login(server.port, LoginRequest("", "", "", 14))
            assert await middle.packet() == LoginAccepted(engine.session_id, 6)
            assert await ahead.packet() == LoginAccepted(engine.session_id, 14)
            assert await middle.messages(5) == payloads(6, 5)
            # 11..13 do not exist yet for `ahead`; it gets 14 on, sliced out of the batch
            await engine.publish_many(payloads(11, 6))
            assert await ahead.messages(3) == payloads(14, 3)
            assert await middle.messages(6) == payloads(11, 6)
            middle.close()
            ahead.close()

    asyncio.run(scenario())


def test_unknown_session_is_rejected_with_s(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (_, server):
            client = await RawClient.login(server.port, LoginRequest("", "", "1999010101", 1))
            why = await client.packet()  # the reason, which Login Rejected has no room for
            assert isinstance(why, Debug) and b"1999010101" in why.text, why
            assert await client.packet() == LoginRejected("S")
            assert await client.packet() is None

    asyncio.run(scenario())


def test_wrong_password_is_rejected_with_a(tmp_path: Path) -> None:
    config = ServerConfig(port=0, credentials=Credentials("alice", "Secret"))

    async def scenario() -> None:
        async with running_server(tmp_path, config) as (engine, server):
            bad = await RawClient.login(server.port, LoginRequest("alice", "wrong", "", 1))
            assert await bad.packet() == Debug(b"wrong username or password for user 'alice'")
            assert await bad.packet() == LoginRejected("A")
            assert await bad.packet() is None
            # username and password compare case-insensitively (DESIGN, protocol choices)
            good = await RawClient.login(server.port, LoginRequest("ALICE", "secret", "", 1))
            assert await good.packet() == LoginAccepted(engine.session_id, 1)
            good.close()

    asyncio.run(scenario())


def test_logout_closes_the_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            client = await RawClient.login(server.port, LoginRequest("", "", "", 1))
            assert await client.packet() == LoginAccepted(engine.session_id, 1)
            client.writer.write(LogoutRequest().encode())
            assert await client.packet() is None

    asyncio.run(scenario())


def test_malformed_packet_gets_a_debug_and_a_close(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (_, server):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"\x00\x05Xjunk")
            client = RawClient(reader, writer)
            packet = await client.packet()
            assert packet is not None
            assert b"unknown packet type" in getattr(packet, "text", b"")
            assert await client.packet() is None

    asyncio.run(scenario())


def test_closed_session_is_pulled_then_ended(tmp_path: Path) -> None:
    yesterday = (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d") + "01"
    with SessionLog.open(tmp_path / yesterday, create=True) as old:
        old.append(encode_sequenced_many(payloads(1, 8)), 8)

    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            assert engine.session_id != yesterday
            client = await RawClient.login(server.port, LoginRequest("", "", yesterday, 3))
            assert await client.packet() == LoginAccepted(yesterday, 3)
            assert await client.messages(6) == payloads(3, 6)
            assert await client.packet() == EndOfSession()
            assert await client.packet() is None

    asyncio.run(scenario())


def test_hand_off_while_publishing_loses_and_repeats_nothing(tmp_path: Path) -> None:
    total = 20_000

    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):

            async def publish() -> None:
                for first in range(1, total + 1, 100):
                    await engine.publish_many(payloads(first, 100))

            publisher = asyncio.create_task(publish())
            clients: list[RawClient] = []
            for start in (1, 2, 50, 0):
                least = 3_000 * (len(clients) + 1)

                def published(least: int = least) -> bool:
                    return engine.next_seq >= least

                await until(published, f"{least} published", interval=0.001)
                client = await RawClient.login(server.port, LoginRequest("", "", "", start))
                clients.append(client)
            await publisher
            for client in clients:
                accepted = await client.packet()
                assert isinstance(accepted, LoginAccepted)
                first = accepted.sequence
                assert await client.messages(total - first + 1) == payloads(
                    first, total - first + 1
                )
                client.close()

    asyncio.run(scenario())


def test_replay_without_sendfile_reads_and_writes_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where sendfile is not available (TLS, some filesystems), catch-up reads the log
    itself; concurrent catch-ups of one log must not disturb each other."""

    calls = 0

    def unavailable(*args: object) -> int:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOSYS, "no sendfile here")

    monkeypatch.setattr(os, "sendfile", unavailable)

    async def scenario() -> None:
        async with running_server(tmp_path, ServerConfig(port=0, catch_up_chunk=4096)) as (
            engine,
            server,
        ):
            for first in range(1, 5001, 500):
                await engine.publish_many(payloads(first, 500))
            starts = [1, 2, 1234, 4999]
            clients = [
                await RawClient.login(server.port, LoginRequest("", "", "", s)) for s in starts
            ]
            for start, client in zip(starts, clients, strict=True):
                assert await client.packet() == LoginAccepted(engine.session_id, start)
                assert await client.messages(5001 - start) == payloads(start, 5001 - start)
                client.close()
        assert calls == len(starts)  # tried once by each catch-up, then not again

    asyncio.run(scenario())


def test_a_session_that_cannot_be_opened_is_rejected_at_once(tmp_path: Path) -> None:
    yesterday = (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d") + "01"
    (tmp_path / yesterday / "log").mkdir(parents=True)  # a log that is a directory

    async def scenario() -> None:
        async with running_server(tmp_path) as (_, server):
            for _ in range(2):  # the failure is not remembered: each login asks the disk
                client = await RawClient.login(server.port, LoginRequest("", "", yesterday, 1))
                why = await client.packet()
                assert isinstance(why, Debug) and yesterday.encode() in why.text, why
                assert await client.packet() == LoginRejected("S")
                assert await client.packet() is None

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
