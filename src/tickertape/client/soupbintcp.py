"""An asyncio SoupBinTCP subscriber that survives dropped connections.

::

    async with subscribe("127.0.0.1", 7300, seq=1) as messages:
        async for message in messages:
            print(message.seq, message.payload)

Over TLS, pass ``ssl=tickertape.tls.client_context(ca)`` (``ca``: a CA file to trust
instead of the system's).

Each :class:`Message` carries its session and sequence number. When the connection drops,
the subscriber logs in again to the same session with the next sequence number it needs,
so its consumer sees no gap and no duplicate, and logs when it is back. Iteration ends at
End of Session. A first login that cannot be made (nothing listens there, the server
closes the connection before answering, or answers in TLS) raises ``ConnectionError``
saying why, unless ``wait=True`` asks to keep trying; a rejected login raises
:class:`~tickertape.errors.LoginRejected` with the server's reason.

``alternates=[(host, port), ...]`` names other servers of the same sessions (the other
nodes of a cluster, or servers following one store): a lost connection is followed by a
login at the next address in turn (round robin, waiting only after a whole round failed),
at the next sequence number of the same session; a first login tries each address before
it gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, overload

from tickertape.client.connecting import (
    TLSRefused,
    closed_by_server,
    describe_error,
    open_stream,
    rejection,
)
from tickertape.protocol import client as protocol
from tickertape.protocol.client import ClientConnection
from tickertape.protocol.connection import State
from tickertape.wire.soupbintcp import LoginRequest

__all__ = [
    "Batch",
    "Message",
    "Subscription",
    "TLSRefused",
    "active_session",
    "closed_by_server",
    "describe_error",
    "open_stream",
    "rejection",
    "subscribe",
]

log = logging.getLogger(__name__)

DEFAULT_RECONNECT_DELAY: Final = 0.25
DEFAULT_MAX_RECONNECT_DELAY: Final = 5.0
_READ_SIZE: Final = 1 << 18


@dataclass(frozen=True, slots=True)
class Message:
    """One sequenced message of a session."""

    session: str
    seq: int
    payload: bytes


class Batch(Sequence[Message]):
    """Messages that arrived together: :attr:`payloads`, numbered from :attr:`first_seq`
    in :attr:`session`. Iterating or indexing gives :class:`Message` objects, made as they
    are asked for; a consumer that wants only the bytes reads :attr:`payloads`."""

    __slots__ = ("first_seq", "payloads", "session")

    def __init__(self, session: str, first_seq: int, payloads: list[bytes]) -> None:
        self.session = session
        self.first_seq = first_seq
        self.payloads = payloads

    @property
    def next_seq(self) -> int:
        """The number after the last message of the batch."""
        return self.first_seq + len(self.payloads)

    def __len__(self) -> int:
        return len(self.payloads)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        if isinstance(index, slice):
            return list(self)[index]
        position = range(len(self.payloads))[index]  # IndexError, negative indexes
        return Message(self.session, self.first_seq + position, self.payloads[position])

    def __iter__(self) -> Iterator[Message]:
        session = self.session
        for seq, payload in enumerate(self.payloads, self.first_seq):
            yield Message(session, seq, payload)

    def __repr__(self) -> str:
        return f"Batch({self.session!r}, {self.first_seq}, {len(self.payloads)} messages)"


class _Dropped(Exception):
    """The connection ended without End of Session: log in again."""


class Subscription:
    """An async iterator of :class:`Message`; see :func:`subscribe`."""

    def __init__(
        self,
        host: str,
        port: int,
        session: str = "",
        seq: int = 1,
        *,
        username: str = "",
        password: str = "",
        heartbeat_interval: float = protocol.DEFAULT_HEARTBEAT_INTERVAL,
        server_timeout: float = protocol.DEFAULT_SERVER_TIMEOUT,
        reconnect: bool = True,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
        max_reconnect_delay: float = DEFAULT_MAX_RECONNECT_DELAY,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        wait: bool = False,
        alternates: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.host = host
        self.port = port
        """The address of the connection (or of the next login), one of ``host:port``
        and ``alternates``."""
        self._addresses = list(dict.fromkeys([(host, port), *alternates]))
        self._at = 0
        self.session = session
        """The session subscribed to; filled in by the first Login Accepted."""
        self.next_seq = seq
        """The sequence number of the next message this subscription will yield."""
        self._username = username
        self._password = password
        self._heartbeat_interval = heartbeat_interval
        self._server_timeout = server_timeout
        self._reconnect = reconnect
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._wait = wait
        self._retrying = False
        self._writer: asyncio.StreamWriter | None = None
        self._reading = False
        self._iterator: AsyncIterator[Message] | None = None
        self._batches: AsyncIterator[Batch] | None = None
        self.logins = 0
        """How many times this subscription has logged in (1 + reconnections)."""

    def __aiter__(self) -> AsyncIterator[Message]:
        if self._iterator is None:
            self._iterator = self._messages()
        return self._iterator

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Log out and stop."""
        for iterator in (self._iterator, self._batches):
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.close()

    def batches(self) -> AsyncIterator[Batch]:
        """The same messages, in batches (:class:`Batch`) as they arrived together (for a consumer
        that handles many at once, as a relaying server does: it costs no object per
        message)."""
        if self._batches is None:
            self._batches = self._run()
        return self._batches

    async def _messages(self) -> AsyncIterator[Message]:
        async for batch in self.batches():
            for message in batch:
                yield message

    async def _run(self) -> AsyncIterator[Batch]:
        delay = self._reconnect_delay
        failures = 0  # since the last login: a full round of the addresses waits
        logins = 0
        answers: dict[str, str] = {}  # what each address said to a first login
        while True:
            try:
                async for batch in self._connection():
                    delay = self._reconnect_delay
                    yield batch
                return  # End of Session
            except TLSRefused:
                raise  # the same certificate would be refused again
            except (OSError, _Dropped, asyncio.IncompleteReadError) as exc:
                failures = 1 if self.logins != logins else failures + 1
                logins = self.logins
                never = self.logins == 0
                lost = f"{self.host}:{self.port}"
                answers[lost] = describe_error(exc)
                if never and not (self._wait and self._reconnect):
                    if failures < len(self._addresses):
                        self._move()
                        continue  # the next address, at once
                    said = "; ".join(f"{where}: {why}" for where, why in answers.items())
                    raise ConnectionError(
                        f"cannot log in to {said}"
                        if len(answers) == 1
                        else f"cannot log in to any of {len(answers)} servers: {said}"
                    ) from None
                if not self._reconnect:
                    raise ConnectionError(
                        f"connection to {lost} lost: {describe_error(exc)}"
                    ) from exc
                there = self._move()
                pause = delay if failures % len(self._addresses) == 0 else 0.0
                then = (f" to {there}" if there != lost else "") + (
                    f" in {pause:.2f} s" if pause else ""
                )
                if never:
                    log.warning(
                        "cannot log in to %s (%s); trying again%s", lost, answers[lost], then
                    )
                else:
                    log.warning(
                        "connection to %s lost (%s); logging in again at %d%s",
                        lost,
                        answers[lost],
                        self.next_seq,
                        then,
                    )
                self._retrying = True
                if pause:
                    await asyncio.sleep(pause)
                    delay = min(delay * 2, self._max_reconnect_delay)
            finally:
                self._close_writer()

    def _move(self) -> str:
        """Make the next address (round robin) the one to log in to; ``HOST:PORT``."""
        self._at = (self._at + 1) % len(self._addresses)
        self.host, self.port = self._addresses[self._at]
        return f"{self.host}:{self.port}"

    async def _connection(self) -> AsyncIterator[Batch]:
        loop = asyncio.get_running_loop()
        reader, writer = await open_stream(
            self.host, self.port, self._server_timeout, self._ssl, self._server_hostname
        )
        self._writer = writer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = LoginRequest(
            self._username,
            self._password,
            self.session,
            self.next_seq,
            heartbeat_timeout_ms=None,
        )
        connection = ClientConnection(
            request, loop.time(), self._heartbeat_interval, self._server_timeout
        )
        writer.write(connection.data_to_send())
        ticker = asyncio.create_task(self._tick(connection, writer))
        try:
            while True:
                self._reading = True
                data = await reader.read(_READ_SIZE)
                self._reading = False
                now = loop.time()
                if not data:
                    raise _Dropped(closed_by_server(connection, self._ssl is not None))
                connection.receive_data(data, now)
                batches: list[Batch] = []
                for event in connection.events_received():
                    if isinstance(event, protocol.Messages):
                        skip = self.next_seq - event.first_sequence
                        if skip >= len(event.payloads):
                            continue  # a server that starts earlier than asked: no duplicates
                        first, payloads = event.first_sequence, event.payloads
                        if skip > 0:
                            first, payloads = self.next_seq, payloads[skip:]
                        self.next_seq = first + len(payloads)
                        batches.append(Batch(self.session, first, payloads))
                    elif isinstance(event, protocol.Accepted):
                        self.logins += 1
                        self.session = event.session
                        if self._retrying:
                            self._retrying = False
                            log.info(
                                "logged in to %s:%d%s: session %s from %d",
                                self.host,
                                self.port,
                                " again" if self.logins > 1 else "",
                                event.session,
                                max(self.next_seq, event.sequence),
                            )
                        if event.sequence > self.next_seq and self.next_seq != 0:
                            log.warning(
                                "server starts at %d, not %d as asked",
                                event.sequence,
                                self.next_seq,
                            )
                        if event.sequence > self.next_seq or self.next_seq == 0:
                            self.next_seq = event.sequence
                    elif isinstance(event, protocol.Rejected):
                        raise rejection(
                            event,
                            f"{self.host}:{self.port}",
                            f"session {self.session or '(active)'!r} is not available",
                        )
                    elif isinstance(event, protocol.SessionEnded):
                        for batch in batches:
                            yield batch
                        connection.logout(now)
                        with contextlib.suppress(OSError):
                            writer.write(connection.data_to_send())
                        return
                    elif isinstance(event, protocol.ConnectionLost):
                        for batch in batches:
                            yield batch  # counted in next_seq already: hand them over
                        raise _Dropped(event.reason)
                    elif (
                        isinstance(event, protocol.DebugReceived)
                        # Before the login is answered, what it says goes with the answer.
                        and connection.state is State.LOGGED_IN
                    ):
                        log.info("server says: %s", event.text)
                outgoing = connection.data_to_send()
                if outgoing:
                    writer.write(outgoing)
                for batch in batches:
                    yield batch
        finally:
            ticker.cancel()
            if connection.state is not State.CLOSED and not writer.is_closing():
                connection.logout(loop.time())  # stopped by the consumer: say goodbye
                writer.write(connection.data_to_send())

    async def _tick(self, connection: ClientConnection, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, connection.next_deadline() - loop.time()))
            if not self._reading:
                # The consumer holds the iterator: what the server sent waits unread, so
                # its silence cannot be judged now.
                connection.heard(loop.time())
            connection.tick(loop.time())
            outgoing = connection.data_to_send()
            if outgoing and not writer.is_closing():
                writer.write(outgoing)
            if connection.state is State.CLOSED:
                log.warning("connection to %s:%d: server silent, dropping it", self.host, self.port)
                writer.close()  # the reader sees the end and logs in again
                return


