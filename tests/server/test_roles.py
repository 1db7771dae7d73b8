"""Users, roles and failed logins over real SoupBinTCP logins on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tickertape.auth.user import User
from tickertape.auth.users import Users
from tickertape.client.publisher import Publisher
from tickertape.errors import LoginRejected as LoginRejectedError
from tickertape.protocol.server import ServerTimers
from tickertape.server.soupbintcp import ServerConfig
from tickertape.wire.publishing import NO_STREAM
from tickertape.wire.soupbintcp import (
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRejected,
    SequencedData,
    encode_unsequenced_many,
)

from support import JumpingLoop, ServerProcess, SoupClient, running_server

TIMEOUT = 10.0
WRONG_SUB = Debug(b"wrong username or password for user 'sub'").encode()
"""What a refused login of ``sub`` gets before Login Rejected."""


@pytest.fixture(scope="module")
def users() -> Users:
    return Users(
        [
            User.create("sub", "subpass", ["subscriber"]),
            User.create("pub", "pubpass", ["publisher"]),
            User.create("both", "bothpass", ["subscriber", "publisher"]),
            User.create("admin", "adminpass", ["admin"]),
            User.create("old", "oldpass", ["subscriber"], sessions=["20261129[02]2"]),
        ]
    )


def answered_at_once(users: Users) -> ServerConfig:
    """A server checking ``users``, answering failed logins at once."""
    return ServerConfig(port=0, users=users, login_delay=0.0)


def answered_slowly(users: Users) -> ServerConfig:
    """A server checking ``users`` whose delays (100 s, doubling to 400 s) are long
    enough that the real time a test takes does not count: for a jumping clock."""
    return ServerConfig(
        port=0,
        users=users,
        login_delay=100.0,
        max_login_delay=400.0,
        timers=ServerTimers(login_timeout=10_000.0),
    )


async def rest(client: SoupClient) -> list[object]:
    """Every packet until the server closes the connection."""
    packets: list[object] = []
    while (packet := await client.packet()) is not None:
        packets.append(packet)
    return packets


def test_each_role_over_real_logins(tmp_path: Path, users: Users) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, answered_at_once(users)) as (engine, server):
            await engine.publish_many([b"one", b"two"])
            port = server.port

            # A wrong password, an unknown user, a blank one: Login Rejected "A", after a
            # Debug packet saying why.
            for user, password, why in (
                ("sub", "wrong", b"wrong username or password for user 'sub'"),
                ("nobody", "subpass", b"wrong username or password for user 'nobody'"),
                (
                    "",
                    "",
                    b"this server needs a username and password: anonymous logins are refused",
                ),
            ):
                client = await SoupClient.login(port, user=user, password=password)
                assert await rest(client) == [Debug(why), LoginRejected("A")], (user, password)

            # Passwords and usernames are case-insensitive, as the spec says.
            client = await SoupClient.login(port, user="SUB", password="SubPass")
            assert isinstance(await client.packet(), LoginAccepted)
            assert await client.packet() == SequencedData(b"one")
            # A subscriber cannot publish: a Debug packet says why, then the close.
            client.writer.write(encode_unsequenced_many([b"forged"]))
            packets = await rest(client)
            assert packets[-1] == Debug(
                b"user 'sub' may not publish (the publisher role is needed)"
            ), packets
            assert engine.next_seq == 3

            # ...nor log in to publish.
            client = await SoupClient.login(port, user="sub", password="subpass", seq=NO_STREAM)
            assert await rest(client) == [
                Debug(b"user 'sub' may not publish (the publisher role is needed)"),
                LoginRejected("S"),
            ]

            # A publisher publishes, and is acknowledged; it cannot read the stream.
            publisher = await Publisher.connect(
                "127.0.0.1", port, username="pub", password="pubpass"
            )
            await publisher.send_many([b"three"])
            async with asyncio.timeout(TIMEOUT):
                await publisher.flush()
            await publisher.close()
            assert engine.next_seq == 4
            client = await SoupClient.login(port, user="pub", password="pubpass")
            assert await rest(client) == [
                Debug(b"user 'pub' may not read sessions (the subscriber role is needed)"),
                LoginRejected("S"),
            ]

            # Both roles: reads and publishes on one connection.
            client = await SoupClient.login(port, user="both", password="bothpass", seq=4)
            assert isinstance(await client.packet(), LoginAccepted)
            client.writer.write(encode_unsequenced_many([b"four"]))
            assert await client.packet() == SequencedData(b"four")
            client.close()

            # An admin reads anything and publishes.
            client = await SoupClient.login(port, user="admin", password="adminpass")
            assert isinstance(await client.packet(), LoginAccepted)
            assert await client.packet() == SequencedData(b"one")
            client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_user_restricted_to_some_sessions_cannot_pull_others(
    tmp_path: Path, users: Users
) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, answered_at_once(users)) as (engine, server):
            first = engine.session_id
            await engine.publish_many([b"a", b"b"])
            await engine.roll(to="2026112902")  # "old" may read this one only
            await engine.publish_many([b"c"])
            await engine.roll(to="2026112903")
            port = server.port

            client = await SoupClient.login(port, first, user="old", password="oldpass")
            why = b"user 'old' may not read session %s (only the sessions matching 20261129[02]2)"
            assert await rest(client) == [Debug(why % first.encode()), LoginRejected("S")]
            client = await SoupClient.login(port, user="old", password="oldpass")  # active
            assert await rest(client) == [Debug(why % b"2026112903"), LoginRejected("S")]
            client = await SoupClient.login(port, "2026112902", user="old", password="oldpass")
            accepted, messages = await client.session()
            assert accepted == LoginAccepted("2026112902", 1)
            assert messages == [b"c"]
            # Without restrictions, the same pull is served.
            client = await SoupClient.login(port, first, user="sub", password="subpass")
            assert (await client.session())[1] == [b"a", b"b"]

    asyncio.run(asyncio.wait_for(scenario(), 30))


class Rejections(logging.Handler):
    """Counts the server's "login ... rejected: bad username or password" records, which
    it writes once the password is checked and the delay before answering has started."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "rejected: bad username or password" in record.getMessage():
            self.count += 1
            self._changed.set()

    async def reach(self, count: int) -> None:
        """Wait until ``count`` failed logins have been checked."""
        while self.count < count:
            self._changed.clear()
            await self._changed.wait()


