"""Publishing over SoupBinTCP: Unsequenced Data in, acknowledgements back, nothing lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import subscribe
from tickertape.server.soupbintcp import ServerConfig
from tickertape.store.log import Appended, SessionLog
from tickertape.wire.framing import Framer
from tickertape.wire.publishing import NO_STREAM, Ack
from tickertape.wire.soupbintcp import (
    Debug,
    LoginAccepted,
    LoginRequest,
    UnsequencedData,
    decode_server_packet,
    encode_unsequenced_many,
)

from support import JumpingLoop, ServerProcess, running_server

TIMEOUT = 60.0


async def session_messages(port: int, session: str, through: int) -> list[bytes]:
    got = []
    async with subscribe("127.0.0.1", port, session, 1, reconnect=False) as messages:
        async for message in messages:
            got.append(message.payload)
            if message.seq == through:
                break
    return got


def test_the_publish_command_sequences_a_million_lines_in_file_order(tmp_path: Path) -> None:
    lines = [f"{n} line".ljust(99).encode() for n in range(1, 1_000_001)]
    (tmp_path / "lines").write_bytes(b"\n".join(lines) + b"\n")
    with ServerProcess(tmp_path / "data", "--durability", "batch") as server:
        done = subprocess.run(
            [sys.executable, "-m", "tickertape", "publish", "--port", str(server.port)],
            stdin=(tmp_path / "lines").open("rb"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        print(done.stderr.strip().splitlines()[-1])  # the rate, for the record
        assert "published 1000000 messages into session " in done.stderr
        session = done.stderr.split("into session ")[1].split(",")[0]
        got = asyncio.run(asyncio.wait_for(session_messages(server.port, session, 10**6), 120))
    assert got == lines


def test_two_publishers_at_once_interleave_but_keep_their_own_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):

            async def publish(name: bytes) -> None:
                async with await Publisher.connect("127.0.0.1", server.port) as publisher:
                    for first in range(0, 20_000, 500):
                        await publisher.send_many(
                            [b"%s %d" % (name, n) for n in range(first, first + 500)]
                        )
                    async with asyncio.timeout(TIMEOUT):
                        ack = await publisher.flush()
                    assert ack is not None
                    assert ack.count == 20_000

            await asyncio.gather(publish(b"a"), publish(b"b"))
            assert engine.next_seq == 40_001
            got = await session_messages(server.port, engine.session_id, 40_000)
            for name in (b"a", b"b"):
                own = [p for p in got if p.startswith(name + b" ")]
                assert own == [b"%s %d" % (name, n) for n in range(20_000)]

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_publisher_receives_no_stream_and_gets_an_ack_per_durable_batch(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            await engine.publish(b"before")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(LoginRequest("", "", "", NO_STREAM).encode())
            writer.write(encode_unsequenced_many([b"one", b"two"]))
            framer = Framer()
            packets: list[object] = []
            while len(packets) < 2:
                framer.feed(await asyncio.wait_for(reader.read(65536), TIMEOUT))
                packets += [decode_server_packet(frame) for frame in framer]
            assert packets[0] == LoginAccepted(engine.session_id, NO_STREAM)
            assert packets[1] == UnsequencedData(Ack(2, engine.session_id, 3).encode())
            writer.close()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_publisher_can_end_the_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            first = engine.session_id
            async with await Publisher.connect("127.0.0.1", server.port) as publisher:
                await publisher.send_many([b"last words"])
                assert await publisher.end_session() == first
                await publisher.send_many([b"next session"])
                ack = await publisher.flush()
            assert ack == Ack(2, engine.session_id, 1)
            assert engine.session_id != first
            assert await session_messages(server.port, first, 1) == [b"last words"]

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_publishing_into_a_closed_session_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            ended = engine.session_id
            await engine.roll()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(LoginRequest("", "", ended, 1).encode())
            writer.write(encode_unsequenced_many([b"too late"]))
            framer = Framer()
            packets: list[object] = []
            while data := await asyncio.wait_for(reader.read(65536), TIMEOUT):
                framer.feed(data)
                packets += [decode_server_packet(frame) for frame in framer]
            assert (
                Debug(
                    f"publishing goes into the active session; this connection is logged in to "
                    f"{ended}".encode()
                )
                in packets
            )
            assert engine.next_seq == 1

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_publisher_faster_than_the_writer_is_held_back_not_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = ServerConfig(port=0, max_unpublished=100)
        async with running_server(tmp_path, config) as (engine, server):
            async with await Publisher.connect("127.0.0.1", server.port) as publisher:
                for first in range(0, 50_000, 5_000):
                    await publisher.send_many([b"%d" % n for n in range(first, first + 5_000)])
                ack = await publisher.flush()
            assert ack is not None
            assert ack.count == 50_000
            got = await session_messages(server.port, engine.session_id, 50_000)
            assert got == [b"%d" % n for n in range(50_000)]

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


_PUBLISHER = """
import asyncio, sys
from tickertape.client.publisher import Publisher

