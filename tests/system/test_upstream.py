"""An upstream feed (``serve --upstream soupbintcp://HOST:PORT``): a server that is a
SoupBinTCP client of another and re-serves its sessions, same ids, same sequence numbers,
same bytes.

* a chain of three ``tickertape serve`` processes, A feeds B feeds C, with B killed
  (SIGKILL) in the middle of A's session and restarted on the same port and directory:
  C's copy of the session is A's, complete, no gap, no duplicate, and C follows A into
  its next session;
* a server stopped (SIGTERM) and restarted resumes from its own log;
* an upstream that is not tickertape (built on ``nasdaq-protocols``' SoupServerSession):
  its messages are copied with their sequence numbers, a dropped connection is resumed
  at the next sequence number needed, its End of Session ends the local session;
* ``--upstream`` URLs that are wrong are refused with a clear message.

Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from nasdaq_protocols import common as nasdaq_common
from nasdaq_protocols import soup

from tickertape.client.soupbintcp import Message, Subscription, active_session, subscribe
from tickertape.errors import ConfigError, LoginRejected
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import ServerConfig, SoupBinTCPServer
from tickertape.sources.upstream import Upstream, first_session, run_upstream
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability, SessionLog
from tickertape.wire.soupbintcp import encode_sequenced_many

from support import ServerProcess, running_server, until

TIMEOUT = 30.0
"""Seconds any one wait may take before the test fails."""

_OPENED = re.compile(r"session (\d{10}) open at .*: (\d+) messages, next is (\d+)")


# ---------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A port nothing listens on now (for a server that must keep its port across a
    restart: its downstream's ``--upstream`` URL names it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def url(port: int) -> str:
    return f"soupbintcp://127.0.0.1:{port}"


@contextlib.contextmanager
def serving(server: ServerProcess) -> Iterator[ServerProcess]:
    """``server`` started, and stopped afterwards even if it failed to start in time."""
    try:
        yield server.start()
    finally:
        server.stop()


def opened(server: ServerProcess) -> tuple[str, int]:
    """The session the server opened at start-up and how many messages it held."""
    match = _OPENED.search(server.wait_for_log(" open at "))
    assert match is not None
    return match.group(1), int(match.group(2))


def seqs_and_payloads(messages: Sequence[Message]) -> list[tuple[int, bytes]]:
    return [(message.seq, message.payload) for message in messages]


async def whole_session(port: int, session: str, seq: int = 1) -> list[Message]:
    """Every message of ``session`` from ``seq`` up to End of Session, on one connection."""

    async def read() -> list[Message]:
        async with subscribe("127.0.0.1", port, session, seq, reconnect=False) as messages:
            return [message async for message in messages]

    return await asyncio.wait_for(read(), TIMEOUT)


async def has_active(port: int, session: str) -> bool:
    """Whether the server on ``port`` has ``session`` active."""
    return await active_session("127.0.0.1", port) == session


class Collector:
    """A subscriber in the background: every message of ``session`` from 1, logging in
    again if its connection drops, until End of Session."""

    def __init__(self, port: int, session: str) -> None:
        self.messages: list[Message] = []
        self.subscription = Subscription("127.0.0.1", port, session, 1)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self.subscription as messages:
            async for message in messages:
                self.messages.append(message)

    async def ended(self) -> list[Message]:
        """Every message, once End of Session came (within a minute)."""
        async with asyncio.timeout(60):
            await asyncio.shield(self.task)
        return self.messages

    async def close(self) -> None:
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


# ---------------------------------------------------------------------------- a chain of three


DEMO_COUNT = 30_000
"""Messages in A's first session: six seconds of demo at 5,000 a second."""


