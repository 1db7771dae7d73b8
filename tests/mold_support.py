"""Helpers for the tests of the MoldUDP64 endpoints (``tests/server/moldudp64/``): a UDP
receiver that stands in for the group or a re-requester, an engine with both endpoints
around it, and the event-loop runners those tests use."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

from tickertape.server.engine import Engine
from tickertape.server.moldudp64.publisher import MoldPublisher
from tickertape.server.moldudp64.rerequest import MoldRequestServer
from tickertape.server.moldudp64.settings import PublisherConfig, RequestServerConfig
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.wire.moldudp64 import Downstream, Request

from support import JumpingLoop

TIMEOUT = 10.0
P = ParamSpec("P")


class Receiver:
    """A UDP socket on 127.0.0.1 that stands in for the group, or a re-requester."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.sizes: list[int] = []

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    async def packet(self, wait: float = TIMEOUT) -> Downstream:
        loop = asyncio.get_running_loop()
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65536), wait)
        self.sizes.append(len(data))
        return Downstream.decode(data)

    def pending(self) -> list[Downstream]:
        """The packets that have arrived and not been read, without waiting."""
        found: list[Downstream] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return found
            self.sizes.append(len(data))
            found.append(Downstream.decode(data))

    def ask(self, port: int, request: Request | bytes) -> None:
        data = request.encode() if isinstance(request, Request) else request
        self.sock.sendto(data, ("127.0.0.1", port))

    async def answer(self, port: int, request: Request, wait: float = TIMEOUT) -> Downstream:
        self.ask(port, request)
        return await self.packet(wait)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Mold:
    engine: Engine
    publisher: MoldPublisher
    requests: MoldRequestServer
    group: Receiver

    @property
    def session(self) -> str:
        return self.engine.session_id

    async def messages(self, through: int, session: str | None = None) -> list[tuple[int, bytes]]:
        """Every message the group got, by number, up to ``through`` (heartbeats and
        other sessions' packets are skipped)."""
        session = session or self.session
        got: list[tuple[int, bytes]] = []
        while not got or got[-1][0] < through:
            packet = await self.group.packet()
            if packet.session != session or packet.end_of_session:
                continue
            got += [(packet.sequence + i, m) for i, m in enumerate(packet.messages)]
        return got


@contextlib.asynccontextmanager
async def mold_server(
    data: Path,
    publisher: PublisherConfig | None = None,
    requests: RequestServerConfig | None = None,
    *,
    before: Callable[[Engine], Awaitable[None]] | None = None,
) -> AsyncIterator[Mold]:
    """An engine on ``data``, a publisher sending to a receiver on 127.0.0.1, and a
    re-request server on a free port. ``before`` runs once the engine has started and
    before the publisher joins."""
    engine = Engine(Catalogue(data, Durability.NONE))
    await engine.start(roll_on_schedule=False)
    group = Receiver()
    config = dataclasses.replace(
        publisher or PublisherConfig("", 0), group="127.0.0.1", port=group.port
    )
    sender = MoldPublisher(engine, config)
    server = MoldRequestServer(engine, requests or RequestServerConfig())
    try:
        if before is not None:
            await before(engine)
        sender.start()
        await server.start()
        yield Mold(engine, sender, server, group)
    finally:
        await server.close()
        await engine.close()
        await sender.close()
        group.close()


def synchronous(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh event loop."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def payloads(count: int, size: int = 50, start: int = 1) -> list[bytes]:
    return [f"{n:08d}".encode().ljust(size, b".") for n in range(start, start + count)]


def run_jumping(scenario: Callable[[JumpingLoop], Awaitable[None]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, JumpingLoop)
        await scenario(loop)

    with asyncio.Runner(loop_factory=JumpingLoop) as runner:
        runner.run(main())


async def turn(loop: JumpingLoop, seconds: float, mold: Mold) -> None:
    """Jump the clock, let the timers due fire, and the sending thread send."""
    loop.advance(seconds)
    for _ in range(3):
        await asyncio.sleep(0)
    await mold.publisher.flush()
