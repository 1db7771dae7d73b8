"""An asyncio MoldUDP64 subscriber: the group for live data, a re-request server for gaps.

::

    async with MoldSubscription("239.1.1.1", 7400, ("10.0.0.1", 7401)) as messages:
        async for message in messages:      # Message(session, seq, payload), in order
            ...

It joins the multicast group and keeps what arrives while it asks the re-request server
for what is missing (at start for a late joiner, and after any loss), then hands out
messages strictly in sequence order, each exactly once (the logic is
:class:`tickertape.protocol.moldudp64.Receiver`). Iteration ends at End of Session, once
every message before it was handed out. A late joiner whose gap is larger than
``tcp_threshold`` and that was given a SoupBinTCP server (``tcp=(host, port)``) catches up
over TCP instead, keeping the group's packets meanwhile (the RFC 6285 scheme).

It follows one session: the one named, or else the first whose heartbeat or message it
sees (an End of Session seen first is of a session that ended before it joined: it waits
for the next). Packets of other sessions are ignored (said at DEBUG). ``seq=0`` means
live only: from the first packet seen, nothing earlier asked for. The group is joined on
``iface``; by default, on the loopback if the re-request server is on it (one machine),
else where the route to the group leads. With no packet at all after ``quiet_after``
seconds, a warning says what it waits for and what to check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Final

from tickertape.client.soupbintcp import Message, Subscription
from tickertape.protocol.moldudp64 import Receiver
from tickertape.text import plural
from tickertape.wire.moldudp64 import MAX_MESSAGES, Downstream

log = logging.getLogger(__name__)

DEFAULT_TCP_THRESHOLD: Final = 10_000
"""A gap larger than this is caught up over SoupBinTCP, when a server is given."""
DEFAULT_QUIET_AFTER: Final = 3.0
"""Seconds without a packet from the group before a warning says what is awaited."""
_RECEIVE_BUFFER: Final = 8 << 20
_READS_PER_WAKEUP: Final = 256
_IP_MULTICAST_ALL: Final = 49  # linux/in.h; not in Python's socket module


class _Reader:
    """Feeds the receiver every datagram waiting on a socket at each wake-up (not one a
    turn of the event loop, as a datagram transport does): a burst of answers costs one
    turn, and the requests it makes room for go out together."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        receiver: Receiver,
        wake: asyncio.Event,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._receiver = receiver
        self._wake = wake
        self.received = 0
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        now = self._loop.time()
        for _ in range(_READS_PER_WAKEUP):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error reported late, say: nothing lost
                log.debug("MoldUDP64 socket: %s", exc)
                continue
            self.received += 1
            self._receiver.datagram_received(data, now)
        self._wake.set()

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def default_iface(request_host: str) -> str:
    """The interface to join the group on when none is named: the loopback when the
    re-request server is on it (server and receiver on one machine, where ``serve
    --mold`` sends on the loopback too), else any (the route to the group decides)."""
    try:
        loopback = ipaddress.ip_address(request_host).is_loopback
    except ValueError:
        loopback = False
    return "127.0.0.1" if loopback else "0.0.0.0"


