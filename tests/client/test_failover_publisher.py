"""The publisher given several addresses, against real servers and raw nodes written
from the SoupBinTCP spec here (a cluster node that is not the sequencer answers a
publisher's login with a Debug packet naming the sequencer, then Login Rejected ``S``):
it follows a redirect, waits out a cluster with no sequencer, moves to another server when
its connection is lost, re-sending what was not acknowledged, and gives up with what each
address said."""

from __future__ import annotations

import asyncio
import re
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tickertape.client.failover import FailoverPublisher, NoPublishingServer
from tickertape.embedded import Tickertape
from tickertape.wire.publishing import END_OF_SESSION_MARKER, NO_STREAM, redirect_text

from support import ServerProcess, free_port, pause, session_payloads, until

TIMEOUT = 60.0

# ------------------------------------------------------------------ a raw node, from the spec


class Login:
    """One connection to a :class:`RawNode`: its Login Request's fields, and the
    Unsequenced Data it sent."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.session = ""
        self.sequence = 0
        self.published: list[bytes] = []

    async def packet(self) -> tuple[bytes, bytes]:
        """The next packet: its type and the rest."""
        (length,) = struct.unpack(">H", await self.reader.readexactly(2))
        body = await self.reader.readexactly(length)
        return body[:1], body[1:]

    def send(self, kind: bytes, body: bytes = b"") -> None:
        self.writer.write(struct.pack(">H", 1 + len(body)) + kind + body)

    def debug(self, text: str) -> None:
        self.send(b"+", text.encode("ascii"))

    def reject(self, reason: bytes = b"S") -> None:
        self.send(b"J", reason)

    def accept(self, session: str, sequence: int) -> None:
        self.send(b"A", session.rjust(10).encode() + str(sequence).rjust(20).encode())


Script = Callable[[Login], Coroutine[Any, Any, None]]


class RawNode:
    """A listening socket on 127.0.0.1 that reads each Login Request (2.3.1: username 6,
    password 10, session 10, sequence number 20) and then runs ``script``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.logins: list[Login] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawNode:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for login in self.logins:
            login.writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        login = Login(reader, writer)
        kind, body = await login.packet()
        assert kind == b"L", kind
        login.session = body[16:26].decode().strip()
        login.sequence = int(body[26:46])
        self.logins.append(login)
        try:
            await self.script(login)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def redirecting_to(port: int) -> Script:
    """A node that is not the sequencer: it names the one on ``port``."""

    async def script(login: Login) -> None:
        login.debug(redirect_text(f"127.0.0.1:{port}"))
        login.reject()

    return script


def payloads(first: int, last: int) -> list[bytes]:
    return [b"id=%d" % n for n in range(first, last + 1)]


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, TIMEOUT))


# ------------------------------------------------------------------ finding the sequencer


def test_a_redirect_is_followed_to_the_node_that_takes_publishers(tmp_path: Path) -> None:
    """The first address refuses the connection, the second is a node that names the
    sequencer: the publisher logs in there, and its messages are published once."""
    dead = free_port()

    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0) as server:
            async with RawNode(redirecting_to(server.port)) as node:
                addresses = [("127.0.0.1", dead), ("127.0.0.1", node.port)]
                async with await FailoverPublisher.connect(addresses) as publisher:
                    assert publisher.address == ("127.0.0.1", server.port)
                    await publisher.send_many(payloads(1, 500))
                    last = await publisher.flush()
                    assert publisher.acked == 500
                    assert last is not None and last.count == 500 and last.seq == 500
                assert len(node.logins) == 1
                assert node.logins[0].sequence == NO_STREAM  # it logged in as a publisher
            session = server.session_id
        assert session_payloads(tmp_path / session) == payloads(1, 500)

    run(scenario())