@pytest.mark.timeout(60)
def test_failed_logins_from_one_address_are_answered_ever_later(
    tmp_path: Path, users: Users
) -> None:
    """The delay before Login Rejected doubles with each failure from the address, on the
    event loop's clock (which jumps here), and a good login clears it."""
    loop = JumpingLoop()
    rejections = Rejections()

    async def scenario() -> None:
        async with running_server(tmp_path, answered_slowly(users)) as (_, server):
            for failures, delay in enumerate((100.0, 200.0, 400.0, 400.0), start=1):
                client = await SoupClient.login(server.port, user="sub", password="bad")
                read = asyncio.ensure_future(client.reader.read(65536))  # no timeout: time jumps
                # Not answered before the delay, even after the password is checked...
                await rejections.reach(failures)
                done, _ = await asyncio.wait([read], timeout=0.3)
                assert not done, delay
                loop.advance(delay - 5)
                done, _ = await asyncio.wait([read], timeout=0.3)
                assert not done, delay
                # ...and answered once it is over.
                loop.advance(5)
                assert await read == WRONG_SUB + LoginRejected("A").encode()
                client.close()
            good = await SoupClient.login(server.port, user="sub", password="subpass")
            assert isinstance(await good.packet(), LoginAccepted)
            good.close()
            client = await SoupClient.login(server.port, user="sub", password="bad")
            read = asyncio.ensure_future(client.reader.read(65536))
            await rejections.reach(5)  # the password is checked
            loop.advance(100.0)  # back to the first delay
            assert await read == WRONG_SUB + LoginRejected("A").encode()
            client.close()

    logging.getLogger().addHandler(rejections)
    try:
        loop.run_until_complete(scenario())  # bounded by pytest-timeout: the clock jumps
    finally:
        logging.getLogger().removeHandler(rejections)
        loop.close()


def test_the_event_loop_keeps_serving_while_passwords_are_checked(
    tmp_path: Path, users: Users
) -> None:
    """Twenty logins with passwords at once, failed ones among them: a subscriber
    already logged in keeps getting its messages meanwhile."""

    async def scenario() -> None:
        async with running_server(tmp_path, answered_at_once(users)) as (engine, server):
            reader = await SoupClient.login(server.port, user="admin", password="adminpass")
            assert isinstance(await reader.packet(), LoginAccepted)
            logins = [
                SoupClient.login(server.port, user="sub", password="subpass" if i % 2 else "no")
                for i in range(20)
            ]
            clients = await asyncio.gather(*logins)
            await engine.publish_many([b"x%d" % i for i in range(100)])
            for i in range(100):
                assert await reader.packet() == SequencedData(b"x%d" % i)
            answers = [await client.packet() for client in clients]
            assert answers.count(Debug(b"wrong username or password for user 'sub'")) == 10
            assert sum(isinstance(a, LoginAccepted) for a in answers) == 10
            for client in (reader, *clients):
                client.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_users_file_is_read_again_on_sighup(tmp_path: Path) -> None:
    users_file = tmp_path / "users.toml"
    Users([User.create("ann", "annpass", ["subscriber"])]).save(users_file)
    with ServerProcess(tmp_path / "data", "--users", str(users_file)) as server:

        async def login(user: str, password: str) -> object:
            client = await SoupClient.login(server.port, user=user, password=password)
            try:
                packet = await client.packet()
                return await client.packet() if isinstance(packet, Debug) else packet
            finally:
                client.close()

        assert isinstance(asyncio.run(login("ann", "annpass")), LoginAccepted)
        assert asyncio.run(login("bob", "bobpass")) == LoginRejected("A")

        Users(
            [User.create("bob", "bobpass", ["subscriber"])]  # ann removed, bob added
        ).save(users_file)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for_log("reloaded: 1 user;")
        assert isinstance(asyncio.run(login("bob", "bobpass")), LoginAccepted)
        assert asyncio.run(login("ann", "annpass")) == LoginRejected("A")

        # A broken file is not taken: the users stay as they were, and the log says why.
        users_file.write_text("[users.bob]\npassword = 'plain text'\n")
        os.kill(server.pid, signal.SIGHUP)
        server.wait_for_log("the users file was not reloaded")
        assert isinstance(asyncio.run(login("bob", "bobpass")), LoginAccepted)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_no_users_file_and_an_address_others_reach_refuses_to_start(
    tmp_path: Path, host: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickertape", "serve", "--host", host, "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "would let anyone who can reach it log in" in done.stderr
    assert "--allow-anonymous" in done.stderr
    assert not (tmp_path / "2026112901").exists()


def test_anonymous_logins_depend_on_where_the_server_listens() -> None:
    roles = {role.value for role in ServerConfig(host="127.0.0.1").access().anonymous or ()}
    assert roles == {"subscriber", "publisher"}
    elsewhere = ServerConfig(host="10.1.2.3", allow_anonymous=True).access().anonymous
    assert {role.value for role in elsewhere or ()} == {"subscriber"}
    assert ServerConfig(host="10.1.2.3", users=Users()).access().anonymous is None


async def _publish_refused(port: int) -> list[object]:
    client = await SoupClient.login(port, user="sub", password="subpass", seq=NO_STREAM)
    return await rest(client)


def test_a_rejected_publisher_client_raises(tmp_path: Path, users: Users) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, answered_at_once(users)) as (_, server):
            with pytest.raises(LoginRejectedError):
                await Publisher.connect("127.0.0.1", server.port, username="pub", password="x")
            assert (await _publish_refused(server.port))[-1] == LoginRejected("S")
            assert EndOfSession() not in await _publish_refused(server.port)

    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.mark.timeout(60)