def test_a_chain_of_three_servers_survives_killing_the_middle_one(tmp_path: Path) -> None:
    """A (demo) feeds B feeds C. B is killed while A is publishing and restarted on the
    same port and directory: C's copy of A's session is A's, byte for byte and number for
    number, with no gap and no duplicate; a subscriber of C never noticed; C follows A
    into its next session."""
    port_b = free_port()
    a = ServerProcess(
        tmp_path / "a", "--demo", "5000", "--demo-count", str(DEMO_COUNT), "--demo-end"
    )

    async def scenario(a: ServerProcess, b: ServerProcess, c: ServerProcess) -> str:
        first, _ = opened(a)
        assert opened(b)[0] == opened(c)[0] == first
        live = Collector(c.port, first)  # a subscriber of C all along
        try:
            await until(lambda: len(live.messages) >= 5000, "C's subscriber getting 5000")
            # In the middle of A's session: kill B.
            assert not a.logged(f"session {first} ended"), "A was done before B was killed"
            await asyncio.to_thread(b.kill)
            at_kill = len(live.messages)
            assert at_kill < DEMO_COUNT
            first_run = list(b.lines)
            # C's feed finds B gone (and retries):
            await until(lambda: c.logged(f"connection to 127.0.0.1:{port_b} lost"), "C losing B")
            await asyncio.to_thread(b.start)
            assert b.port == port_b
            # B continues the session from its own log, from where that log ends.
            session, held = opened(b)
            assert session == first
            assert held >= at_kill, "B lost messages C had got from it"
            resumed = await asyncio.to_thread(
                b.wait_for_log, f"upstream 127.0.0.1:{a.port}: session {first} from sequence"
            )
            assert resumed.endswith(f"from sequence {held + 1}"), resumed
            assert any(
                f"upstream 127.0.0.1:{a.port}: session {first} from sequence 1" in line
                for line in first_run
            )

            # C's subscriber gets the whole session, then End of Session, on one login.
            from_c_live = await live.ended()
            print(
                f"\nB killed when C's subscriber had {at_kill} of {DEMO_COUNT} messages; "
                f"restarted with {held} in its log"
            )
            assert live.subscription.logins == 1
        finally:
            await live.close()
        assert c.logged(f"connection to 127.0.0.1:{port_b} lost"), "C never lost B"

        from_a = await whole_session(a.port, first)
        assert len(from_a) == DEMO_COUNT
        assert [m.seq for m in from_a] == list(range(1, DEMO_COUNT + 1))
        assert all(m.payload.startswith(b"%d " % m.seq) for m in from_a)
        expected = seqs_and_payloads(from_a)
        assert seqs_and_payloads(from_c_live) == expected
        assert seqs_and_payloads(await whole_session(c.port, first)) == expected
        assert seqs_and_payloads(await whole_session(b.port, first)) == expected

        # A's next session is C's too (and B's), same id.
        assert a.logged(f"session {first} ended after {DEMO_COUNT} messages")
        second = await active_session("127.0.0.1", a.port)
        assert second != first
        await until(lambda: has_active(b.port, second), f"B serving {second}", TIMEOUT, 0.05)
        await until(lambda: has_active(c.port, second), f"C serving {second}", TIMEOUT, 0.05)
        assert c.logged(f"upstream session {first} ended; next is {second}")
        return first

    with serving(a):
        b = ServerProcess(tmp_path / "b", "--port", str(port_b), "--upstream", url(a.port))
        with serving(b):
            c = ServerProcess(tmp_path / "c", "--upstream", url(port_b))
            with serving(c):
                first = asyncio.run(asyncio.wait_for(scenario(a, b, c), 100))
                for server in (a, b, c):
                    assert not any(" ERROR " in line for line in server.lines), server.lines
    second = max(p.name for p in (tmp_path / "a").iterdir() if p.name[:1].isdigit())
    for copy in ("b", "c"):
        assert (tmp_path / copy / first / "ended").exists()
        assert sorted(p.name for p in (tmp_path / copy).iterdir() if p.name[:1].isdigit()) == [
            first,
            second,
        ]


# ---------------------------------------------------------------------------- restart


