"""The asyncio subscriber against a real server, through a proxy that cuts connections,
and against several servers of the same sessions, one of which is lost."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Message, subscribe
from tickertape.errors import LoginRejected
from tickertape.protocol.server import ServerTimers
from tickertape.server.soupbintcp import Credentials, ServerConfig
from tickertape.store.log import SessionLog
from tickertape.wire.soupbintcp import encode_sequenced_many

from support import CuttingProxy, JumpingLoop, ServerProcess, free_port, running_server

TIMEOUT = 20.0


def payload(seq: int) -> bytes:
    return b"%d hello" % seq


def test_resumes_after_cut_connections_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    total = 30_000

    async def scenario() -> list[Message]:
        async with running_server(tmp_path) as (engine, server):
            proxy = CuttingProxy(server.port)
            await proxy.start()

            async def publish() -> None:
                for first in range(1, total + 1, 500):
                    await engine.publish_many([payload(s) for s in range(first, first + 500)])
                    await asyncio.sleep(0.002)

            publisher = asyncio.create_task(publish())
            received: list[Message] = []
            subscription = subscribe("127.0.0.1", proxy.port, seq=1, reconnect_delay=0.01)
            async with subscription:
                async for message in subscription:
                    received.append(message)
                    if len(received) % 7_000 == 0:
                        proxy.cut()
                    if len(received) == total:
                        break
            await publisher
            assert proxy.cuts == total // 7_000
            assert subscription.logins == proxy.cuts + 1
            await proxy.close()
            return received

    received = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert [m.seq for m in received] == list(range(1, total + 1))
    assert all(m.payload == payload(m.seq) for m in received)


def test_a_closed_session_ends_the_iteration(tmp_path: Path) -> None:
    yesterday = (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d") + "01"
    with SessionLog.open(tmp_path / yesterday, create=True) as old:
        old.append(encode_sequenced_many([payload(s) for s in range(1, 6)]), 5)

    async def scenario() -> list[Message]:
        async with running_server(tmp_path) as (_, server):
            async with subscribe("127.0.0.1", server.port, yesterday, 2) as messages:
                return [message async for message in messages]

    received = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert [(m.session, m.seq, m.payload) for m in received] == [
        (yesterday, s, payload(s)) for s in range(2, 6)
    ]


def test_a_rejected_login_raises_and_is_not_retried(tmp_path: Path) -> None:
    config = ServerConfig(port=0, credentials=Credentials("bob", "pw"))

    async def scenario() -> None:
        async with running_server(tmp_path, config) as (_, server):
            async with subscribe("127.0.0.1", server.port, username="bob", password="no") as sub:
                async for _message in sub:
                    pytest.fail("a rejected login yields nothing")

    # The reason is the server's, sent in a Debug packet before Login Rejected.
    with pytest.raises(LoginRejected, match="wrong username or password for user 'bob'") as caught:
        asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert caught.value.reason == "A"


def test_a_busy_consumer_is_not_mistaken_for_a_silent_server(tmp_path: Path) -> None:
    """While the consumer holds a message, nothing is read, so the server's heartbeats
    wait unread: the subscription must not call the server silent and reconnect."""

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        # The jump moves the server's clock too; it must not drop the client meanwhile.
        config = ServerConfig(port=0, timers=ServerTimers(idle_timeout=3600.0))
        async with running_server(tmp_path, config) as (engine, server):
            await engine.publish_many([payload(s) for s in range(1, 4)])
            seen: list[int] = []
            async with subscribe("127.0.0.1", server.port, seq=1) as subscription:
                async for message in subscription:
                    seen.append(message.seq)
                    if message.seq == 1:
                        loop.offset += 60.0  # the consumer is busy for a minute
                        for _ in range(10):
                            await asyncio.sleep(0.001)
                        await engine.publish_many([payload(s) for s in range(4, 6)])
                    if message.seq == 5:
                        break
                assert subscription.logins == 1
            return seen

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        assert runner.run(asyncio.wait_for(scenario(), TIMEOUT + 60)) == [1, 2, 3, 4, 5]


def test_a_first_login_that_cannot_be_made_raises_at_once() -> None:
    """Nothing listens: no retry loop (the subscription was never connected), one error
    saying why; with wait=True it keeps trying instead."""
    port = free_port()

    async def first(wait: bool) -> None:
        async with subscribe("127.0.0.1", port, wait=wait, reconnect_delay=0.01) as messages:
            async for _ in messages:
                pytest.fail("nothing listens there")

    with pytest.raises(ConnectionError, match=f"cannot log in to 127.0.0.1:{port}: connection"):
        asyncio.run(asyncio.wait_for(first(wait=False), TIMEOUT))
    with pytest.raises(TimeoutError):  # still trying when it is given up on
        asyncio.run(asyncio.wait_for(first(wait=True), 0.5))


def test_a_server_that_closes_without_a_word_may_want_tls() -> None:
    """A server that closes the connection at once, having sent nothing (as a TLS port
    does to a plain-text Login Request): the error suggests TLS."""

    async def scenario() -> None:
        async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(47)
            writer.close()

        server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with subscribe("127.0.0.1", port) as messages:
                async for _ in messages:
                    pytest.fail("no login")
        finally:
            server.close()

    with pytest.raises(ConnectionError, match=r"without a word .*connect with TLS: --tls"):
        asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


# ---------------------------------------------------------------------------- several servers


def test_a_lost_server_is_replaced_by_the_next_with_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    """Server A writes the data directory, server B follows it read-only (the same bytes).
    A subscription to both reads from A; A is stopped while most of the session is still
    to come: the subscription logs in to B at the next number and reads the rest there."""
    data = tmp_path / "data"
    total = 200_000
    body = b"x" * 90

    def message(seq: int) -> bytes:
        return b"%09d " % seq + body

    async def publish(port: int) -> None:
        async with await Publisher.connect("127.0.0.1", port) as publisher:
            for first in range(1, total + 1, 2000):
                await publisher.send_many([message(s) for s in range(first, first + 2000)])
            await publisher.flush()

    async def scenario(writer: ServerProcess, follower: ServerProcess) -> tuple[list[int], int]:
        await publish(writer.port)
        seqs: list[int] = []
        moved_at = 0
        subscription = subscribe(
            "127.0.0.1", writer.port, seq=1, alternates=[("127.0.0.1", follower.port)]
        )
        async with subscription:
            async for got in subscription:
                assert got.payload == message(got.seq)
                seqs.append(got.seq)
                if got.seq == 1000:
                    await asyncio.to_thread(writer.stop)  # the consumer holds the iterator
                if subscription.logins == 2 and not moved_at:
                    moved_at = got.seq
                if got.seq == total:
                    break
            assert subscription.logins == 2
            assert subscription.port == follower.port
        return seqs, moved_at

    with ServerProcess(data) as writer, ServerProcess(data, follow=True) as follower:
        seqs, moved_at = asyncio.run(asyncio.wait_for(scenario(writer, follower), TIMEOUT * 3))
    assert seqs == list(range(1, total + 1))
    assert 1000 < moved_at < total  # A was lost in the middle of the session


def test_a_first_login_tries_each_address_before_giving_up(tmp_path: Path) -> None:
    dead = [free_port(), free_port()]

    async def first_three(port: int, alternates: list[tuple[str, int]]) -> tuple[list[int], int]:
        got: list[int] = []
        async with subscribe("127.0.0.1", port, alternates=alternates) as messages:
            async for message in messages:
                got.append(message.seq)
                if len(got) == 3:
                    break
            assert messages.logins == 1
            return got, messages.port

    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, server):
            await engine.publish_many([payload(s) for s in range(1, 4)])
            addresses = [("127.0.0.1", dead[1]), ("127.0.0.1", server.port)]
            assert await first_three(dead[0], addresses) == ([1, 2, 3], server.port)
        with pytest.raises(ConnectionError) as caught:
            await first_three(dead[0], [("127.0.0.1", dead[1])])
        message = str(caught.value)
        assert message.startswith("cannot log in to any of 2 servers: "), message
        for port in dead:
            assert f"127.0.0.1:{port}: connection refused" in message, message

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
