"""ClientConnection, alone and wired to a ServerConnection in memory, with a fake clock.

Spec sections cited are from SoupBinTCP 4.1 (``specs/soupbintcp_4.1.txt``).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import ConfigError
from tickertape.protocol import server as srv
from tickertape.protocol.client import (
    Accepted,
    ClientConnection,
    ConnectionLost,
    DebugReceived,
    Event,
    Messages,
    Rejected,
    SessionEnded,
    State,
    Unsequenced,
)
from tickertape.protocol.server import ServerConnection
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    ClientHeartbeat,
    ClientPacket,
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    ServerHeartbeat,
    UnsequencedData,
    decode_client_packet,
    encode_sequenced,
    encode_sequenced_many,
)

REQUEST = LoginRequest("alice", "secret", "", 1, heartbeat_timeout_ms=15000)
ACCEPTED = LoginAccepted("2026112901", 1).encode()
HEARTBEAT = ServerHeartbeat().encode()


def msg(sequence: int, payload: bytes) -> tuple[int, bytes]:
    """One Sequenced Data packet as :func:`split` shows it."""
    return (sequence, payload)


def split(events: list[Event]) -> list[object]:
    """The events, each :class:`Messages` as one (sequence, payload) per message."""
    out: list[object] = []
    for event in events:
        if isinstance(event, Messages):
            out += [msg(event.first_sequence + i, p) for i, p in enumerate(event.payloads)]
        else:
            out.append(event)
    return out


def state(connection: ClientConnection | ServerConnection) -> State:
    # A function, so that mypy does not narrow the property between calls.
    return connection.state


def sent_packets(connection: ClientConnection) -> list[ClientPacket]:
    framer = Framer()
    framer.feed(connection.data_to_send())
    packets = [decode_client_packet(frame) for frame in framer]
    assert framer.buffered == 0
    return packets


def logged_in(now: float = 0.0, sequence: int = 1) -> ClientConnection:
    connection = ClientConnection(REQUEST, now)
    connection.data_to_send()
    connection.receive_data(LoginAccepted("2026112901", sequence).encode(), now)
    assert split(connection.events_received()) == [Accepted("2026112901", sequence)]
    return connection


def assert_lost(connection: ClientConnection, reason: str) -> None:
    assert split(connection.events_received()) == [ConnectionLost(reason)]
    assert sent_packets(connection) == [Debug(reason.encode())]
    assert state(connection) is State.CLOSED
    assert connection.next_deadline() == math.inf


# ---------------------------------------------------------------------------- login


def test_login_is_queued_at_construction() -> None:
    connection = ClientConnection(REQUEST, 0.0)
    assert state(connection) is State.AWAITING_LOGIN
    assert connection.data_to_send() == REQUEST.encode()
    assert connection.data_to_send() == b""
    assert connection.session == ""
    assert connection.next_sequence == 0


def test_login_accepted() -> None:
    # 2.2.1: session right-justified, space-padded; the next sequence number.
    connection = ClientConnection(REQUEST, 0.0)
    connection.receive_data(b"\x00\x1fA" + b"2026112901" + b" " * 18 + b"42", 0.3)
    assert split(connection.events_received()) == [Accepted("2026112901", 42)]
    assert state(connection) is State.LOGGED_IN
    assert connection.session == "2026112901"
    assert connection.next_sequence == 42


def test_login_rejected() -> None:
    # 2.2.2: "The Login Rejected Packet will be the only non-debug packet sent".
    connection = ClientConnection(REQUEST, 0.0)
    connection.data_to_send()
    connection.receive_data(Debug(b"no").encode() + b"\x00\x02JA", 0.1)
    # The Debug packet before it is taken as the reason (J has only a code).
    assert split(connection.events_received()) == [DebugReceived("no"), Rejected("A", "no")]
    assert state(connection) is State.CLOSED
    assert connection.next_deadline() == math.inf
    connection.tick(100.0)
    assert connection.data_to_send() == b""
    assert split(connection.events_received()) == []


# ---------------------------------------------------------------------------- sequence numbers


def test_counts_sequence_numbers() -> None:
    # 1.2: "both client and server compute the sequence number locally by counting messages";
    # "clients must not count Unsequenced Data Packets from the server".
    connection = logged_in(sequence=5)
    connection.receive_data(
        encode_sequenced(b"a")
        + UnsequencedData(b"u").encode()
        + HEARTBEAT
        + encode_sequenced(b"b")
        + Debug(b"d").encode()
        + encode_sequenced(b""),
        1.0,
    )
    assert split(connection.events_received()) == [
        msg(5, b"a"),
        Unsequenced(b"u"),
        msg(6, b"b"),
        DebugReceived("d"),
        msg(7, b""),
    ]
    assert connection.next_sequence == 8
    connection.receive_data(encode_sequenced(b"c"), 1.1)
    assert split(connection.events_received()) == [msg(8, b"c")]
    assert connection.next_sequence == 9


def test_many_messages_in_one_call() -> None:
    connection = logged_in()
    payloads = [i.to_bytes(4, "big") * 25 for i in range(10_000)]
    connection.receive_data(encode_sequenced_many(payloads), 1.0)
    events = split(connection.events_received())
    assert events == [msg(i + 1, payload) for i, payload in enumerate(payloads)]
    assert connection.next_sequence == 10_001


def test_login_accepted_and_data_in_one_chunk() -> None:
    connection = ClientConnection(REQUEST, 0.0)
    connection.receive_data(
        LoginAccepted("2026112901", 10).encode() + encode_sequenced_many([b"x", b"y"]), 0.0
    )
    assert split(connection.events_received()) == [
        Accepted("2026112901", 10),
        msg(10, b"x"),
        msg(11, b"y"),
    ]


def test_debug_text_is_decoded_for_logs() -> None:
    connection = ClientConnection(REQUEST, 0.0)
    connection.receive_data(Debug(b"caf\xe9").encode(), 0.0)
    assert split(connection.events_received()) == [DebugReceived("caf\\xe9")]


# ---------------------------------------------------------------------------- heartbeats, timeouts


def test_heartbeat_after_one_second_without_sending() -> None:
    # 1.3: "once logged in, the client must send a Client Heartbeat packet anytime more than
    # 1 second has passed since the client last sent anything".
    connection = logged_in(now=2.0)
    connection.tick(2.999)
    assert connection.data_to_send() == b""
    connection.tick(3.0)
    assert connection.data_to_send() == b"\x00\x01R"
    connection.tick(3.5)
    assert connection.data_to_send() == b""
    assert connection.next_deadline() == 4.0
    connection.tick(4.0)
    assert sent_packets(connection) == [ClientHeartbeat()]


def test_no_heartbeat_before_login_accepted() -> None:
    connection = ClientConnection(REQUEST, 0.0)
    connection.data_to_send()
    connection.tick(5.0)
    assert connection.data_to_send() == b""


def test_server_silent_for_15_seconds() -> None:
    connection = logged_in()
    connection.receive_data(HEARTBEAT, 10.0)
    connection.tick(24.9)
    assert split(connection.events_received()) == []
    assert state(connection) is State.LOGGED_IN
    connection.data_to_send()  # heartbeats
    connection.tick(25.0)
    assert_lost(connection, "server silent for 15.0 s")


def test_part_of_a_packet_is_not_a_sign_of_life() -> None:
    connection = logged_in()
    connection.receive_data(encode_sequenced(b"abc")[:3], 10.0)
    connection.tick(15.0)
    assert state(connection) is State.CLOSED


def test_server_does_not_answer_the_login() -> None:
    connection = ClientConnection(REQUEST, 0.0, server_timeout=5.0)
    connection.data_to_send()
    connection.tick(4.99)
    assert state(connection) is State.AWAITING_LOGIN
    connection.tick(5.0)
    assert_lost(connection, "server did not answer the Login Request within 5.0 s")


def test_next_deadline() -> None:
    connection = ClientConnection(REQUEST, 1.0, heartbeat_interval=0.5, server_timeout=10.0)
    assert connection.next_deadline() == 11.0
    connection.receive_data(ACCEPTED, 1.2)
    assert connection.next_deadline() == 1.5  # heartbeat: the login was sent at 1.0
    connection.tick(1.5)
    assert connection.next_deadline() == 2.0
    connection.logout(3.0)
    assert connection.next_deadline() == math.inf


@pytest.mark.parametrize("field", ["heartbeat_interval", "server_timeout"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_invalid_timers(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        ClientConnection(REQUEST, 0.0, **{field: value})


# ---------------------------------------------------------------------------- ending


def test_end_of_session() -> None:
    # 2.2.6: "no more messages"; the server closes the connection shortly after.
    connection = logged_in()
    connection.receive_data(encode_sequenced(b"last") + b"\x00\x01Z" + encode_sequenced(b"x"), 1.0)
    assert split(connection.events_received()) == [msg(1, b"last"), SessionEnded()]
    assert state(connection) is State.CLOSED
    assert connection.next_sequence == 2
    connection.receive_data(HEARTBEAT, 2.0)
    connection.tick(100.0)
    assert split(connection.events_received()) == []
    assert connection.data_to_send() == b""


def test_logout() -> None:
    connection = logged_in()
    connection.logout(1.0)
    assert connection.data_to_send() == b"\x00\x01O"
    assert state(connection) is State.CLOSED
    connection.logout(2.0)
    assert connection.data_to_send() == b""


# ---------------------------------------------------------------------------- violations


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (encode_sequenced(b"x"), "Sequenced Data before Login Accepted"),
        (UnsequencedData(b"x").encode(), "Unsequenced Data before Login Accepted"),
        (EndOfSession().encode(), "End of Session before Login Accepted"),
        (b"\x00\x01X", "unknown packet type b'X' from a server"),
        (b"\x00\x02Ax", "Login Accepted packet of 2 bytes; it is always 31"),
        (b"\x00\x00", "packet length 0: every packet has at least its 1-byte type"),
    ],
)
def test_violation_before_login(raw: bytes, reason: str) -> None:
    connection = ClientConnection(REQUEST, 0.0)
    connection.data_to_send()
    connection.receive_data(raw + ACCEPTED, 0.0)
    assert_lost(connection, reason)
    connection.receive_data(ACCEPTED, 0.0)
    assert split(connection.events_received()) == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (ACCEPTED, "Login Accepted on a logged-in connection"),
        (LoginRejected("A").encode(), "Login Rejected on a logged-in connection"),
        (b"\x00\x02H!", "ServerHeartbeat packet has 1 bytes of payload; it has none"),
    ],
)
def test_violation_after_login(raw: bytes, reason: str) -> None:
    connection = logged_in()
    connection.receive_data(encode_sequenced(b"a") + raw + encode_sequenced(b"b"), 1.0)
    assert split(connection.events_received())[0] == msg(1, b"a")
    assert connection.next_sequence == 2
    connection.receive_data(b"", 1.0)  # nothing more is parsed
    assert sent_packets(connection) == [Debug(reason.encode())]
    assert state(connection) is State.CLOSED


def test_violation_after_login_events() -> None:
    connection = logged_in()
    connection.receive_data(encode_sequenced(b"a") + ACCEPTED + encode_sequenced(b"b"), 1.0)
    assert split(connection.events_received()) == [
        msg(1, b"a"),
        ConnectionLost("Login Accepted on a logged-in connection"),
    ]


def test_server_heartbeat_before_login_is_tolerated() -> None:
    connection = ClientConnection(REQUEST, 0.0)
    connection.receive_data(HEARTBEAT + ACCEPTED, 0.0)
    assert split(connection.events_received()) == [Accepted("2026112901", 1)]


# ---------------------------------------------------------------------------- chunking


SERVER_STREAM = (
    ACCEPTED
    + Debug(b"hello").encode()
    + encode_sequenced_many([b"one", b"", bytes(range(256))])
    + HEARTBEAT
    + UnsequencedData(b"note").encode()
    + encode_sequenced(b"four")
    + EndOfSession().encode()
)
EXPECTED = [
    Accepted("2026112901", 1),
    DebugReceived("hello"),
    msg(1, b"one"),
    msg(2, b""),
    msg(3, bytes(range(256))),
    Unsequenced(b"note"),
    msg(4, b"four"),
    SessionEnded(),
]


def run_chunked(chunks: list[bytes]) -> list[object]:
    connection = ClientConnection(REQUEST, 0.0)
    events: list[object] = []
    for chunk in chunks:
        connection.receive_data(chunk, 0.0)
        events.extend(split(connection.events_received()))
    assert connection.next_sequence == 5
    return events


def test_one_byte_at_a_time() -> None:
    stream = SERVER_STREAM
    assert run_chunked([stream[i : i + 1] for i in range(len(stream))]) == EXPECTED


def test_all_at_once_with_trailing_bytes_left_alone() -> None:
    assert run_chunked([SERVER_STREAM + b"\x00\x01X"]) == EXPECTED


@given(st.data())
def test_any_chunking(data: st.DataObject) -> None:
    stream = SERVER_STREAM
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1))))
    bounds = [0, *cuts, len(stream)]
    assert run_chunked([stream[a:b] for a, b in itertools.pairwise(bounds)]) == EXPECTED


# ---------------------------------------------------------------------------- wired together


class Pair:
    """A client and a server joined by an in-memory link that can cut either direction."""

    def __init__(self, now: float = 0.0, request: LoginRequest = REQUEST) -> None:
        self.client = ClientConnection(request, now)
        self.server = ServerConnection(now)
        self.client_events: list[Event] = []
        self.server_events: list[srv.Event] = []
        self.to_server = True
        self.to_client = True
        self.published: list[bytes] = []
        self.sequence = 1

    def pump(self, now: float) -> None:
        """Deliver everything queued, both ways, and run the server application."""
        while True:
            up = self.client.data_to_send()
            down = self.server.data_to_send()
            if not (up or down):
                return
            if up and self.to_server:
                self.server.receive_data(up, now)
                self.serve(now)
            if down and self.to_client:
                self.client.receive_data(down, now)
                self.client_events += self.client.events_received()

    def serve(self, now: float) -> None:
        for event in self.server.events_received():
            self.server_events.append(event)
            if isinstance(event, srv.LoginRequested):
                self.server.accept("2026112901", self.sequence, now)
                self.server_events += self.server.events_received()

    def publish(self, payloads: list[bytes], now: float) -> None:
        """What the server application does: send encoded Sequenced Data directly."""
        self.published += payloads
        self.sequence += len(payloads)
        if self.server.state is srv.State.LOGGED_IN and self.to_client:
            self.client.receive_data(encode_sequenced_many(payloads), now)
            self.client_events += self.client.events_received()
        self.server.sent(now)

    def run(self, start: float, end: float, step: float) -> None:
        """Tick both sides at every step of the fake clock, delivering what they queue."""
        steps = round((end - start) / step)
        for i in range(steps + 1):
            now = start + i * step
            self.client.tick(now)
            self.client_events += self.client.events_received()
            self.server.tick(now)
            self.serve(now)
            self.pump(now)


def test_wired_session() -> None:
    pair = Pair()
    pair.pump(0.0)
    assert pair.server_events == [srv.LoginRequested(REQUEST)]
    assert split(pair.client_events) == [Accepted("2026112901", 1)]
    assert state(pair.server) is srv.State.LOGGED_IN
    assert state(pair.client) is State.LOGGED_IN

    pair.publish([b"a", b"b"], 0.5)
    pair.pump(0.5)
    pair.run(0.5, 60.0, 0.25)  # a minute of heartbeats both ways, nothing else
    pair.publish([b"c"], 60.1)
    pair.client.logout(60.2)
    pair.pump(60.2)
    assert split(pair.client_events) == [
        Accepted("2026112901", 1),
        msg(1, b"a"),
        msg(2, b"b"),
        msg(3, b"c"),
    ]
    assert pair.server_events == [srv.LoginRequested(REQUEST), srv.LogoutRequested()]
    assert state(pair.server) is srv.State.CLOSED
    assert state(pair.client) is State.CLOSED


def test_wired_end_of_session() -> None:
    pair = Pair()
    pair.pump(0.0)
    pair.publish([b"a"], 1.0)
    pair.server.end_session(1.0)
    pair.pump(1.0)
    assert split(pair.client_events)[-2:] == [msg(1, b"a"), SessionEnded()]
    assert state(pair.client) is State.CLOSED
    assert state(pair.server) is srv.State.CLOSED


def test_wired_client_goes_silent() -> None:
    pair = Pair(request=LoginRequest("alice", "secret", heartbeat_timeout_ms=3000))
    pair.pump(0.0)
    pair.run(0.0, 10.0, 0.5)
    assert state(pair.server) is srv.State.LOGGED_IN
    pair.to_server = False  # the client's heartbeats stop arriving
    pair.run(10.0, 13.0, 0.5)
    assert pair.server_events[-1] == srv.ConnectionLost("client silent for 3.0 s")
    assert state(pair.server) is srv.State.CLOSED
    assert split(pair.client_events)[-1] == DebugReceived("client silent for 3.0 s")


def test_wired_server_goes_silent() -> None:
    pair = Pair()
    pair.pump(0.0)
    pair.run(0.0, 10.0, 0.5)
    pair.to_client = False  # the server's heartbeats stop arriving
    pair.run(10.0, 25.0, 0.5)
    assert split(pair.client_events)[-1] == ConnectionLost("server silent for 15.0 s")
    assert state(pair.client) is State.CLOSED
    # The server still hears the client's heartbeats until the client gives up at 25.0.
    assert state(pair.server) is srv.State.LOGGED_IN
    pair.run(25.0, 40.0, 0.5)
    assert pair.server_events[-1] == srv.ConnectionLost("client silent for 15.0 s")


def test_sequenced_data_arriving_together_is_one_event() -> None:
    connection = logged_in(sequence=7)
    connection.receive_data(encode_sequenced_many([b"a", b"b", b"c"]) + HEARTBEAT, 1.0)
    assert connection.events_received() == [Messages(7, [b"a", b"b", b"c"])]
    assert Messages(7, [b"a", b"b", b"c"]).next_sequence == 10


def test_a_server_answering_in_tls_is_recognised() -> None:
    """A TLS port answers a plain-text Login Request with a TLS record (an alert: 0x15,
    version 3.x), which would otherwise read as a 5,379-byte packet never completed."""
    connection = ClientConnection(REQUEST, 0.0)
    connection.data_to_send()
    connection.receive_data(b"\x15\x03\x01\x00\x02\x02\x46", 0.1)
    [event] = connection.events_received()
    assert isinstance(event, ConnectionLost)
    assert "answered in TLS" in event.reason and "--tls" in event.reason
    assert state(connection) is State.CLOSED


def test_the_last_debug_text_is_kept() -> None:
    connection = ClientConnection(REQUEST, 0.0)
    assert connection.last_debug == "" and not connection.heard_anything
    connection.receive_data(Debug(b"  too many connections ").encode(), 0.1)
    assert connection.last_debug == "too many connections"
    assert connection.heard_anything