def test_a_restarted_server_resumes_the_upstream_from_its_own_log(tmp_path: Path) -> None:
    """B is stopped (SIGTERM) while A publishes; restarted, it logs in to A at the
    sequence number after the last one in its log, and ends with A's whole session."""
    count = 30_000
    with serving(
        ServerProcess(tmp_path / "a", "--demo", "5000", "--demo-count", str(count), "--demo-end")
    ) as a:
        first, _ = opened(a)
        b = ServerProcess(tmp_path / "b", "--upstream", url(a.port))
        with serving(b):
            assert opened(b) == (first, 0)
            b.wait_for_log(f"upstream 127.0.0.1:{a.port}: session {first} from sequence 1")

            async def some_arrived() -> None:
                async with subscribe("127.0.0.1", b.port, first, 2000) as messages:
                    async for message in messages:
                        assert message.seq == 2000
                        return

            asyncio.run(asyncio.wait_for(some_arrived(), TIMEOUT))
            assert not a.logged(f"session {first} ended"), "A was done before B stopped"
            assert b.stop() == 0
            with SessionLog.open(tmp_path / "b" / first, writable=False) as stored:
                held = stored.next_seq - 1
            assert 2000 <= held < count

            b.start()
            assert opened(b) == (first, held)
            line = b.wait_for_log(f"upstream 127.0.0.1:{a.port}: session {first} from sequence")
            assert line.endswith(f"from sequence {held + 1}"), line

            async def compare() -> None:
                from_a = await whole_session(a.port, first)
                assert len(from_a) == count
                from_b = await whole_session(b.port, first)
                assert seqs_and_payloads(from_b) == seqs_and_payloads(from_a)

            asyncio.run(asyncio.wait_for(compare(), 60))


# ---------------------------------------------------------------------------- damaged upstream


DAMAGED = "2000010101"


def test_a_relay_does_not_end_a_session_its_upstream_cannot_serve_whole(tmp_path: Path) -> None:
    """A's closed session is damaged in its second batch of three: A serves the first
    batch, then says why it stops, with no End of Session. B, relaying that session,
    keeps the first batch and does not take the session as ended: no ``ended`` marker,
    no roll to A's next session; it asks A again for the rest."""
    directory = tmp_path / "a" / DAMAGED
    batches = [[b"message %d" % seq for seq in range(first, first + 10)] for first in (1, 11, 21)]
    with SessionLog.open(directory, create=True) as made:
        for batch in batches:
            made.append(encode_sequenced_many(batch), len(batch))
        second = made.offset_of(11)
    (directory / "ended").touch()
    log = bytearray((directory / "log").read_bytes())
    log[second + 8] ^= 0x20  # a payload byte of message 11: its batch fails its checksum
    (directory / "log").write_bytes(log)

    with serving(ServerProcess(tmp_path / "a")) as a:
        b = ServerProcess(tmp_path / "b", "--upstream", url(a.port) + f"?session={DAMAGED}")
        with serving(b):
            assert opened(b) == (DAMAGED, 0)
            # The first batch, then A's reason for stopping; B logs in again from 11.
            lost = b.wait_for_log(f"connection to 127.0.0.1:{a.port} lost")
            assert f"session {DAMAGED} is damaged: messages from 11 on cannot be served" in lost
            assert lost.endswith("logging in again at 11 in 0.25 s"), lost
            b.wait_for_log("logging in again at 11 in 0.50 s")
            assert b.stop() == 0
        assert not b.logged(f"upstream session {DAMAGED} ended")
    assert not (tmp_path / "b" / DAMAGED / "ended").exists()
    assert [p.name for p in (tmp_path / "b").iterdir() if p.name[:1].isdigit()] == [DAMAGED]
    with SessionLog.open(tmp_path / "b" / DAMAGED, writable=False) as copy:
        assert copy.next_seq == 11
        assert copy.read(1, 1 << 20) == (encode_sequenced_many(batches[0]), 10)


# ---------------------------------------------------------------------------- not tickertape


FIRST = "2026112901"
SECOND = "2026112902"


