"""Serving another process's store: ``serve --follow DIR``.

A writer (an in-process :class:`Engine`, or a ``tickertape serve`` subprocess) appends to
a data directory; a :class:`Follower` serves the same directory read-only. Its
subscribers must get the writer's bytes exactly, through rolls and ends of sessions, and
nothing under the directory may change because it is followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import ServerConfig, SoupBinTCPServer
from tickertape.sources.follow import Follower, FollowerConfig
from tickertape.store.archive import archive_session
from tickertape.store.catalogue import Catalogue
from tickertape.store.index import pack_record
from tickertape.store.layout import ARCHIVE_TMP_FILE, INDEX_FILE, LOG_FILE
from tickertape.store.log import Durability, ReadableLog, SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.wire.publishing import NO_STREAM
from tickertape.wire.soupbintcp import (
    LoginAccepted,
    LoginRequest,
    UnsequencedData,
    encode_sequenced_many,
)

from support import ServerProcess, running_server, until

TIMEOUT = 20.0


def payloads(tag: str, count: int) -> list[bytes]:
    # Lengths vary, so that packet boundaries fall anywhere in a batch.
    return [f"{tag} {n} ".encode().ljust(10 + n % 37, b"x") for n in range(1, count + 1)]


# ---------------------------------------------------------------------------- a raw feed


class Feed:
    """A SoupBinTCP login, read raw: the Sequenced Data packets exactly as they arrive
    (length prefix and all) and when each arrived."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.accepted: LoginAccepted | None = None
        self.rejected: bytes | None = None
        self.packets: list[bytes] = []
        self.times: list[float] = []
        self.debug: list[bytes] = []
        self.ended = False
        self.closed = False
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def login(cls, port: int, session: str = "", seq: int = 1) -> Feed:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(LoginRequest("", "", session, seq).encode())
        feed = cls(reader, writer)
        await feed.wait(lambda: feed.accepted is not None or feed.rejected is not None)
        return feed

    async def _read(self) -> None:
        buffer = b""
        while data := await self.reader.read(1 << 16):
            now = time.monotonic()
            buffer += data
            position = 0
            while position + 2 <= len(buffer):
                length = int.from_bytes(buffer[position : position + 2], "big")
                if position + 2 + length > len(buffer):
                    break
                packet = buffer[position : position + 2 + length]
                position += 2 + length
                kind = packet[2:3]
                if kind == b"S":
                    self.packets.append(packet)
                    self.times.append(now)
                elif kind == b"A":
                    body = packet[3:].decode()
                    self.accepted = LoginAccepted(body[:10].strip(), int(body[10:]))
                elif kind == b"J":
                    self.rejected = packet[3:]
                elif kind == b"Z":
                    self.ended = True
                elif kind == b"+":
                    self.debug.append(packet[3:])
            buffer = buffer[position:]
        self.closed = True

    @property
    def first(self) -> int:
        assert self.accepted is not None
        return self.accepted.sequence

    @property
    def next_seq(self) -> int:
        """One past the last message received."""
        return self.first + len(self.packets)

    @property
    def data(self) -> bytes:
        return b"".join(self.packets)

    def arrivals(self) -> dict[int, float]:
        return {self.first + n: when for n, when in enumerate(self.times)}

    async def wait(self, condition: Callable[[], bool], within: float = TIMEOUT) -> None:
        def check() -> bool:
            if condition():
                return True
            if self.closed:
                raise AssertionError("the connection closed first")
            return False

        await until(check, "the subscriber's condition", within, interval=0.001)

    async def wait_through(self, last: int) -> None:
        await self.wait(lambda: self.next_seq > last)

    async def wait_ended(self) -> None:
        await self.wait(lambda: self.ended and self.closed)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def following(
    root: Path, config: FollowerConfig | None = None
) -> AsyncIterator[tuple[Follower, SoupBinTCPServer]]:
    follower = Follower(root, config)
    await follower.start()
    server = SoupBinTCPServer(follower, ServerConfig(port=0))
    try:
        await server.start()
        yield follower, server
    finally:
        await server.close()
        await follower.close()


def log_bytes(session_log: ReadableLog, first: int, stop: int) -> bytes:
    """The log's bytes for messages ``first`` up to ``stop`` (excluded)."""
    return session_log.read_range(
        session_log.offset_of(first), session_log.offset_of(stop) - session_log.offset_of(first)
    )


def session_bytes(root: Path, session: str, first: int, stop: int) -> bytes:
    """The bytes of messages ``first`` up to ``stop`` (excluded) of a session on disk."""
    with SessionLog.open(root / session, writable=False) as session_log:
        return log_bytes(session_log, first, stop)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def _append_raw(directory: Path, data: bytes) -> None:
    with open(directory / LOG_FILE, "ab") as out:
        out.write(data)


