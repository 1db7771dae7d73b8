"""The composition of a server, in one place: the session provider (the engine writing a
data directory, or a follower of one another process writes), the SoupBinTCP endpoint
(TLS in its configuration), the admin API, MoldUDP64 (multicast and re-requests) and the
inputs that feed the engine (demo, upstream, plug-in source).

:class:`Assembly` starts them in the one order that leaves nothing behind when a part
cannot start (every port is bound before the session is opened) and closes them in the
order that loses nothing (inputs, admin API, endpoint, re-requests, engine, multicast
last, so that the engine's last batches go out too), with one
:class:`contextlib.AsyncExitStack`. ``tickertape serve`` (:mod:`tickertape.cli.serve`)
and the embedded :class:`~tickertape.embedded.Tickertape` both build their server here.

What it does not do: read options or files (the command line's job: users, TLS
certificates, sources are given loaded), signals, SIGHUP reloads, systemd
notification, the open-file limit (:mod:`tickertape.cli.serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.moldudp64.publisher import MoldPublisher
from tickertape.server.moldudp64.rerequest import MoldRequestServer
from tickertape.server.moldudp64.settings import PublisherConfig, RequestServerConfig
from tickertape.server.soupbintcp import ServerConfig, SoupBinTCPServer
from tickertape.server.writer import WriterConfig
from tickertape.sources.demo import DEFAULT_DEMO_SIZE, run_demo
from tickertape.sources.follow import Follower
from tickertape.sources.plugin import Source
from tickertape.sources.plugin_runner import run_source
from tickertape.sources.upstream import Upstream, first_session, run_upstream
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.store.retention import Retention
from tickertape.store.schedule import RollSchedule
from tickertape.wire.moldudp64 import MAX_MESSAGE as MOLD_MAX_MESSAGE
from tickertape.wire.soupbintcp import MAX_PAYLOAD

if TYPE_CHECKING:  # imported when serving them: loaded only then
    from tickertape.cluster.config import ClusterConfig
    from tickertape.cluster.node import ClusterNode
    from tickertape.server.admin import AdminServer

log = logging.getLogger(__name__)


class StartError(OSError):
    """A part could not start (a port taken, a data directory that cannot be used, a
    socket MoldUDP64 cannot set up); the message says which, and why. Whatever had
    started is closed again."""


@dataclass(frozen=True, slots=True)
class DemoPlan:
    """Demo messages to publish into the active session (``serve --demo``)."""

    rate: float
    size: int = DEFAULT_DEMO_SIZE
    count: int | None = None
    """Stop after this many (None: never)."""
    end_session: bool = False
    """End the session once ``count`` are published (the next one opens)."""


@dataclass(frozen=True, kw_only=True)
class AssemblyConfig:
    """What to build. ``data`` is the data directory written, or with ``follow`` the one
    read (another process writes it; then only the endpoint and a read-only admin API
    are built)."""

    data: Path
    endpoint: ServerConfig = field(default_factory=ServerConfig)
    follow: bool = False
    durability: Durability = Durability.BATCH
    schedule: RollSchedule | None = None
    retention: Retention | None = None
    admin_port: int = 0
    """The admin API's port on ``server.admin.ADMIN_HOST``; 0: no admin API."""
    admin_token: str | None = None
    mold: PublisherConfig | None = None
    """Multicast the active session as MoldUDP64."""
    mold_requests: RequestServerConfig | None = None
    """Answer MoldUDP64 re-requests."""
    demo: DemoPlan | None = None
    upstream: Upstream | None = None
    """Re-serve another server's sessions (same ids and sequence numbers)."""
    source: Source | None = None
    """A plug-in source (:func:`tickertape.sources.plugin.load_source`)."""
    cluster: ClusterConfig | None = None
    """Serve as a node of this cluster (the sessions come from its journal)."""


