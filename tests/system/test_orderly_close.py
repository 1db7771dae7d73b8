"""A close never throws output away, and a client is heard during a catch-up (issue 11,
items 1 and 2; design decision 7).

A client catching up from disk that sends its Client Heartbeats, as SoupBinTCP asks, used
to get a TCP reset instead of the end of the session: asyncio reads nothing from a
socket while it sends a file to it, and closing a socket whose input is unread makes the
kernel reset the connection and discard what was still queued for sending. Nor was a
Logout Request acted on until the catch-up ended.

The client here is written from the SoupBinTCP 4.1 spec with a plain blocking socket and
``struct``: a small receive buffer, so that the server's ``sendfile`` waits on it; slow
reads; a Client Heartbeat every :data:`HEARTBEAT_EVERY` seconds, whatever it is doing. The
server is ``tickertape serve`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from tickertape.client.publisher import Publisher
from tickertape.store.log import SessionLog
from tickertape.wire.soupbintcp import encode_sequenced_many

from support import ServerProcess, free_port

MESSAGES: Final = 200_000
"""Messages in each session pulled or caught up with."""
FILLER: Final = b"." * 92
"""A message is its sequence number (u64, big-endian), then this: 100 bytes, 20 MB a
session, far more than the sockets' buffers hold."""
BATCH: Final = 2_000
RUNS: Final = 20
ENDED_SESSION: Final = "2000010101"
TOKEN: Final = "orderly-close-token"

RCVBUF: Final = 32 << 10
"""The client's receive buffer: small, so the server's sendfile waits on the client."""
READ_SIZE: Final = 16 << 10
READ_PAUSE: Final = 0.0003
"""Seconds the client sleeps after each read: it reads more slowly than it is sent to."""
HEARTBEAT_EVERY: Final = 0.05
"""Seconds between the client's heartbeats. The spec says one a second; on a real clock
a shorter period only makes sure that heartbeats arrive while a sendfile is in flight."""
TIMEOUT: Final = 30.0
"""Seconds any one read may wait."""

_HEADER: Final = struct.Struct(">H")
_SEQ: Final = struct.Struct(">Q")


def message(seq: int) -> bytes:
    return _SEQ.pack(seq) + FILLER


PACKET_SIZE: Final = 2 + 1 + 8 + len(FILLER)
"""Bytes of one message's Sequenced Data packet."""


# ---------------------------------------------------------------------------- the raw client


def packet(kind: bytes, body: bytes = b"") -> bytes:
    """A SoupBinTCP packet: u16 big-endian length of what follows, the type, the body."""
    return _HEADER.pack(1 + len(body)) + kind + body


CLIENT_HEARTBEAT: Final = packet(b"R")
LOGOUT_REQUEST: Final = packet(b"O")


def login_request(session: str, seq: int, user: str = "", password: str = "") -> bytes:
    """Spec 2.3.1: username (6) and password (10) padded on the right with spaces, then
    the requested session (10, blank: the active one) and sequence number (20, ASCII
    digits), padded on the left."""
    return packet(
        b"L",
        user.encode().ljust(6)
        + password.encode().ljust(10)
        + session.encode().rjust(10)
        + b"%20d" % seq,
    )


@dataclass
class Received:
    """What the client got: Login Accepted's session and sequence number, how many
    Sequenced Data packets (each checked to carry its own number), the other packets in
    order (heartbeats left out) each with the message count before it, and how the
    connection ended: ``eof`` (an orderly close), ``reset``, or ``torn`` (the stream
    ended mid-packet)."""

    session: str = ""
    first: int = 0
    messages: int = 0
    others: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    ended: str = ""
    closed_at: float = 0.0

    @property
    def kinds(self) -> list[bytes]:
        return [kind for kind, _, _ in self.others]


def sequenced_packets(count: int) -> bytes:
    """Messages 1..``count`` as Sequenced Data packets (spec 2.2.3: length, "S", message)."""
    return b"".join(packet(b"S", message(seq)) for seq in range(1, count + 1))


EXPECTED: Final = sequenced_packets(MESSAGES)
"""What a client logged in at sequence 1 must receive after Login Accepted, were there no
heartbeats: received bytes are compared with it at C speed, and parsed packet by packet
only where they differ from it."""