def test_logins_from_one_address_are_checked_one_after_the_other(
    tmp_path: Path, users: Users
) -> None:
    """Three wrong passwords at once from one address: the second is checked only once
    the first has been answered (after its delay), the third after the second's: guessing
    in parallel is no faster than guessing in turn."""
    loop = JumpingLoop()
    rejections = Rejections()

    async def scenario() -> None:
        async with running_server(tmp_path, answered_slowly(users)) as (_, server):
            clients = [
                await SoupClient.login(server.port, user="sub", password="bad") for _ in range(3)
            ]
            reads = [asyncio.ensure_future(c.reader.read(65536)) for c in clients]

            async def answered() -> int:
                await asyncio.sleep(0.3)  # real time: a password check, an answer sent
                return sum(read.done() for read in reads)

            await rejections.reach(1)  # the first is checked: its delay has begun
            assert await answered() == 0
            loop.advance(100)  # the first failure's delay
            assert await answered() == 1
            await rejections.reach(2)
            loop.advance(199)  # the second waits 200 from when it was checked
            assert await answered() == 1
            loop.advance(1)
            assert await answered() == 2
            await rejections.reach(3)
            loop.advance(400)
            assert await answered() == 3
            assert [await read for read in reads] == [WRONG_SUB + LoginRejected("A").encode()] * 3
            for client in clients:
                client.close()

    logging.getLogger().addHandler(rejections)
    try:
        loop.run_until_complete(scenario())  # bounded by pytest-timeout: the clock jumps
    finally:
        logging.getLogger().removeHandler(rejections)
        loop.close()


def _raw_login(port: int, username: str, password: str) -> list[tuple[bytes, bytes]]:
    """A Login Request built from the spec (4.1, 2.3.1) on a plain socket: every packet
    the server sends until it closes, as (type, body)."""
    request = struct.pack(
        ">H1s6s10s10s20s",
        47,
        b"L",
        username.encode().ljust(6),
        password.encode().ljust(10),
        b" " * 10,  # the active session
        b"1".rjust(20),
    )
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        while data := sock.recv(65536):
            received += data
    packets = []
    while received:
        (length,) = struct.unpack_from(">H", received)
        packets.append((received[2:3], received[3 : 2 + length]))
        received = received[2 + length :]
    return packets


def test_a_refused_login_gets_a_debug_packet_saying_why_then_login_rejected(
    tmp_path: Path, users: Users
) -> None:
    """Spec 4.1, 2.2.2: Login Rejected is "the only non-debug packet" sent; J has only a
    code, so the reason comes first in a Debug packet ("+")."""

    async def scenario() -> None:
        async with running_server(tmp_path, answered_at_once(users)) as (_, server):
            loop = asyncio.get_running_loop()
            wrong = await loop.run_in_executor(None, _raw_login, server.port, "sub", "wrong")
            assert wrong == [(b"+", b"wrong username or password for user 'sub'"), (b"J", b"A")]
            reading = await loop.run_in_executor(None, _raw_login, server.port, "pub", "pubpass")
            assert reading == [
                (b"+", b"user 'pub' may not read sessions (the subscriber role is needed)"),
                (b"J", b"S"),
            ]

    asyncio.run(asyncio.wait_for(scenario(), 30))
