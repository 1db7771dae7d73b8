"""A server put together by :class:`tickertape.assembly.Assembly`: every port bound before
the session opens, whatever had started closed again when a part cannot start, and the
parts closed in the order that loses nothing. Real sockets on 127.0.0.1, real files."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tickertape.assembly import Assembly, AssemblyConfig, DemoPlan, Inputs, StartError
from tickertape.embedded import Tickertape
from tickertape.server.moldudp64.settings import RequestServerConfig
from tickertape.server.soupbintcp import ServerConfig

from support import free_port

TIMEOUT = 20.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def sessions_in(data: Path) -> list[str]:
    """The session directories made in ``data`` (the lock file is not one)."""
    if not data.exists():
        return []
    return sorted(entry.name for entry in data.iterdir() if entry.is_dir())


def taken_tcp_port() -> socket.socket:
    """A listening socket on 127.0.0.1: its port is taken while it is open."""
    return socket.create_server(("127.0.0.1", 0))


def endpoint(port: int = 0) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=port)


async def read_packets(port: int, session: str, until: bytes) -> bytes:
    """Log in (no user) to ``session`` from message 1 with a raw client written from
    the spec, and read until a packet of type ``until``; every byte read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    login = b"L" + b" " * 6 + b" " * 10 + session.encode().ljust(10) + b"1".rjust(20)
    writer.write(struct.pack(">H", len(login)) + login)
    got = b""
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                head = await reader.readexactly(2)
                (size,) = struct.unpack(">H", head)
                body = await reader.readexactly(size)
                got += head + body
                if body[:1] == until:
                    return got
    finally:
        writer.close()


def test_a_taken_port_is_said_and_leaves_no_session_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        with taken_tcp_port() as holder:
            port = holder.getsockname()[1]
            assembly = Assembly(AssemblyConfig(data=data, endpoint=endpoint(port)))
            with pytest.raises(StartError, match=f"cannot listen on 127.0.0.1:{port}: "):
                await assembly.start()
            await assembly.close()  # nothing to close: does nothing

    run(scenario)
    assert sessions_in(data) == []


def test_a_taken_admin_port_closes_the_bound_endpoint_and_opens_no_session(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        port = free_port()
        with taken_tcp_port() as holder:
            admin_port = holder.getsockname()[1]
            assembly = Assembly(
                AssemblyConfig(data=data, endpoint=endpoint(port), admin_port=admin_port)
            )
            with pytest.raises(StartError, match=f"admin API on 127.0.0.1:{admin_port}: "):
                await assembly.start()
        # The endpoint's port was bound, then given back: it can be bound again.
        with socket.create_server(("127.0.0.1", port)):
            pass

    run(scenario)
    assert sessions_in(data) == []


def test_moldudp64_that_cannot_start_closes_the_engine_it_started_after(tmp_path: Path) -> None:
    """The data directory is held while the engine runs: that a second server can open
    it afterwards shows the engine was closed (and the session kept, not ended)."""
    data = tmp_path / "data"

    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            udp_port = taken.getsockname()[1]
            requests = RequestServerConfig(host="127.0.0.1", port=udp_port)
            assembly = Assembly(
                AssemblyConfig(data=data, endpoint=endpoint(), mold_requests=requests)
            )
            with pytest.raises(StartError, match="cannot start MoldUDP64: "):
                await assembly.start()
        opened = sessions_in(data)
        assert len(opened) == 1
        async with Tickertape(data, port=0) as again:
            assert again.session_id == opened[0]  # continued: it was not ended

    run(scenario)


def test_close_delivers_what_was_published_then_closes_each_part_once(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        assembly = Assembly(AssemblyConfig(data=data, endpoint=endpoint()))
        await assembly.start()
        seq = await assembly.engine.publish_many([b"one", b"two", b"three"])
        assert seq == 1
        session = assembly.engine.session_id
        await assembly.engine.end_session()
        got = await read_packets(assembly.endpoint.port, session, until=b"Z")
        assert sequenced_payloads(got) == [b"one", b"two", b"three"]
        port = assembly.endpoint.port
        await assembly.close()
        await assembly.close()  # the second does nothing
        with socket.create_server(("127.0.0.1", port)):
            pass  # the port was given back

    run(scenario)


def sequenced_payloads(stream: bytes) -> list[bytes]:
    """The payloads of the Sequenced Data packets in ``stream``, in order."""
    payloads, offset = [], 0
    while offset < len(stream):
        (size,) = struct.unpack_from(">H", stream, offset)
        if stream[offset + 2 : offset + 3] == b"S":
            payloads.append(stream[offset + 3 : offset + 2 + size])
        offset += 2 + size
    return payloads


def test_a_finite_demo_input_ends_its_session_and_the_next_opens(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        demo = DemoPlan(rate=1000.0, size=16, count=5, end_session=True)
        async with Assembly(AssemblyConfig(data=data, endpoint=endpoint(), demo=demo)) as server:
            first = server.engine.session_id
            async with asyncio.timeout(TIMEOUT):
                while server.engine.session_id == first:
                    await asyncio.sleep(0.01)  # polled: the session id itself is the signal
            assert server.inputs.failed == []
            assert not server.stop.is_set()

    run(scenario)
    assert len(sessions_in(data)) == 2


def test_an_input_that_fails_is_kept_and_sets_stop() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()
        inputs = Inputs(stop)

        async def broken() -> None:
            raise RuntimeError("the feed broke")

        async def forever() -> None:
            await asyncio.Event().wait()

        inputs.start("forever", forever())
        inputs.start("broken", broken())
        async with asyncio.timeout(TIMEOUT):
            await stop.wait()
        assert [str(error) for error in inputs.failed] == ["the feed broke"]
        await inputs.close()  # cancels the one still running

    run(scenario)


def test_the_embedded_server_on_a_taken_port_leaves_no_session_behind(tmp_path: Path) -> None:
    """The embedded Tickertape is built by the same assembly: the port first."""
    data = tmp_path / "data"

    async def scenario() -> None:
        with taken_tcp_port() as holder:
            server = Tickertape(data, port=holder.getsockname()[1])
            with pytest.raises(OSError, match="cannot listen on"):
                await server.start()

    run(scenario)
    assert sessions_in(data) == []


def test_a_following_server_serves_what_another_writes_and_has_no_engine(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def scenario() -> None:
        async with Tickertape(data, port=0) as writer:
            await writer.publish_many([b"one", b"two"])
            ended = writer.session_id
            await writer.end_session()
            follower = Assembly(AssemblyConfig(data=data, endpoint=endpoint(), follow=True))
            with pytest.raises(RuntimeError, match="has no engine"):
                follower.engine  # noqa: B018 - the property raises
            async with follower:
                got = await read_packets(follower.endpoint.port, ended, until=b"Z")
                assert sequenced_payloads(got) == [b"one", b"two"]
                assert follower.provider.session_id == writer.session_id

    run(scenario)