def _append_record(directory: Path, record: bytes) -> None:
    with open(directory / INDEX_FILE, "ab") as out:
        out.write(record)


# ---------------------------------------------------------------------------- in process


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_followers_subscribers_get_the_writers_bytes_while_it_publishes(
    tmp_path: Path, inotify: bool
) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, durability=Durability.BATCH) as (engine, writer):
            await engine.publish_many(payloads("before", 100))
            config = FollowerConfig(inotify=inotify)
            async with following(tmp_path, config) as (follower, server):
                assert follower.inotify is inotify
                assert follower.session_id == engine.session_id
                assert follower.next_seq == 101

                async def publish() -> None:
                    for batch in range(60):
                        await engine.publish_many(payloads(f"live{batch}", 1 + batch % 9))
                        await asyncio.sleep(0.002)

                publishing = asyncio.create_task(publish())
                await asyncio.sleep(0.02)
                feeds = {
                    "follower@1": await Feed.login(server.port, seq=1),
                    "follower@0": await Feed.login(server.port, seq=0),
                    "writer@0": await Feed.login(writer.port, seq=0),
                    "follower@50": await Feed.login(server.port, seq=50),
                    "writer@1": await Feed.login(writer.port, seq=1),
                    "writer@50": await Feed.login(writer.port, seq=50),
                }
                await publishing
                last = engine.next_seq - 1
                for feed in feeds.values():
                    await feed.wait_through(last)
                assert follower.next_seq == engine.next_seq
                whole = log_bytes(engine.session_log, 1, last + 1)
                assert feeds["follower@1"].data == feeds["writer@1"].data == whole
                assert feeds["follower@50"].data == feeds["writer@50"].data
                assert feeds["follower@50"].first == 50
                live = feeds["follower@0"]
                assert 101 <= live.first <= last
                assert live.data == log_bytes(engine.session_log, live.first, last + 1)
                _, report = _lag_report(feeds["writer@0"], live, minimum=100)
                print(f"\n{report} ({'inotify' if inotify else 'polling every 10 ms'}, in process)")
                for feed in feeds.values():
                    await feed.close()

    run(scenario)


def test_follower_ends_sessions_with_the_writer_and_serves_the_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path, durability=Durability.BATCH) as (engine, writer):
            await engine.publish_many(payloads("one", 20))
            async with following(tmp_path) as (follower, server):
                live = await Feed.login(server.port, seq=0)
                replay = await Feed.login(server.port, seq=1)
                await until(lambda: follower.stream.live_count == 2, "two live", TIMEOUT)
                await engine.publish_many(payloads("one more", 30))
                first_id = engine.session_id
                second_id = await engine.roll()
                await live.wait_ended()
                await replay.wait_ended()
                assert follower.session_id == second_id != first_id
                assert replay.data == session_bytes(tmp_path, first_id, 1, 51)
                assert live.first == 21
                assert live.data == session_bytes(tmp_path, first_id, 21, 51)

                # The next session is served, live and by replay.
                following_live = await Feed.login(server.port, seq=0)
                assert following_live.accepted == LoginAccepted(second_id, 1)
                await until(lambda: follower.stream.live_count == 1, "one live", TIMEOUT)
                await engine.publish_many(payloads("two", 10))
                await following_live.wait_through(10)

                # Pulls of the ended session: the writer's bytes, then End of Session.
                pulls = [
                    await Feed.login(port, session=first_id, seq=7)
                    for port in (server.port, writer.port)
                ]
                for pull in pulls:
                    await pull.wait_ended()
                assert pulls[0].data == pulls[1].data == session_bytes(tmp_path, first_id, 7, 51)

                # Ended again, by the writer's end of session.
                third_id = await engine.end_session()
                await following_live.wait_ended()
                assert following_live.data == session_bytes(tmp_path, second_id, 1, 11)
                assert follower.session_id == third_id
                again = await Feed.login(server.port)
                assert again.accepted == LoginAccepted(third_id, 1)
                for feed in (live, replay, following_live, again, *pulls):
                    await feed.close()

    run(scenario)


