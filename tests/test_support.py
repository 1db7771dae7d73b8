"""The tests' own tools (``tests/support.py``): the self-jumping clock, the one polling
helper and the fake transport do what the tests that use them rely on."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    Debug,
    LoginAccepted,
    LoginRequest,
    ServerHeartbeat,
    decode_server_packet,
)

from support import AutojumpLoop, FakeTransport, JumpingLoop, running_server, until, until_sync


def test_an_autojump_loop_sleeps_an_hour_in_no_real_time() -> None:
    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        loop = runner.get_loop()
        began, real = loop.time(), time.monotonic()
        runner.run(asyncio.sleep(3600))
        assert loop.time() - began >= 3600
        assert time.monotonic() - real < 5  # not an hour: a jump
        assert isinstance(loop, AutojumpLoop) and loop.jumps >= 1


def test_timers_fire_in_the_order_and_at_the_times_they_were_set_for() -> None:
    fired: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = loop.create_future()

        def fire(name: str) -> None:
            fired.append((name, loop.time() - start))

        for name, delay in (("c", 30.0), ("a", 10.0), ("b", 20.0)):
            loop.call_later(delay, fire, name)
        loop.call_later(40.0, done.set_result, None)
        await done

    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        runner.run(main())
    assert [name for name, _ in fired] == ["a", "b", "c"]
    for (_, when), wanted in zip(fired, (10.0, 20.0, 30.0), strict=True):
        assert wanted <= when < wanted + 1


def test_ready_callbacks_all_run_before_the_clock_jumps() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        timer = loop.create_future()
        loop.call_later(1.0, timer.set_result, None)
        for _ in range(1000):  # each step is ready at once: no jump in between
            await asyncio.sleep(0)
        busy = loop.time() - start
        await timer
        return busy, loop.time() - start

    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        busy, after = runner.run(main())
    assert busy < 1.0 <= after


def test_a_socket_with_data_ready_is_served_before_any_jump() -> None:
    """Loopback TCP inside the loop: each read is answered though a timeout of an hour
    is pending in every wait, so the clock never reaches it."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in range(200):
            writer.write(b"%d;" % n)
            async with asyncio.timeout(3600):
                assert await reader.readexactly(len(b"%d;" % n)) == b"%d;" % n
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return loop.time() - start

    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        assert runner.run(main()) < 3600


def test_data_from_another_thread_is_waited_for_only_within_the_threshold() -> None:
    """The clock jumps when nothing is ready in the loop: a reply from another thread is
    waited for up to ``autojump_threshold`` seconds of real time, not longer."""

    def reply_later(sock: socket.socket) -> None:
        time.sleep(0.05)
        sock.send(b"late")

    async def wait_for_reply() -> bytes:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        sender = threading.Thread(target=reply_later, args=(theirs,))
        sender.start()
        try:
            return await asyncio.wait_for(loop.sock_recv(ours, 16), 10)
        finally:
            sender.join()
            ours.close()
            theirs.close()

    with asyncio.Runner(loop_factory=lambda: AutojumpLoop(autojump_threshold=5.0)) as runner:
        assert runner.run(wait_for_reply()) == b"late"
    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        real = time.monotonic()
        with pytest.raises(TimeoutError):
            runner.run(wait_for_reply())
        assert time.monotonic() - real < 5  # the 10 s timeout came by a jump


def test_a_jumping_loop_jumps_only_when_told() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        fired = loop.create_future()
        loop.call_later(60.0, fired.set_result, None)
        await asyncio.sleep(0.01)
        assert not fired.done()
        loop.advance(60.0)
        await asyncio.wait_for(fired, 5)

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(main())


# ---------------------------------------------------------------------------- until


def test_until_answers_the_first_true_answer_of_a_check_or_of_an_awaitable() -> None:
    answers: Iterator[object] = iter([None, False, 0, [], "yes", "later"])
    calls = 0

    async def probe() -> int | None:
        nonlocal calls
        calls += 1
        return calls if calls == 3 else None

    async def main() -> None:
        assert await until(lambda: next(answers)) == "yes"
        assert await until(probe) == 3

    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        runner.run(main())


