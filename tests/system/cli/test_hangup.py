"""``kill -HUP`` on real ``tickertape serve`` processes: it never stops a server; each
SIGHUP is one log line saying what was reloaded (or why nothing was); a users file that
does not load (empty, nested too deeply) is refused at start and, on SIGHUP, leaves the
users as they were."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme

from tickertape.auth.user import User
from tickertape.auth.users import Users
from tickertape.tls import client_context
from tickertape.wire.soupbintcp import LoginAccepted, LoginRejected, LoginRequest

from support import ServerProcess, SoupClient, free_port, until_sync

TIMEOUT = 30.0
NESTED = "[users.ann]\npassword = " + "[" * 5000 + "]" * 5000 + "\n"


def login(port: int, user: str = "", password: str = "") -> object:
    async def attempt() -> object:
        client = await SoupClient.login(port, user=user, password=password)
        try:
            return await asyncio.wait_for(client.answer(), TIMEOUT)
        finally:
            client.close()

    return asyncio.run(attempt())


def sighup_lines(server: ServerProcess) -> list[str]:
    return [line for line in list(server.lines) if "SIGHUP" in line]


def hangup(server: ServerProcess) -> str:
    """Send SIGHUP; the one line the server logs about it."""
    before = len(sighup_lines(server))
    os.kill(server.pid, signal.SIGHUP)

    def logged() -> bool:
        assert server.running(), "SIGHUP stopped the server:\n" + "\n".join(server.lines)
        return len(sighup_lines(server)) > before

    until_sync(logged, "a SIGHUP line", TIMEOUT, 0.01)
    lines = sighup_lines(server)
    assert len(lines) == before + 1, lines
    return lines[-1]


def roll_as(port: int, user: str, password: str) -> int:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/roll",
        method="POST",
        headers={"Authorization": f"Basic {credentials}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_sighup_does_not_stop_a_server_started_without_users(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        assert isinstance(login(server.port), LoginAccepted)
        for _ in range(2):
            line = hangup(server)
            assert "nothing to reload" in line, line
            assert isinstance(login(server.port), LoginAccepted)
        assert len(sighup_lines(server)) == 2
        assert server.stop() == 0


def test_sighup_does_not_stop_a_follower(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data), ServerProcess(data, follow=True) as follower:
        line = hangup(follower)
        assert "nothing to reload" in line, line
        assert isinstance(login(follower.port), LoginAccepted)
        assert follower.stop() == 0


def test_sighup_with_users_says_what_changed(tmp_path: Path) -> None:
    users_file = tmp_path / "users.toml"
    Users([User.create("ann", "annpass", ["subscriber"])]).save(users_file)
    admin_port = free_port()
    with ServerProcess(
        tmp_path / "data", "--users", str(users_file), "--admin-port", str(admin_port)
    ) as server:
        started = server.wait_for_log("admin API listening")
        assert "read-only" in started, started
        assert roll_as(admin_port, "boss", "bosspass") == 401

        Users(
            [
                User.create("boss", "bosspass", ["admin"]),
                User.create("carl", "carlpass", ["subscriber"]),
            ]
        ).save(users_file)
        line = hangup(server)
        assert "users file" in line and "reloaded" in line, line
        assert "added boss, carl" in line and "removed ann" in line, line
        assert "admin API now accepts changes from boss" in line, line
        assert roll_as(admin_port, "boss", "bosspass") == 200
        assert isinstance(login(server.port, "carl", "carlpass"), LoginAccepted)
        assert login(server.port, "ann", "annpass") == LoginRejected("A")

        Users([User.create("carl", "carlpass", ["subscriber"])]).save(users_file)
        line = hangup(server)
        assert "removed boss" in line, line
        assert "no user has the admin role: the admin API is read-only" in line, line
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "has no users"), ("# nobody yet\n", "has no users"), (NESTED, "nested too deeply")],
    ids=["empty", "comments-only", "nested"],
)
def test_a_users_file_that_does_not_load_is_refused_at_start(
    tmp_path: Path, text: str, why: str
) -> None:
    users_file = tmp_path / "users.toml"
    users_file.write_text(text)
    users_file.chmod(0o600)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "tickertape", "serve", "--port", "0"),
            *("--data", str(tmp_path / "data"), "--users", str(users_file)),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert why in done.stderr, done.stderr
    assert str(users_file) in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "has no users"), (NESTED, "nested too deeply")],
    ids=["empty", "nested"],
)
def test_a_users_file_that_does_not_load_on_sighup_keeps_the_old_users(
    tmp_path: Path, text: str, why: str
) -> None:
    users_file = tmp_path / "users.toml"
    Users([User.create("ann", "annpass", ["subscriber"])]).save(users_file)
    with ServerProcess(tmp_path / "data", "--users", str(users_file)) as server:
        users_file.write_text(text)
        line = hangup(server)
        assert "not reloaded" in line and why in line, line
        assert isinstance(login(server.port, "ann", "annpass"), LoginAccepted)
        assert len(sighup_lines(server)) == 1
        assert not server.logged("Traceback")
        assert server.stop() == 0


def tls_login(port: int, ca: trustme.CA, directory: Path) -> object:
    """Log in over TLS trusting only ``ca``: the server's first answer."""
    ca_file = directory / "trusted-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def attempt() -> object:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(ca_file), server_hostname="127.0.0.1"
        )
        try:
            client = SoupClient(reader, writer)
            writer.write(LoginRequest("", "", "", 1).encode())
            return await asyncio.wait_for(client.answer(), TIMEOUT)
        finally:
            writer.close()

    return asyncio.run(attempt())


def test_sighup_reloads_the_tls_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"

    def issue(ca: trustme.CA) -> None:
        issued = ca.issue_cert("127.0.0.1")
        issued.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))

    first, renewed = trustme.CA(), trustme.CA()
    issue(first)
    with ServerProcess(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        assert isinstance(tls_login(server.port, first, tmp_path), LoginAccepted)
        issue(renewed)
        line = hangup(server)
        assert f"TLS certificate {cert} reloaded" in line, line
        assert isinstance(tls_login(server.port, renewed, tmp_path), LoginAccepted)
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_login(server.port, first, tmp_path)

        # A key that is not the certificate's: the certificate in use stays.
        trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
        line = hangup(server)
        assert "the TLS certificate was not reloaded" in line, line
        assert "does not belong" in line and str(key) in line, line
        assert isinstance(tls_login(server.port, renewed, tmp_path), LoginAccepted)
        assert server.stop() == 0
