"""``serve --log-format json`` (one JSON object a line, with the structured fields) and
``--log-file`` reopened on SIGHUP, on real server processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from tickertape.logs import JsonFormatter, ReopeningFileHandler
from tickertape.wire.soupbintcp import LoginAccepted, SequencedData

from support import ServerProcess, SoupClient, free_port, until_sync

TIMEOUT = 30.0


def log_in_and_read(port: int, user: str, password: str) -> None:
    """Log in (raw client), read one message, log out by closing."""

    async def go() -> None:
        client = await SoupClient.login(port, user=user, password=password)
        try:
            assert isinstance(await client.packet(), LoginAccepted)
            assert isinstance(await client.packet(), SequencedData)
        finally:
            client.close()

    asyncio.run(go())


def bad_login(port: int) -> None:
    """A login with a wrong password, answered."""

    async def go() -> None:
        client = await SoupClient.login(port, user="bob", password="no")
        try:
            await client.packet()
        finally:
            client.close()

    asyncio.run(go())


def test_json_log_lines_parse_one_by_one_with_their_fields(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data",
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--user",
        "ann:pw",
        "--demo",
        "200",
    )
    with server:
        log_in_and_read(server.port, "ann", "pw")
        server.wait_for_log("disconnected at sequence")
        bad_login(server.port)
        server.wait_for_log("rejected")
    entries = [json.loads(line) for line in server.lines]  # every line is one object
    assert len(entries) > 5
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= set(entry), entry
        stamp = dt.datetime.fromisoformat(entry["timestamp"])
        assert stamp.utcoffset() == dt.timedelta(0), entry
        assert entry["level"] in {"debug", "info", "warning", "error"}, entry
    login = next(e for e in entries if "logged in as" in e["message"])
    assert login["logger"] == "tickertape.server.soupbintcp"
    assert login["level"] == "info"
    assert login["user"].upper() == "ANN"
    assert login["client"].startswith("127.0.0.1:")
    assert len(login["session"]) == 10 and login["sequence"] == 1
    # The client closing its socket is routine: DEBUG, with where it was.
    gone = next(e for e in entries if "disconnected at sequence" in e["message"])
    assert gone["level"] == "debug" and gone["client"] == login["client"]
    assert isinstance(gone["sequence"], int) and gone["sequence"] > 1
    # A client's mistake is a warning, naming who.
    bad = next(e for e in entries if "rejected" in e["message"])
    assert bad["level"] == "warning" and bad["user"].upper() == "BOB", bad
    opened = next(e for e in entries if e["message"].startswith("session "))
    assert opened["session"] == login["session"] and opened["sequence"] == 1


def test_log_level_warning_leaves_out_info(tmp_path: Path) -> None:
    # ServerProcess waits for the (INFO) listening line: connect to a known port instead.
    port = free_port()
    command = [
        *[sys.executable, "-m", "tickertape", "serve", "--host", "127.0.0.1"],
        *["--port", str(port), "--data", str(tmp_path / "data"), "--log-level", "warning"],
        *["--user", "ann:pw"],
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_until_listening(port, process)
        bad_login(port)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
    lines = err.decode().splitlines()
    assert any("WARNING" in line and "rejected" in line for line in lines), lines
    assert not any(" INFO " in line for line in lines), lines


def wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    def listening() -> bool:
        assert process.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    until_sync(listening, "the server listening", TIMEOUT, 0.05)


def wait_for_text(path: Path, text: str) -> str:
    def content() -> str | None:
        found = path.read_text() if path.exists() else ""
        return found if text in found else None

    return until_sync(content, f"{text!r} in {path}", TIMEOUT, 0.02)


def test_sighup_reopens_the_log_file_after_it_was_renamed(tmp_path: Path) -> None:
    logfile = tmp_path / "tickertape.log"
    rotated = tmp_path / "tickertape.log.1"
    port = free_port()
    command = [
        *[sys.executable, "-m", "tickertape", "serve", "--host", "127.0.0.1"],
        *["--port", str(port), "--data", str(tmp_path / "data")],
        *["--log-file", str(logfile), "--demo", "200"],
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for_text(logfile, "SoupBinTCP listening on")
        wait_until_listening(port, process)
        logfile.rename(rotated)
        os.kill(process.pid, signal.SIGHUP)
        new = wait_for_text(logfile, "SIGHUP: ")
        assert f"log file {logfile} reopened" in new, new
        log_in_and_read(port, "", "")
        new = wait_for_text(logfile, "logged in as")
        old = rotated.read_text()
        assert "SoupBinTCP listening on" in old and "SIGHUP" not in old, old
        assert "logged in as" not in old
        # Again: a second rotation works the same way.
        logfile.rename(tmp_path / "tickertape.log.2")
        os.kill(process.pid, signal.SIGHUP)
        wait_for_text(logfile, f"log file {logfile} reopened")
    finally:
        process.terminate()
        _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert err == b"", err  # everything went to the file
    assert "shutting down" in logfile.read_text()


def test_reopen_opens_the_file_again_by_its_name(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    handler = ReopeningFileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tickertape.test.reopen")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("one", extra={"client": "1.2.3.4:5"})
        path.rename(tmp_path / "a.log.1")
        handler.reopen()  # with nothing logged since: the new file is there already
        assert path.exists() and path.read_text() == ""
        logger.warning("two")
    finally:
        logger.removeHandler(handler)
        handler.close()
    (one,) = [json.loads(line) for line in (tmp_path / "a.log.1").read_text().splitlines()]
    assert one["message"] == "one" and one["client"] == "1.2.3.4:5"
    assert one["level"] == "warning" and one["logger"] == "tickertape.test.reopen"
    (two,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert two["message"] == "two" and "client" not in two


def test_a_publisher_sending_a_message_too_long_is_a_warning_not_an_error(
    tmp_path: Path,
) -> None:
    """A client's mistake (a message longer than --mold lets the server publish) is
    logged as a WARNING; the publisher is told why and closed."""
    server = ServerProcess(
        tmp_path / "data", "--log-format", "json", "--mold", f"127.0.0.1:{free_port()}"
    )

    async def publish_too_long(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Login Request (spec 2.2.3): user, password, session, sequence "99...9": publish.
        login = b"L" + b"ann".ljust(6) + b"".ljust(10) + b"".rjust(10) + b"9" * 20
        writer.write(struct.pack(">H", len(login)) + login)
        payload = b"x" * 2000
        writer.write(struct.pack(">H", len(payload) + 1) + b"U" + payload)
        try:
            return await asyncio.wait_for(reader.read(), TIMEOUT)  # up to the close
        finally:
            writer.close()

    with server:
        said = asyncio.run(publish_too_long(server.port))
        assert b"a message of 2000 bytes: this server publishes at most" in said  # a Debug
        server.wait_for_log("a message of 2000 bytes")
    entry = next(json.loads(line) for line in server.lines if "a message of 2000 bytes" in line)
    assert entry["level"] == "warning", entry
    assert entry["client"].startswith("127.0.0.1:"), entry
    assert not [line for line in server.lines if json.loads(line)["level"] == "error"]
