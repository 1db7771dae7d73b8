"""A session of an on-disk format newer than this release knows, as a running server and
a client written from the spec (SoupBinTCP 4.x, 2.2.3 Login Rejected) see it: the server
starts, skips it with a warning, never changes it, and a login asking for it is rejected
with reason ``S`` (session not available)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from tickertape.store.layout import FORMAT_FILE
from tickertape.store.log import SessionLog
from tickertape.wire.soupbintcp import encode_sequenced_many

from support import ServerProcess

TIMEOUT = 10.0
FUTURE = "2020010101"


def files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def read_packet(sock: socket.socket, debug: list[bytes]) -> tuple[bytes, bytes]:
    """The next SoupBinTCP packet but heartbeats and Debug packets (whose text goes into
    ``debug``): its type and body."""
    while True:
        header = sock.recv(2, socket.MSG_WAITALL)
        assert len(header) == 2, f"connection closed: {header!r}"
        (length,) = struct.unpack(">H", header)
        frame = sock.recv(length, socket.MSG_WAITALL)
        assert len(frame) == length
        if frame[:1] == b"+":
            debug.append(frame[1:])
        elif frame[:1] != b"H":
            return frame[:1], frame[1:]


def test_a_login_to_a_session_of_a_newer_format_is_rejected_and_it_is_never_changed(
    tmp_path: Path,
) -> None:
    directory = tmp_path / FUTURE
    with SessionLog.open(directory, create=True) as session_log:
        session_log.append(encode_sequenced_many([b"one", b"two"]), 2)
    (directory / "ended").touch()
    (directory / FORMAT_FILE).write_text("tickertape-session 9\n")
    before = files(directory)

    with ServerProcess(tmp_path, "--allow-anonymous") as server:
        server.wait_for_log(f"skipping {directory}")
        body = b" " * 16 + FUTURE.encode().rjust(10) + b"%20d" % 1  # spec 2.3.1
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(struct.pack(">H", 1 + len(body)) + b"L" + body)
            debug: list[bytes] = []
            assert read_packet(sock, debug) == (b"J", b"S")
            assert debug == [
                b"session 2020010101 is not available: it cannot be opened "
                b"(the server's log says why)"
            ]
        refused = server.wait_for_log("rejected: ")
        assert f"{directory / FORMAT_FILE} says format version 9" in refused

    assert files(directory) == before
    created = [p for p in tmp_path.iterdir() if p.is_dir() and p.name != FUTURE]
    assert len(created) == 1  # today's session, made beside it
    assert (created[0] / FORMAT_FILE).read_text() == "tickertape-session 1\n"