class FeedConnection(soup.SoupServerSession):  # type: ignore[misc]
    """One client of :class:`SoupFeed`: a nasdaq-protocols server session."""

    def __init__(self, feed: SoupFeed, **options: Any) -> None:
        self.feed = feed
        self.session = ""
        self.sent = 0
        self.transport: Any = None
        super().__init__(**options)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        super().connection_made(transport)

    async def on_login(self, msg: Any) -> Any:
        feed = self.feed
        requested = int(msg.sequence)
        session = msg.session or feed.active
        feed.logins.append((msg.session, requested, feed.witness()))
        if session not in feed.sessions:
            return soup.LoginRejected(soup.LoginRejectReason.SESSION_NOT_AVAILABLE)
        held = len(feed.sessions[session])
        following = held + 1 if requested == 0 else min(max(requested, 1), held + 1)
        self.session, self.sent = session, following - 1
        # After the Login Accepted this returns is sent (in this same step of the loop).
        asyncio.get_running_loop().call_soon(self._catch_up)
        return soup.LoginAccepted(session, following)

    async def on_unsequenced(self, msg: Any) -> None:
        pass

    def _catch_up(self) -> None:
        if not self.is_active():
            return
        self.flush()
        if self.session in self.feed.ended:
            self.end_session()
        else:
            self.feed.connections.append(self)

    def flush(self) -> None:
        """Send what the session holds beyond what this client has been sent."""
        messages = self.feed.sessions[self.session]
        for payload in messages[self.sent :]:
            self.send_seq_msg(payload)
        self.sent = len(messages)