async def main(port):
    async with await Publisher.connect("127.0.0.1", port) as publisher:
        n = 0
        while True:
            await publisher.send_many([b"p %d" % i for i in range(n, n + 100)])
            n += 100
            if publisher.last_ack is not None:
                print(publisher.last_ack.count, flush=True)

asyncio.run(main(int(sys.argv[1])))
"""


def test_a_publisher_killed_mid_stream_loses_nothing_it_was_told_was_durable(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path, "--durability", "batch") as server:
        publisher = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(server.port)], stdout=subprocess.PIPE
        )
        assert publisher.stdout is not None
        acked = 0
        while acked < 20_000:
            acked = int(publisher.stdout.readline())
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(10)
        session = server.wait_for_log(" open at ").split("session ")[1].split()[0]
        got = asyncio.run(asyncio.wait_for(session_messages(server.port, session, acked), 60))
        assert got == [b"p %d" % i for i in range(acked)]
        # and the server goes on serving and publishing
        assert server.wait_for_log("disconnected")
        done = subprocess.run(
            [sys.executable, "-m", "tickertape", "publish", "--port", str(server.port)],
            input=b"after\n",
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_a_relaying_server_refuses_publishers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            engine.relay_from = "127.0.0.1:7300"  # as run_upstream sets it
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(LoginRequest("", "", "", NO_STREAM).encode())
            writer.write(encode_unsequenced_many([b"not here"]))
            framer = Framer()
            packets: list[object] = []
            while data := await asyncio.wait_for(reader.read(65536), TIMEOUT):
                framer.feed(data)
                packets += [decode_server_packet(frame) for frame in framer]
            assert Debug(b"this server relays 127.0.0.1:7300: publish there") in packets
            assert engine.next_seq == 1

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_a_publisher_held_back_is_not_dropped_as_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops reading from a publisher while the writer is behind: that
    silence is the server's own doing, so the idle timeout must not drop it."""
    stalled = threading.Event()
    release = threading.Event()
    real_append = SessionLog.append

    def slow_append(self: SessionLog, batch: bytes, count: int, crc: int | None = None) -> Appended:
        stalled.set()
        release.wait(TIMEOUT)
        return real_append(self, batch, count, crc)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        config = ServerConfig(port=0, max_unpublished=10)
        async with running_server(tmp_path, config) as (_, server):
            monkeypatch.setattr(SessionLog, "append", slow_append)
            async with await Publisher.connect("127.0.0.1", server.port) as publisher:
                await publisher.send_many([b"%d" % n for n in range(500)])
                await loop.run_in_executor(None, stalled.wait, TIMEOUT)  # the writer stalls
                await publisher.send_many([b"%d" % n for n in range(500, 1000)])
                await asyncio.sleep(0.05)  # received: more than 10 wait, so it is held back
                for _ in range(4):  # 20 s of the server not reading from it
                    loop.advance(5.0)
                    await asyncio.sleep(0.01)
                release.set()
                ack = await asyncio.wait_for(publisher.flush(), TIMEOUT)
            assert ack is not None
            assert ack.count == 1000

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(asyncio.wait_for(scenario(), TIMEOUT))