def test_follower_survives_a_writer_that_restarts(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = Engine(Catalogue(tmp_path, Durability.BATCH))
        await engine.start(roll_on_schedule=False)
        await engine.publish_many(payloads("first run", 10))
        async with following(tmp_path) as (follower, server):
            feed = await Feed.login(server.port, seq=1)
            await feed.wait_through(10)
            session = engine.session_id
            await engine.close()  # not ended: a restart continues it
            # As if it had crashed after writing a batch and before its record: the
            # restarted writer's recovery sets it aside (it was never acknowledged).
            directory = tmp_path / session
            _append_raw(directory, encode_sequenced_many(payloads("unindexed", 5)))
            await asyncio.sleep(0.05)
            assert follower.next_seq == 11  # not served before the writer vouches for it
            engine = Engine(Catalogue(tmp_path, Durability.BATCH))
            await engine.start(roll_on_schedule=False)
            try:
                assert engine.session_id == session
                await engine.publish_many(payloads("second run", 10))
                await feed.wait_through(20)
                assert feed.data == log_bytes(engine.session_log, 1, 21)
                assert follower.session_id == session
            finally:
                await engine.close()
            await feed.close()

    run(scenario)


def test_publishing_to_a_follower_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path) as (engine, _):
            await engine.publish_many(payloads("a", 3))
            async with following(tmp_path) as (follower, server):
                publisher = await Feed.login(server.port, seq=NO_STREAM)
                publisher.writer.write(UnsequencedData(b"not for a follower").encode())
                await publisher.wait(lambda: publisher.closed)
                assert any(b"publish there" in text for text in publisher.debug)
                assert follower.next_seq == engine.next_seq == 4
                await publisher.close()

    run(scenario)