def test_a_cluster_without_a_sequencer_is_waited_out(tmp_path: Path) -> None:
    """A node that says no node takes publishers at the moment is asked again (after a
    short wait) until it names one."""

    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0) as server:

            async def script(login: Login) -> None:
                if len(node.logins) < 3:
                    login.debug(redirect_text(None))
                    login.reject()
                else:
                    await redirecting_to(server.port)(login)

            async with RawNode(script) as node:
                publisher = await FailoverPublisher.connect(
                    [("127.0.0.1", node.port)], retry_delay=0.01
                )
                async with publisher:
                    await publisher.send_many(payloads(1, 3))
                    await publisher.flush()
                    assert publisher.acked == 3
                assert len(node.logins) == 3
            session = server.session_id
        assert session_payloads(tmp_path / session) == payloads(1, 3)

    run(scenario())


def test_a_rejection_that_names_no_node_is_raised_at_once(tmp_path: Path) -> None:
    async def script(login: Login) -> None:
        login.debug("wrong username or password for user 'bob'")
        login.reject(b"A")

    async def scenario() -> None:
        async with RawNode(script) as node:
            with pytest.raises(Exception, match="wrong username or password") as caught:
                await FailoverPublisher.connect([("127.0.0.1", node.port)], failover_timeout=600)
            assert getattr(caught.value, "reason", None) == "A"
            assert len(node.logins) == 1

    run(scenario())


def test_no_address_that_answers_is_an_error_at_once_saying_what_each_did() -> None:
    """Nothing listens at any address, and no node said to try again: no retry loop,
    however long the failover timeout."""
    ports = [free_port(), free_port()]

    async def scenario() -> None:
        with pytest.raises(NoPublishingServer) as caught:
            await FailoverPublisher.connect(
                [("127.0.0.1", port) for port in ports], failover_timeout=600
            )
        message = str(caught.value)
        assert "cannot log in as a publisher to any of 2 servers" in message, message
        for port in ports:
            assert f"127.0.0.1:{port}: connection refused" in message, message
        assert list(caught.value.answers) == [f"127.0.0.1:{port}" for port in ports]

    run(scenario())


def test_the_failover_timeout_ends_the_search_saying_what_each_address_said() -> None:
    dead = free_port()

    async def no_sequencer(login: Login) -> None:
        login.debug(redirect_text(None))
        login.reject()

    async def scenario() -> None:
        async with RawNode(no_sequencer) as node:
            with pytest.raises(NoPublishingServer) as caught:
                await FailoverPublisher.connect(
                    [("127.0.0.1", dead), ("127.0.0.1", node.port)],
                    failover_timeout=0.5,
                    retry_delay=0.01,
                )
            assert len(node.logins) > 1  # it tried again
        message = str(caught.value)
        assert message.startswith("no server took the publisher in 0.5 s: "), message
        assert f"127.0.0.1:{dead}: connection refused" in message, message
        assert f"127.0.0.1:{node.port}: login rejected: {redirect_text(None)}" in message

    run(scenario())


# ------------------------------------------------------------------ failover


def test_a_node_that_stops_being_the_sequencer_hands_the_publisher_on(tmp_path: Path) -> None:
    """The node logged in to reads messages, acknowledges none, says it is no longer the
    sequencer (naming the new one) and closes: everything is re-sent there, once."""

    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0) as server:

            async def deposed(login: Login) -> None:
                login.accept("2026120701", 1)
                while len(login.published) < 300:
                    kind, body = await login.packet()
                    if kind == b"U":
                        login.published.append(body)
                login.debug(redirect_text(f"127.0.0.1:{server.port}"))

            async with RawNode(deposed) as node:
                publisher = await FailoverPublisher.connect([("127.0.0.1", node.port)])
                async with publisher:
                    await publisher.send_many(payloads(1, 300))
                    await publisher.flush()
                    assert publisher.acked == 300
                    assert publisher.failovers == 1
                    assert publisher.address == ("127.0.0.1", server.port)
                    await publisher.send_many(payloads(301, 400))
                    await publisher.flush()
                    assert publisher.acked == 400
                assert node.logins[0].published == payloads(1, 300)
            session = server.session_id
        assert session_payloads(tmp_path / session) == payloads(1, 400)

    run(scenario())


