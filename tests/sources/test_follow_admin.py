"""``serve --follow DIR --admin-port PORT``: a follower serves the admin API, read-only:
what it follows is shown; every change is refused and points at the writing server."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support import ServerProcess, free_port, until_sync

TOKEN = "writer-token"
TIMEOUT = 30.0


def call(port: int, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            return int(response.status), json.load(response)
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.load(exc)


def test_a_follower_serves_the_admin_api_read_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    writer_port, follower_port = free_port(), free_port()
    writer_args = ("--admin-port", str(writer_port), "--admin-token", TOKEN)
    with ServerProcess(data, *writer_args, "--demo", "200") as writer:
        writer.wait_for_log("admin API listening")
        with ServerProcess(data, "--admin-port", str(follower_port), follow=True) as follower:
            started = follower.wait_for_log("admin API listening")
            assert "read-only" in started and str(data) in started, started
            status, ended = call(writer_port, "POST", "/roll", TOKEN)
            assert status == 200, ended

            def following() -> dict[str, Any] | None:
                status, shown = call(follower_port, "GET", "/status")
                assert status == 200, shown
                new = shown["session"] == ended["session"] and shown["next_seq"] > 1
                return shown if new else None

            shown = until_sync(following, "the follower following the new session", TIMEOUT, 0.05)
            assert shown["publishing_error"] is None
            status, listed = call(follower_port, "GET", "/sessions")
            assert status == 200
            assert listed["active"] == ended["session"]
            states = {row["id"]: row["state"] for row in listed["sessions"]}
            assert states == {ended["ended"]: "ended", ended["session"]: "active"}
            status, detail = call(follower_port, "GET", f"/sessions/{ended['ended']}")
            assert status == 200 and detail["state"] == "ended", detail

            for path in ("/roll", f"/sessions/{ended['ended']}/archive"):
                status, answer = call(follower_port, "POST", path, TOKEN)
                assert status == 403, (path, answer)
                assert f"follows {data}" in answer["error"], answer
                assert "admin API of the server writing it" in answer["error"], answer
            status, shown = call(writer_port, "GET", "/status")
            assert shown["session"] == ended["session"], "the follower changed nothing"
            assert not (data / ended["ended"] / "log.zst").exists()


def test_serve_help_says_what_follow_takes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tickertape", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    text = " ".join(done.stdout.split())
    assert "takes only --host, --port, --user and --verbose" not in text
    assert "--admin-port (read-only)" in text, text


def test_follow_takes_no_admin_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "tickertape", "serve", "--follow", str(tmp_path)),
            *("--admin-port", str(free_port()), "--admin-token", TOKEN),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert "it takes no --admin-token" in done.stderr, done.stderr