class SoupFeed:
    """A SoupBinTCP server that is not tickertape: nasdaq-protocols' server session over
    sessions kept in memory (a list of payloads each). Logins of a blank session get the
    active one; a sequence number of 0 means from the next message."""

    def __init__(self, session: str) -> None:
        self.sessions: dict[str, list[bytes]] = {session: []}
        self.ended: set[str] = set()
        self.active = session
        self.connections: list[FeedConnection] = []
        self.every: list[FeedConnection] = []
        self.logins: list[tuple[str, int, int]] = []
        """(session asked for, sequence number asked for, ``witness()`` then)."""
        self.witness: Callable[[], int] = lambda: 0
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._server, self._serving = await nasdaq_common.start_server(
            ("127.0.0.1", 0), self._connect
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _connect(self) -> FeedConnection:
        # Heartbeats after each second without sending; no draining of what the client
        # sent after its connection is gone.
        connection = FeedConnection(self, client_heartbeat_interval=1, graceful_shutdown=False)
        self.every.append(connection)
        return connection

    def live(self) -> list[FeedConnection]:
        self.connections = [c for c in self.connections if c.is_active()]
        return self.connections

    def publish(self, payloads: Sequence[bytes]) -> None:
        self.sessions[self.active].extend(payloads)
        for connection in self.live():
            if connection.session == self.active:
                connection.flush()

    def end(self, following: str) -> None:
        """End the active session (End of Session to its clients); open ``following``."""
        ended = self.active
        self.ended.add(ended)
        self.sessions[following] = []
        self.active = following
        for connection in self.live():
            if connection.session == ended:
                connection.end_session()

    def drop(self) -> int:
        """Cut every client's connection, as a network failure would; how many."""
        dropped = self.live()
        for connection in dropped:
            connection.transport.abort()
        self.connections = []
        return len(dropped)

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
        for connection in self.every:
            await connection.close()  # its tasks (reader, heartbeats) stopped


def upstream_payload(session: str, seq: int) -> bytes:
    return b"%s %06d from a nasdaq-protocols server" % (session.encode(), seq)


def test_an_upstream_that_is_not_tickertape(tmp_path: Path) -> None:
    """Upstream: a nasdaq-protocols SoupServerSession server. The local server copies its
    session with the same sequence numbers; a connection the upstream cuts is resumed at
    the next sequence number needed, with no gap and no duplicate; the upstream's End of
    Session ends the local session (a local subscriber gets End of Session) and the feed
    moves on to the upstream's next session."""

    def batch(session: str, first: int, last: int) -> list[bytes]:
        return [upstream_payload(session, seq) for seq in range(first, last + 1)]

    async def scenario() -> None:
        feed = SoupFeed(FIRST)
        feed.publish(batch(FIRST, 1, 1000))
        port = await feed.start()
        upstream = Upstream.parse(f"{url(port)}?user=relay&password=secret")
        engine = Engine(Catalogue(tmp_path, Durability.BATCH))
        server = SoupBinTCPServer(engine, ServerConfig(host="127.0.0.1", port=0))
        relay: asyncio.Task[None] | None = None
        local: Collector | None = None
        try:
            assert await first_session(upstream) == FIRST
            await engine.start(roll_on_schedule=False, session=FIRST)
            await server.start()
            feed.witness = lambda: engine.next_assigned
            relay = asyncio.create_task(run_upstream(engine, upstream))
            local = Collector(server.port, FIRST)

            # The backlog, then live messages.
            await until(lambda: engine.next_seq == 1001, "the backlog copied")
            for first in range(1001, 2001, 100):
                feed.publish(batch(FIRST, first, first + 99))
                await asyncio.sleep(0.005)
            await until(lambda: engine.next_seq == 2001, "the live messages copied")

            # The upstream cuts the connection in the middle of sending; more comes while
            # the feed is away.
            relay_logins = [login for login in feed.logins if login[1] != 0]
            assert relay_logins == [(FIRST, 1, 1)]
            feed.publish(batch(FIRST, 2001, 2500))
            assert feed.drop() == 1
            feed.publish(batch(FIRST, 2501, 3000))
            await until(lambda: engine.next_seq == 3001, "the copy after the drop")
            relay_logins = [login for login in feed.logins if login[1] != 0]
            assert len(relay_logins) == 2, relay_logins
            again, asked, needed = relay_logins[1]
            assert again == FIRST
            assert asked == needed, "logged in again at another number than it needed"
            assert 2001 <= asked <= 2501

            # The upstream ends its session: so does the local server.
            feed.end(SECOND)
            copied = await local.ended()
            assert seqs_and_payloads(copied) == [
                (seq, payload) for seq, payload in enumerate(feed.sessions[FIRST], 1)
            ]
            assert local.subscription.logins == 1
            await until(lambda: engine.session_id == SECOND, "the roll to the next session")
            assert engine.catalogue.find(FIRST).ended
            again_from_1 = await whole_session(server.port, FIRST)
            assert seqs_and_payloads(again_from_1) == seqs_and_payloads(copied)

            # And follows the upstream's next session.
            feed.publish(batch(SECOND, 1, 50))
            await until(lambda: engine.next_seq == 51, "the next session copied")
            async with subscribe("127.0.0.1", server.port, SECOND, 1) as messages:
                second = [m async for m in _take(messages, 50)]
            assert seqs_and_payloads(second) == [
                (seq, upstream_payload(SECOND, seq)) for seq in range(1, 51)
            ]
            assert not relay.done()
        finally:
            if local is not None:
                await local.close()
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            await server.close()
            await engine.close()
            await feed.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _take(messages: Subscription, count: int) -> AsyncIterator[Message]:
    taken = 0
    async for message in messages:
        yield message
        taken += 1
        if taken == count:
            return


# ---------------------------------------------------------------------------- the URL


def test_upstream_urls_are_parsed() -> None:
    assert Upstream.parse("soupbintcp://127.0.0.1:7300") == Upstream("127.0.0.1", 7300)
    assert Upstream.parse(
        "soupbintcp://feed.example:26400?user=relay&password=s3cret&session=2026112902"
    ) == Upstream("feed.example", 26400, "relay", "s3cret", "2026112902")


def test_a_named_session_is_where_the_feed_starts() -> None:
    """With ``session=`` the upstream is not asked (nothing listens on the port)."""
    named = Upstream("127.0.0.1", free_port(), session="2026112905")
    assert asyncio.run(first_session(named)) == "2026112905"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://127.0.0.1:7300", "expected soupbintcp://HOST:PORT"),
        ("127.0.0.1:7300", "expected soupbintcp://HOST:PORT"),
        ("soupbintcp://127.0.0.1", "expected soupbintcp://HOST:PORT"),
        ("soupbintcp://:7300", "expected soupbintcp://HOST:PORT"),
        ("soupbintcp://127.0.0.1:7300?sesion=2026112901", "unknown parameter 'sesion'"),
        ("soupbintcp://127.0.0.1:7300?session=20261129", "'20261129' is not YYYYMMDDNN"),
        ("soupbintcp://127.0.0.1:7300?session=2026112901x", "is not YYYYMMDDNN"),
        ("soupbintcp://127.0.0.1:port", "--upstream"),
        ("soupbintcp://127.0.0.1:70000", "--upstream"),
    ],
)
def test_a_bad_upstream_url_is_a_config_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Upstream.parse(text)


