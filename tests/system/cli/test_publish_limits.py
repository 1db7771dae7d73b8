"""``tickertape publish`` with a message too long: the error names the limit and where it
comes from (SoupBinTCP, or MoldUDP64 with ``serve --mold``), the input line, and what
was published."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from support import ServerProcess


def tickertape(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_line_too_long_for_soupbintcp_names_its_line_and_what_was_published(
    tmp_path: Path,
) -> None:
    lines = tmp_path / "lines"
    lines.write_bytes(b"first\nsecond\n" + b"x" * 70_000 + b"\nafter\n")
    with ServerProcess(tmp_path / "data") as server:
        done = tickertape("publish", "--port", str(server.port), str(lines))
        assert done.returncode != 0
        assert (
            "line 3: a message of 70,000 bytes does not fit a SoupBinTCP packet (at most "
            "65,534 bytes): nothing from line 3 on was published; lines 1 to 2 were"
        ) in done.stderr, done.stderr
        # Exactly the two lines before it are in the session.
        more = tmp_path / "more"
        more.write_bytes(b"more\n")
        assert tickertape("publish", "--port", str(server.port), str(more)).returncode == 0
        shown = tickertape("tail", "--port", str(server.port), "--count", "3")
        assert shown.stdout.splitlines() == ["1 first", "2 second", "3 more"]


def test_with_mold_a_message_too_long_is_refused_naming_moldudp64_and_its_limit(
    tmp_path: Path,
) -> None:
    lines = tmp_path / "lines"
    lines.write_bytes(b"first\n" + b"x" * 2000 + b"\nafter\n")
    mold = ("--mold", f"127.0.0.1:{free_udp_port()}")
    with ServerProcess(tmp_path / "data", *mold) as server:
        done = tickertape("publish", "--port", str(server.port), str(lines))
        assert done.returncode != 0
        said = done.stderr
        assert "a message of 2000 bytes: this server publishes at most 1450 bytes" in said, said
        assert "MoldUDP64" in said
        assert "nothing from this message on was published" in said
        # Whether line 1 was acknowledged before the server closed depends on timing.
        assert "of 3 messages (lines " in said
        assert " to 3) were not acknowledged" in said
        assert "1451" not in said and "2001" not in said
