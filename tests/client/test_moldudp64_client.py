"""The MoldUDP64 subscriber over real UDP sockets on 127.0.0.1 (a unicast address stands
in for the group), against a small sender that drops packets on purpose."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import cast

from tickertape.client.moldudp64 import MoldSubscription
from tickertape.client.soupbintcp import Message
from tickertape.wire.moldudp64 import Request, end_of_session, pack

SESSION = "2026112901"
TIMEOUT = 30.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Answers(asyncio.DatagramProtocol):
    """A re-request server over a list of messages."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        request = Request.decode(data)
        self.requests += 1
        first = request.sequence
        wanted = self.messages[first - 1 : first - 1 + request.count]
        if wanted and self.transport is not None:
            self.transport.sendto(next(pack(SESSION, first, wanted)), addr)


async def receive(subscription: MoldSubscription) -> list[Message]:
    return [message async for message in subscription]


def test_a_late_joiner_with_losses_gets_every_message_once_in_order() -> None:
    messages = [b"message %d" % n for n in range(1, 3001)]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        group_port = free_udp_port()
        answers = Answers(messages)
        request_transport, _ = await loop.create_datagram_endpoint(
            lambda: answers, local_addr=("127.0.0.1", 0)
        )
        request_port = request_transport.get_extra_info("sockname")[1]
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", group_port)
        )
        subscription = MoldSubscription("127.0.0.1", group_port, ("127.0.0.1", request_port), seq=1)
        receiving = asyncio.ensure_future(receive(subscription))
        await asyncio.sleep(0.05)  # the subscriber's sockets are bound
        rng = random.Random(7)
        packets = list(pack(SESSION, 1, messages))
        for number, packet in enumerate(packets):
            if number >= len(packets) // 3 and rng.random() > 0.2:  # joins late, then loses 20%
                sender.sendto(packet)
            await asyncio.sleep(0)
        for _ in range(100):  # End of Session, repeated until the subscriber has it all
            sender.sendto(end_of_session(SESSION, len(messages) + 1))
            if receiving.done():
                break
            await asyncio.sleep(0.02)
        got = await asyncio.wait_for(receiving, TIMEOUT)
        assert [m.seq for m in got] == list(range(1, len(messages) + 1))
        assert [m.payload for m in got] == messages
        assert {m.session for m in got} == {SESSION}
        assert answers.requests > 0
        await subscription.close()
        sender.close()
        request_transport.close()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


class HeldAnswers(Answers):
    """A re-request server that answers nothing until ``window`` different requests have
    arrived (what the client keeps in flight at once), then everything."""

    def __init__(self, messages: list[bytes], window: int) -> None:
        super().__init__(messages)
        self.window = window
        self.held: dict[int, tuple[Request, tuple[str | object, int]]] = {}
        self.full = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.full.is_set():
            super().datagram_received(data, addr)
            return
        request = Request.decode(data)
        self.held.setdefault(request.sequence, (request, addr))
        if len(self.held) >= self.window:
            self.full.set()
            for request, to in self.held.values():
                super().datagram_received(request.encode(), to)


def test_re_requests_are_pipelined_each_for_what_one_reply_holds() -> None:
    """A late joiner keeps a window of 64 requests in flight, each for the messages one
    reply holds (14 of these 100-byte messages), back to back over the gap."""
    messages = [b"%-100d" % n for n in range(1, 2001)]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        group_port = free_udp_port()
        answers = HeldAnswers(messages, 64)
        request_transport, _ = await loop.create_datagram_endpoint(
            lambda: answers, local_addr=("127.0.0.1", 0)
        )
        request_port = request_transport.get_extra_info("sockname")[1]
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", group_port)
        )
        subscription = MoldSubscription("127.0.0.1", group_port, ("127.0.0.1", request_port))
        receiving = asyncio.ensure_future(receive(subscription))
        await asyncio.sleep(0.05)  # the subscriber's sockets are bound
        sender.sendto(next(pack(SESSION, 1990, messages[1989:])))  # joins late: 1..1989 missing
        try:
            await asyncio.wait_for(answers.full.wait(), 5.0)
        except TimeoutError:
            raise AssertionError(
                f"only {len(answers.held)} different requests in flight: "
                f"{sorted((r.sequence, r.count) for r, _ in answers.held.values())}"
            ) from None
        held = sorted((r.sequence, r.count) for r, _ in answers.held.values())
        assert held == [(1 + 14 * i, 14) for i in range(64)]
        for _ in range(250):  # End of Session, repeated until the subscriber has it all
            sender.sendto(end_of_session(SESSION, len(messages) + 1))
            if receiving.done():
                break
            await asyncio.sleep(0.02)
        got = await asyncio.wait_for(receiving, TIMEOUT)
        assert [m.seq for m in got] == list(range(1, len(messages) + 1))
        assert [m.payload for m in got] == messages
        await subscription.close()
        sender.close()
        request_transport.close()

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