def test_a_newer_session_the_follower_has_not_reached_is_not_pulled(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    first = SessionId.parse("2026112901")
    with SessionLog.open(tmp_path / str(first), create=True) as session_log:
        session_log.append(encode_sequenced_many(payloads("a", 3)), 3)

    async def scenario() -> None:
        async with following(tmp_path) as (follower, _):
            assert follower.session_id == str(first)
            # The writer made the next session; the first is not ended yet.
            SessionLog.open(tmp_path / str(first.next_roll()), create=True).close()
            await asyncio.sleep(0.05)
            assert follower.session_id == str(first)
            with pytest.raises(StoreError, match="not followed yet"):
                follower.catalogue.open_closed(str(first.next_roll()))
            catalogue.mark_ended(first)
            await until(lambda: follower.session_id == str(first.next_roll()), "the roll", TIMEOUT)

    run(scenario)


# ---------------------------------------------------------------------------- read-only


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every file and directory under ``root``: mode, modification time, contents."""
    found: dict[str, tuple[int, int, bytes | None]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        status = path.lstat()
        contents = path.read_bytes() if path.is_file() else None
        found[str(path.relative_to(root))] = (status.st_mode, status.st_mtime_ns, contents)
    return found


def _make_session(root: Path, session: str, count: int, *, ended: bool) -> Path:
    directory = root / session
    with SessionLog.open(directory, create=True) as session_log:
        for batch in range(count):
            session_log.append(encode_sequenced_many(payloads(f"{session}/{batch}", 5)), 5)
    if ended:
        Catalogue(root).mark_ended(SessionId.parse(session))
    return directory


def test_nothing_in_a_followed_directory_changes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    # An archived session; one whose archiving was interrupted after its commit point
    # (log and log.zst both there), with a stale log.zst.tmp; and the active session,
    # with a batch being appended and half a record. A writing server's recovery, or
    # its pulls, would clean each of these up.
    archived = _make_session(root, "2026112801", 4, ended=True)
    archive_session(archived)
    interrupted = _make_session(root, "2026112802", 4, ended=True)
    kept = {name: (interrupted / name).read_bytes() for name in (LOG_FILE, INDEX_FILE)}
    archive_session(interrupted)
    for name, data in kept.items():
        (interrupted / name).write_bytes(data)
    (interrupted / ARCHIVE_TMP_FILE).write_bytes(b"left by a crash")
    active = _make_session(root, "2026112901", 3, ended=False)
    batch = encode_sequenced_many(payloads("torn", 4))
    record = pack_record(16, (active / LOG_FILE).stat().st_size, len(batch), 4, 0)
    _append_raw(active, batch + b"\x00\x09Shal")
    _append_record(active, record[:20])
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # so a change shows
    before = _snapshot(root)

    async def scenario() -> None:
        async with following(root) as (follower, server):
            assert follower.session_id == "2026112901"
            assert follower.next_seq == 16
            feeds = [
                await Feed.login(server.port, seq=1),
                await Feed.login(server.port, session="2026112801", seq=1),
                await Feed.login(server.port, session="2026112802", seq=3),
            ]
            await feeds[0].wait_through(15)
            await feeds[1].wait_ended()
            await feeds[2].wait_ended()
            assert len(feeds[1].packets) == 20 and len(feeds[2].packets) == 18
            await asyncio.sleep(0.1)  # a few polls
            for feed in feeds:
                await feed.close()

    run(scenario)
    assert _snapshot(root) == before
    assert not (root / ".lock").exists()


# ---------------------------------------------------------------------------- command line


def tickertape(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_follow_takes_no_option_of_a_writing_server(tmp_path: Path) -> None:
    done = tickertape("serve", "--follow", str(tmp_path), "--demo", "5", "--durability", "none")
    assert done.returncode == 2
    assert "--follow serves a directory another process writes, read-only" in done.stderr
    assert "it takes no --durability, --demo" in done.stderr
    done = tickertape("serve", "--follow", str(tmp_path), "--data", str(tmp_path))
    assert done.returncode == 2 and "it takes no --data" in done.stderr


def test_follow_says_what_is_missing(tmp_path: Path) -> None:
    done = tickertape("serve", "--follow", str(tmp_path / "nowhere"), "--port", "0")
    assert done.returncode == 1
    assert "no such directory" in done.stderr
    done = tickertape("serve", "--follow", str(tmp_path), "--port", "0")
    assert done.returncode == 1
    assert "no session in" in done.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- two processes


def _roll(admin_port: int, token: str) -> dict[str, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/roll",
        data=b"",
        headers={"Authorization": f"Bearer {token}"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        answer: dict[str, str] = json.load(response)
        return answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _writer_and_follower(
    data: Path, admin_port: int
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with ServerProcess(
        data, "--demo", "5000", "--admin-port", str(admin_port), "--admin-token", "secret"
    ) as writer:
        writer.wait_for_log(f"admin API listening on 127.0.0.1:{admin_port}")
        with ServerProcess(data, follow=True) as follower:
            yield writer, follower


def more_than(feed: Feed, count: int) -> bool:
    return len(feed.packets) > count


def _lag_report(writer: Feed, follower: Feed, minimum: int = 1000) -> tuple[list[float], str]:
    """How much later than the writer's subscriber the follower's got each message."""
    at_writer = writer.arrivals()
    at_follower = follower.arrivals()
    lags = sorted(at_follower[seq] - at_writer[seq] for seq in at_writer.keys() & at_follower)
    assert len(lags) > minimum, len(lags)
    quantiles = statistics.quantiles(lags, n=100)
    text = (
        f"follower lag over {len(lags)} messages: min {lags[0] * 1e3:.2f} ms, "
        f"median {statistics.median(lags) * 1e3:.2f} ms, "
        f"p90 {quantiles[89] * 1e3:.2f} ms, p99 {quantiles[98] * 1e3:.2f} ms, "
        f"max {lags[-1] * 1e3:.2f} ms"
    )
    return lags, text


def test_a_second_process_follows_a_live_directory(tmp_path: Path) -> None:
    """``serve --data D --demo 5000`` and ``serve --follow D``: the same bytes, through a
    roll; the follower's lag behind the writer is measured and printed."""
    admin_port = _free_port()

    async def scenario(writer: ServerProcess, follower: ServerProcess) -> None:
        await asyncio.sleep(0.5)
        from_start = [await Feed.login(s.port, seq=1) for s in (writer, follower)]
        live = [await Feed.login(s.port, seq=0) for s in (writer, follower)]
        # Over a second of the demo live through both (the lag report needs a thousand):
        for feed in (*from_start, *live):
            await feed.wait(functools.partial(more_than, feed, 5000))
        first_id = live[0].accepted.session if live[0].accepted else ""
        assert [f.accepted.session for f in (*from_start, *live) if f.accepted] == [first_id] * 4
        rolled = await asyncio.to_thread(_roll, admin_port, "secret")
        assert rolled["ended"] == first_id
        for feed in (*from_start, *live):
            await feed.wait_ended()
        # Session one, whole, from both servers: the same bytes.
        assert from_start[0].data == from_start[1].data
        assert len(from_start[0].packets) > 5000
        assert live[0].packets[-1] == live[1].packets[-1] == from_start[0].packets[-1]
        lags, report = _lag_report(live[0], live[1])
        # The next session, from both.
        second = [await Feed.login(s.port, seq=1) for s in (writer, follower)]
        assert [f.accepted for f in second] == [LoginAccepted(rolled["session"], 1)] * 2
        await second[0].wait(lambda: len(second[0].packets) > 2000)
        await second[1].wait_through(second[0].next_seq - 1)
        common = min(len(second[0].packets), len(second[1].packets))
        assert common > 2000
        assert second[0].packets[:common] == second[1].packets[:common]
        print(f"\n{report} (inotify; demo at 5,000 messages a second)")
        assert statistics.median(lags) < 0.25
        for feed in (*from_start, *live, *second):
            await feed.close()

    with _writer_and_follower(tmp_path, admin_port) as (writer, follower):
        asyncio.run(asyncio.wait_for(scenario(writer, follower), 60))
        assert follower.logged("following session")
        assert not any("ERROR" in line for line in follower.lines), follower.lines
