"""ServerConnection: the server side of SoupBinTCP, driven with a fake clock (plain floats).

Spec sections cited are from SoupBinTCP 4.1 (``specs/soupbintcp_4.1.txt``).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import ConfigError, LocalProtocolError
from tickertape.protocol.server import (
    MAX_PENDING_BYTES,
    ConnectionLost,
    Event,
    LoginRequested,
    LogoutRequested,
    MessagesReceived,
    ServerConnection,
    ServerTimers,
    State,
)
from tickertape.wire.framing import Framer
from tickertape.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    ServerHeartbeat,
    ServerPacket,
    UnsequencedData,
    decode_server_packet,
)

LOGIN_400 = LoginRequest("alice", "secret", "", 1)
LOGIN_410 = LoginRequest("alice", "secret", "2026112901", 7, heartbeat_timeout_ms=5000)
HEARTBEAT = ClientHeartbeat().encode()


def state(connection: ServerConnection) -> State:
    # A function, so that mypy does not narrow the property between calls.
    return connection.state


def sent_packets(connection: ServerConnection) -> list[ServerPacket]:
    framer = Framer()
    framer.feed(connection.data_to_send())
    packets = [decode_server_packet(frame) for frame in framer]
    assert framer.buffered == 0
    return packets


def logged_in(
    now: float = 0.0, request: LoginRequest = LOGIN_400, timers: ServerTimers | None = None
) -> ServerConnection:
    connection = ServerConnection(now, timers or ServerTimers())
    connection.receive_data(request.encode(), now)
    assert connection.events_received() == [LoginRequested(request)]
    connection.accept("2026112901", 1, now)
    assert connection.data_to_send()
    assert connection.events_received() == []
    return connection


def assert_lost(connection: ServerConnection, reason: str) -> None:
    assert connection.events_received() == [ConnectionLost(reason)]
    assert sent_packets(connection) == [Debug(reason.encode())]
    assert state(connection) is State.CLOSED
    assert connection.next_deadline() == math.inf


# ---------------------------------------------------------------------------- login


def test_login_400_accepted() -> None:
    # 2.3.1: a 47-byte Login Request; 2.2.1: Login Accepted, session and number right-justified.
    connection = ServerConnection(0.0)
    assert state(connection) is State.AWAITING_LOGIN
    raw = LOGIN_400.encode()
    assert len(raw) == 2 + 47
    connection.receive_data(raw, 0.5)
    assert connection.events_received() == [LoginRequested(LOGIN_400)]
    assert connection.request == LOGIN_400
    assert state(connection) is State.AWAITING_LOGIN
    assert connection.data_to_send() == b""

    connection.accept("2026112901", 1, 0.5)
    assert state(connection) is State.LOGGED_IN
    assert connection.data_to_send() == b"\x00\x1fA" + b"2026112901" + b" " * 19 + b"1"
    assert connection.data_to_send() == b""
    assert connection.idle_timeout == 15.0


def test_login_410_timeout_replaces_idle_timeout() -> None:
    # 2.3.1 (4.10): "Failure to receive a message or a heartbeat for the specified duration
    # causes server socket to close".
    connection = ServerConnection(0.0)
    raw = LOGIN_410.encode()
    assert len(raw) == 2 + 52
    connection.receive_data(raw, 0.0)
    assert connection.events_received() == [LoginRequested(LOGIN_410)]
    connection.accept("2026112901", 7, 0.0)
    assert sent_packets(connection) == [LoginAccepted("2026112901", 7)]
    assert connection.idle_timeout == 5.0

    connection.receive_data(HEARTBEAT, 3.0)
    connection.tick(7.99)
    assert connection.events_received() == []
    connection.data_to_send()  # heartbeats
    connection.tick(8.0)
    assert_lost(connection, "client silent for 5.0 s")


def test_login_410_timeout_zero_means_default() -> None:
    request = LoginRequest("alice", "secret", heartbeat_timeout_ms=0)
    connection = logged_in(request=request)
    assert connection.idle_timeout == 15.0


def test_login_rejected() -> None:
    # 2.2.2: "The server closes the socket connection after sending the Login Reject Packet."
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_400.encode(), 0.0)
    connection.events_received()
    connection.reject("A", 0.1)
    assert connection.data_to_send() == b"\x00\x02JA"
    assert state(connection) is State.CLOSED
    assert connection.next_deadline() == math.inf
    connection.tick(100.0)
    assert connection.data_to_send() == b""
    assert connection.events_received() == []


def test_login_rejected_session_not_available() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_410.encode(), 0.0)
    connection.reject("S", 0.0)
    assert sent_packets(connection) == [LoginRejected("S")]


def test_packets_after_login_wait_for_the_decision() -> None:
    # A client pipelining data after its login must not have it acted upon before accept().
    connection = ServerConnection(0.0)
    connection.receive_data(
        LOGIN_400.encode() + UnsequencedData(b"order").encode() + HEARTBEAT, 0.0
    )
    assert connection.events_received() == [LoginRequested(LOGIN_400)]
    connection.receive_data(UnsequencedData(b"more").encode(), 0.5)
    assert connection.events_received() == []

    connection.accept("2026112901", 1, 0.6)
    assert connection.events_received() == [
        MessagesReceived([b"order"]),
        MessagesReceived([b"more"]),
    ]
    assert sent_packets(connection) == [LoginAccepted("2026112901", 1)]


def test_packets_after_a_rejected_login_are_dropped() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_400.encode() + UnsequencedData(b"order").encode(), 0.0)
    assert connection.events_received() == [LoginRequested(LOGIN_400)]
    connection.reject("A", 0.0)
    connection.receive_data(UnsequencedData(b"more").encode(), 0.1)
    assert connection.events_received() == []


def test_malformed_packet_buffered_behind_the_login_is_reported_by_accept() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_400.encode() + b"\x00\x01X", 0.0)
    assert connection.events_received() == [LoginRequested(LOGIN_400)]
    connection.accept("2026112901", 1, 0.0)
    reason = "unknown packet type b'X' from a client"
    assert connection.events_received() == [ConnectionLost(reason)]
    assert sent_packets(connection) == [LoginAccepted("2026112901", 1), Debug(reason.encode())]


def test_accept_or_reject_without_a_login_request_is_our_error() -> None:
    connection = ServerConnection(0.0)
    with pytest.raises(LocalProtocolError, match="no Login Request has arrived"):
        connection.accept("2026112901", 1, 0.0)
    with pytest.raises(LocalProtocolError, match="no Login Request has arrived"):
        connection.reject("A", 0.0)
    with pytest.raises(LocalProtocolError, match="not logged in"):
        connection.end_session(0.0)
    connection = logged_in()
    with pytest.raises(LocalProtocolError, match="already logged in"):
        connection.accept("2026112901", 1, 0.0)


def test_decisions_after_the_connection_closed_do_nothing() -> None:
    # Authentication may outlast the connection: accepting then is not an error.
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_400.encode(), 0.0)
    connection.events_received()
    connection.tick(30.0)
    assert_lost(connection, "Login Request not answered within 30.0 s")
    connection.accept("2026112901", 1, 31.0)
    connection.reject("A", 31.0)
    connection.send_debug("hello", 31.0)
    connection.end_session(31.0)
    connection.receive_data(HEARTBEAT, 31.0)
    assert state(connection) is State.CLOSED
    assert connection.data_to_send() == b""
    assert connection.events_received() == []


# ---------------------------------------------------------------------------- heartbeats


def test_heartbeat_after_one_second_without_sending() -> None:
    # 1.3: "The server must send a Server Heartbeat packet anytime more than 1 second has
    # past since the server last sent any data."
    connection = logged_in(now=10.0)
    connection.tick(10.999)
    assert connection.data_to_send() == b""
    connection.tick(11.0)
    assert connection.data_to_send() == b"\x00\x01H"
    assert connection.next_deadline() == 12.0
    connection.tick(11.5)
    assert connection.data_to_send() == b""
    connection.tick(12.0)
    assert sent_packets(connection) == [ServerHeartbeat()]


def test_no_heartbeat_while_the_application_sends() -> None:
    connection = logged_in()
    for step in range(1, 101):
        now = step * 0.5
        connection.sent(now)
        connection.receive_data(HEARTBEAT, now)
        connection.tick(now)
        assert connection.data_to_send() == b""
        assert connection.next_deadline() == now + 1.0
    assert connection.events_received() == []
    connection.tick(51.0)
    assert sent_packets(connection) == [ServerHeartbeat()]


def test_queued_packets_count_as_sending_when_queued() -> None:
    connection = logged_in()
    connection.send_debug("hello", 0.5)
    assert connection.next_deadline() == 1.5
    connection.tick(1.0)
    assert sent_packets(connection) == [Debug(b"hello")]
    connection.tick(1.5)
    assert sent_packets(connection) == [ServerHeartbeat()]


def test_no_heartbeat_before_login() -> None:
    connection = ServerConnection(0.0)
    connection.tick(5.0)
    assert connection.data_to_send() == b""
    connection.receive_data(LOGIN_400.encode(), 6.0)
    connection.tick(8.0)
    assert connection.data_to_send() == b""


def test_send_debug_before_login() -> None:
    # 2.1: "A debug packet can be sent by either side ... at anytime."
    connection = ServerConnection(0.0)
    connection.send_debug("tickertape on host1", 0.0)
    assert connection.data_to_send() == b"\x00\x14+tickertape on host1"


# ---------------------------------------------------------------------------- timeouts


def test_idle_timeout_at_15_seconds_exactly() -> None:
    connection = logged_in()
    connection.tick(14.9)
    assert connection.events_received() == []
    assert state(connection) is State.LOGGED_IN
    assert sent_packets(connection) == [ServerHeartbeat()]
    connection.tick(15.0)
    assert_lost(connection, "client silent for 15.0 s")


@pytest.mark.parametrize(
    "packet", [ClientHeartbeat(), Debug(b"still here"), UnsequencedData(b"order")]
)
def test_any_packet_refreshes_the_idle_timer(
    packet: ClientHeartbeat | Debug | UnsequencedData,
) -> None:
    connection = logged_in()
    connection.receive_data(packet.encode(), 10.0)
    connection.tick(24.9)
    assert state(connection) is State.LOGGED_IN
    connection.tick(25.0)
    assert state(connection) is State.CLOSED


def test_part_of_a_packet_does_not_refresh_the_idle_timer() -> None:
    connection = logged_in()
    connection.receive_data(HEARTBEAT[:1], 10.0)
    connection.tick(15.0)
    assert state(connection) is State.CLOSED


def test_login_timeout_at_30_seconds() -> None:
    connection = ServerConnection(100.0)
    connection.tick(129.99)
    assert state(connection) is State.AWAITING_LOGIN
    connection.tick(130.0)
    assert_lost(connection, "no Login Request within 30.0 s")


def test_custom_timers() -> None:
    timers = ServerTimers(heartbeat_interval=0.25, idle_timeout=2.0, login_timeout=5.0)
    connection = ServerConnection(0.0, timers)
    assert connection.next_deadline() == 5.0
    connection = logged_in(timers=timers)
    assert connection.next_deadline() == 0.25
    connection.tick(2.0)
    assert_lost(connection, "client silent for 2.0 s")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heartbeat_interval", 0.0),
        ("idle_timeout", -1.0),
        ("login_timeout", math.nan),
        ("login_timeout", math.inf),
        ("max_packet_length", 10),
        ("max_packet_length", 70000),
    ],
)
def test_invalid_timers(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        ServerTimers(**{field: value})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- next_deadline


def test_next_deadline() -> None:
    connection = ServerConnection(3.0)
    assert connection.next_deadline() == 33.0
    connection.receive_data(LOGIN_400.encode(), 4.0)
    assert connection.next_deadline() == 33.0  # the login timeout runs until a decision
    connection.accept("2026112901", 1, 4.0)
    assert connection.next_deadline() == 5.0  # heartbeat
    connection.sent(4.5)
    assert connection.next_deadline() == 5.5
    connection.sent(18.8)
    assert connection.next_deadline() == 19.0  # idle: 4.0 + 15.0
    connection.receive_data(HEARTBEAT, 18.9)
    assert connection.next_deadline() == 19.8
    connection.end_session(19.0)
    assert connection.next_deadline() == math.inf


# ---------------------------------------------------------------------------- ending


def test_logout() -> None:
    # 2.3.4: "the server will immediately terminate the connection".
    connection = logged_in()
    connection.receive_data(LogoutRequest().encode() + UnsequencedData(b"late").encode(), 1.0)
    assert connection.events_received() == [LogoutRequested()]
    assert state(connection) is State.CLOSED
    assert connection.data_to_send() == b""
    connection.receive_data(HEARTBEAT, 2.0)
    connection.tick(100.0)
    assert connection.events_received() == []
    assert connection.data_to_send() == b""


def test_logout_before_login() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(LogoutRequest().encode(), 0.0)
    assert connection.events_received() == [LogoutRequested()]
    assert state(connection) is State.CLOSED


def test_end_session() -> None:
    # 2.2.6: End of Session, then the connection is closed.
    connection = logged_in()
    connection.end_session(2.0)
    assert connection.data_to_send() == b"\x00\x01Z"
    assert state(connection) is State.CLOSED
    connection.tick(10.0)
    assert connection.data_to_send() == b""
    assert sent_packets(connection) == []
    assert EndOfSession().encode() == b"\x00\x01Z"


# ---------------------------------------------------------------------------- violations


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            UnsequencedData(b"order").encode(),
            "expected a Login Request first, got Unsequenced Data",
        ),
        (HEARTBEAT, "expected a Login Request first, got a Client Heartbeat"),
        (b"\x00\x01X", "unknown packet type b'X' from a client"),
        (b"\x00\x02Lx", "Login Request packet of 2 bytes; it is 47 (SoupBinTCP 4.00) or 52 (4.10)"),
        (b"\x00\x00", "packet length 0: every packet has at least its 1-byte type"),
        (b"\x00\x02R!", "ClientHeartbeat packet has 1 bytes of payload; it has none"),
    ],
)
def test_protocol_violation_before_login(raw: bytes, reason: str) -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(raw + LOGIN_400.encode(), 0.0)
    assert_lost(connection, reason)
    connection.receive_data(LOGIN_400.encode(), 0.0)
    assert connection.events_received() == []


def test_bad_number_in_login_request() -> None:
    raw = bytearray(LOGIN_400.encode())
    raw[-1:] = b"x"
    connection = ServerConnection(0.0)
    connection.receive_data(bytes(raw), 0.0)
    events = connection.events_received()
    assert len(events) == 1
    assert isinstance(events[0], ConnectionLost)
    assert "requested sequence number" in events[0].reason
    assert "is not a decimal number" in events[0].reason


def test_second_login_request_is_a_violation() -> None:
    connection = logged_in()
    connection.receive_data(LOGIN_400.encode(), 1.0)
    assert_lost(connection, "a second Login Request on a logged-in connection")


def test_packet_longer_than_the_limit() -> None:
    connection = logged_in(timers=ServerTimers(max_packet_length=100))
    connection.receive_data(UnsequencedData(b"x" * 99).encode(), 1.0)
    assert connection.events_received() == [MessagesReceived([b"x" * 99])]
    connection.receive_data(UnsequencedData(b"x" * 100).encode()[:2], 1.0)
    assert_lost(connection, "packet length 101: this endpoint accepts at most 100")


def test_debug_from_the_client_is_ignored() -> None:
    # 2.1: "Debug Packets should be ignored by both client and server application software."
    connection = ServerConnection(0.0)
    connection.receive_data(Debug(b"hello").encode(), 0.0)
    assert connection.events_received() == []
    assert state(connection) is State.AWAITING_LOGIN


# ---------------------------------------------------------------------------- chunking


def client_stream() -> bytes:
    return b"".join(
        packet.encode()
        for packet in (
            Debug(b"hi"),
            ClientHeartbeat(),
            UnsequencedData(b"first"),
            UnsequencedData(b""),
            UnsequencedData(bytes(range(256))),
            LogoutRequest(),
        )
    )


EXPECTED = [MessagesReceived([b"first", b"", bytes(range(256))]), LogoutRequested()]


def run_chunked(chunks: list[bytes]) -> tuple[list[Event], list[ServerPacket]]:
    connection = ServerConnection(0.0)
    events: list[Event] = []
    for chunk in chunks:
        connection.receive_data(chunk, 0.0)
        for event in connection.events_received():
            if isinstance(event, LoginRequested):
                connection.accept("2026112901", 1, 0.0)
                events.extend(connection.events_received())
            else:
                events.append(event)
    return joined(events), sent_packets(connection)


def joined(events: list[Event]) -> list[Event]:
    """Consecutive runs of messages as one: where a run is cut depends on the reads."""
    out: list[Event] = []
    for event in events:
        assert not isinstance(event, MessagesReceived) or event.payloads, "an empty run"
        if isinstance(event, MessagesReceived) and out and isinstance(out[-1], MessagesReceived):
            out[-1] = MessagesReceived(out[-1].payloads + event.payloads)
        else:
            out.append(event)
    return out


def test_one_byte_at_a_time() -> None:
    stream = LOGIN_410.encode() + client_stream()
    events, packets = run_chunked([stream[i : i + 1] for i in range(len(stream))])
    assert events == EXPECTED
    assert packets == [LoginAccepted("2026112901", 1)]


def test_all_at_once_with_trailing_bytes_left_alone() -> None:
    stream = LOGIN_410.encode() + client_stream() + b"\x00\x01X"
    events, packets = run_chunked([stream])
    assert events == EXPECTED
    assert packets == [LoginAccepted("2026112901", 1)]


@given(st.data())
def test_any_chunking(data: st.DataObject) -> None:
    stream = LOGIN_400.encode() + client_stream()
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1))))
    bounds = [0, *cuts, len(stream)]
    events, packets = run_chunked([stream[a:b] for a, b in itertools.pairwise(bounds)])
    assert events == EXPECTED
    assert packets == [LoginAccepted("2026112901", 1)]


# ---------------------------------------------------------------------------- timer properties


@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 3.0, allow_nan=False),
            st.sampled_from(["tick", "heard", "sent", "deadline"]),
        ),
        max_size=40,
    ),
    st.floats(0.01, 5.0),
    st.floats(0.01, 20.0),
)
def test_tick_acts_exactly_at_next_deadline(
    steps: list[tuple[float, str]], heartbeat_interval: float, idle_timeout: float
) -> None:
    """Before next_deadline(), tick() does nothing; at it, tick() sends or closes."""
    timers = ServerTimers(heartbeat_interval=heartbeat_interval, idle_timeout=idle_timeout)
    connection = logged_in(timers=timers)
    now = 0.0
    for delay, action in steps:
        now += delay
        deadline = connection.next_deadline()
        if action == "deadline":
            now = max(now, deadline)
        if now < deadline:
            connection.tick(now)
            assert connection.data_to_send() == b""
            assert connection.events_received() == []
        if action == "heard" and connection.state is State.LOGGED_IN:
            connection.receive_data(HEARTBEAT, now)
        elif action == "sent":
            connection.sent(now)
        elif action in ("tick", "deadline"):
            connection.tick(now)
            if now >= deadline:
                assert connection.data_to_send() or connection.state is State.CLOSED
            connection.data_to_send()
        if connection.state is State.CLOSED:
            assert connection.next_deadline() == math.inf
            break


# ---------------------------------------------------------------------------- limits


def test_before_its_login_a_client_may_send_no_more_than_a_login_request() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(b"\x00\x35", 0.0)  # a length of 53: one more than a 4.10 login
    assert_lost(connection, "packet length 53: this endpoint accepts at most 52")


def test_after_the_login_the_application_sets_the_packet_limit() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_400.encode(), 0.0)
    connection.events_received()
    connection.accept("", 1, 0.0, max_packet_length=10)
    sent_packets(connection)
    connection.receive_data(UnsequencedData(b"x" * 9).encode(), 1.0)
    assert connection.events_received() == [MessagesReceived([b"x" * 9])]
    connection.receive_data(UnsequencedData(b"x" * 10).encode(), 1.0)
    assert_lost(connection, "packet length 11: this endpoint accepts at most 10")


def test_accept_refuses_a_packet_limit_out_of_range() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_400.encode(), 0.0)
    with pytest.raises(LocalProtocolError, match="max_packet_length is 0"):
        connection.accept("", 1, 0.0, max_packet_length=0)
    assert state(connection) is State.AWAITING_LOGIN  # unchanged: it can still be accepted


def test_too_much_sent_while_the_login_is_decided_closes_the_connection() -> None:
    connection = ServerConnection(0.0)
    connection.receive_data(LOGIN_400.encode(), 0.0)
    assert connection.events_received() == [LoginRequested(LOGIN_400)]
    chunk = UnsequencedData(b"x" * 60_000).encode()
    for _ in range(MAX_PENDING_BYTES // len(chunk)):
        connection.receive_data(chunk, 0.0)
    assert state(connection) is State.AWAITING_LOGIN
    connection.receive_data(chunk, 0.0)
    assert_lost(
        connection, f"more than {MAX_PENDING_BYTES} bytes sent before the login was answered"
    )


def test_too_much_sent_with_the_login_request_itself_closes_the_connection() -> None:
    connection = ServerConnection(0.0)
    flood = UnsequencedData(b"x" * 60_000).encode() * (MAX_PENDING_BYTES // 60_000 + 1)
    connection.receive_data(LOGIN_400.encode() + flood, 0.0)
    assert connection.events_received() == [
        LoginRequested(LOGIN_400),
        ConnectionLost(f"more than {MAX_PENDING_BYTES} bytes sent before the login was answered"),
    ]
    assert state(connection) is State.CLOSED


@given(st.lists(st.binary(max_size=50), min_size=1, max_size=60), st.data())
def test_any_split_of_a_publishers_stream_gives_the_same_payloads(
    payloads: list[bytes], data: st.DataObject
) -> None:
    """A logged-in publisher's Unsequenced Data, cut into reads anywhere: the runs
    (one MessagesReceived per run read) joined are the payloads sent, in order, and no
    read gives more than one run (nothing else was sent between them)."""
    stream = b"".join(UnsequencedData(payload).encode() for payload in payloads)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=8)))
    bounds = [0, *[cut for cut in cuts if cut < len(stream)], len(stream)]
    connection = logged_in()
    got: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        connection.receive_data(stream[start:end], 1.0)
        events = connection.events_received()
        assert len(events) <= 1
        for event in events:
            assert isinstance(event, MessagesReceived) and event.payloads
            got += event.payloads
    assert got == payloads