def test_a_lost_server_is_replaced_and_nothing_acknowledged_is_lost_or_repeated(
    tmp_path: Path,
) -> None:
    """Server A acknowledges 1..1000, is stopped (SIGSTOP) while 1001..2000 are sent, and
    killed: they were never read. Server B starts on the same data directory at the
    second address; the publisher moves there and re-sends them: the log holds each
    message once, in order, and the count of acknowledged messages is right."""
    data = tmp_path / "data"
    second = free_port()

    async def scenario() -> None:
        with ServerProcess(data) as first:
            addresses = [("127.0.0.1", first.port), ("127.0.0.1", second)]
            publisher = await FailoverPublisher.connect(addresses, failover_timeout=TIMEOUT)
            try:
                await publisher.send_many(payloads(1, 1000))
                await publisher.flush()
                assert publisher.acked == 1000
                pause(first)
                await publisher.send_many(payloads(1001, 2000))
                assert publisher.acked == 1000
                first.kill()
                flushing = asyncio.create_task(publisher.flush())
                replacement = ServerProcess(data, "--port", str(second))
                await asyncio.to_thread(replacement.start)
                try:
                    last = await flushing
                    assert publisher.acked == publisher.sent == 2000
                    assert last is not None and last.count == 2000 and last.seq == 2000
                    assert publisher.failovers == 1
                    assert publisher.address == ("127.0.0.1", second)
                    await publisher.send_many(payloads(2001, 2100))
                    await publisher.flush()
                    assert publisher.acked == 2100
                    session = last.session
                    await publisher.close()
                    await until(
                        lambda: len(session_payloads(data / session)) >= 2100,
                        "the log to hold 2100 messages",
                    )
                finally:
                    await asyncio.to_thread(replacement.stop)
            finally:
                await publisher.close()
        assert session_payloads(data / session) == payloads(1, 2100)

    run(scenario())


@pytest.mark.parametrize("ended", [True, False])
def test_an_unconfirmed_end_of_session_is_not_sent_again_once_the_session_changed(
    tmp_path: Path, ended: bool
) -> None:
    """The node logged in to reads a marker, confirms nothing and closes. If the next
    node's active session is another one, the marker ended it: ending the next session
    too would be wrong. If it is the same, the marker is sent again."""

    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0) as server:
            active = server.session_id
            before = "2026010101" if ended else active

            async def vanishing(login: Login) -> None:
                if len(node.logins) > 1:
                    await redirecting_to(server.port)(login)
                    return
                login.accept(before, 1)
                while (await login.packet()) != (b"U", END_OF_SESSION_MARKER):
                    pass

            async with RawNode(vanishing) as node:
                publisher = await FailoverPublisher.connect(
                    [("127.0.0.1", node.port)], retry_delay=0.01
                )
                async with publisher:
                    assert await publisher.end_session() == before
                    assert publisher.ended == [before]
            assert (server.session_id == active) is ended

    run(scenario())


def test_a_server_that_closes_saying_it_will_not_take_publishers_is_not_retried(
    tmp_path: Path,
) -> None:
    """A relay closes a publisher's connection saying where to publish instead (not a
    cluster's redirect): that is raised, not retried until the timeout."""

    async def scenario() -> None:
        async with Tickertape(tmp_path, port=0) as server:
            server.engine.relay_from = "127.0.0.1:7300"  # as --upstream sets it
            publisher = await FailoverPublisher.connect(
                [("127.0.0.1", server.port)], failover_timeout=600
            )
            async with publisher:
                await publisher.send_many([b"not here"])
                relays = re.escape("this server relays 127.0.0.1:7300")
                with pytest.raises(ConnectionError, match=relays):
                    await publisher.flush()
                assert publisher.acked == 0 and publisher.failovers == 0

    run(scenario())