def _serve(data: Path, upstream: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tickertape",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data",
            str(data),
            "--upstream",
            upstream,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "text", ["http://x", "soupbintcp://127.0.0.1", "soupbintcp://127.0.0.1:port"]
)
def test_serve_refuses_a_bad_upstream_url_in_one_line(tmp_path: Path, text: str) -> None:
    done = _serve(tmp_path, text)
    assert done.returncode in (1, 2), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "--upstream" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("tickertape"), done.stderr


def test_serve_names_an_upstream_it_cannot_reach(tmp_path: Path) -> None:
    """Nothing listens at the upstream's address: the message is about the upstream,
    not the data directory."""
    port = free_port()
    done = _serve(tmp_path / "data", url(port))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tickertape: "), done.stderr
    assert "upstream" in last, last
    assert f"127.0.0.1:{port}" in last, last
    assert "data directory" not in last, last


def test_credentials_in_the_url_authority_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"as \?user=NAME&password=SECRET"):
        Upstream.parse("soupbintcp://bob:secret@127.0.0.1:7300")


def test_a_relay_refused_by_its_upstream_logs_the_upstreams_reason(tmp_path: Path) -> None:
    """A wrong password in ``--upstream``: the relay says what the upstream said (in a
    Debug packet before Login Rejected), at start and when resuming from its own log."""
    with ServerProcess(tmp_path / "a", "--user", "relay:secret") as upstream:
        wrong = url(upstream.port) + "?user=relay&password=wrong"
        done = _serve(tmp_path / "fresh", wrong)
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert "the upstream refused the relay" in last, done.stderr
        assert "wrong username or password for user 'relay'" in last, done.stderr

        async def resumed() -> None:
            engine = Engine(Catalogue(tmp_path / "resumed", Durability.NONE))
            await engine.start(roll_on_schedule=False, session="2026112901")
            try:
                async with asyncio.timeout(TIMEOUT):
                    await run_upstream(engine, Upstream.parse(wrong))
            finally:
                await engine.close()

        with pytest.raises(LoginRejected) as refused:
            asyncio.run(resumed())
        assert "wrong username or password for user 'relay'" in str(refused.value)


# ---------------------------------------------------------------------------- failed rolls


def test_a_relay_that_cannot_roll_into_the_next_session_serves_on_and_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with running_server(tmp_path / "a") as (upstream, upstream_server):
            first = upstream.session_id
            relay = Engine(Catalogue(tmp_path / "b", Durability.NONE))
            await relay.start(roll_on_schedule=False, session=first)
            feed = asyncio.create_task(
                run_upstream(relay, Upstream.parse(url(upstream_server.port)))
            )
            try:
                await upstream.publish_many([b"one", b"two"])
                await until(lambda: relay.next_seq == 3, "the relay to copy the session")
                open_exact = relay.catalogue.open_exact

                def no_room(*args: object) -> None:
                    raise OSError(28, "No space left on device")

                monkeypatch.setattr(relay.catalogue, "open_exact", no_room)
                second = await upstream.roll()
                await until(
                    lambda: "cannot follow the upstream into session" in caplog.text,
                    "the failed roll to be logged",
                )
                assert not feed.done()  # the feed, and the server, go on
                assert relay.session_id == first
                monkeypatch.setattr(relay.catalogue, "open_exact", open_exact)
                await until(lambda: relay.session_id == second, "the roll to be tried again")
                await upstream.publish(b"three")
                await until(lambda: relay.next_seq == 2, "the next session to be copied")
            finally:
                feed.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed
                await relay.close()

    with caplog.at_level(logging.INFO, logger="tickertape"):
        asyncio.run(asyncio.wait_for(main(), 60))
    assert "No space left on device" in caplog.text
