"""Nasdaq's own Python client (PyPI ``nasdaq-protocols``) against a real tickertape server.

The server runs in-process on 127.0.0.1 and an ephemeral port; the client logs in with a
SoupBinTCP 4.00 Login Request, as it would to a Nasdaq host. Its reader handles about a
thousand messages a second, so the counts stay small.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nasdaq_protocols import soup

from tickertape.server.soupbintcp import Credentials, ServerConfig
from tickertape.store.log import Durability

from support import running_server

RECEIVE_TIMEOUT = 10.0
"""Seconds to wait for one message before the test fails."""

SERVER_HEARTBEAT_INTERVAL = 1.5
"""The client closes the session when it received nothing for this long (it checks at
this interval); the server sends a heartbeat after each second without sending."""


def payload(seq: int) -> bytes:
    return b"%d nasdaq-client message" % seq


class NasdaqClient:
    """A ``soup.SoupClientSession`` whose messages land in a queue (``None``: closed)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.session: Any = None

    async def _on_msg(self, msg: Any) -> None:
        self.queue.put_nowait(msg)

    async def _on_close(self) -> None:
        self.queue.put_nowait(None)

    async def connect(self, port: int, user: str, password: str, sequence: int) -> None:
        self.session = await asyncio.wait_for(
            soup.connect_async(
                ("127.0.0.1", port),
                user,
                password,
                session_id="",
                sequence=sequence,
                on_msg_coro=self._on_msg,
                on_close_coro=self._on_close,
                client_heartbeat_interval=1,
                server_heartbeat_interval=SERVER_HEARTBEAT_INTERVAL,
            ),
            timeout=5,
        )

    async def receive_sequenced(self, count: int) -> list[bytes]:
        """The payloads of the next ``count`` Sequenced Data packets, skipping anything
        else the client hands out (it handles heartbeats itself)."""
        received: list[bytes] = []
        while len(received) < count:
            msg = await asyncio.wait_for(self.queue.get(), RECEIVE_TIMEOUT)
            if msg is None:
                raise AssertionError(
                    f"the connection closed after {len(received)} of {count} messages"
                )
            if isinstance(msg, soup.SequencedData):
                received.append(bytes(msg.data))
        return received

    async def logout(self) -> None:
        if self.session is not None:
            self.session.send_msg(soup.LogoutRequest())
            await self.session.close()


def test_nasdaq_client_receives_replay_then_live(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, durability=Durability.BATCH) as (engine, server):
            first = await engine.publish_many([payload(seq) for seq in range(1, 21)])
            assert first == 1
            client = NasdaqClient()
            await client.connect(server.port, "user", "pass", sequence=1)
            try:
                assert client.session.sequence == 0  # Login Accepted said: next is 1
                replayed = await client.receive_sequenced(20)
                assert replayed == [payload(seq) for seq in range(1, 21)]

                # Live: four batches of five (each one log write, one batch to send).
                for start in range(21, 41, 5):
                    first = await engine.publish_many([payload(s) for s in range(start, start + 5)])
                    assert first == start
                live = await client.receive_sequenced(20)
                assert live == [payload(seq) for seq in range(21, 41)]
                assert client.session.sequence == 40
                await asyncio.sleep(0.2)
                extra = [m for m in _drain(client.queue) if isinstance(m, soup.SequencedData)]
                assert not extra, f"{len(extra)} messages more than were published"
            finally:
                await client.logout()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_nasdaq_client_session_survives_idle(tmp_path: Path) -> None:
    """Nothing is published for a while: the server's heartbeats (one after each second
    without sending, spec 4.1, 1.3) must keep the client's session up, and the live
    stream must then resume where the replay ended."""

    async def scenario() -> None:
        async with running_server(tmp_path, durability=Durability.BATCH) as (engine, server):
            await engine.publish_many([payload(seq) for seq in range(1, 6)])
            client = NasdaqClient()
            await client.connect(server.port, "user", "pass", sequence=1)
            try:
                assert await client.receive_sequenced(5) == [payload(s) for s in range(1, 6)]
                # Idle through two of the client's checks (every 1.5 s, closing the
                # session when nothing arrived since the previous one). Its reader
                # swallows heartbeats, so staying up is the evidence that the server's
                # arrived and were understood.
                await asyncio.sleep(2 * SERVER_HEARTBEAT_INTERVAL + 1)
                idle = _drain(client.queue)
                assert None not in idle, (
                    "the client closed the session: no server heartbeat reached it in "
                    f"{SERVER_HEARTBEAT_INTERVAL} s of silence"
                )
                assert not client.session.is_closed()
                assert not any(isinstance(m, soup.SequencedData) for m in idle)
                await engine.publish_many([payload(seq) for seq in range(6, 11)])
                assert await client.receive_sequenced(5) == [payload(s) for s in range(6, 11)]
            finally:
                await client.logout()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_nasdaq_client_rejected_with_wrong_password(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = ServerConfig(port=0, credentials=Credentials("user", "secret"))
        async with running_server(tmp_path, config, Durability.BATCH) as (engine, server):
            await engine.publish_many([payload(1)])
            client = NasdaqClient()
            # The reason comes in a Debug packet before Login Rejected (spec 4.1, 2.2.2
            # allows it). This client takes the first packet after its Login Request as
            # the answer: it is refused all the same, and its error carries the reason.
            with pytest.raises(ConnectionRefusedError, match="wrong username or password"):
                await client.connect(server.port, "user", "wrong", sequence=1)
            # The right password still works on the same server.
            good = NasdaqClient()
            await good.connect(server.port, "user", "secret", sequence=1)
            try:
                assert await good.receive_sequenced(1) == [payload(1)]
            finally:
                await good.logout()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def _drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items: list[Any] = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
