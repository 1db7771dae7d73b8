"""``tickertape cluster demo``: a whole cluster on this machine in one command, for
trying it: three nats-servers (:mod:`tickertape.cluster.local`) and three tickertape
nodes (``tickertape serve --cluster``) as subprocesses on 127.0.0.1, the addresses to
connect to and which node is the sequencer printed, everything stopped on Ctrl-C.

Every child runs in a process group of its own (a terminal's Ctrl-C reaches only this
command, which stops the nodes first, then the nats-servers) and is killed if this
command is killed. Which node is the sequencer is read from the lease
(:mod:`tickertape.cluster.lease`), watched while the demo runs: kill the sequencer's
process and the demo says which node took over.

What this module does not do: run a node (that is ``serve --cluster``), or set up a
production cluster (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from tickertape.cli import argtypes
from tickertape.cluster.local import (
    MissingDependency,
    NatsCluster,
    free_port,
    isolating,
    jetstream_ready,
    nats_server,
    new_cluster,
    require_nats,
    stop_processes,
)
from tickertape.errors import ProtocolError, TickertapeError
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    Debug,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    decode_server_packet,
)

if TYPE_CHECKING:
    from nats.aio.client import Client

    from tickertape.cluster.lease import Holder, Lease

NODES: Final = 3
READY_LIMIT: Final = 60.0
"""Seconds for JetStream, each node's first login and the first sequencer."""
POLL: Final = 0.2
"""Seconds between two looks at something starting (a port, the lease)."""
WATCH_EVERY: Final = 1.0
"""Seconds between two looks at the nodes and the lease once running."""
LOG_TAIL: Final = 15

T = TypeVar("T")


class DemoFailed(TickertapeError):
    """The cluster could not be started (what failed, and where its log is)."""


class Stopped(Exception):
    """Ctrl-C (or SIGTERM) came while the demo was waiting for something."""


def add_parser(verbs: Any) -> None:
    cluster = verbs.add_parser(
        "cluster",
        help="try a cluster of tickertape nodes on this machine",
        description="Tools for tickertape's cluster mode (serve --cluster); see docs/cluster.md.",
    )
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    demo = actions.add_parser(
        "demo",
        help="run three nats-servers and three tickertape nodes on 127.0.0.1",
        description="Start a local NATS JetStream cluster (three nats-servers, syncing "
        "every write) and three tickertape nodes sharing their sessions through it, print "
        "where to connect and which node is the sequencer (and, while it runs, which node "
        "takes over when the sequencer dies), and stop everything on Ctrl-C. Needs "
        "pip install 'tickertape[cluster]'.",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="keep the servers' and nodes' files (data, logs, JetStream stores) in DIR, "
        "and reuse them the next time (default: a temporary directory, removed at the end)",
    )
    demo.add_argument(
        "--base-port",
        type=argtypes.remote_port,
        metavar="N",
        help="the nodes' SoupBinTCP ports: N, N+1 and N+2 (default: free ports)",
    )
    demo.set_defaults(subparser=demo)


@dataclass
class Node:
    """One tickertape node of the demo."""

    name: str
    port: int
    admin_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    said_exit: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "node.log"

    def command(self, urls: list[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tickertape",
            "serve",
            "--cluster",
            ",".join(urls),
            "--node",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data",
            str(self.directory / "data"),
            "--admin-port",
            str(self.admin_port),
        ]

    def start(self, urls: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(urls),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=isolating(),  # noqa: PLW1509 (no threads have been started)
            )


def run(args: argparse.Namespace) -> int:
    """The ``cluster`` verb; its exit status."""
    try:
        require_nats()
        nats_server()
    except MissingDependency as exc:
        print(f"tickertape cluster demo: {exc}", file=sys.stderr)
        return 2
    if args.base_port is not None and args.base_port + NODES - 1 > 65535:
        args.subparser.error(f"--base-port {args.base_port}: the ports go beyond 65535")
    temporary = args.dir is None
    directory = Path(tempfile.mkdtemp(prefix="tickertape-cluster-")) if temporary else args.dir
    directory.mkdir(parents=True, exist_ok=True)
    demo = Demo(directory.resolve(), args.base_port)
    try:
        status = asyncio.run(demo.run())
    except KeyboardInterrupt:  # before the signal handlers were in place
        status = 0
    if temporary and status == 0:
        shutil.rmtree(directory, ignore_errors=True)
    elif temporary:
        say(f"the files are kept in {directory}")
    return status


def say(line: str) -> None:
    print(line, flush=True)


def tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in lines[-LOG_TAIL:])


