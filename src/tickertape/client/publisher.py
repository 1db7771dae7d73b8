"""An asyncio SoupBinTCP publisher: messages in, acknowledgements back.

::

    async with await Publisher.connect("127.0.0.1", 7300) as publisher:
        await publisher.send_many([b"first", b"second"])
        await publisher.flush()              # both durable: publisher.acked == 2

Over TLS, pass ``ssl=tickertape.tls.client_context(ca)`` to :meth:`Publisher.connect`.
The convention it follows is described in :mod:`tickertape.wire.publishing`; its
count of what was sent and acknowledged is :class:`tickertape.protocol.publishing.PublisherAcks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
from collections.abc import Sequence
from types import TracebackType

from tickertape.client.connecting import closed_by_server, open_stream, rejection
from tickertape.errors import LoginRejected, ProtocolError
from tickertape.protocol import client as protocol
from tickertape.protocol.client import ClientConnection
from tickertape.protocol.connection import State
from tickertape.protocol.publishing import PublisherAcks
from tickertape.wire.publishing import END_OF_SESSION_MARKER, NO_STREAM, Ack
from tickertape.wire.soupbintcp import LoginRequest, encode_unsequenced_many

log = logging.getLogger(__name__)


class Publisher:
    """A logged-in publishing connection. Make one with :meth:`connect`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: ClientConnection,
        where: str = "the server",
        tls: bool = False,
    ) -> None:
        self._where = where
        self._tls = tls
        self._reader = reader
        self._writer = writer
        self._connection = connection
        self._acks = PublisherAcks()
        self.session = ""
        self._acked = asyncio.Event()
        self._ended: asyncio.Future[str] | None = None
        self._failure: BaseException | None = None
        self.last_words = ""
        """What the server said (its last Debug packet) when it closed the connection
        after login, if it said anything: why it will not take more."""
        self._task = asyncio.create_task(self._read(), name="publisher-acks")

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        username: str = "",
        password: str = "",
        server_timeout: float = 15.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Publisher:
        """Connect and log in; raises :class:`LoginRejected` or ``OSError`` (a server
        certificate ``ssl`` does not trust: ``client.soupbintcp.TLSRefused``).
        ``server_timeout``: seconds to wait for the server, and of its silence.
        ``ssl``: connect over TLS with this context; ``server_hostname``: the name its
        certificate must carry (default: ``host``)."""
        timeout = server_timeout
        loop = asyncio.get_running_loop()
        reader, writer = await open_stream(host, port, timeout, ssl, server_hostname)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = ClientConnection(
            LoginRequest(username, password, "", NO_STREAM), loop.time(), server_timeout=timeout
        )
        writer.write(connection.data_to_send())
        publisher = cls(reader, writer, connection, f"{host}:{port}", ssl is not None)
        try:
            await asyncio.wait_for(publisher._logged_in(), timeout)
        except BaseException:
            await publisher.close()
            raise
        return publisher

    async def _logged_in(self) -> None:
        while self._connection.state is State.AWAITING_LOGIN:
            if self._failure is not None:
                raise self._failure
            await self._acked.wait()
            self._acked.clear()
        if self._failure is not None:
            raise self._failure

    @property
    def acked(self) -> int:
        """Messages the server has acknowledged as durable."""
        return self._acks.acked

    @property
    def sent(self) -> int:
        """Messages sent so far (not counting END OF SESSION markers)."""
        return self._acks.sent

    @property
    def ends_sent(self) -> int:
        """END OF SESSION markers sent so far."""
        return self._acks.ends_sent

    @property
    def ended(self) -> list[str]:
        """The sessions this publisher's markers ended, as the server confirmed them."""
        return self._acks.ended

    @property
    def last_ack(self) -> Ack | None:
        """The last acknowledgement of messages (not of a session end)."""
        return self._acks.last_ack

    async def send_many(self, payloads: Sequence[bytes]) -> None:
        """Send messages; waits while the server is not reading (back-pressure). A
        payload that is exactly :data:`END_OF_SESSION_MARKER` ends the session there."""
        self._check()
        self._writer.write(encode_unsequenced_many(payloads))
        self._acks.sending(payloads)
        await self._writer.drain()

    async def flush(self) -> Ack | None:
        """Wait until every message sent is acknowledged, and every session end
        confirmed; the last acknowledgement. (Bound the wait with ``asyncio.timeout``.)"""
        while not self._acks.settled:
            self._check()
            await self._acked.wait()
            self._acked.clear()
        self._check()
        return self.last_ack

    async def end_session(self) -> str:
        """End the active session after everything sent; returns the session ended."""
        self._check()
        self._ended = asyncio.get_running_loop().create_future()
        self._writer.write(encode_unsequenced_many([END_OF_SESSION_MARKER]))
        self._acks.sending([END_OF_SESSION_MARKER])
        return await self._ended

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        connection = self._connection
        try:
            while True:
                try:
                    data = await asyncio.wait_for(
                        self._reader.read(65536), connection.next_deadline() - loop.time()
                    )
                except TimeoutError:
                    data = None
                now = loop.time()
                if data == b"":
                    if connection.state is State.LOGGED_IN:
                        self.last_words = connection.last_debug
                    raise ConnectionError(closed_by_server(connection, self._tls))
                if data:
                    connection.receive_data(data, now)
                connection.tick(now)
                for event in connection.events_received():
                    self._event(event)
                outgoing = connection.data_to_send()
                if outgoing:
                    self._writer.write(outgoing)
                self._acked.set()
        except (OSError, ProtocolError, LoginRejected) as exc:
            self._failure = exc
        except asyncio.CancelledError:
            self._failure = ConnectionError("the publisher was closed")
            raise
        finally:
            self._acked.set()
            if self._ended is not None and not self._ended.done():
                self._ended.set_exception(self._failure or ConnectionError("closed"))

    def _event(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.Unsequenced):
            try:
                ack = self._acks.received(event.payload)
            except ProtocolError as exc:
                log.warning("unexpected message from the server: %s", exc)
                return
            if ack.seq == 0 and self._ended is not None and not self._ended.done():
                self._ended.set_result(ack.session)
        elif isinstance(event, protocol.Accepted):
            self.session = event.session
        elif isinstance(event, protocol.Rejected):
            raise rejection(event, self._where, "no session is open for publishing")
        elif isinstance(event, protocol.ConnectionLost):
            raise ConnectionError(event.reason)
        elif (
            isinstance(event, protocol.DebugReceived)
            and self._connection.state is State.LOGGED_IN  # else it goes with the answer
        ):
            log.info("server says: %s", event.text)

    async def close(self) -> None:
        """Log out and close (without waiting for acknowledgements: see :meth:`flush`)."""
        if not self._writer.is_closing():
            with contextlib.suppress(OSError):
                self._connection.logout(asyncio.get_running_loop().time())
                self._writer.write(self._connection.data_to_send())
            self._writer.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
