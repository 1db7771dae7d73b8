"""The in-process API: a server embedded in an application, seen by real subscribers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tickertape.client.soupbintcp import Message, subscribe
from tickertape.embedded import Credentials, Tickertape
from tickertape.errors import LoginRejected, StoreError
from tickertape.wire.soupbintcp import encode_sequenced_many

TIMEOUT = 20.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


async def whole_session(port: int, session: str = "", seq: int = 1) -> list[Message]:
    """Every message from ``seq`` up to End of Session (a dropped connection fails)."""

    async def read() -> list[Message]:
        async with subscribe("127.0.0.1", port, session, seq, reconnect=False) as messages:
            return [message async for message in messages]

    return await asyncio.wait_for(read(), TIMEOUT)


async def first(
    port: int, count: int, session: str = "", seq: int = 1, password: str = ""
) -> list[Message]:
    async def read() -> list[Message]:
        got: list[Message] = []
        async with subscribe(
            "127.0.0.1", port, session, seq, password=password, reconnect=False
        ) as messages:
            async for message in messages:
                got.append(message)
                if len(got) == count:
                    break
        return got

    return await asyncio.wait_for(read(), TIMEOUT)


def test_publish_returns_the_numbers_once_the_messages_are_on_disk(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0, durability="batch") as server:
            log = tmp_path / server.session_id / "log"
            assert await server.publish(b"first") == 1
            assert log.read_bytes() == encode_sequenced_many([b"first"])
            assert await server.publish_many([b"a", b"b"]) == range(2, 4)
            assert await server.publish_many(b"%d" % n for n in range(2)) == range(4, 6)
            assert await server.publish_many([]) == range(6, 6)
            assert log.read_bytes() == encode_sequenced_many([b"first", b"a", b"b", b"0", b"1"])
            assert server.next_seq == 6

    run(scenario)


def test_a_subscriber_sees_what_is_published(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0, durability="none") as server:
            assert server.port != 0
            reading = asyncio.ensure_future(first(server.port, 4))
            numbers = [await server.publish(b"one"), *await server.publish_many([b"2", b"3"])]
            numbers.append(await server.publish(b"four"))
            got = await reading
        assert numbers == [1, 2, 3, 4]
        assert [(m.seq, m.payload) for m in got] == [
            (1, b"one"),
            (2, b"2"),
            (3, b"3"),
            (4, b"four"),
        ]
        assert {m.session for m in got} == {server.session_id}

    run(scenario)


def test_end_session_ends_it_for_subscribers_and_opens_the_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0) as server:
            ended = server.session_id
            await server.publish_many([b"a", b"b", b"c"])
            live = asyncio.ensure_future(whole_session(server.port))
            await asyncio.sleep(0.1)  # logged in and caught up
            following = await server.end_session()
            assert following == ended[:-2] + "02"
            assert server.session_id == following
            got = await live  # ends with End of Session, or fails
            assert [(m.session, m.seq, m.payload) for m in got] == [
                (ended, 1, b"a"),
                (ended, 2, b"b"),
                (ended, 3, b"c"),
            ]
            assert await server.publish(b"new") == 1
            fresh = await first(server.port, 1)
            assert [(m.session, m.seq, m.payload) for m in fresh] == [(following, 1, b"new")]
            pulled = await whole_session(server.port, ended, 2)
            assert [m.payload for m in pulled] == [b"b", b"c"]
            assert await server.roll() == ended[:-2] + "03"

    run(scenario)


def test_a_restart_continues_the_session_that_was_not_ended(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0) as server:
            session = server.session_id
            await server.publish_many([b"a", b"b"])
        async with Tickertape(str(tmp_path), port=0) as server:
            assert server.session_id == session
            assert await server.publish(b"c") == 3
            got = await first(server.port, 3)
        assert [m.payload for m in got] == [b"a", b"b", b"c"]

    run(scenario)


def test_credentials_are_checked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0, credentials=Credentials("me", "secret")) as server:
            await server.publish(b"x")
            with pytest.raises(LoginRejected):
                await first(server.port, 1, password="wrong")
            async with subscribe(
                "127.0.0.1", server.port, username="ME", password="secret"
            ) as messages:
                async for message in messages:
                    assert message.payload == b"x"
                    break

    run(scenario)


def test_misuse_is_told(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = Tickertape(tmp_path, port=0)
        with pytest.raises(StoreError, match="not started"):
            await server.publish(b"x")
        with pytest.raises(StoreError, match="not started"):
            await server.end_session()
        async with server:
            with pytest.raises(RuntimeError, match="starts once"):
                await server.start()
            with pytest.raises(StoreError, match="in use"):
                await Tickertape(tmp_path, port=0).start()
            assert await server.publish(b"still serving") == 1
        with pytest.raises(StoreError, match="shutting down"):
            await server.publish(b"late")
        await server.close()  # a second close does nothing

    run(scenario)
