"""A publisher given several addresses (the nodes of a cluster): it finds the node that
takes publishers, and moves to another when that one is lost, re-sending what was not
acknowledged.

::

    nodes = [("10.0.0.1", 7300), ("10.0.0.2", 7300), ("10.0.0.3", 7300)]
    async with await FailoverPublisher.connect(nodes) as publisher:
        await publisher.send_many([b"id=1 first", b"id=2 second"])
        await publisher.flush()                  # publisher.acked == 2, wherever they went

- **Finding the sequencer.** The addresses are tried in turn. A cluster node that is not
  the sequencer rejects a publisher's login after a Debug packet naming the sequencer
  (:func:`~tickertape.wire.publishing.redirect_text`): that address is tried next. A node
  that says no node takes publishers at the moment, or a round in which no address took
  the login, is followed by a short wait (doubling from ``retry_delay`` up to
  ``max_retry_delay``) and another round, until ``failover_timeout`` seconds have passed:
  then :class:`NoPublishingServer` says what each address answered. The very first round
  is an exception: if no address took the login and none said to try again (nothing
  listens, a TLS port, ...), it raises at once, as a single :class:`Publisher` would.
- **Surviving a failover.** When the connection is lost after login (the node died, or it
  said it is no longer the sequencer and closed the connection, naming the new one), the
  next call (:meth:`~FailoverPublisher.send_many`, :meth:`~FailoverPublisher.flush`,
  :meth:`~FailoverPublisher.end_session`) finds the sequencer the same way and re-sends,
  in order, every message sent but not yet acknowledged. :attr:`~FailoverPublisher.acked`
  counts across connections. A message that was acknowledged is never sent again, so it
  is published once.
- **What may be published twice.** A message sent but not acknowledged when the
  connection was lost may have been published all the same (the node made it durable,
  then died before it could say so): it is sent again, and is then in the session twice.
  A publisher that must not have duplicates carries its own id in each message (a
  counter, a client order id) and its consumers drop an id they have seen.
- **Ending a session.** An END OF SESSION marker not confirmed when the connection was
  lost is not sent again if the node logged in to next has a different active session
  than the one this publisher was publishing into (the session ended: sending it again
  would end the next one too); the session ended is then the old one.

A rejected login that names no other node (wrong credentials, a user who may not
publish), a certificate TLS does not trust, and a connection the server closed after
login saying anything but where the sequencer is, that none is, or that it is shutting
down (the server relays another, a message too long) are raised at once: another try
would get the same answer. One connection is a :class:`~tickertape.client.publisher.Publisher`;
this module holds the choice of address and the re-sending, and no per-message work but
keeping each batch sent until it is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Final

from tickertape.client.connecting import TLSRefused, describe_error
from tickertape.client.publisher import Publisher
from tickertape.errors import ConfigError, LoginRejected, ProtocolError
from tickertape.wire.publishing import (
    END_OF_SESSION_MARKER,
    Ack,
    redirect_address,
    redirect_text,
)

__all__ = ["Address", "FailoverPublisher", "NoPublishingServer", "where"]

log = logging.getLogger(__name__)

Address = tuple[str, int]
"""A server's host and port."""

DEFAULT_FAILOVER_TIMEOUT: Final = 30.0
DEFAULT_RETRY_DELAY: Final = 0.05
DEFAULT_MAX_RETRY_DELAY: Final = 1.0
_NO_SEQUENCER: Final = redirect_text(None)
"""What a node says when no node takes publishers at the moment."""
_MOVE_ON: Final = (_NO_SEQUENCER, "shutting down")
"""What a server may say as it closes a publisher's connection, other than naming the
sequencer, that sends the publisher elsewhere (or back, later) rather than stopping it."""


