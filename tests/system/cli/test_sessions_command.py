"""``tickertape sessions``, run as a user would: real subprocesses, real files, and a real
server where the command talks to one."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickertape.store.archive import archive_session
from tickertape.store.catalogue import Catalogue
from tickertape.store.layout import ARCHIVE_FILE
from tickertape.store.log import SessionLog
from tickertape.store.sessionid import SessionId
from tickertape.wire.soupbintcp import encode_sequenced_many

from support import ServerProcess, free_port

PAYLOAD_SIZE = 10
PACKET_SIZE = PAYLOAD_SIZE + 3
TOKEN = "s3cret-admin-token"


def tickertape(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tickertape_bytes(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def payload(seq: int) -> bytes:
    """A 10-byte message that names its sequence number, padded with spaces."""
    return f"m{seq}".encode().ljust(PAYLOAD_SIZE)


def make_session(
    root: Path, session: str, batches: int = 3, per_batch: int = 10, ended: bool = True
) -> Path:
    """A session of ``batches`` batches of ``per_batch`` 10-byte messages."""
    directory = root / session
    with SessionLog.open(directory, create=True) as session_log:
        for batch in range(batches):
            first = batch * per_batch + 1
            data = encode_sequenced_many([payload(s) for s in range(first, first + per_batch)])
            session_log.append(data, per_batch)
    if ended:
        Catalogue(root).mark_ended(SessionId.parse(session))
    return directory


def files_size(directory: Path) -> int:
    return sum(entry.stat().st_size for entry in directory.iterdir() if entry.is_file())


@contextlib.contextmanager
def admin_server(data: Path, *args: str) -> Iterator[tuple[ServerProcess, int]]:
    """A server with its admin API on a free port, and that port."""
    port = free_port()
    with ServerProcess(data, "--admin-port", str(port), *args) as server:
        server.wait_for_log(f"admin API listening on 127.0.0.1:{port}")
        yield server, port


# ---------------------------------------------------------------------------- help


@pytest.mark.parametrize("action", ["", "list", "show", "roll", "archive", "verify", "export"])
def test_every_sessions_action_has_help(action: str) -> None:
    done = tickertape("sessions", *([action] if action else []), "--help")
    assert done.returncode == 0
    assert f"usage: tickertape sessions {action}".rstrip() in done.stdout


# ---------------------------------------------------------------------------- offline


def test_list_reads_the_data_directory_with_no_server(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101")
    archive_session(make_session(tmp_path, "2000010102", batches=2))
    make_session(tmp_path, "2000010103", batches=1, per_batch=4, ended=False)

    done = tickertape("sessions", "list", "--data", str(tmp_path))

    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["ID", "STATE", "MESSAGES", "BYTES"]
    assert [row.split() for row in rows] == [
        ["2000010101", "ended", "30", str(files_size(tmp_path / "2000010101"))],
        ["2000010102", "archived", "20", str(files_size(tmp_path / "2000010102"))],
        ["2000010103", "active", "4", str(files_size(tmp_path / "2000010103"))],
    ]
    assert done.stderr == ""


def test_list_points_at_a_damaged_session(tmp_path: Path) -> None:
    directory = make_session(tmp_path, "2000010101")
    os.truncate(directory / "log", 15 * PACKET_SIZE)
    done = tickertape("sessions", "list", "--data", str(tmp_path))
    assert done.returncode == 0
    assert done.stdout.splitlines()[1].split()[:3] == ["2000010101", "ended", "10"]
    assert done.stderr == (
        "tickertape: session 2000010101 fails its checks (3 problems); "
        "tickertape sessions verify 2000010101 says where\n"
    )


def test_one_of_a_thing_is_not_plural(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101", batches=1, per_batch=1)
    done = tickertape("sessions", "verify", "2000010101", "--data", str(tmp_path))
    assert done.stdout == "session 2000010101: clean: 1 message (log and index checked)\n"
    directory = make_session(tmp_path, "2000010201", batches=1, per_batch=1)
    index = bytearray((directory / "index").read_bytes())
    index[0] ^= 0x01  # one flipped bit in the one index record: one problem
    (directory / "index").write_bytes(bytes(index))
    done = tickertape("sessions", "list", "--data", str(tmp_path))
    assert "(1 problem);" in done.stderr
    done = tickertape("sessions", "export", "2000010201", "--data", str(tmp_path))
    assert "(1 problem): exporting the 1 intact message only;" in done.stderr
    done = tickertape("sessions", "verify", "2000010201", "--data", str(tmp_path))
    assert done.stdout.startswith("session 2000010201: DAMAGED: 1 problem (")


def test_list_as_json(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101", batches=1)
    done = tickertape("sessions", "list", "--data", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.split()
        == (
            "[ { "
            + '"id": "2000010101", "state": "ended", "messages": 10, '
            + f'"bytes": {files_size(tmp_path / "2000010101")}, "problems": 0 '
            + "} ]"
        ).split()
    )


def test_list_says_when_there_is_nothing_to_list(tmp_path: Path) -> None:
    done = tickertape("sessions", "list", "--data", str(tmp_path))
    assert (done.returncode, done.stdout) == (0, f"no sessions in {tmp_path}\n")
    done = tickertape("sessions", "list", "--data", str(tmp_path / "missing"))
    assert done.returncode == 1
    assert done.stderr == (
        f"tickertape: no data directory {tmp_path / 'missing'}: "
        "give the one the server uses with --data\n"
    )


def test_show_one_session(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101")
    done = tickertape("sessions", "show", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    assert fields["session"].strip() == "2000010101"
    assert fields["state"].strip() == "ended"
    assert fields["messages"].strip() == "30"
    assert fields["log bytes"].strip() == str(30 * PACKET_SIZE)
    assert fields["directory"].strip() == str(tmp_path / "2000010101")
    assert fields["problems"].strip() == "none"
    assert fields["format"].strip() == "1"  # no format file: made by an older release


def test_show_gives_the_format_version_and_refuses_a_newer_one(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101")
    (tmp_path / "2000010101" / "format").write_text("tickertape-session 1\n")
    done = tickertape("sessions", "show", "2000010101", "--data", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == 1
    (tmp_path / "2000010101" / "format").write_text("tickertape-session 7\n")
    done = tickertape("sessions", "show", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr == (
        f"tickertape: {tmp_path / '2000010101' / 'format'} says format version 7, newer than "
        "this release of tickertape reads (version 1): use the release that wrote it\n"
    )
    done = tickertape("sessions", "list", "--data", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "2000010101" not in done.stdout
    assert "version 7" in done.stderr
    assert (tmp_path / "2000010101" / "format").read_text() == "tickertape-session 7\n"


def test_show_an_unknown_session_says_what_there_is(tmp_path: Path) -> None:
    """Every session there is named, archived ones too (they used to be left out)."""
    for number in range(1, 8):
        make_session(tmp_path, f"200001010{number}")
    for number in (1, 2):
        archive_session(tmp_path / f"200001010{number}")
    done = tickertape("sessions", "show", "2000010109", "--data", str(tmp_path))
    assert done.returncode == 1
    listed = ", ".join(f"200001010{n} ({'archived' if n <= 2 else 'ended'})" for n in range(1, 8))
    assert done.stderr == (
        f"tickertape: no session 2000010109 in {tmp_path} (sessions there: {listed})\n"
    )
    done = tickertape("sessions", "show", "yesterday", "--data", str(tmp_path))
    assert done.returncode == 2  # refused when parsing, like every malformed value
    assert "argument ID: 'yesterday' is not a session id: ids are YYYYMMDDNN" in done.stderr


def test_verify_a_clean_session(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101")
    done = tickertape("sessions", "verify", "2000010101", "--data", str(tmp_path))
    assert (done.returncode, done.stdout) == (
        0,
        "session 2000010101: clean: 30 messages (log and index checked)\n",
    )


def test_verify_finds_a_log_truncated_by_hand_and_says_where(tmp_path: Path) -> None:
    directory = make_session(tmp_path, "2000010101")
    batch = 10 * PACKET_SIZE
    # Into the second batch (messages 11..20): 5 whole packets and 5 bytes of the sixth.
    os.truncate(directory / "log", batch + 5 * PACKET_SIZE + 5)
    index_before = (directory / "index").read_bytes()

    done = tickertape("sessions", "verify", "2000010101", "--data", str(tmp_path))

    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "session 2000010101: DAMAGED: 3 problems (log and index checked)",
        f"  log is shorter ({batch + 5 * PACKET_SIZE + 5} bytes) than the index says "
        f"({2 * batch}); the batch from sequence 11 is incomplete",
        "  the index lists messages up to sequence 30 but the log holds only up to 10: "
        "20 messages are missing",
        f"  {5 * PACKET_SIZE + 5} bytes from offset {batch} (sequence 11 on) not served: "
        "damaged, or following damage",
        "messages 1..10 intact; nothing was changed (verify only reads)",
    ]
    assert (directory / "log").stat().st_size == batch + 5 * PACKET_SIZE + 5
    assert (directory / "index").read_bytes() == index_before


def test_verify_finds_a_flipped_bit(tmp_path: Path) -> None:
    directory = make_session(tmp_path, "2000010101")
    log = bytearray((directory / "log").read_bytes())
    log[10 * PACKET_SIZE + 7] ^= 0x01  # a payload byte of message 11
    (directory / "log").write_bytes(log)

    done = tickertape("sessions", "verify", "2000010101", "--data", str(tmp_path))

    assert done.returncode == 1
    assert f"batch at offset {10 * PACKET_SIZE} (sequence 11..20) fails its checksum" in (
        done.stdout
    )
    assert "messages 1..10 intact" in done.stdout


def test_verify_an_archived_session(tmp_path: Path) -> None:
    directory = make_session(tmp_path, "2000010101")
    archive_session(directory)
    done = tickertape("sessions", "verify", "2000010101", "--data", str(tmp_path))
    assert (done.returncode, done.stdout) == (
        0,
        "session 2000010101: clean: 30 messages (archive log.zst checked)\n",
    )

    archive = bytearray((directory / ARCHIVE_FILE).read_bytes())
    archive[20] ^= 0x01  # inside the first (and only) chunk
    (directory / ARCHIVE_FILE).write_bytes(archive)
    done = tickertape("sessions", "verify", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 1
    assert "DAMAGED: 1 problem " in done.stdout
    assert "chunk 0 of" in done.stdout
    assert "(sequence 1..30, log offset 0) fails its checksum" in done.stdout
    assert "no message intact" in done.stdout


# ---------------------------------------------------------------------------- export


def expected_export(form: str, first: int, last: int) -> bytes:
    out = b""
    for seq in range(first, last + 1):
        data = payload(seq)
        if form == "text":
            out += b"%d %s\n" % (seq, data.rstrip(b" "))
        elif form == "hex":
            out += b"%d %s\n" % (seq, data.hex().encode())
        elif form == "raw":
            out += len(data).to_bytes(2, "big") + data
        else:
            out += len(data + b"S").to_bytes(2, "big") + b"S" + data
    return out


@pytest.mark.parametrize("form", ["text", "hex", "raw", "soupbin"])
@pytest.mark.parametrize("archived", [False, True], ids=["log", "archive"])
def test_export_formats(tmp_path: Path, form: str, archived: bool) -> None:
    directory = make_session(tmp_path, "2000010101")
    log = (directory / "log").read_bytes()
    if archived:
        archive_session(directory)
    common = ("sessions", "export", "2000010101", "--data", str(tmp_path), "--format", form)

    done = tickertape_bytes(*common, "--from", "8", "--to", "23")  # across three batches
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_export(form, 8, 23)
    assert done.stderr == b""  # no progress bar: stderr is not a terminal

    done = tickertape_bytes(*common)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_export(form, 1, 30)
    if form == "soupbin":
        assert done.stdout == log  # the log is the wire format


def test_export_text_reads_like_tail(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101", batches=1, per_batch=3)
    done = tickertape("sessions", "export", "2000010101", "--data", str(tmp_path))
    assert done.stdout == "1 m1\n2 m2\n3 m3\n"


def test_export_past_the_end_and_backwards_ranges_are_refused(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101")
    common = ("sessions", "export", "2000010101", "--data", str(tmp_path))
    done = tickertape(*common, "--from", "31")
    assert (done.returncode, done.stderr) == (
        1,
        "tickertape: --from 31: session 2000010101 holds messages 1..30\n",
    )
    done = tickertape(*common, "--from", "5", "--to", "4")  # refused before reading
    assert done.returncode == 2
    assert done.stderr.endswith("error: --to 4 is before --from 5\n")
    done = tickertape(*common, "--from", "0")
    assert done.returncode == 2
    assert "sequence numbers start at 1" in done.stderr
    done = tickertape(*common, "--from", "29", "--to", "1000")  # stops at the end
    assert (done.returncode, done.stdout) == (0, "29 m29\n30 m30\n")


def test_export_of_a_damaged_log_gives_the_intact_part_and_says_so(tmp_path: Path) -> None:
    directory = make_session(tmp_path, "2000010101")
    os.truncate(directory / "log", 25 * PACKET_SIZE + 1)
    done = tickertape("sessions", "export", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 0
    assert done.stdout.encode() == expected_export("text", 1, 20)
    assert "exporting the 20 intact messages only" in done.stderr


def test_export_draws_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101")
    controller, terminal = pty.openpty()
    try:
        export = ("sessions", "export", "2000010101", "--data", str(tmp_path))
        done = subprocess.run(
            [sys.executable, "-m", "tickertape", *export],
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=30,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    assert done.stdout == expected_export("text", 1, 30)
    assert b"100% 30/30 messages" in drawn


# ---------------------------------------------------------------------------- archive


def test_archive_offline(tmp_path: Path) -> None:
    directory = make_session(tmp_path, "2000010101")
    done = tickertape("sessions", "archive", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 0, done.stderr
    archived = (directory / ARCHIVE_FILE).stat().st_size
    assert done.stdout.startswith(
        f"session 2000010101 archived: 30 messages, {30 * PACKET_SIZE} bytes into {archived} ("
    )
    assert not (directory / "log").exists()

    done = tickertape("sessions", "archive", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 1
    assert "session 2000010101 is already archived" in done.stderr


def test_archive_offline_refuses_a_session_that_has_not_ended(tmp_path: Path) -> None:
    make_session(tmp_path, "2000010101", ended=False)
    done = tickertape("sessions", "archive", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 1
    assert "session 2000010101 has not ended" in done.stderr
    assert "Traceback" not in done.stderr


def test_archive_offline_refuses_a_directory_a_server_holds(tmp_path: Path) -> None:
    directory = make_session(tmp_path, "2000010101")
    with ServerProcess(tmp_path) as server:
        done = tickertape("sessions", "archive", "2000010101", "--data", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr == (
        f"tickertape: data directory {tmp_path} is in use by tickertape process {server.pid}: "
        "archive through its admin API (tickertape sessions archive ID --admin-port PORT), "
        "or stop it first\n"
    )
    assert (directory / "log").exists()


# ---------------------------------------------------------------------------- the admin API


def test_roll_end_list_show_and_archive_through_the_admin_api(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    data = tmp_path / "data"
    with admin_server(data, "--admin-token-file", str(token_file)) as (server, port):
        first = server.wait_for_log("session ").split("session ")[1].split()[0]
        second = str(SessionId.parse(first).next_roll())
        third = str(SessionId.parse(second).next_roll())
        admin = ("--admin-port", str(port))

        done = tickertape("sessions", "roll", *admin, "--admin-token", TOKEN)
        assert (done.returncode, done.stdout) == (
            0,
            f"session {first} ended; session {second} is active\n",
        )
        done = tickertape("sessions", "roll", *admin, "--admin-token-file", str(token_file))
        assert (done.returncode, done.stdout) == (
            0,
            f"session {second} ended; session {third} is active\n",
        )

        done = tickertape("sessions", "list", *admin)
        assert done.returncode == 0, done.stderr
        assert [row.split()[:3] for row in done.stdout.splitlines()[1:]] == [
            [first, "ended", "0"],
            [second, "ended", "0"],
            [third, "active", "0"],
        ]
        done = tickertape("sessions", "show", third, *admin)
        assert done.returncode == 0, done.stderr
        assert "state:          active" in done.stdout
        assert "format:         1" in done.stdout
        done = tickertape("sessions", "show", "2000010101", *admin)
        assert done.returncode == 1
        assert done.stderr.startswith(f"tickertape: no session 2000010101 in {data} (")

        done = tickertape("sessions", "archive", first, *admin, "--admin-token", TOKEN)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"session {first} archived: 0 messages, 0 bytes into ")
        assert (data / first / ARCHIVE_FILE).exists()
        done = tickertape("sessions", "archive", third, *admin, "--admin-token", TOKEN)
        assert done.returncode == 1
        assert f"session {third} is the active session and cannot be archived" in done.stderr

        # Offline reading works beside the running server.
        done = tickertape("sessions", "verify", first, "--data", str(data))
        assert done.returncode == 0, done.stdout
        done = tickertape("sessions", "verify", third, "--data", str(data))
        assert done.returncode == 0, done.stdout
        assert f"session {third} is being written by tickertape process {server.pid}" in (
            done.stderr
        )


def test_changes_without_the_token_are_refused(tmp_path: Path) -> None:
    with admin_server(tmp_path, "--admin-token", TOKEN) as (server, port):
        admin = ("--admin-port", str(port))
        done = tickertape("sessions", "roll", *admin)
        assert done.returncode == 1
        assert done.stderr.startswith(
            "tickertape: the server refused: this call changes the server and needs the admin token"
        )
        done = tickertape("sessions", "roll", *admin, "--admin-token", "guess")
        assert done.returncode == 1
        assert "tickertape: the server refused: wrong admin token" in done.stderr
        assert not server.logged("ended after")


def test_a_server_without_a_token_refuses_every_change(tmp_path: Path) -> None:
    with admin_server(tmp_path) as (server, port):
        assert server.logged("(read-only: start with --admin-token to allow changes)")
        done = tickertape("sessions", "roll", "--admin-port", str(port), "--admin-token", "x")
        assert done.returncode == 1
        assert "start it with --admin-token TOKEN" in done.stderr


def test_there_is_one_way_to_end_a_session_roll() -> None:
    done = tickertape("sessions", "end", "--admin-port", "1")
    assert done.returncode == 2
    assert "invalid choice: 'end'" in done.stderr
    done = tickertape("sessions", "roll", "--help")
    assert "the next session of the day opens at once" in " ".join(done.stdout.split())
    assert "There is no separate 'end'" in " ".join(done.stdout.split())


def test_roll_says_when_no_server_answers(tmp_path: Path) -> None:
    port = free_port()
    done = tickertape("sessions", "roll", "--admin-port", str(port), "--admin-token", TOKEN)
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"tickertape: cannot reach a tickertape admin API at 127.0.0.1:{port} ("
    )
    assert done.stderr.endswith(f"is the server running, started with --admin-port {port}?\n")


def test_list_says_when_the_port_is_not_an_admin_api() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer_nonsense() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"\x00\x05Hhello")

        answering = threading.Thread(target=answer_nonsense, daemon=True)
        answering.start()
        done = tickertape("sessions", "list", "--admin-port", str(port))
        answering.join(10)
    assert done.returncode == 1
    assert f"what answers at 127.0.0.1:{port} is not a tickertape admin API" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_token_file_is_reported(tmp_path: Path) -> None:
    done = tickertape(
        "sessions", "roll", "--admin-port", "1", "--admin-token-file", str(tmp_path / "none")
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"tickertape: cannot read the admin token file {tmp_path}")


# ---------------------------------------------------------------------------- serve


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--roll-at", "25:00"], "--roll-at 25:00: expected HH:MM"),
        (["--timezone", "Mars/Olympus"], "--timezone Mars/Olympus: unknown time zone"),
        (["--admin-token", "x"], "--admin-token and --admin-token-file need --admin-port"),
        (["--admin-port", "70000"], "70000 is not a port number"),
    ],
)
def test_serve_refuses_bad_schedule_and_admin_options(
    tmp_path: Path, option: list[str], message: str
) -> None:
    done = tickertape("serve", "--data", str(tmp_path), *option)
    assert done.returncode == 2
    assert message in done.stderr


def test_serve_rolls_on_the_schedule_it_is_given(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--roll-at", "17:30", "--timezone", "Asia/Tokyo") as server:
        line = server.wait_for_log("next roll at")
    assert line.endswith("T17:30:00+09:00")


def test_serve_says_when_the_admin_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = tickertape(
            "serve", "--data", str(tmp_path), "--port", "0", "--admin-port", str(port)
        )
    assert done.returncode == 1
    assert f"tickertape: cannot listen for the admin API on 127.0.0.1:{port}" in done.stderr