class Inputs:
    """The tasks that feed the engine (demo, upstream, plug-in source): one that fails
    is logged, kept in :attr:`failed` and sets ``stop``; :meth:`close` cancels them."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: list[BaseException] = []

    def start(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name=name)

        def done(task: asyncio.Task[None]) -> None:
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self.failed.append(error)
                log.error("%s failed, stopping: %s", name, error)
                self._stop.set()

        task.add_done_callback(done)
        self._tasks.append(task)

    async def close(self) -> None:
        for task in reversed(self._tasks):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class Assembly:
    """A server built from an :class:`AssemblyConfig`: ``await start()`` (or ``async
    with``), then ``await close()``. :attr:`stop` is set when an input fails (whoever
    runs the server may set it too, on a signal); :attr:`inputs` says which failed."""

    def __init__(self, config: AssemblyConfig) -> None:
        self.config = config
        self.provider: Engine | Follower
        """The session provider the endpoint serves: the engine, or a follower."""
        if config.follow:
            self.provider = Follower(config.data)
        else:
            # MoldUDP64 does not fragment: refuse at publish time what it cannot carry
            # (a relay takes what its upstream has; longer messages skip the multicast).
            multicast = config.mold is not None and config.upstream is None
            self.provider = Engine(
                Catalogue(config.data, config.durability),
                WriterConfig(
                    durability=config.durability,
                    max_message=MOLD_MAX_MESSAGE if multicast else MAX_PAYLOAD,
                ),
                schedule=config.schedule,
                retention=config.retention,
            )
        self.endpoint = SoupBinTCPServer(self.provider, config.endpoint)
        """The SoupBinTCP endpoint."""
        self.admin: AdminServer | None = None
        self.mold_publisher: MoldPublisher | None = None
        self.mold_requests: MoldRequestServer | None = None
        self.stop = asyncio.Event()
        self.inputs = Inputs(self.stop)
        self.node: ClusterNode | None = None
        """This server's part in a cluster, if it is a node of one."""
        if config.cluster is not None:
            self.node = _cluster_node(self.engine, config, self.stop)
        self._started = False
        self._stack = contextlib.AsyncExitStack()

    @property
    def failure(self) -> BaseException | None:
        """Why this server stopped by itself, if it did (an input failing is in
        :attr:`inputs`): a cluster node that could not follow the cluster."""
        return None if self.node is None else self.node.failure

    @property
    def engine(self) -> Engine:
        """The engine (a following server has none: :attr:`provider` is its follower)."""
        if not isinstance(self.provider, Engine):
            raise RuntimeError(f"a server following {self.config.data} has no engine")
        return self.provider

    async def start(self) -> None:
        """Start every part; :class:`StartError` (an :class:`OSError`) if a port, the
        data directory or MoldUDP64 cannot be used, a :class:`StoreError` if the data
        directory is held or damaged. On any error what had started is closed again."""
        try:
            await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        config = self.config
        # Closed in the reverse order of these registrations, whatever had started:
        stack.push_async_callback(self._close_mold_publisher)  # after the engine's last batch
        stack.push_async_callback(self._close_provider)
        stack.push_async_callback(self._close_node)  # steps down before the engine closes
        stack.push_async_callback(self._close_mold_requests)  # before the log it reads
        first = await self._first_session()
        # Every port is bound before the session is opened: a taken one leaves nothing behind.
        endpoint = config.endpoint
        try:
            await self.endpoint.start(serving=False)
        except OSError as exc:
            raise StartError(f"cannot listen on {endpoint.host}:{endpoint.port}: {exc}") from exc
        stack.push_async_callback(self.endpoint.close)
        if config.admin_port:
            self.admin = self._bind_admin(config.admin_port, config.admin_token)
            stack.push_async_callback(self.admin.close)
        if self.node is not None:
            await self._connect_node(self.node)
        await self._start_provider(first)
        if self.node is not None:
            self.node.start()
        await self.endpoint.start_serving()
        if self.admin is not None:
            await self.admin.start()
        try:
            await self._start_mold()
        except OSError as exc:
            raise StartError(f"cannot start MoldUDP64: {exc}") from exc
        if self.admin is not None:  # the status page shows their counters
            self.admin.mold_publisher, self.admin.mold_requests = (
                self.mold_publisher,
                self.mold_requests,
            )
        stack.push_async_callback(self.inputs.close)
        self._start_inputs()

    async def close(self) -> None:
        """Stop the inputs, the admin API and the endpoint (every connection closed in
        order), let the engine publish what is queued and close its log. The session is
        not ended: a restart continues it. Closing twice does nothing."""
        await self._stack.aclose()

    async def __aenter__(self) -> Assembly:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _first_session(self) -> str | None:
        """With an upstream, the session to open: the local one it fed last, if any, else
        the upstream's (ids come from the upstream). None otherwise."""
        upstream = self.config.upstream
        if upstream is None or self.config.follow:
            return None
        resumed = next((i for i in reversed(self.engine.catalogue.sessions()) if not i.ended), None)
        if resumed is not None:
            return str(resumed.id)
        try:
            return await first_session(upstream)
        except OSError as exc:
            raise StartError(
                f"cannot reach the upstream {upstream.host}:{upstream.port}: {exc}"
            ) from exc

    def _bind_admin(self, port: int, token: str | None) -> AdminServer:
        # Imported here: the HTTP server is loaded only by a server that serves it.
        from tickertape.server.admin import ADMIN_HOST, AdminConfig, AdminServer  # noqa: PLC0415

        admin = AdminServer(self.provider, self.endpoint, AdminConfig(port=port, token=token))
        try:
            admin.bind()
        except OSError as exc:
            raise StartError(
                f"cannot listen for the admin API on {ADMIN_HOST}:{port}: {exc}"
            ) from exc
        return admin

    async def _start_provider(self, first: str | None) -> None:
        if isinstance(self.provider, Follower):
            await self.provider.start()  # a StoreError says what is wrong with the directory
        else:
            try:
                if self.node is not None:  # the cluster's session; the sequencer rolls
                    session = await self.node.session_to_open()
                    await self.provider.start(roll_on_schedule=False, session=session)
                elif first is None:
                    await self.provider.start()
                else:
                    await self.provider.start(roll_on_schedule=False, session=first)
            except OSError as exc:
                raise StartError(f"cannot use data directory {self.config.data}: {exc}") from exc
        self._started = True

    async def _connect_node(self, node: ClusterNode) -> None:
        if node.config.address.endswith(":0"):  # --port 0: the port bound
            node.config = dataclasses.replace(
                node.config,
                address=node.config.address[:-1] + str(self.endpoint.port),
            )
        try:
            await node.connect()
        except (OSError, StoreError) as exc:
            raise StartError(f"cannot join the cluster: {exc}") from exc

    async def _close_node(self) -> None:
        if self.node is not None:
            await self.node.close()

    async def _close_provider(self) -> None:
        if self._started:
            self._started = False
            await self.provider.close()

    async def _start_mold(self) -> None:
        config = self.config
        if config.mold_requests is not None:
            self.mold_requests = MoldRequestServer(self.engine, config.mold_requests)
            await self.mold_requests.start()
        if config.mold is not None:
            self.mold_publisher = MoldPublisher(self.engine, config.mold)
            self.mold_publisher.start()

    async def _close_mold_requests(self) -> None:
        if self.mold_requests is not None:
            await self.mold_requests.close()

    async def _close_mold_publisher(self) -> None:
        if self.mold_publisher is not None:
            await self.mold_publisher.close()

    def _start_inputs(self) -> None:
        config = self.config
        if config.demo is not None:
            self.inputs.start("demo source", self._demo(config.demo))
        if config.upstream is not None:
            self.inputs.start("upstream feed", run_upstream(self.engine, config.upstream))
        if config.source is not None:
            # A source that fails is logged and stopped by run_source: what stops the
            # server here is the engine failing under it.
            self.inputs.start(
                f"source {config.source.name}", run_source(self.engine, config.source)
            )

    async def _demo(self, plan: DemoPlan) -> None:
        await run_demo(self.engine, plan.rate, plan.size, plan.count)
        if plan.end_session:
            with contextlib.suppress(StoreError):  # the engine logged why; it goes on
                await self.engine.end_session()


def _cluster_node(engine: Engine, config: AssemblyConfig, stop: asyncio.Event) -> ClusterNode:
    """The node of ``config.cluster``; imported here, so that NATS's client is needed
    only by a node (``pip install 'tickertape[cluster]'``)."""
    assert config.cluster is not None
    try:
        from tickertape.cluster.node import ClusterNode  # noqa: PLC0415
    except ImportError as exc:
        raise StartError(
            f"--cluster needs NATS's client ({exc}): pip install 'tickertape[cluster]'"
        ) from exc
    return ClusterNode(engine, config.data, config.cluster, stop)
