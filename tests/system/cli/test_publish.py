"""``tickertape publish`` against a real server: a file's lines are published as they are
(a carriage return kept, and said); a line that is the END OF SESSION marker is refused
with its line number, unless ``--marker-ends-session`` asks for it to end the session."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path

from tickertape.wire.publishing import END_OF_SESSION_MARKER

from support import ServerProcess, SoupClient

TIMEOUT = 60.0


def publish(port: int, data: bytes, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", "publish", "--port", str(port), *options],
        input=data.decode("latin-1"),
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=TIMEOUT,
        check=False,
    )


def messages(port: int, session: str, count: int) -> list[bytes]:
    """The first ``count`` messages of ``session``, read by a raw SoupBinTCP client."""

    async def read() -> list[bytes]:
        client = await SoupClient.login(port, session=session, seq=1)
        try:
            return await client.messages(count)
        finally:
            client.close()

    return asyncio.run(asyncio.wait_for(read(), TIMEOUT))


def test_lines_are_published_as_they_are_and_a_carriage_return_is_said(tmp_path: Path) -> None:
    lines = [b"plain", b"windows\r", b"", b"two\r\r", b"tab\tand \xff byte", b"last, no newline"]
    with ServerProcess(tmp_path / "data") as server:
        done = publish(server.port, b"\n".join(lines))
        assert done.returncode == 0, done.stderr
        assert "published 6 messages" in done.stderr
        assert "2 lines end with a carriage return" in done.stderr, done.stderr
        session = done.stderr.split("into session ")[1].split(",")[0]
        assert messages(server.port, session, 6) == lines


def test_a_line_that_is_the_end_of_session_marker_is_refused_with_its_number(
    tmp_path: Path,
) -> None:
    lines = [b"one", b"two", END_OF_SESSION_MARKER, b"four"]
    with ServerProcess(tmp_path / "data") as server:
        done = publish(server.port, b"\n".join(lines) + b"\n")
        assert done.returncode == 1
        assert "line 3 is the END OF SESSION marker" in done.stderr, done.stderr
        assert "--marker-ends-session" in done.stderr
        assert "published 2 messages" in done.stderr, done.stderr
        assert not server.logged("ends session")
        session = done.stderr.split("into session ")[1].split(",")[0]
        assert messages(server.port, session, 2) == lines[:2]


def test_a_binary_record_that_is_the_marker_is_refused_with_its_number(tmp_path: Path) -> None:
    records = [b"one", END_OF_SESSION_MARKER]
    data = b"".join(struct.pack(">H", len(record)) + record for record in records)
    with ServerProcess(tmp_path / "data") as server:
        done = publish(server.port, data, "--binary")
        assert done.returncode == 1
        assert "record 2 is the END OF SESSION marker" in done.stderr, done.stderr


def test_with_marker_ends_session_the_marker_line_ends_the_session(tmp_path: Path) -> None:
    lines = [b"one", b"two", END_OF_SESSION_MARKER, b"four"]
    with ServerProcess(tmp_path / "data") as server:
        done = publish(server.port, b"\n".join(lines) + b"\n", "--marker-ends-session")
        assert done.returncode == 0, done.stderr
        assert "published 3 messages" in done.stderr, done.stderr
        ended = server.wait_for_log("ends session").split("ends session ")[1].strip()
        assert f"session {ended} ended" in done.stderr, done.stderr
        assert messages(server.port, ended, 2) == lines[:2]
        following = done.stderr.split("into session ")[1].split(",")[0]
        assert following != ended
        assert messages(server.port, following, 1) == [b"four"]