subscribe = Subscription
"""``subscribe(host, port, session="", seq=1, **options)``: subscribe to ``session``
(blank: the active one) from sequence number ``seq`` (0: from the next message
published). See :class:`Subscription` for the options."""


async def active_session(
    host: str,
    port: int,
    *,
    username: str = "",
    password: str = "",
    server_timeout: float = protocol.DEFAULT_SERVER_TIMEOUT,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> str:
    """The id of the server's active session: log in with a blank session at sequence 0,
    read Login Accepted, log out."""
    loop = asyncio.get_running_loop()
    timeout = server_timeout
    reader, writer = await open_stream(host, port, timeout, ssl, server_hostname)
    connection = ClientConnection(LoginRequest(username, password, "", 0), loop.time())
    try:
        writer.write(connection.data_to_send())
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    raise ConnectionError(
                        f"{host}:{port} did not answer the login: "
                        + closed_by_server(connection, ssl is not None)
                    )
                connection.receive_data(data, loop.time())
                for event in connection.events_received():
                    if isinstance(event, protocol.Accepted):
                        connection.logout(loop.time())
                        writer.write(connection.data_to_send())
                        return event.session
                    if isinstance(event, protocol.Rejected):
                        raise rejection(event, f"{host}:{port}", "the server has no active session")
                    if isinstance(event, protocol.ConnectionLost):
                        raise ConnectionError(event.reason)
    finally:
        writer.close()
