"""A real ``tickertape serve`` whose disk fills, then has room again.

The server's data directory is on a small file system the test mounts (tmpfs, 8 MiB),
which a filler file then fills; or, where mounting is not possible, and in a second run
anyway, the server process is given a file-size limit (``RLIMIT_FSIZE``: CPython ignores
SIGXFSZ, so its writes past the limit fail with EFBIG). Either way:

- a publisher publishing then is refused with a clear error (a Debug packet, then the
  close: every message it had acknowledged is in the session, none of the others is),
  and the server's log says what happened, once, as an error;
- a publisher trying again while the disk is still full is refused again (after the
  back-off: the disk is not hammered);
- a subscriber connected throughout, and one logging in during the outage from 1, are
  served everything that was acknowledged;
- once there is room, publishing resumes with the next sequence number: the
  subscribers go on with no gap and no duplicate, and the log verifies clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tickertape.client.publisher import Publisher
from tickertape.client.soupbintcp import Message, subscribe
from tickertape.store.layout import LOG_FILE
from tickertape.store.opening import verify

from support import FileSizeLimit, ServerProcess, SmallDisk

TIMEOUT = 60.0

PAGE = mmap.PAGESIZE
BEFORE = [b"before %04d " % n + b"b" * (PAGE // 4 - 3 - 12) for n in range(40)]
"""Published before the disk fills: four messages to a page, so that the log ends on a
page boundary and a full tmpfs has no room left in its last page."""
assert all(len(p) + 3 == PAGE // 4 for p in BEFORE)
DURING = [b"during %04d " % n + b"d" * 100 for n in range(10)]
AFTER = [b"after %04d" % n for n in range(30)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Subscriber:
    """A real subscriber (no reconnecting: it must stay connected), collecting messages."""

    def __init__(self, port: int) -> None:
        self.messages: list[Message] = []
        self._arrived = asyncio.Condition()
        self._subscription = subscribe("127.0.0.1", port, "", 1, reconnect=False)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        try:
            async for message in self._subscription:
                async with self._arrived:
                    self.messages.append(message)
                    self._arrived.notify_all()
        finally:
            async with self._arrived:
                self._arrived.notify_all()

    async def until(self, count: int) -> list[bytes]:
        """The payloads once ``count`` messages have come (fails if it disconnected)."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.messages) >= count or self._task.done())
        if self._task.done():
            self._task.result()  # raises what ended it
            raise AssertionError("the subscription ended")
        assert [m.seq for m in self.messages] == list(range(1, len(self.messages) + 1))
        return [m.payload for m in self.messages]

    @property
    def connected(self) -> bool:
        return not self._task.done()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._task
        await self._subscription.close()


async def publish(port: int, payloads: list[bytes]) -> tuple[int, int]:
    """Publish and wait for every acknowledgement: (count acknowledged, last seq)."""
    async with await Publisher.connect("127.0.0.1", port) as publisher:
        await publisher.send_many(payloads)
        ack = await publisher.flush()
    assert ack is not None
    return ack.count, ack.seq


async def publish_refused(port: int, payloads: list[bytes]) -> Publisher:
    """Publish into a full disk: the server closes the connection having acknowledged
    nothing. Returns the closed publisher."""
    publisher = await Publisher.connect("127.0.0.1", port)
    try:
        await publisher.send_many(payloads)  # one write, so read by the server whole
        with pytest.raises(ConnectionError, match="the server closed the connection"):
            await publisher.flush()
    finally:
        await publisher.close()
    assert publisher.acked == 0
    return publisher


def status(admin_port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=10) as answer:
        result = json.load(answer)
    assert isinstance(result, dict)
    return result


def server_says(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The Debug texts the publishers were sent."""
    return [
        r.getMessage().removeprefix("server says: ")
        for r in caplog.records
        if r.name == "tickertape.client.publisher" and r.getMessage().startswith("server says")
    ]


@pytest.mark.parametrize("how", ["small file system", "file-size limit"])
def test_a_full_disk_pauses_publishing_and_room_again_resumes_it(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tickertape.client.publisher")
    with SmallDisk.mounted(tmp_path / "disk") as small:
        disk: SmallDisk | FileSizeLimit = (
            small if small is not None and how == "small file system" else FileSizeLimit()
        )
        data = tmp_path / "disk" / "data"
        admin = free_port()
        with ServerProcess(data, "--durability", "batch", "--admin-port", str(admin)) as server:
            server.wait_for_log("admin API listening")
            session = asyncio.run(
                asyncio.wait_for(scenario(server, disk, data, admin, caplog), TIMEOUT)
            )
            assert server.stop() == 0
        errors = [line for line in server.lines if " ERROR " in line]
        assert len(errors) == 1, "\n".join(server.lines)  # the failure, said once
        assert "tickertape.server.writer: " in errors[0]

        # The log verifies clean: nothing of the failed batches in it, nothing cut.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tickertape",
                "sessions",
                "verify",
                session,
                "--data",
                str(data),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"session {session}: clean: 70 messages"), done.stdout
        recovery = verify(data / session)
        assert recovery.clean and recovery.messages == 70
        assert sorted(p.name for p in (data / session).iterdir() if p.name.startswith("log")) == [
            LOG_FILE
        ]


async def scenario(
    server: ServerProcess,
    disk: SmallDisk | FileSizeLimit,
    data: Path,
    admin: int,
    caplog: pytest.LogCaptureFixture,
) -> str:
    port = server.port
    throughout = Subscriber(port)
    late: Subscriber | None = None
    try:
        assert await publish(port, BEFORE) == (40, 40)
        assert await throughout.until(40) == BEFORE
        session = throughout.messages[0].session
        reason = f"{disk.reason} writing session {session}'s log"

        # The disk fills. A publisher is refused, clearly; nothing of it is published.
        disk.fill(server.pid, data / session / LOG_FILE)
        await publish_refused(port, DURING)
        assert server_says(caplog) == [
            f"not published: {reason}; publishing is paused, and the next publish tries "
            "again in 1 s"
        ]
        logged = server.wait_for_log("publishing paused: ")
        assert " ERROR " in logged
        assert f"session {session}: publishing paused: {reason}; 10 messages" in logged
        assert "(the next is still 41)" in logged
        server.wait_for_log("publishing from 127.0.0.1")
        answer = await asyncio.to_thread(status, admin)
        assert answer["publishing_error"] == reason
        assert answer["next_seq"] == 41

        # Subscribers are served everything acknowledged: the one connected throughout,
        # and one logging in now from 1.
        late = Subscriber(port)
        assert await late.until(40) == BEFORE
        assert throughout.connected

        # Tried again while the disk is still full (after the back-off): refused again.
        await publish_refused(port, [b"still full"])
        assert server_says(caplog)[-1] == (
            f"not published: {reason}; publishing is paused, and the next publish tries "
            "again in 2 s"
        )
        assert " WARNING " in server.wait_for_log("publishing still paused: ")

        # Room again: the next publish (after the back-off) resumes publishing with the
        # next number.
        disk.free(server.pid)
        assert await publish(port, AFTER) == (30, 70)
        assert await throughout.until(70) == BEFORE + AFTER
        assert await late.until(70) == BEFORE + AFTER
        assert "publishing resumed at sequence 41" in server.wait_for_log("publishing resumed")
        answer = await asyncio.to_thread(status, admin)
        assert answer["publishing_error"] is None
        assert answer["next_seq"] == 71
        assert throughout.connected and late.connected
        return session
    finally:
        await throughout.close()
        if late is not None:
            await late.close()
