"""``serve --config FILE.toml`` and ``--check-config`` on real server processes, and the
secrets kept off the command line: ``--upstream-password-file``, ``tail``/``publish``
``--password-file`` and ``TICKERTAPE_PASSWORD``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tickertape.cli.config import apply_config, read_config
from tickertape.cli.main import build_parser
from tickertape.errors import ConfigError
from tickertape.wire.soupbintcp import LoginAccepted, LoginRejected, SequencedData

from support import ServerProcess, SoupClient, free_port

TIMEOUT = 30.0
SECRET = "s3cret"
TOKEN = "t0ken-very-s3cret"


def tickertape(*args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if k != "TICKERTAPE_PASSWORD"}
    return subprocess.run(
        [sys.executable, "-m", "tickertape", *args],
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        env=dict(environ, **env),
        check=False,
    )


def every_type(tmp_path: Path, admin_port: int, file_port: int) -> Path:
    """A configuration file with an option of every type."""
    path = tmp_path / "tickertape.toml"
    path.write_text(
        f"""
port = {file_port}                  # an integer (the command line's wins)
data = "{tmp_path / "not-this"}"   # a string (likewise)
demo = 200.5                       # a number
demo-size = 40                     # an integer (the command line's wins)
durability = "always"              # a choice
log_format = "json"                # a choice, spelled with an underscore
verbose = true                     # a switch
user = "ann:{SECRET}"              # a secret
admin-port = {admin_port}
admin-token = "{TOKEN}"            # a secret
idle-timeout = 7.5
roll-at = "23:59"
"""
    )
    return path


def login(port: int, user: str, password: str) -> list[object]:
    async def go() -> list[object]:
        client = await SoupClient.login(port, user=user, password=password)
        try:
            first = await client.answer()
            if not isinstance(first, LoginAccepted):
                return [first]
            return [first, await client.packet()]
        finally:
            client.close()

    return asyncio.run(go())


def roll(admin_port: int, token: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/roll",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_serve_takes_every_option_type_from_the_file_and_the_command_line_wins(
    tmp_path: Path,
) -> None:
    admin_port, file_port = free_port(), free_port()
    config = every_type(tmp_path, admin_port, file_port)
    # ServerProcess gives --host, --port 0 and --data on the command line.
    with ServerProcess(tmp_path / "data", "--config", str(config), "--demo-size", "50") as server:
        assert server.port != file_port
        accepted, message = login(server.port, "ann", SECRET)
        assert isinstance(accepted, LoginAccepted)
        assert isinstance(message, SequencedData) and len(message.payload) == 50
        (refused,) = login(server.port, "", "")  # with user = ..., nobody else
        assert isinstance(refused, LoginRejected)
        assert roll(admin_port, "wrong") in (401, 403)
        assert roll(admin_port, TOKEN) == 200
        server.wait_for_log("ended after")
        assert "T23:59:00" in server.wait_for_log("next roll at")  # roll-at = "23:59"
    entries = [json.loads(line) for line in server.lines]  # log_format = "json"
    assert any(e["level"] == "debug" for e in entries)  # verbose = true
    ended = next(e for e in entries if "ended after" in e["message"])
    assert len(ended["session"]) == 10 and ended["sequence"] > 0, ended
    assert (tmp_path / "data").is_dir() and not (tmp_path / "not-this").exists()


def test_check_config_prints_the_effective_values_with_secrets_masked(tmp_path: Path) -> None:
    admin_port, file_port = free_port(), free_port()
    config = every_type(tmp_path, admin_port, file_port)
    done = tickertape("serve", "--config", str(config), "--demo-size", "50", "--check-config")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert SECRET not in out and TOKEN not in out, out
    effective = tomllib.loads(out)  # it is a configuration file again
    assert effective["port"] == file_port
    assert effective["data"] == str(tmp_path / "not-this")
    assert effective["demo"] == 200.5
    assert effective["demo-size"] == 50  # the command line's
    assert effective["durability"] == "always"
    assert effective["log-format"] == "json"
    assert effective["verbose"] is True
    assert effective["allow-anonymous"] is False  # a default
    assert effective["user"] == "ann:********"
    assert effective["admin-token"] == "********"
    assert effective["admin-port"] == admin_port
    assert effective["idle-timeout"] == 7.5
    assert effective["roll-at"] == "23:59"
    assert effective["max-connections"] == 10000
    assert "# mold is not set" in out
    assert not (tmp_path / "not-this").exists()  # nothing was started


def test_check_config_masks_the_upstream_password_and_reads_its_file(tmp_path: Path) -> None:
    url = f"soupbintcp://127.0.0.1:9?user=ann&password={SECRET}&session=2026120701"
    done = tickertape("serve", "--upstream", url, "--check-config")
    assert done.returncode == 0, done.stderr
    out = tomllib.loads(done.stdout.decode())
    assert SECRET not in done.stdout.decode()
    assert out["upstream"] == (
        "soupbintcp://127.0.0.1:9?user=ann&password=********&session=2026120701"
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    done = tickertape(
        "serve", "--upstream", "soupbintcp://127.0.0.1:9?user=ann",
        "--upstream-password-file", str(empty), "--check-config",
    )  # fmt: skip
    assert done.returncode == 2
    assert f"the upstream password file {empty} is empty" in done.stderr.decode()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("colour = 1", "unknown key 'colour'"),
        ("port = '9000'", "port takes an integer, not '9000'"),
        ("port = 9.5", "port takes an integer, not 9.5"),
        ("demo = 'fast'", "demo takes a number, not 'fast'"),
        ("demo = -1", "demo = -1: -1 is not a positive number"),
        ("verbose = 'yes'", "verbose is a switch: true or false, not 'yes'"),
        ("durability = 'often'", "durability = 'often': not one of none, batch, always"),
        ("admin-port = 70000", "admin-port = 70000"),
        ("host = ['a', 'b']", "host takes one value"),
        ("port = 1\nport = 2", "is not valid TOML"),
        ("port = 1\nPORT = 2", "unknown key 'PORT'"),
        ("demo-size = 1\ndemo_size = 2", "demo_size is given twice"),
        ("admin-token = 'a'\nadmin-token-file = 'b'", "admin-token and admin-token-file"),
        ("config = 'other.toml'", "unknown key 'config'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    done = tickertape("serve", "--config", str(path), "--check-config")
    assert done.returncode == 2, done
    error = done.stderr.decode()
    assert str(path) in error and said in error, error
    assert done.stdout == b""


def test_check_config_refuses_options_that_do_not_go_together(tmp_path: Path) -> None:
    path = tmp_path / "mold.toml"
    path.write_text("mold-ttl = 4\n")  # without mold
    done = tickertape("serve", "--config", str(path), "--check-config")
    assert done.returncode == 2
    assert "--mold-iface, --mold-ttl and --mold-eos-seconds need --mold" in done.stderr.decode()
    missing = tmp_path / "nowhere.toml"
    done = tickertape("serve", "--config", str(missing), "--check-config")
    assert done.returncode == 2
    assert f"cannot read the configuration file {missing}" in done.stderr.decode()


def test_the_command_line_chooses_between_exclusive_options(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    path = tmp_path / "c.toml"
    path.write_text("admin-port = 9999\nadmin-token = 'from-the-file'\n")
    done = tickertape(
        "serve", "--config", str(path), "--admin-token-file", str(token), "--check-config"
    )
    assert done.returncode == 0, done.stderr
    out = tomllib.loads(done.stdout.decode())
    assert out["admin-token-file"] == str(token)
    assert "admin-token" not in out  # the file's token gave way


def test_a_repeatable_option_takes_a_list(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", action="append", type=int)
    parser.add_argument("--name")
    path = tmp_path / "c.toml"
    path.write_text("tag = [1, 2]\nname = 'x'\n")
    assert read_config(parser, path) == {"tag": [1, 2], "name": "x"}
    path.write_text("tag = 1\n")
    with pytest.raises(ConfigError, match="tag may be repeated: give a list, not 1"):
        read_config(parser, path)
    path.write_text("tag = [1, 'two']\n")
    with pytest.raises(ConfigError, match="tag takes an integer, not 'two'"):
        read_config(parser, path)


# ------------------------------------------------------------------ client passwords


def test_tail_and_publish_take_the_password_from_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    with ServerProcess(tmp_path / "data", "--user", f"ann:{SECRET}") as server:
        port = str(server.port)
        done = tickertape(
            "publish", "--port", port, "--user", "ann", "--password-file", str(secret),
            stdin=b"one\ntwo\nthree\n",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        tail = ("tail", "--port", port, "--user", "ann", "--count", "3")
        done = tickertape(*tail, "--password-file", str(secret))
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().split("\n")[:3] == ["1 one", "2 two", "3 three"]
        done = tickertape(*tail, TICKERTAPE_PASSWORD=SECRET)
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().startswith("1 one\n")
        done = tickertape(*tail, TICKERTAPE_PASSWORD="wrong")  # it is the one used
        assert done.returncode != 0 and done.stdout == b""
        assert "reject" in done.stderr.decode().lower(), done.stderr
        done = tickertape(*tail, "--password", SECRET, "--password-file", str(secret))
        assert done.returncode == 2
        assert "not both" in done.stderr.decode()
        done = tickertape(*tail, "--password-file", str(tmp_path / "nothing"))
        assert done.returncode == 2
        assert "cannot read the password file" in done.stderr.decode()


def test_tail_asks_for_the_password_on_a_terminal(tmp_path: Path) -> None:
    """``--user`` without a password, stdin a terminal (a pty the child controls): the
    password is asked for, not echoed, and used."""
    with ServerProcess(tmp_path / "data", "--user", f"ann:{SECRET}", "--demo", "100") as server:
        command = [
            sys.executable, "-m", "tickertape", "tail", "--port", str(server.port),
            "--user", "ann", "--count", "2",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "TICKERTAPE_PASSWORD"}
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal
            os.execve(sys.executable, command, env)
        seen = b""
        try:
            deadline = time.monotonic() + TIMEOUT
            while b"password for ann: " not in seen:
                assert time.monotonic() < deadline, seen
                if select.select([fd], [], [], 0.2)[0]:
                    seen += os.read(fd, 1024)
            os.write(fd, SECRET.encode() + b"\n")
            while True:
                assert time.monotonic() < deadline, seen
                if select.select([fd], [], [], 0.2)[0]:
                    try:
                        chunk = os.read(fd, 1024)
                    except OSError:  # EIO: the child is gone
                        break
                    if not chunk:
                        break
                    seen += chunk
        finally:
            _, status = os.waitpid(pid, 0)
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    assert SECRET.encode() not in seen  # not echoed
    lines = seen.split(b"password for ann: ", 1)[1].split(b"\r\n")
    assert [line.split(b" ")[0] for line in lines if line.strip()][:2] == [b"1", b"2"], seen


def test_a_repeated_option_on_the_command_line_replaces_the_files_list(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", action="append", type=int)
    path = tmp_path / "c.toml"
    path.write_text("tag = [1, 2]\n")
    apply_config(parser, path, ["--tag", "3"])
    assert parser.parse_args(["--tag", "3"]).tag == [3]
    apply_config(parser, path, [])
    assert parser.parse_args([]).tag == [1, 2]


def test_the_deploy_files_name_only_options_that_exist() -> None:
    """deploy/tickertape.toml's keys and the unit's ExecStart= are serve's options."""
    deploy = Path(__file__).resolve().parents[3] / "deploy"
    serve = build_parser().parse_args(["serve"]).subparser
    values = read_config(serve, deploy / "tickertape.toml")
    assert values["log_format"] == "json" and values["port"] == 7300
    unit = (deploy / "tickertape.service").read_text()
    (start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    words = start.split()[1:]  # after the program
    assert words[0] == "serve"
    args = build_parser().parse_args(words)
    assert args.config == Path("/etc/tickertape/tickertape.toml")
    assert "Type=notify" in unit and "WatchdogSec=" in unit


@pytest.mark.parametrize("how", ["file", "environment"])
def test_a_relay_takes_its_upstream_password_from_a_file_or_the_environment(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "upstream-password"
    secret.write_text(SECRET + "\n")
    upstream = ServerProcess(
        tmp_path / "up", "--user", f"ann:{SECRET}", "--demo", "100", "--demo-count", "5"
    )
    with upstream:
        url = f"soupbintcp://127.0.0.1:{upstream.port}?user=ann"
        extra = ("--upstream-password-file", str(secret)) if how == "file" else ()
        if how == "environment":
            monkeypatch.setenv("TICKERTAPE_UPSTREAM_PASSWORD", SECRET)
        relay = ServerProcess(tmp_path / "down", "--upstream", url, *extra).start()
        try:
            done = tickertape("tail", "--port", str(relay.port), "--count", "5")
            assert done.returncode == 0, done.stderr
            assert [line.split()[0] for line in done.stdout.decode().splitlines()] == [
                "1", "2", "3", "4", "5",
            ]  # fmt: skip
            assert SECRET not in " ".join(relay.lines)
        finally:
            relay.stop()


def test_follow_refuses_what_the_file_sets_for_a_writing_server(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("demo-size = 50\nlog-level = 'debug'\n")
    done = tickertape("serve", "--follow", str(tmp_path), "--config", str(path), "--check-config")
    assert done.returncode == 2
    assert f"--follow takes none of demo-size (in {path})" in done.stderr.decode()
