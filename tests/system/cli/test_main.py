"""The ``tickertape`` command, run as a user would: real subprocesses and sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tickertape.cli.main import build_parser
from tickertape.cli.serve import server_config

from support import ServerProcess


def tickertape(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_tail_prints_the_first_five_demo_messages(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--demo", "1000") as server:
        done = tickertape("tail", "--port", str(server.port), "--count", "5")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4", "5"]
    # each demo payload starts with its own sequence number
    assert all(line.split()[1] == line.split()[0] for line in lines)


def test_tail_from_0_prints_consecutive_live_messages(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--demo", "1000") as server:
        done = tickertape("tail", "--port", str(server.port), "--count", "5", "--from", "0")
    assert done.returncode == 0, done.stderr
    numbers = [int(line.split()[0]) for line in done.stdout.splitlines()]
    assert numbers == list(range(numbers[0], numbers[0] + 5))


def test_tail_hex_format(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--demo", "1000") as server:
        done = tickertape("tail", "--port", str(server.port), "--count", "1", "--format", "hex")
    assert done.returncode == 0, done.stderr
    seq, text = done.stdout.split()
    payload = bytes.fromhex(text)
    assert seq == "1"
    assert payload.startswith(b"1 ")
    assert payload.rstrip().endswith(b" demo")
    assert len(payload) == 100


def test_tail_of_an_unknown_session_says_so(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        done = tickertape("tail", "--port", str(server.port), "--session", "1999010101")
    assert done.returncode == 1
    assert "not available" in done.stderr


def test_publish_of_one_line_says_one_message(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        done = subprocess.run(
            [sys.executable, "-m", "tickertape", "publish", "--port", str(server.port)],
            input="hello\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("published 1 message into session "), done.stderr


def test_tail_says_where_the_session_ended(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--demo", "2000", "--demo-count", "30", "--demo-end") as server:
        first = server.wait_for_log(" open at ").split("session ")[1].split()[0]
        server.wait_for_log("ended after 30 messages")
        done = tickertape("tail", "--port", str(server.port), "--session", first)
        stopped = tickertape("tail", "--port", str(server.port), "--session", first, "--count", "3")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 30
    assert done.stderr.splitlines()[-1] == f"session {first} ended at sequence 30"
    # stopped by --count, not by End of Session: nothing to say
    assert (stopped.returncode, stopped.stderr) == (0, "")


@pytest.mark.parametrize("verb", ["serve", "tail"])
def test_every_verb_has_help(verb: str) -> None:
    done = tickertape(verb, "--help")
    assert done.returncode == 0
    assert "usage: tickertape " + verb in done.stdout


def test_python_m_tickertape_cli_is_the_tickertape_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickertape.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("usage: tickertape ")
    for verb in ("serve", "publish", "tail", "sessions", "users", "bench"):
        assert verb in done.stdout


def test_serve_refuses_credentials_soupbintcp_cannot_carry(tmp_path: Path) -> None:
    done = tickertape("serve", "--data", str(tmp_path), "--user", "toolongname:pw")
    assert done.returncode == 2
    assert "at most 6 characters" in done.stderr


def test_serve_says_when_the_port_is_taken(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "a") as server:
        done = tickertape("serve", "--data", str(tmp_path / "b"), "--port", str(server.port))
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{server.port}" in done.stderr


def test_serve_refuses_a_demo_message_soupbintcp_cannot_carry(tmp_path: Path) -> None:
    done = tickertape("serve", "--data", str(tmp_path), "--demo", "1", "--demo-size", "70000")
    assert done.returncode == 2
    assert "a SoupBinTCP message holds 1 to 65534 bytes" in done.stderr


def test_serve_says_when_the_data_directory_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    done = tickertape("serve", "--data", str(tmp_path / "file"))
    assert done.returncode == 1
    assert f"cannot use data directory {tmp_path / 'file'}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    with ServerProcess(tmp_path) as server:
        done = tickertape("serve", "--data", str(tmp_path), "--port", "0")
    assert done.returncode == 1
    assert f"is in use by tickertape process {server.pid}" in done.stderr


def test_a_finite_demo_with_demo_end_ends_its_session(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, "--demo", "2000", "--demo-count", "50", "--demo-end") as server:
        first = server.wait_for_log(" open at ").split("session ")[1].split()[0]
        # ends at End of Session, whether the session is still active or already ended
        done = tickertape("tail", "--port", str(server.port), "--session", first)
        server.wait_for_log("ended after 50 messages")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == [str(n) for n in range(1, 51)]
    sessions = sorted(p.name for p in tmp_path.iterdir() if p.name[0].isdigit())
    assert len(sessions) == 2
    assert (tmp_path / sessions[0] / "ended").exists()
    assert not (tmp_path / sessions[1] / "ended").exists()


def test_retention_options_are_checked(tmp_path: Path) -> None:
    done = tickertape("serve", "--data", str(tmp_path), "--delete-after", "-3")
    assert done.returncode == 2
    assert "-3: a number of days, 0 or more" in done.stderr
    done = tickertape("serve", "--data", str(tmp_path), "--demo", "5", "--demo-end")
    assert done.returncode == 2
    assert "--demo-end needs --demo-count" in done.stderr


def test_a_demo_too_large_for_moldudp64_stops_the_server_saying_why(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tickertape",
            "serve",
            "--data",
            str(tmp_path),
            "--port",
            "0",
            "--mold",
            "127.0.0.1:1",
            "--demo",
            "10",
            "--demo-size",
            "2000",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "a message of 2000 bytes cannot be published" in done.stderr
    assert "with --mold" in done.stderr


def test_every_limit_is_an_option_that_reaches_the_server() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--max-connections",
            "7",
            "--max-connections-per-source",
            "3",
            "--max-client-packet",
            "64",
            "--max-write-buffer",
            "65536",
            "--login-timeout",
            "2.5",
            "--idle-timeout",
            "4",
        ]
    )
    args.tls_context = None
    config = server_config(args)
    assert (config.max_connections, config.max_connections_per_source) == (7, 3)
    assert (config.max_client_packet, config.write_buffer_high) == (64, 65536)
    assert (config.timers.login_timeout, config.timers.idle_timeout) == (2.5, 4.0)


@pytest.mark.parametrize("option", ["--max-connections", "--max-client-packet"])
def test_a_limit_below_one_is_refused(option: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickertape", "serve", option, "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "must be at least 1" in done.stderr