def _group_socket(group: str, port: int, iface: str) -> socket.socket:
    """A UDP socket receiving ``group:port``: joined to the group if it is multicast
    (on ``iface``), else simply bound to that unicast address (useful in tests)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
    if ipaddress.ip_address(group).is_multicast:
        sock.bind(("", port))
        if sys.platform == "linux":
            # Only what this socket joined: not the group as joined on another interface
            # by another socket of this machine (Linux delivers that too by default).
            sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
        membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface))
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError as exc:
            sock.close()
            where = (
                "the route to the group decides, and there is none: name an interface"
                if iface == "0.0.0.0"
                else "is that the address of one of this machine's interfaces?"
            )
            raise OSError(
                exc.errno,
                f"cannot join MoldUDP64 group {group} on interface {iface} "
                f"({exc.strerror or exc}; {where})",
            ) from None
    else:
        sock.bind((group, port))
    sock.setblocking(False)
    return sock


class MoldSubscription:
    """An async iterator of :class:`~tickertape.client.soupbintcp.Message` from a
    MoldUDP64 group. Use with ``async with``."""

    def __init__(
        self,
        group: str,
        port: int,
        request: tuple[str, int],
        *,
        iface: str | None = None,
        session: str = "",
        seq: int = 1,
        tcp: tuple[str, int] | None = None,
        tcp_threshold: int = DEFAULT_TCP_THRESHOLD,
        quiet_after: float = DEFAULT_QUIET_AFTER,
    ) -> None:
        self.group = group
        self.port = port
        self.request_address = request
        self.iface = default_iface(request[0]) if iface is None else iface
        self.quiet_after = quiet_after
        self.tcp = tcp
        self.tcp_threshold = tcp_threshold
        self._start_session = session
        self._start_seq = seq
        self._readers: list[_Reader] = []
        self._iterator: AsyncIterator[Message] | None = None
        self.caught_up_by_tcp = 0
        """Messages that came over SoupBinTCP rather than the group or re-requests."""

    async def __aenter__(self) -> MoldSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Message]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def close(self) -> None:
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            await aclose()
        for reader in self._readers:
            reader.close()
        self._readers.clear()

    async def _run(self) -> AsyncIterator[Message]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        receiver = Receiver(loop.time(), session=self._start_session, next_seq=self._start_seq)
        group_reader = _Reader(
            loop, _group_socket(self.group, self.port, self.iface), receiver, wake
        )
        self._readers.append(group_reader)
        log.debug("MoldUDP64: joined %s:%d on interface %s", self.group, self.port, self.iface)
        quiet_until: float | None = loop.time() + self.quiet_after
        request_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            request_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            request_socket.bind(("0.0.0.0", 0))
            request_socket.setblocking(False)
        except BaseException:
            request_socket.close()
            raise
        self._readers.append(_Reader(loop, request_socket, receiver, wake))
        tcp_done = False
        while True:
            session = receiver.session
            for seq, payload in receiver.messages():
                yield Message(session, seq, payload)
            if receiver.ended:
                return
            now = loop.time()
            if (
                self.tcp is not None
                and not tcp_done
                and receiver.session
                and receiver.gap > self.tcp_threshold
            ):
                tcp_done = True
                async for message in self._catch_up_by_tcp(receiver):
                    yield message
                continue
            for ask in receiver.requests(now):
                try:
                    request_socket.sendto(ask.encode(), self.request_address)
                except OSError as exc:  # a full buffer, say: asked again on the timer
                    log.debug("MoldUDP64: a request was not sent: %s", exc)
            if quiet_until is not None:
                if group_reader.received:
                    quiet_until = None
                elif now >= quiet_until:
                    quiet_until = None
                    self._say_quiet()
            wake.clear()
            timeout = max(0.0, receiver.next_deadline() - loop.time())
            if quiet_until is not None:
                timeout = min(timeout, max(0.0, quiet_until - loop.time()))
            try:
                async with asyncio.timeout(min(timeout, 1.0)):
                    await wake.wait()
            except TimeoutError:
                pass

    def _say_quiet(self) -> None:
        log.warning(
            "no MoldUDP64 packet from group %s:%d on interface %s in %g s: waiting for the "
            "server's heartbeats (one a second) or messages. Check that the server runs "
            "with --mold %s:%d, that it sends on this interface (its log says which; "
            "serve --mold-iface, tail --iface), and that multicast is routed between them "
            "(ip route get %s)",
            self.group,
            self.port,
            self.iface,
            self.quiet_after,
            self.group,
            self.port,
            self.group,
        )

    async def _catch_up_by_tcp(self, receiver: Receiver) -> AsyncIterator[Message]:
        """Fetch the gap over SoupBinTCP, feeding it to the receiver as if it came by
        UDP: the group's packets kept meanwhile join it without a gap or a duplicate."""
        assert self.tcp is not None
        loop = asyncio.get_running_loop()
        host, port = self.tcp
        log.info(
            "gap of %s: catching up session %s from %d over SoupBinTCP %s:%d",
            plural(receiver.gap, "message"),
            receiver.session,
            receiver.next_seq,
            host,
            port,
        )
        subscription = Subscription(host, port, receiver.session, receiver.next_seq)
        async with subscription:
            async for batch in subscription.batches():
                for first in range(0, len(batch), MAX_MESSAGES):
                    part = batch[first : first + MAX_MESSAGES]
                    packet = Downstream(
                        receiver.session, part[0].seq, tuple(m.payload for m in part)
                    )
                    receiver.datagram_received(packet.encode(), loop.time())
                self.caught_up_by_tcp += len(batch)
                for seq, payload in receiver.messages():
                    yield Message(receiver.session, seq, payload)
                if receiver.gap <= self.tcp_threshold // 10 or receiver.ended:
                    return  # close enough: the rest comes by re-request
