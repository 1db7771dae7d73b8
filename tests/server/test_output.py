"""The order of what goes out on a connection (tickertape.server.output.Output).

A fake transport writes into one end of a real socket pair, so that its writes and the
``sendfile`` ranges land in one byte stream, in the order the peer reads them; a thread
reads the other end, once told to, until the end of the stream.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tickertape.server.output import Output
from tickertape.wire.soupbintcp import (
    Debug,
    EndOfSession,
    SequencedData,
    ServerHeartbeat,
    decode_server_packet,
    encode_sequenced_many,
)

PACKETS = 2000
PAYLOAD = 1000
ROUNDS = 10_000
"""Bound on the turns of the event loop a test waits for something."""


class FakeTransport(asyncio.Transport):
    """Writes go straight to a socket, in order; the close steps are recorded."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.writes = 0
        self.closing = False
        self.aborted = False
        self.eof = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                select.select([], [self.sock], [], 5)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True
        self.sock.shutdown(socket.SHUT_WR)

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True


class Peer:
    """The client's end: read, once :meth:`start` is called, until the end of stream."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = bytearray()
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._go.wait(30)
        try:
            self.sock.settimeout(30)
            while chunk := self.sock.recv(1 << 16):
                self.received += chunk
        except OSError:
            pass  # reset (an abort): the test looks at what it has

    def start(self) -> None:
        self._go.set()

    async def finished(self) -> bytes:
        await asyncio.to_thread(self._thread.join, 30)
        assert not self._thread.is_alive(), "the stream did not end"
        return bytes(self.received)


def packets(data: bytes) -> list[Any]:
    """Decode a stream of whole packets (asserting that it is one)."""
    found = []
    at = 0
    while at < len(data):
        assert at + 2 <= len(data), f"a partial length field at {at}"
        end = at + 2 + int.from_bytes(data[at : at + 2], "big")
        assert end <= len(data), f"a partial packet at {at}"
        found.append(decode_server_packet(data[at + 2 : end]))
        at = end
    return found


def with_connection(
    tmp_path: Path, body: Callable[[Output, FakeTransport, Peer, int], Awaitable[None]]
) -> None:
    """Run ``body(output, transport, peer, log_fd)`` over a socket pair with small
    buffers, and a log file of :data:`PACKETS` Sequenced Data packets."""
    log = tmp_path / "log"
    log.write_bytes(encode_sequenced_many([bytes([i % 256]) * PAYLOAD for i in range(PACKETS)]))
    ours, theirs = socket.socketpair()
    for sock in (ours, theirs):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ours.setblocking(False)

    async def main() -> None:
        transport = FakeTransport(ours)
        output = Output(transport, "peer")
        peer = Peer(theirs)
        with log.open("rb") as file:
            try:
                await body(output, transport, peer, file.fileno())
            finally:
                output.lost()
                ours.close()
                peer.start()
                await peer.finished()

    try:
        asyncio.run(main())
    finally:
        ours.close()
        theirs.close()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(ROUNDS):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


class Control:
    """What the session logic queued: handed out once, as data_to_send does."""

    def __init__(self) -> None:
        self.queued = b""

    def __call__(self) -> bytes:
        data, self.queued = self.queued, b""
        return data


def test_control_packets_wait_for_the_range_being_sent(tmp_path: Path) -> None:
    async def body(output: Output, transport: FakeTransport, peer: Peer, fd: int) -> None:
        control = Control()
        output.take_control_from(control)
        length = (tmp_path / "log").stat().st_size
        sending = asyncio.create_task(output.send_file(fd, 0, length))
        await until(lambda: output.sending_file)  # blocked: the peer reads nothing yet
        control.queued = ServerHeartbeat().encode()
        output.flush()
        assert transport.writes == 0  # not in the middle of the range
        peer.start()
        assert await sending is True
        assert transport.writes == 1  # written once the range was sent
        transport.write_eof()
        found = packets(await peer.finished())
        assert len(found) == PACKETS + 1
        assert all(isinstance(p, SequencedData) for p in found[:PACKETS])
        assert isinstance(found[-1], ServerHeartbeat)

    with_connection(tmp_path, body)


class SendingFeed:
    """A subscriber as a close sees it: sending the range ``task``."""

    def __init__(self, task: asyncio.Task[bool]) -> None:
        self.task = task
        self.stopped = False

    def halt(self) -> asyncio.Future[Any] | None:
        return self.task

    def stop(self) -> None:
        self.stopped = True
        self.task.cancel()


def test_a_close_stops_the_range_at_a_packet_boundary_then_ends_in_order(tmp_path: Path) -> None:
    async def body(output: Output, transport: FakeTransport, peer: Peer, fd: int) -> None:
        control = Control()
        output.take_control_from(control)
        length = (tmp_path / "log").stat().st_size
        sending = asyncio.create_task(output.send_file(fd, 0, length))
        output.feed = SendingFeed(sending)
        await until(lambda: output.sending_file)
        released: list[bool] = []
        control.queued = EndOfSession().encode()
        output.close_in_turn(lambda: released.append(True))
        assert output.closing and not released and not transport.eof
        peer.start()
        assert await sending is False  # stopped before the end of the range
        await until(lambda: transport.eof)
        assert released == [True]
        found = packets(await peer.finished())  # whole packets only
        assert 0 < len(found) - 1 < PACKETS
        assert all(isinstance(p, SequencedData) for p in found[:-1])
        assert isinstance(found[-1], EndOfSession)  # last, then the end of the stream

    with_connection(tmp_path, body)


def test_end_of_session_follows_the_live_batches_written_before_it(tmp_path: Path) -> None:
    async def body(output: Output, transport: FakeTransport, peer: Peer, fd: int) -> None:
        control = Control()
        output.take_control_from(control)
        output.batch(encode_sequenced_many([b"a", b"b"]))
        output.batch(encode_sequenced_many([b"c"]))
        control.queued = EndOfSession().encode()
        output.close_in_turn(lambda: None)
        output.batch(b"")  # nothing after the close is read as more packets
        output.flush()  # closing: nothing more is flushed
        peer.start()
        found = packets(await peer.finished())
        assert [getattr(p, "payload", None) for p in found[:3]] == [b"a", b"b", b"c"]
        assert isinstance(found[3], EndOfSession) and len(found) == 4
        assert transport.eof and transport.reading  # reads the client until it closes

    with_connection(tmp_path, body)


def test_one_write_per_live_batch(tmp_path: Path) -> None:
    async def body(output: Output, transport: FakeTransport, peer: Peer, fd: int) -> None:
        output.batch(encode_sequenced_many([b"x"] * 1000))
        assert transport.writes == 1

    with_connection(tmp_path, body)


def test_a_refused_connection_is_told_why_then_ended(tmp_path: Path) -> None:
    async def body(output: Output, transport: FakeTransport, peer: Peer, fd: int) -> None:
        output.refuse(Debug(b"too many connections").encode())
        assert output.closing and transport.eof
        peer.start()
        found = packets(await peer.finished())
        assert found == [Debug(b"too many connections")]

    with_connection(tmp_path, body)


def test_a_drop_stops_the_feed_and_aborts(tmp_path: Path) -> None:
    async def body(output: Output, transport: FakeTransport, peer: Peer, fd: int) -> None:
        length = (tmp_path / "log").stat().st_size
        sending = asyncio.create_task(output.send_file(fd, 0, length))
        feed = output.feed = SendingFeed(sending)
        await until(lambda: output.sending_file)
        assert not output.stalled(0.0, 15.0)  # first look
        assert not output.stalled(10.0, 15.0)
        assert output.stalled(15.0, 15.0)  # not moved for the idle timeout
        output.drop()
        assert feed.stopped and transport.aborted and output.closing

    with_connection(tmp_path, body)