class RawClient:
    """A slow, heartbeating SoupBinTCP client over a blocking socket."""

    def __init__(self, port: int, session: str, seq: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(login_request(session, seq))
        self.got = Received()
        self._buffer = bytearray()
        self._heartbeat_at = time.monotonic() + HEARTBEAT_EVERY
        assert seq == 1, "the expected stream is from message 1"

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, *, slowly: bool = True, heartbeats: bool = True) -> bool:
        """One read (a heartbeat first if one is due); False once the connection ended."""
        now = time.monotonic()
        if heartbeats and now >= self._heartbeat_at:
            self._heartbeat_at = now + HEARTBEAT_EVERY
            try:
                self.send(CLIENT_HEARTBEAT)
            except (BrokenPipeError, ConnectionResetError):
                self.got.ended = "reset"
                return False
        try:
            data = self.sock.recv(READ_SIZE)
        except ConnectionResetError:
            self.got.ended = "reset"
            self.got.closed_at = time.monotonic()
            return False
        if not data:
            self.got.ended = "torn" if self._buffer else "eof"
            self.got.closed_at = time.monotonic()
            return False
        self._parse(data)
        if slowly:
            time.sleep(READ_PAUSE)
        return True

    def _parse(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        got = self.got
        position = 0
        size = len(buffer)
        while position + 2 <= size:
            if got.first and not got.others[1:]:
                # Messages, as expected? Then whole runs of them are checked at once.
                expected = got.messages * PACKET_SIZE
                run = min((size - position) // PACKET_SIZE, MESSAGES - got.messages)
                if (
                    run
                    and buffer[position : position + run * PACKET_SIZE]
                    == (EXPECTED[expected : expected + run * PACKET_SIZE])
                ):
                    got.messages += run
                    position += run * PACKET_SIZE
                    continue
            (length,) = _HEADER.unpack_from(buffer, position)
            end = position + 2 + length
            if end > size:
                break
            kind = buffer[position + 2 : position + 3]
            if kind == b"S":
                seq = got.first + got.messages
                assert end - position == 11 + len(FILLER), f"message {seq}: length {length}"
                assert _SEQ.unpack_from(buffer, position + 3)[0] == seq, f"message {seq}"
                assert not got.others or got.others[-1][0] == b"A", (
                    f"message {seq} after {got.others[-1]}"
                )
                got.messages += 1
            elif kind == b"A":
                body = bytes(buffer[position + 3 : end])
                got.session = body[:10].decode().strip()
                got.first = int(body[10:30])
                got.others.append((b"A", body, 0))
            elif kind != b"H":
                got.others.append((bytes(kind), bytes(buffer[position + 3 : end]), got.messages))
            position = end
        del buffer[:position]

    def until_closed(self, *, slowly: bool = True, heartbeats: bool = True) -> Received:
        while self.read(slowly=slowly, heartbeats=heartbeats):
            pass
        self.close()
        return self.got


# ---------------------------------------------------------------------------- the server


def make_ended_session(data: Path) -> None:
    """Session :data:`ENDED_SESSION`, ended, of :data:`MESSAGES` messages."""
    directory = data / ENDED_SESSION
    with SessionLog.open(directory, create=True) as session_log:
        for first in range(1, MESSAGES + 1, BATCH):
            batch = [message(seq) for seq in range(first, min(first + BATCH, MESSAGES + 1))]
            session_log.append(encode_sequenced_many(batch), len(batch))
    (directory / "ended").touch()


@dataclass
class Server:
    process: ServerProcess
    admin: int

    @property
    def port(self) -> int:
        return self.process.port

    def roll(self) -> None:
        """End the active session (the admin API)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}/roll",
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            json.load(answer)

    def publish(self, count: int) -> None:
        """Publish ``count`` messages into the active session, numbered from 1."""

        async def publish() -> None:
            async with await Publisher.connect("127.0.0.1", self.port) as publisher:
                for first in range(1, count + 1, BATCH):
                    last = min(first + BATCH, count + 1)
                    await publisher.send_many([message(seq) for seq in range(first, last)])
                ack = await publisher.flush()
                assert ack is not None and ack.seq == count, ack

        asyncio.run(asyncio.wait_for(publish(), TIMEOUT))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("data")
    make_ended_session(data)
    admin = free_port()
    with ServerProcess(
        data, "--admin-port", str(admin), "--admin-token", TOKEN, "--durability", "none"
    ) as process:
        process.wait_for_log(f"admin API listening on 127.0.0.1:{admin}")
        yield Server(process, admin)
        assert not process.logged("read nothing more"), "a client that read was cut off"


def whole(got: Received, session: str) -> None:
    """Every message from 1, then End of Session, then an orderly close."""
    assert got.ended == "eof", got.ended
    assert (got.session, got.first) == (session, 1)
    assert got.messages == MESSAGES
    assert got.kinds == [b"A", b"Z"], got.others


# ---------------------------------------------------------------------------- the tests


@pytest.mark.timeout(240)
def test_a_heartbeating_slow_reader_pulls_a_whole_ended_session(server: Server) -> None:
    for run in range(RUNS):
        client = RawClient(server.port, ENDED_SESSION, 1)
        got = client.until_closed()
        print(f"run {run}: {got.messages} messages, then {got.kinds[1:]}, {got.ended}")
        whole(got, ENDED_SESSION)


@pytest.mark.timeout(240)
def test_a_heartbeating_slow_reader_catching_up_while_the_session_ends(server: Server) -> None:
    """The session ends (an admin roll) while the client is still far behind: it gets
    the rest of the session from the log, then End of Session, then the close. (The
    next run's session is published meanwhile.)"""
    server.publish(MESSAGES)
    for run in range(RUNS):
        client = RawClient(server.port, "", 1)
        while client.got.messages < MESSAGES // 10:
            assert client.read(), f"run {run}: closed early: {client.got}"
        session = client.got.session
        server.roll()
        assert client.got.messages < MESSAGES // 2, "not catching up any more when it ended"
        with ThreadPoolExecutor(1) as executor:
            publishing = executor.submit(server.publish, MESSAGES)
            got = client.until_closed()
            publishing.result()
        print(f"run {run}: {got.messages} messages, then {got.kinds[1:]}, {got.ended}")
        whole(got, session)


@pytest.mark.timeout(120)
def test_a_logout_request_during_a_catch_up_closes_the_connection_at_once(
    server: Server,
) -> None:
    """Spec 2.3.4: "Upon receiving a Logout Request Packet, the server will immediately
    terminate the connection". Sent a tenth of the way into a pull, it stops the
    catch-up: what the sockets already hold arrives (whole packets), then an orderly
    close; not the rest of the session."""
    for run in range(RUNS):
        client = RawClient(server.port, ENDED_SESSION, 1)
        while client.got.messages < MESSAGES // 10:
            assert client.read(), f"run {run}: closed early: {client.got}"
        at_logout = client.got.messages
        client.send(LOGOUT_REQUEST)
        sent = time.monotonic()
        got = client.until_closed(slowly=False, heartbeats=False)
        print(
            f"run {run}: logout after {at_logout} messages; closed "
            f"{(got.closed_at - sent) * 1000:.1f} ms later, after {got.messages} messages"
        )
        assert got.ended == "eof", got.ended
        assert got.kinds == [b"A"], got.others
        assert got.messages < MESSAGES, "the whole session was sent after the logout"


@pytest.mark.timeout(120)
def test_a_malformed_packet_during_a_catch_up_is_answered_as_when_live(server: Server) -> None:
    """A packet of an unknown type gets a Debug packet saying what was wrong and the
    close, after whole packets, while the catch-up is still under way."""
    for run in range(5):
        client = RawClient(server.port, ENDED_SESSION, 1)
        while client.got.messages < MESSAGES // 10:
            assert client.read(), f"run {run}: closed early: {client.got}"
        client.send(packet(b"X", b"junk"))
        got = client.until_closed(slowly=False, heartbeats=False)
        assert got.ended == "eof", got.ended
        assert got.kinds == [b"A", b"+"], got.others
        assert b"X" in got.others[-1][1], got.others[-1]
        assert got.messages < MESSAGES, "the whole session was sent before the answer"


def test_a_refused_login_is_answered_then_closed_in_order(tmp_path: Path) -> None:
    """A client that sends packets after its Login Request while it waits for the answer
    (here heartbeats, which the server does not read while it holds a failed login's
    answer back): Login Rejected ``A`` reaches it (after any Debug packet saying why),
    then an orderly close, not a reset."""
    with ServerProcess(tmp_path, "--user", "alice:secret") as server:
        for run in range(3):  # each failure doubles the delay before the answer
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
                sock.sendall(login_request("", 1, "alice", "wrong"))
                data = bytearray()
                ended = ""
                for _ in range(int(TIMEOUT / HEARTBEAT_EVERY)):
                    # The answer comes after a delay: a heartbeat now and then meanwhile.
                    sock.settimeout(TIMEOUT if data else HEARTBEAT_EVERY)
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        sock.sendall(CLIENT_HEARTBEAT)
                        continue
                    except ConnectionResetError:
                        ended = "reset"
                        break
                    if not chunk:
                        ended = "eof"
                        break
                    data += chunk
            packets = []
            position = 0
            while position + 2 <= len(data):
                (length,) = _HEADER.unpack_from(data, position)
                packets.append(bytes(data[position + 2 : position + 2 + length]))
                position += 2 + length
            assert position == len(data), f"run {run}: a torn packet"
            assert packets and packets[-1] == b"JA", f"run {run}: {packets}"
            assert all(p[:1] == b"+" for p in packets[:-1]), f"run {run}: {packets}"
            assert ended == "eof", f"run {run}: {ended}"
