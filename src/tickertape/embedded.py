"""The in-process API: a tickertape server inside an application of your own.

::

    from pathlib import Path
    from tickertape.embedded import Tickertape

    async with Tickertape(Path("data"), port=7300) as server:
        seq = await server.publish(b"hello")                  # 1, once it is durable
        seqs = await server.publish_many([b"a", b"b", b"c"])  # range(2, 5)
        await server.end_session()                            # End of Session to all

:class:`Tickertape` is the same engine and SoupBinTCP endpoint that ``tickertape serve``
runs, in the caller's event loop: a publish call returns the sequence numbers it was
given once the messages are on disk per the durability policy, and only then are they
sent to subscribers. Everything else (rolling at ``schedule``'s time, retention,
replaying to late subscribers, serving ended sessions) works as in the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from ssl import SSLContext
from types import TracebackType

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Credentials,
    ServerConfig,
    SoupBinTCPServer,
)
from tickertape.server.writer import WriterConfig
from tickertape.store.catalogue import Catalogue
from tickertape.store.log import Durability
from tickertape.store.retention import Retention
from tickertape.store.schedule import RollSchedule
from tickertape.users import Users

__all__ = ["Credentials", "Durability", "Retention", "RollSchedule", "Tickertape"]


class Tickertape:
    """A tickertape server on the data directory ``data``; ``await start()`` (or use
    ``async with``), publish, ``await close()``.

    ``port`` 0 listens on any free port (read :attr:`port` after starting).
    ``durability`` is a :class:`Durability` or its name (``none``, ``batch``,
    ``always``); ``credentials`` None accepts every login; ``schedule`` says when
    sessions roll (default: every day at local midnight); ``retention`` when ended
    sessions are archived or deleted (default: never); ``ssl`` serves SoupBinTCP over
    TLS with this context (:func:`tickertape.tls.server_context`).
    """

    def __init__(
        self,
        data: Path | str,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        durability: Durability | str = Durability.BATCH,
        credentials: Credentials | None = None,
        users: Users | None = None,
        schedule: RollSchedule | None = None,
        retention: Retention | None = None,
        ssl: SSLContext | None = None,
    ) -> None:
        durability = Durability(durability)
        self.engine = Engine(
            Catalogue(Path(data), durability),
            WriterConfig(durability=durability),
            schedule=schedule,
            retention=retention,
        )
        """The engine: the active session, its writer, its subscribers."""
        self.server = SoupBinTCPServer(
            self.engine,
            ServerConfig(host=host, port=port, users=users, credentials=credentials, ssl=ssl),
        )
        """The SoupBinTCP endpoint."""
        self._state = "new"

    async def start(self) -> None:
        """Open the active session (today's, if it was not ended, else the next of the
        day) and start listening. Raises :class:`~tickertape.errors.StoreError` if
        another server holds the data directory, :class:`OSError` if the address is
        taken."""
        if self._state != "new":
            raise RuntimeError(f"the server is {self._state}: a Tickertape starts once")
        await self.engine.start()
        try:
            await self.server.start()
        except BaseException:
            await self.engine.close()
            raise
        self._state = "started"

    async def close(self) -> None:
        """Publish what is queued, disconnect every subscriber, close the session's log.
        The session is not ended: a restart continues it. Closing twice does nothing."""
        if self._state != "started":
            return
        self._state = "closed"
        try:
            await self.server.close()
        finally:
            await self.engine.close()

    async def __aenter__(self) -> Tickertape:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The port the server listens on (the one picked, with port 0)."""
        return self.server.port

    @property
    def session_id(self) -> str:
        """The active session's id, ``YYYYMMDDNN``."""
        return self.engine.session_id

    @property
    def next_seq(self) -> int:
        """The sequence number of the next message to be published in the session."""
        return self.engine.next_seq

    def _check_started(self) -> None:
        if self._state == "new":
            raise StoreError("the server is not started: await start() first")

    async def publish(self, payload: bytes) -> int:
        """Publish one message; its sequence number, once it is durable."""
        self._check_started()
        return await self.engine.publish(payload)

    async def publish_many(self, payloads: Iterable[bytes]) -> range:
        """Publish messages in order, as one batch if they fit; their sequence numbers,
        once all are durable. A publisher is held back (never dropped) while the
        writer's queue is full, or while a session rolls: its messages then land in the
        next session."""
        self._check_started()
        if not isinstance(payloads, Sequence):
            payloads = list(payloads)
        first = await self.engine.publish_many(payloads)
        return range(first, first + len(payloads))

    async def end_session(self) -> str:
        """End the active session (every subscriber gets all of it, then End of
        Session) and open the next; returns the next session's id."""
        self._check_started()
        return await self.engine.end_session()

    async def roll(self) -> str:
        """The same as :meth:`end_session`: end the active session, open the next."""
        self._check_started()
        return await self.engine.roll()