def where(address: Address) -> str:
    """``HOST:PORT`` (``[V6]:PORT``)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class NoPublishingServer(ConnectionError):
    """No address took the publisher's login; :attr:`answers` holds what each said
    (``HOST:PORT`` to words), in the order they were last tried."""

    def __init__(self, message: str, answers: dict[str, str]) -> None:
        super().__init__(message)
        self.answers = answers


class FailoverPublisher:
    """A publisher that follows the sequencer among ``addresses``. Make one with
    :meth:`connect`; it has the same methods and counts as a
    :class:`~tickertape.client.publisher.Publisher`. Not for concurrent use by several
    tasks."""

    def __init__(
        self,
        addresses: Sequence[Address],
        *,
        username: str = "",
        password: str = "",
        server_timeout: float = 15.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        failover_timeout: float = DEFAULT_FAILOVER_TIMEOUT,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
    ) -> None:
        if not addresses:
            raise ConfigError("a publisher needs at least one address")
        for name, value in (
            ("failover_timeout", failover_timeout),
            ("retry_delay", retry_delay),
            ("max_retry_delay", max_retry_delay),
        ):
            if not value > 0:
                raise ConfigError(f"{name} is {value!r}; it must be a positive number of seconds")
        self.addresses = list(dict.fromkeys(addresses))
        self._username = username
        self._password = password
        self._server_timeout = server_timeout
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._failover_timeout = failover_timeout
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._next = 0  # the index of the address a round starts with
        self._connection: Publisher | None = None
        self.address: Address = self.addresses[0]
        """The address of the node this publisher is logged in to."""
        self.failovers = 0
        """How many times the publisher moved to a new connection after losing one."""
        # What was sent and not yet acknowledged, as sent: (payloads, messages, markers).
        self._unacked: deque[tuple[list[bytes], int, int]] = deque()
        self._dropped = (0, 0)  # messages and markers dropped from the front of _unacked
        self._sent = 0
        self._ends_sent = 0
        self._base_acked = 0  # acknowledged on the connections before this one
        self._base_ended: list[str] = []
        self._last_ack: Ack | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        addresses: Sequence[Address],
        *,
        username: str = "",
        password: str = "",
        server_timeout: float = 15.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        failover_timeout: float = DEFAULT_FAILOVER_TIMEOUT,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
    ) -> FailoverPublisher:
        """Log in to the node of ``addresses`` that takes publishers (see the module's
        docstring). Raises :class:`NoPublishingServer` if none does (at once if none
        answered and none said to try again, else after ``failover_timeout`` seconds),
        :class:`~tickertape.errors.LoginRejected` for a rejection that names no other
        node, :class:`~tickertape.client.soupbintcp.TLSRefused` for a certificate that
        is not trusted. ``server_timeout``, ``ssl`` and ``server_hostname`` are as for
        :meth:`Publisher.connect <tickertape.client.publisher.Publisher.connect>`;
        ``failover_timeout`` is how long it looks for the sequencer, at the start and
        after each lost connection; ``retry_delay`` and ``max_retry_delay`` bound the
        wait between two rounds."""
        publisher = cls(
            addresses,
            username=username,
            password=password,
            server_timeout=server_timeout,
            ssl=ssl,
            server_hostname=server_hostname,
            failover_timeout=failover_timeout,
            retry_delay=retry_delay,
            max_retry_delay=max_retry_delay,
        )
        publisher._connection = await publisher._find(None, first=True)
        return publisher

    # ------------------------------------------------------------------ counts

    @property
    def _current(self) -> Publisher:
        if self._connection is None:
            raise ConnectionError("the publisher is closed")
        return self._connection

    @property
    def acked(self) -> int:
        """Messages acknowledged as durable, over every connection."""
        connection = self._connection
        return self._base_acked + (connection.acked if connection is not None else 0)

    @property
    def sent(self) -> int:
        """Messages sent so far (not counting END OF SESSION markers, nor re-sending)."""
        return self._sent

    @property
    def ends_sent(self) -> int:
        """END OF SESSION markers sent so far."""
        return self._ends_sent

    @property
    def ended(self) -> list[str]:
        """The sessions this publisher's markers ended."""
        connection = self._connection
        return self._base_ended + (connection.ended if connection is not None else [])

    @property
    def last_ack(self) -> Ack | None:
        """The last acknowledgement of messages, its count over every connection."""
        connection = self._connection
        ack = connection.last_ack if connection is not None else None
        if ack is None:
            return self._last_ack
        return Ack(self.acked, ack.session, ack.seq)

    @property
    def session(self) -> str:
        """The session the current connection logged in to."""
        return self._current.session

    # ------------------------------------------------------------------ publishing

    async def send_many(self, payloads: Sequence[bytes]) -> None:
        """Send messages (see :meth:`Publisher.send_many
        <tickertape.client.publisher.Publisher.send_many>`); they are kept until
        acknowledged, and re-sent if the connection is lost first."""
        connection = self._current
        batch = list(payloads)
        if not batch:
            return
        markers = batch.count(END_OF_SESSION_MARKER)
        self._forget_acknowledged()
        self._unacked.append((batch, len(batch) - markers, markers))
        self._sent += len(batch) - markers
        self._ends_sent += markers
        try:
            await connection.send_many(batch)
        except (OSError, ProtocolError) as exc:
            await self._failover(connection, exc)  # which sends this batch too

    async def flush(self) -> Ack | None:
        """Wait until every message sent is acknowledged and every session end
        confirmed, moving to another node if the connection is lost; the last
        acknowledgement. (Bound the wait with ``asyncio.timeout``.)"""
        while True:
            connection = self._current
            try:
                await connection.flush()
            except (OSError, ProtocolError) as exc:
                await self._failover(connection, exc)
                continue
            self._forget_acknowledged()
            return self.last_ack

    async def end_session(self) -> str:
        """End the active session after everything sent; returns the session ended."""
        await self.send_many([END_OF_SESSION_MARKER])
        mine = self._ends_sent - 1
        await self.flush()
        return self.ended[mine]

    async def close(self) -> None:
        """Log out and close (without waiting for acknowledgements: see :meth:`flush`)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._retire(connection)
            await connection.close()

    async def __aenter__(self) -> FailoverPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ failover

    def _forget_acknowledged(self) -> None:
        """Drop the batches at the front that are wholly acknowledged."""
        messages = self.acked - self._dropped[0]
        markers = len(self.ended) - self._dropped[1]
        dropped_messages, dropped_markers = self._dropped
        unacked = self._unacked
        while unacked and unacked[0][1] <= messages and unacked[0][2] <= markers:
            _, count, ends = unacked.popleft()
            messages -= count
            markers -= ends
            dropped_messages += count
            dropped_markers += ends
        self._dropped = (dropped_messages, dropped_markers)

    def _unacknowledged(self) -> list[bytes]:
        """Everything sent after what is acknowledged, in order. The server acknowledges
        in the order things were sent, so what is acknowledged is the first ``acked``
        messages and the first ``len(ended)`` markers."""
        self._forget_acknowledged()
        messages = self.acked - self._dropped[0]
        markers = len(self.ended) - self._dropped[1]
        left: list[bytes] = []
        for batch, _, _ in self._unacked:
            if not messages and not markers:
                left += batch
                continue
            for payload in batch:
                if payload == END_OF_SESSION_MARKER and markers:
                    markers -= 1
                elif payload != END_OF_SESSION_MARKER and messages:
                    messages -= 1
                else:
                    left.append(payload)
        return left

    def _retire(self, connection: Publisher) -> None:
        """Fold a finished connection's counts into the publisher's."""
        if connection.last_ack is not None:
            self._last_ack = Ack(
                self._base_acked + connection.acked,
                connection.last_ack.session,
                connection.last_ack.seq,
            )
        self._base_acked += connection.acked
        self._base_ended += connection.ended

    async def _failover(self, lost: Publisher, cause: BaseException) -> None:
        """The connection ``lost`` failed with ``cause``: log in again where the
        sequencer is, and re-send what is not acknowledged."""
        async with self._lock:
            if self._connection is not lost:
                return  # another call did it already
            self._connection = None
            while True:
                self._retire(lost)
                publishing_into = self._publishing_into(lost)
                await lost.close()
                said = lost.last_words
                redirect = redirect_address(said)
                if said and redirect is None and not any(word in said for word in _MOVE_ON):
                    raise cause  # a refusal (may not publish, a relay, too long a message)
                log.warning(
                    "publishing to %s: %s; looking for the sequencer",
                    where(self.address),
                    describe_error(cause),
                )
                connection = await self._find(redirect, first=False)
                self._connection = connection
                self.failovers += 1
                resend = self._unacknowledged()
                if (
                    END_OF_SESSION_MARKER in resend
                    and publishing_into
                    and connection.session != publishing_into
                ):
                    # The session this marker was to end has ended: do not end the next.
                    resend.remove(END_OF_SESSION_MARKER)
                    self._base_ended.append(publishing_into)
                log.warning(
                    "publishing to %s: logged in to session %s, re-sending %d not acknowledged",
                    where(self.address),
                    connection.session,
                    len(resend),
                )
                try:
                    if resend:
                        await connection.send_many(resend)
                    return
                except (OSError, ProtocolError) as exc:
                    lost, cause = connection, exc
                    self._connection = None

    @staticmethod
    def _publishing_into(connection: Publisher) -> str:
        """The session ``connection`` was publishing into, if known (blank once one of
        its markers ended that session)."""
        session = connection.last_ack.session if connection.last_ack else connection.session
        return "" if session in connection.ended else session

    async def _find(self, redirect: Address | None, *, first: bool) -> Publisher:
        """A connection logged in to the node that takes publishers: ``redirect`` first,
        then every address in turn, round after round (see the module's docstring)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._failover_timeout
        delay = self._retry_delay
        answers: dict[str, str] = {}
        while True:
            count = len(self.addresses)
            queue = [self.addresses[(self._next + n) % count] for n in range(count)]
            if redirect is not None:
                queue.insert(0, redirect)
            tried: set[Address] = set()
            again = False  # a node said to try again
            while queue:
                address = queue.pop(0)
                if address in tried:
                    continue
                tried.add(address)
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    connection = await asyncio.wait_for(self._login(address), left)
                except LoginRejected as exc:
                    said = str(exc).partition("rejected: ")[2] or str(exc)
                    target = redirect_address(said)
                    if target is None and _NO_SEQUENCER not in said:
                        raise  # wrong credentials, may not publish: the same next time
                    answers.pop(where(address), None)
                    answers[where(address)] = f"login rejected: {said}"
                    again = True
                    if target is not None:
                        queue.insert(0, target)
                except TLSRefused:
                    raise
                except (OSError, TimeoutError, ProtocolError) as exc:
                    answers.pop(where(address), None)
                    answers[where(address)] = describe_error(exc)
                else:
                    self.address = address
                    if address in self.addresses:
                        self._next = (self.addresses.index(address) + 1) % count
                    if not first or answers:
                        log.info("publishing to %s: logged in", where(address))
                    return connection
            left = deadline - loop.time()
            if (first and not again) or left <= 0:
                raise self._none_took(answers, first and not again)
            first = False  # a node said to try again: try until the deadline
            redirect = None
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, self._max_retry_delay)

    async def _login(self, address: Address) -> Publisher:
        host, port = address
        return await Publisher.connect(
            host,
            port,
            username=self._username,
            password=self._password,
            server_timeout=self._server_timeout,
            ssl=self._ssl,
            server_hostname=self._server_hostname,
        )

    def _none_took(self, answers: dict[str, str], at_once: bool) -> NoPublishingServer:
        said = "; ".join(f"{address}: {answer}" for address, answer in answers.items())
        if at_once and len(answers) == 1:
            return NoPublishingServer(f"cannot log in to {said}", answers)
        if at_once:
            return NoPublishingServer(
                f"cannot log in as a publisher to any of {len(answers)} servers: {said}", answers
            )
        return NoPublishingServer(
            f"no server took the publisher in {self._failover_timeout:g} s: {said}", answers
        )