def test_until_fails_saying_what_after_real_time_even_when_the_clock_jumps() -> None:
    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        real = time.monotonic()
        with pytest.raises(AssertionError, match=r"the door opening did not come true in 0\.2 s"):
            runner.run(until(lambda: False, "the door opening", within=0.2))
        assert time.monotonic() - real >= 0.2


def test_until_sync_waits_for_another_thread() -> None:
    box: list[str] = []
    threading.Timer(0.05, box.append, ["there"]).start()
    assert until_sync(lambda: box and box[0]) == "there"
    with pytest.raises(AssertionError, match="nothing did not come true"):
        until_sync(lambda: None, "nothing", within=0.05)


# ------------------------------------------------------------------- fake transport


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(f"connection_lost {exc}")


def test_a_fake_transport_records_writes_reading_and_the_end() -> None:
    protocol = Recorder()
    transport = FakeTransport(protocol, {"peername": ("127.0.0.1", 9)})
    assert transport.get_extra_info("peername") == ("127.0.0.1", 9)
    transport.write(b"ab")
    transport.writelines([b"c", memoryview(b"de"), b""])
    assert transport.writes == [b"ab", b"c", b"de"]
    assert transport.take() == b"abcde" and transport.data == b""
    transport.pause_reading()
    assert not transport.is_reading()
    transport.resume_reading()
    assert transport.is_reading()
    assert transport.can_write_eof()
    transport.write(b"last")
    transport.write_eof()
    assert transport.eof_written
    with pytest.raises(RuntimeError):
        transport.write(b"after eof")
    transport.close()  # no loop running: connection_lost at once
    assert transport.is_closing() and protocol.calls == ["connection_lost None"]
    transport.write(b"discarded")
    transport.close()
    assert transport.data == b"last" and transport.writes_after_close == 1
    assert protocol.calls == ["connection_lost None"]  # once


def test_a_fake_transport_loses_the_connection_from_the_loop_not_within_close() -> None:
    async def main() -> None:
        protocol = Recorder()
        transport = FakeTransport(protocol)
        transport.abort()
        assert transport.aborted and protocol.calls == []
        await asyncio.sleep(0)
        assert protocol.calls == ["connection_lost None"]

    asyncio.run(main())


def test_a_fake_transport_plays_flow_control_to_a_stream_writer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        transport = FakeTransport(protocol)
        protocol.connection_made(transport)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        writer.write(b"x" * 10)
        transport.fill()
        assert transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        drained = asyncio.ensure_future(writer.drain())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not drained.done()
        transport.drain()
        await asyncio.wait_for(drained, 5)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        assert transport.lost and transport.data == b"x" * 10

    asyncio.run(main())


def test_an_autojump_loop_drives_a_real_servers_timers(tmp_path: Path) -> None:
    """An in-process server and a raw client over loopback TCP, nothing but waiting on
    either side: the server's heartbeats come once a loop second, and the silent client
    is dropped at 15 loop seconds (spec 4.1, 1.3), in well under 15 s of real time."""

    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        async with running_server(tmp_path) as (_, server):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(LoginRequest("", "", "", 1).encode())
            framer = Framer()
            heartbeats: list[float] = []
            start = 0.0
            while True:
                for frame in framer:
                    packet = decode_server_packet(frame)
                    if isinstance(packet, LoginAccepted):
                        start = loop.time()
                    elif isinstance(packet, ServerHeartbeat):
                        heartbeats.append(loop.time() - start)
                    elif isinstance(packet, Debug):
                        assert packet.text == b"client silent for 15.0 s"
                        writer.close()
                        return heartbeats, loop.time() - start
                framer.feed(await asyncio.wait_for(reader.read(65536), 60))

    real = time.monotonic()
    with asyncio.Runner(loop_factory=AutojumpLoop) as runner:
        heartbeats, dropped = runner.run(main())
    assert time.monotonic() - real < 15
    assert len(heartbeats) == 14
    # Loop seconds after the client saw Login Accepted, which the server sent a moment
    # (of real time) earlier:
    for n, when in enumerate(heartbeats, start=1):
        assert n - 0.1 <= when < n + 0.5
    assert 15 - 0.1 <= dropped < 15.5
