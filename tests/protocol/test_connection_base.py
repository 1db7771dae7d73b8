"""The base both sides share: states, ConnectionLost, the output queue; and that the
client side does not depend on the server side."""

from __future__ import annotations

import ast
from pathlib import Path

import tickertape.protocol
from tickertape.protocol.client import ClientConnection
from tickertape.protocol.connection import Connection, ConnectionLost, State, debug_packet
from tickertape.protocol.server import ServerConnection
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import Debug, LoginRequest, decode_server_packet


class Bare(Connection[str]):
    __slots__ = ()

    def lose(self, reason: str, now: float) -> None:
        self._fail(reason, now)

    def queue(self, packet: bytes, now: float) -> None:
        self._queue(packet, now)


def test_output_is_queued_then_handed_out_once() -> None:
    connection = Bare(0.0)
    assert connection.state is State.AWAITING_LOGIN
    assert connection.data_to_send() == b""
    connection.queue(b"ab", 1.0)
    connection.queue(b"cd", 1.0)
    assert connection.data_to_send() == b"abcd"
    assert connection.data_to_send() == b""


def test_failing_says_why_to_the_peer_and_to_the_application() -> None:
    connection = Bare(0.0)
    connection.lose("bad packet \u00e9", 1.0)
    assert connection.state is State.CLOSED
    assert connection.events_received() == [ConnectionLost("bad packet \u00e9")]
    assert connection.events_received() == []
    framer = Framer()
    framer.feed(connection.data_to_send())
    assert decode_server_packet(next(framer)) == Debug(b"bad packet \\xe9")
    assert debug_packet("x") == Debug(b"x").encode()


def test_both_sides_share_the_states_and_the_lost_event() -> None:
    client = ClientConnection(LoginRequest("u", "p"), 0.0)
    server = ServerConnection(0.0)
    assert isinstance(client, Connection) and isinstance(server, Connection)
    assert client.state is server.state is State.AWAITING_LOGIN


def test_no_module_of_protocol_imports_the_server() -> None:
    for path in Path(tickertape.protocol.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("tickertape.server"), path.name
    client = Path(tickertape.protocol.__file__).parent / "client.py"
    imported = {
        node.module
        for node in ast.walk(ast.parse(client.read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    assert "tickertape.protocol.server" not in imported