def command_name() -> str:
    """How to run ``tickertape`` as this command was run."""
    if Path(sys.argv[0]).name == "tickertape":
        return sys.argv[0]
    return f"{sys.executable} -m tickertape"


class Demo:
    """The demo's servers and nodes, started in order and stopped in reverse."""

    def __init__(self, directory: Path, base_port: int | None) -> None:
        self.directory = directory
        self.nats: NatsCluster = new_cluster(directory / "nats", isolated=True)
        self.nodes = [
            Node(
                f"node{i}",
                free_port() if base_port is None else base_port + i - 1,
                free_port(),
                directory / f"node{i}",
            )
            for i in range(1, NODES + 1)
        ]
        self.stop = asyncio.Event()
        self.client: Client | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            await self.start()
            await self.watch()
            return 0
        except Stopped:
            return 0
        except DemoFailed as exc:
            print(f"tickertape cluster demo: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            say("stopping the nodes, then the nats-servers")
            await self.shut_down()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def until(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or :class:`Stopped` if Ctrl-C comes first."""
        task = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise Stopped
        return task.result()

    async def start(self) -> None:
        say(f"tickertape cluster demo in {self.directory}")
        for server in self.nats.servers:
            self.nats.start(server)
            assert server.process is not None
            say(f"nats-server {server.name}  {server.url}  pid {server.process.pid}")
        try:
            self.client = await self.until(jetstream_ready(self.nats.urls, READY_LIMIT))
        except (TimeoutError, OSError) as exc:
            raise DemoFailed(self.nats_failure(f"JetStream is not ready: {exc!r}")) from exc
        except TickertapeError:
            raise
        except Exception as exc:  # nats-py's own errors, when nats-py is there
            raise DemoFailed(self.nats_failure(f"JetStream is not ready: {exc}")) from exc
        say("JetStream ready")
        for node in self.nodes:
            node.start(self.nats.urls)
        for node in self.nodes:
            await self.until(self.logged_in(node))
        for node in self.nodes:
            assert node.process is not None
            say(
                f"{node.name}  SoupBinTCP {node.address}  "
                f"status page http://127.0.0.1:{node.admin_port}/  pid {node.process.pid}"
            )
        self.lease = await self.until(self.open_lease())
        holder = await self.until(self.first_holder(self.lease))
        self.holder = holder
        self.say_sequencer(holder)
        servers = ",".join(node.address for node in self.nodes)
        tickertape = command_name()
        say("ready. In another terminal:")
        say(f"  {tickertape} tail --server {servers}")
        say(f"  seq 10 | {tickertape} publish --server {servers}")
        say("  kill -9 PID   (the sequencer's pid: another node takes over within seconds)")
        say(f"logs: {self.directory}/node*/node.log, {self.directory}/nats/n*/nats.log")
        say("Ctrl-C stops everything.")

    def nats_failure(self, why: str) -> str:
        lines = [why]
        for server in self.nats.exited():
            assert server.process is not None
            log = server.directory / "nats.log"
            lines.append(f"nats-server {server.name} exited ({server.process.returncode}), {log}:")
            lines.append(tail(log))
        return "\n".join(lines)

    def node_failure(self, node: Node, why: str) -> str:
        return f"{node.name} {why}; the end of {node.log}:\n{tail(node.log)}"

    async def logged_in(self, node: Node) -> None:
        """Once ``node`` accepts a subscriber login (:class:`DemoFailed` if it exits, or
        does not within :data:`READY_LIMIT`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_LIMIT
        why = "has not started"
        while True:
            assert node.process is not None
            if node.process.poll() is not None:
                raise DemoFailed(self.node_failure(node, f"exited ({node.process.returncode})"))
            refused = await login(node.port)
            if refused is None:
                return
            why = refused
            if loop.time() > deadline:
                raise DemoFailed(
                    self.node_failure(node, f"refuses logins after {READY_LIMIT:g} s: {why}")
                )
            await asyncio.sleep(POLL)  # a process starting up: no event to wait on

    async def open_lease(self) -> Lease:
        """The sequencer's lease, once the first node has created its bucket."""
        import nats.js.errors  # noqa: PLC0415 (an optional dependency, checked at start)

        from tickertape.cluster.lease import Holder, Lease, LeaseConfig  # noqa: PLC0415

        assert self.client is not None
        config = LeaseConfig()
        js = self.client.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_LIMIT
        while True:
            try:
                kv = await js.key_value(config.bucket)
                return Lease(kv, Holder("demo", ""), config)
            except nats.js.errors.BucketNotFoundError:
                pass
            if loop.time() > deadline:
                raise DemoFailed(f"no node created the lease bucket {config.bucket}")
            await asyncio.sleep(POLL)  # a node starting up: no event to wait on

    async def current_holder(self, lease: Lease) -> Holder | None:
        import nats.errors  # noqa: PLC0415 (an optional dependency, checked at start)

        try:
            return await lease.holder()
        except nats.errors.Error:  # servers down: say nothing new
            return self.holder

    async def first_holder(self, lease: Lease) -> Holder:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_LIMIT
        while (holder := await self.current_holder(lease)) is None:
            if loop.time() > deadline:
                raise DemoFailed(f"no node took the sequencer's lease in {READY_LIMIT:g} s")
            await asyncio.sleep(POLL)  # an election: no event to wait on
        return holder

    holder: Holder | None = None

    def say_sequencer(self, holder: Holder | None) -> None:
        if holder is None:
            say("sequencer: none at the moment (the nodes are electing one)")
        else:
            say(f"sequencer: {holder.node} (publishers connect to {holder.address})")

    async def watch(self) -> None:
        """Say when a node or a nats-server exits and when the sequencer changes, until
        Ctrl-C."""
        said: set[int] = set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), WATCH_EVERY)
            if self.stop.is_set():
                return
            for node in self.nodes:
                assert node.process is not None
                if not node.said_exit and node.process.poll() is not None:
                    node.said_exit = True
                    say(f"{node.name} exited ({node.process.returncode}); its log: {node.log}")
            for server in self.nats.exited():
                assert server.process is not None
                if server.process.pid not in said:
                    said.add(server.process.pid)
                    say(f"nats-server {server.name} exited ({server.process.returncode})")
            holder = await self.current_holder(self.lease)
            if holder != self.holder:
                self.holder = holder
                self.say_sequencer(holder)

    lease: Lease

    async def shut_down(self) -> None:
        """Stop the nodes (they give up the lease while JetStream is there), then the
        nats-servers; whatever has not exited within the bound is killed."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 5)
        nodes = [node.process for node in self.nodes if node.process is not None]
        await asyncio.to_thread(stop_processes, nodes)
        servers = [s.process for s in self.nats.servers if s.process is not None]
        await asyncio.to_thread(stop_processes, servers)
        for server in self.nats.servers:
            server.process = None


async def login(port: int) -> str | None:
    """None if a subscriber login on 127.0.0.1:``port`` is accepted, else why not."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError) as exc:
        return f"cannot connect: {exc}"
    try:
        writer.write(LoginRequest("", "", "", 0).encode())
        framer = Framer()
        reason = ""
        while True:
            for frame in framer:
                packet = decode_server_packet(frame)
                if isinstance(packet, Debug):
                    reason = packet.text.decode(errors="replace")
                elif isinstance(packet, LoginAccepted):
                    writer.write(LogoutRequest().encode())
                    return None
                elif isinstance(packet, LoginRejected):
                    return f"login rejected ({packet.reason}) {reason}".rstrip()
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                return "the connection was closed before a login answer"
            framer.feed(data)
    except (OSError, TimeoutError, ProtocolError) as exc:
        return f"no login answer: {exc}"
    finally:
        writer.close()
