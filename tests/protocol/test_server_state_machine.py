"""ServerConnection under any client input, clock ticks and application calls.

A hypothesis state machine plays the client (4.00 and 4.10 Login Requests, heartbeats,
Unsequenced Data, Debug, Logout, malformed and unknown packets, zero and oversized length
fields, random bytes; split anyhow, or fed in part), the clock (a fake one, advanced by
random amounts or to ``next_deadline()``) and the application (accepting, with or without a
packet limit, or rejecting a pending login; sending; ending the session). After every step:

- the state is a ``State``; CLOSED is final, and a closed connection reports and sends
  nothing; every transition is documented (LOGGED_IN only by ``accept()``, CLOSED only by
  ``reject()``, ``end_session()``, or with a ConnectionLost or LogoutRequested event);
- everything queued parses, whole, with the client's decoder; a ConnectionLost comes with a
  Debug packet, last; Login Accepted and Login Rejected only answer a Login Request;
- ``tick(now)`` sends a heartbeat exactly when one is due, drops a client exactly when it
  has been silent for the idle timeout (or the login timeout passed), and leaves
  ``next_deadline()`` after ``now``; ``next_deadline()`` is what the timers say;
- no exception escapes.

While every byte the client sent is a known packet, or a known prefix of one, the machine
also predicts the exact events. Misusing the API raises LocalProtocolError (at the end).

Spec sections cited are from SoupBinTCP 4.1 (``specs/soupbintcp_4.1.txt``).
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tickertape.errors import LocalProtocolError, RemoteProtocolError
from tickertape.protocol.server import (
    MAX_LOGIN_PACKET_LENGTH,
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
    LOGIN_REQUEST_410_LENGTH,
    MAX_PACKET_LENGTH,
    ClientHeartbeat,
    Debug,
    EndOfSession,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    SequencedData,
    ServerHeartbeat,
    ServerPacket,
    UnsequencedData,
    decode_client_packet,
    decode_server_packet,
)

# Deterministic; no explain phase, whose tracing makes shrinking a failure (on Python 3.11)
# take minutes.
PHASES = (Phase.explicit, Phase.generate, Phase.shrink)
MACHINE_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    phases=PHASES,
    report_multiple_bugs=False,  # shrink one failure, in seconds rather than minutes
    # Preconditions and swarm testing (rules disabled per run) discard some runs.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PLAIN_SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, phases=PHASES
)

# ---------------------------------------------------------------------------- helpers


def server_packets(data: bytes) -> list[ServerPacket]:
    """Every byte the server queued, read as a client would; nothing may be left over."""
    framer = Framer()
    framer.feed(data)
    packets = [decode_server_packet(frame) for frame in framer]
    assert framer.buffered == 0, f"{framer.buffered} bytes that are not a whole packet"
    return packets


Kind = Literal["login", "heartbeat", "unsequenced", "debug", "logout", "bad"]


@dataclass(frozen=True)
class Item:
    """One packet as a client sends it, and what the server is to make of it."""

    data: bytes
    kind: Kind
    payload: bytes = b""
    request: LoginRequest | None = None


def _framed(frame: bytes) -> bytes:
    return len(frame).to_bytes(2, "big") + frame


def classify(frame: bytes) -> Item:
    """A well-framed packet, judged by the wire decoder (tested in tests/wire)."""
    data = _framed(frame)
    try:
        packet = decode_client_packet(frame)
    except RemoteProtocolError:
        return Item(data, "bad")
    # Every packet the machine counts as well-formed fits any packet-length limit a server
    # may set, which is at least a 4.10 Login Request.
    assert len(frame) <= LOGIN_REQUEST_410_LENGTH
    match packet:
        case LoginRequest():
            return Item(data, "login", request=packet)
        case ClientHeartbeat():
            return Item(data, "heartbeat")
        case UnsequencedData(payload=payload):
            return Item(data, "unsequenced", payload=payload)
        case LogoutRequest():
            return Item(data, "logout")
        case Debug():
            return Item(data, "debug")


_ASCII = st.characters(max_codepoint=0x7F)  # NUL, spaces and controls included
_STRIP = " \x00"


@st.composite
def login_items(draw: st.DrawFn) -> Item:
    """A 4.00 or 4.10 Login Request with random fields."""
    username = draw(st.text(_ASCII, max_size=6))
    password = draw(st.text(_ASCII, max_size=10))
    session = draw(st.text(_ASCII, max_size=10))
    sequence = draw(st.integers(0, 10) | st.integers(0, 10**20 - 1))
    timeout = draw(st.none() | st.sampled_from([0, 1, 250, 1000, 99_999]) | st.integers(0, 99_999))
    request = LoginRequest(username, password, session, sequence, timeout)
    # Alpha fields are padded with spaces; the decoder strips spaces and NULs.
    expected = LoginRequest(
        username.strip(_STRIP), password.strip(_STRIP), session.strip(_STRIP), sequence, timeout
    )
    return Item(request.encode(), "login", request=expected)


heartbeat_items = st.just(Item(ClientHeartbeat().encode(), "heartbeat"))
unsequenced_items = st.binary(max_size=40).map(
    lambda payload: Item(UnsequencedData(payload).encode(), "unsequenced", payload=payload)
)
debug_items = st.binary(max_size=40).map(lambda text: Item(Debug(text).encode(), "debug"))
logout_items = st.just(Item(LogoutRequest().encode(), "logout"))
unknown_type_items = st.builds(
    lambda kind, body: Item(_framed(bytes([kind]) + body), "bad"),
    st.sampled_from([kind for kind in range(256) if kind not in b"URLO+"]),
    st.binary(max_size=16),
)
# The length field 0: the framer gives up at the header, whatever follows.
zero_length_items = st.binary(max_size=4).map(lambda rest: Item(b"\x00\x00" + rest, "bad"))


@st.composite
def mutated_items(draw: st.DrawFn) -> Item:
    """A well-formed packet with a byte changed, cut short or lengthened, framed anew."""
    item = draw(
        st.one_of(login_items(), heartbeat_items, unsequenced_items, debug_items, logout_items)
    )
    frame = bytearray(item.data[2:])
    how = draw(st.sampled_from(["change", "cut", "extend", "retype"]))
    if how == "change":
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        del frame[draw(st.integers(1, len(frame))) :]
    elif how == "extend":
        frame += draw(st.binary(min_size=1, max_size=6))
    else:
        frame[0] = draw(st.sampled_from(b"URLO+"))
    return classify(bytes(frame))


def oversized_items(max_length: int) -> st.SearchStrategy[Item]:
    """A length field above the server's limit: the framer gives up at the header."""
    if max_length >= MAX_PACKET_LENGTH:
        return st.nothing()
    return st.builds(
        lambda length, rest: Item(length.to_bytes(2, "big") + rest, "bad"),
        st.integers(max_length + 1, MAX_PACKET_LENGTH),
        st.binary(max_size=8),
    )


def any_items(max_length: int) -> st.SearchStrategy[Item]:
    return st.one_of(
        login_items(),
        heartbeat_items,
        unsequenced_items,
        debug_items,
        logout_items,
        unknown_type_items,
        zero_length_items,
        mutated_items(),
        oversized_items(max_length),
    )


def split(data: st.DataObject, stream: bytes) -> list[bytes]:
    """``stream`` cut at random points (no chunk when it is empty)."""
    if len(stream) < 2:
        return [stream] if stream else []
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=6), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


LOST = ConnectionLost("")


def shape(events: list[Event]) -> list[Event]:
    """Events with the (free-form) reason of ConnectionLost blanked, and each run of
    messages (MessagesReceived) split into one event per message: how packets are
    grouped into runs depends on how they were read, what they carry does not."""
    shaped: list[Event] = []
    for event in events:
        if isinstance(event, MessagesReceived):
            assert event.payloads, "an empty run of messages"
            shaped += (MessagesReceived([payload]) for payload in event.payloads)
        else:
            shaped.append(LOST if isinstance(event, ConnectionLost) else event)
    return shaped


timers_strategy = st.one_of(
    st.just(ServerTimers()),
    st.builds(
        ServerTimers,
        heartbeat_interval=st.sampled_from([0.01, 0.25, 1.0, 2.5]) | st.floats(0.01, 5.0),
        idle_timeout=st.sampled_from([0.5, 2.0, 15.0]) | st.floats(0.05, 30.0),
        login_timeout=st.sampled_from([1.0, 30.0]) | st.floats(1.0, 60.0),
        max_packet_length=st.sampled_from(
            [LOGIN_REQUEST_410_LENGTH, LOGIN_REQUEST_410_LENGTH + 1, 100, MAX_PACKET_LENGTH]
        ),
    ),
)
short_delays = st.sampled_from([0.0, 0.001, 0.5, 1.0]) | st.floats(0.0, 3.0)
# Long delays (timeouts) only now and then.
delays = st.one_of(*[short_delays] * 5, st.sampled_from([15.0, 30.0, 100.0]))
sessions = st.text(string.ascii_letters + string.digits, max_size=10)
sequences = st.integers(0, 10) | st.integers(0, 10**20 - 1)
# accept(max_packet_length=...): mostly the timers' limit; else a client that may not publish.
packet_limits = st.one_of(
    st.none(), st.none(), st.sampled_from([1, 2, 20, LOGIN_REQUEST_410_LENGTH, 100])
)

Action = Literal[
    "receive", "accept", "reject", "end_session", "unsequenced", "debug", "tick", "heard", "sent"
]

# ---------------------------------------------------------------------------- the machine


def is_open(machine: ServerMachine) -> bool:
    return machine.state is not State.CLOSED


class ServerMachine(RuleBasedStateMachine):
    """Client, clock and application around one ServerConnection at a time.

    Once it is closed (and poked), the client connects again: one run sees several.
    """

    def __init__(self) -> None:
        super().__init__()
        self.timers = ServerTimers()
        self.now = 0.0
        self.created = 0.0
        self.connection = ServerConnection(0.0)
        # Every byte fed so far is whole packets of `Item`s, then `tail` unfed of `partial`.
        self.clean = True
        self.partial: Item | None = None
        self.tail = b""
        # Whole packets that arrived after the Login Request, before the decision (clean only).
        self.waiting: list[Item] = []
        self.pending = False  # LoginRequested seen, neither accept() nor reject() called
        self.login_sent = False  # by send_packets(), whole or in part
        self.requests = 0
        self.request: LoginRequest | None = None
        self.limit = MAX_LOGIN_PACKET_LENGTH  # the longest packet the client may send now
        # When the client was last heard of, at the earliest and at the latest: the same
        # while the stream is clean; random bytes may or may not complete a packet.
        self.heard_early = 0.0
        self.heard_late = 0.0
        self.last_sent = 0.0

    @initialize(timers=timers_strategy, start=st.just(0.0) | st.floats(0.0, 1e6))
    def start(self, timers: ServerTimers, start: float) -> None:
        self.now = start
        self.connect(timers)

    @precondition(lambda self: self.state is State.CLOSED)
    @rule(data=st.data(), timers=timers_strategy, delay=short_delays)
    def reconnect(self, data: st.DataObject, timers: ServerTimers, delay: float) -> None:
        """Every call on the closed connection does nothing (step() checks that); then the
        client connects again."""
        connection, now = self.connection, self.now
        self.step("receive", lambda: connection.receive_data(data.draw(st.binary()), now))
        self.step("accept", lambda: connection.accept("S", 1, now))
        self.step("reject", lambda: connection.reject("A", now))
        self.step("end_session", lambda: connection.end_session(now))
        self.step("unsequenced", lambda: connection.send_unsequenced(b"x", now))
        self.step("debug", lambda: connection.send_debug("x", now))
        self.step("tick", lambda: connection.tick(now + 1000.0))
        self.step("heard", lambda: connection.heard(now))
        self.step("sent", lambda: connection.sent(now))
        self.now += delay
        self.connect(timers)

    def connect(self, timers: ServerTimers) -> None:
        self.timers = timers
        self.connection = ServerConnection(self.now, timers)
        self.created = self.last_sent = self.heard_early = self.heard_late = self.now
        self.clean = True
        self.partial, self.tail, self.waiting = None, b"", []
        self.pending = False
        self.requests = 0
        self.request = None
        self.limit = MAX_LOGIN_PACKET_LENGTH
        self.login_sent = False

    @property
    def state(self) -> State:
        return self.connection.state

    # ------------------------------------------------------------------ one step

    def step(
        self, action: Action, call: Callable[[], None]
    ) -> tuple[list[Event], list[ServerPacket]]:
        """Run `call`, then check what every step must satisfy; returns events and packets."""
        before = self.state
        call()
        events = self.connection.events_received()
        packets = server_packets(self.connection.data_to_send())
        after = self.state
        assert isinstance(after, State)

        if before is State.CLOSED:
            assert after is State.CLOSED, "CLOSED is final"
            assert events == [], "a closed connection reports nothing"
            assert packets == [], "a closed connection sends nothing"
        if after is State.LOGGED_IN and before is not State.LOGGED_IN:
            assert action == "accept"
        if before is State.LOGGED_IN:
            assert after is not State.AWAITING_LOGIN
        if after is State.CLOSED and before is not State.CLOSED:
            assert action in ("reject", "end_session") or (
                events and isinstance(events[-1], ConnectionLost | LogoutRequested)
            ), f"closed by {action} without saying why: {events}"

        for index, event in enumerate(events):
            last = index == len(events) - 1
            match event:
                case ConnectionLost() | LogoutRequested():
                    assert last, f"{event} is not the last event: {events}"
                    assert after is State.CLOSED
                case LoginRequested(request=request):
                    # Parsing stops at a Login Request until the application decides.
                    assert last and action == "receive"
                    assert before is State.AWAITING_LOGIN and after is State.AWAITING_LOGIN
                    assert self.requests == 0 and not self.pending
                    assert self.connection.request == request
                    self.request = request
                    self.requests += 1
                    self.pending = True
                case MessagesReceived():
                    assert before is State.LOGGED_IN or action == "accept"
        lost = any(isinstance(event, ConnectionLost) for event in events)
        if lost:
            assert packets and isinstance(packets[-1], Debug), f"no Debug after {events}"

        for index, packet in enumerate(packets):
            match packet:
                case LoginAccepted():
                    # Only in answer to a Login Request (the machine decides only then).
                    assert action == "accept" and index == 0 and self.requests == 1
                case LoginRejected():
                    assert action == "reject" and len(packets) == 1 and self.requests == 1
                case EndOfSession():
                    assert action == "end_session" and len(packets) == 1
                case ServerHeartbeat():
                    assert action == "tick" and len(packets) == 1
                case UnsequencedData():
                    assert action == "unsequenced" and len(packets) == 1
                case Debug():
                    assert action == "debug" or lost
                case SequencedData():
                    raise AssertionError("the connection never sends Sequenced Data itself")
        if packets:
            self.last_sent = self.now
        return events, packets

    # ------------------------------------------------------------------ prediction

    def predict(
        self, items: list[Item], state: State, pending: bool, head: Item | None
    ) -> tuple[list[Event], State, list[Item], bool]:
        """What whole packets arriving in `state` come to, then the header of `head` (a
        packet fed in part): the events, the state after, the packets left waiting for a
        login decision, whether any packet was read."""
        events: list[Event] = []
        waiting: list[Item] = []
        read = False
        for item in items:
            if state is State.CLOSED:
                break
            if pending:
                waiting.append(item)
                continue
            read = True
            logged_in = state is State.LOGGED_IN
            if len(item.data) - 2 > self.limit:
                events.append(LOST)  # the framer gives up at the header
                state = State.CLOSED
            elif item.kind == "debug" or (item.kind == "heartbeat" and logged_in):
                pass  # 2.1: Debug is ignored; a heartbeat just shows the client is alive
            elif item.kind == "unsequenced" and logged_in:
                events.append(MessagesReceived([item.payload]))
            elif item.kind == "login" and not logged_in:
                assert item.request is not None
                events.append(LoginRequested(item.request))
                pending = True
            elif item.kind == "logout":
                events.append(LogoutRequested())
                state = State.CLOSED
            else:
                events.append(LOST)
                state = State.CLOSED
        if state is not State.CLOSED and not pending and head and len(head.data) - 2 > self.limit:
            events.append(LOST)
            state = State.CLOSED
        return events, state, waiting, read

    def head(self) -> Item | None:
        """The packet fed in part, if its length field is in."""
        if self.partial and len(self.tail) <= len(self.partial.data) - 2:
            return self.partial
        return None

    # ------------------------------------------------------------------ the client

    def feed(self, chunks: list[bytes], completed: list[Item] | None) -> None:
        """Feed `chunks`; `completed` is the packets they finish, or None if unknown."""
        before = self.state
        pending = self.pending
        expected = (
            self.predict(completed, before, pending, self.head()) if completed is not None else None
        )

        def call() -> None:
            for chunk in chunks:
                self.connection.receive_data(chunk, self.now)

        events, _ = self.step("receive", call)
        if expected is not None:
            expected_events, expected_state, waiting, read = expected
            assert shape(events) == expected_events
            assert self.state is expected_state
            self.waiting += waiting
            if read:
                self.heard_early = self.heard_late = self.now
        elif chunks and not pending and before is not State.CLOSED:
            self.heard_late = self.now  # a packet may or may not have been completed

    @precondition(is_open)
    @rule(data=st.data())
    def send_expected_packets(self, data: st.DataObject) -> None:
        """Well-formed packets that suit the state, split anyhow, the last maybe in part."""
        self.send_packets(data, self.well_formed(data))

    @precondition(is_open)
    @rule(data=st.data())
    def send_any_packet(self, data: st.DataObject) -> None:
        """Any packet, malformed too, maybe after well-formed ones; split anyhow."""
        items = self.well_formed(data) if data.draw(st.booleans(), label="after some") else []
        # A length field over the limit, unless the limit may change before it is read (a
        # packet behind a Login Request waits for accept(), which sets the limit).
        ahead = [self.partial, *items] if self.partial else items
        waits = self.pending or any(item.kind == "login" for item in ahead)
        limit = MAX_PACKET_LENGTH if waits else self.limit
        items.append(data.draw(any_items(limit), label="any"))
        self.send_packets(data, items)

    def well_formed(self, data: st.DataObject) -> list[Item]:
        """What a well-behaved client sends next: its Login Request (after a Debug maybe),
        then what a logged-in client sends, pipelined if the login is not decided yet."""
        logged_in = st.one_of(heartbeat_items, unsequenced_items, debug_items)
        if self.state is State.AWAITING_LOGIN and not self.login_sent:
            first = data.draw(st.lists(debug_items, max_size=1), label="first")
            login = data.draw(login_items(), label="login")
            then = data.draw(st.lists(logged_in, max_size=2), label="then")
            return [*first, login, *then]
        return data.draw(st.lists(logged_in, min_size=1, max_size=3), label="packets")

    def send_packets(self, data: st.DataObject, items: list[Item]) -> None:
        self.login_sent |= any(item.kind == "login" for item in items)
        completed = ([self.partial] if self.partial else []) + items
        stream = self.tail + b"".join(item.data for item in items)
        self.partial, self.tail = None, b""
        last = items[-1]
        # A packet may arrive in part, unless the framer gives up at its header.
        if last.kind != "bad" and data.draw(st.booleans(), label="in part"):
            keep = data.draw(st.integers(1, len(last.data)), label="bytes held back")
            stream = stream[:-keep]
            self.partial, self.tail = last, last.data[-keep:]
            completed.pop()
        self.feed(split(data, stream), completed if self.clean else None)

    @precondition(is_open)
    @rule(data=st.data(), garbage=st.binary(min_size=1, max_size=64))
    def send_random_bytes(self, data: st.DataObject, garbage: bytes) -> None:
        self.clean = False
        self.partial, self.tail, self.waiting = None, b"", []
        self.feed(split(data, garbage), None)

    @precondition(lambda self: self.pending and self.state is State.AWAITING_LOGIN)
    @rule(chunk=st.sampled_from([1 << 16, 1 << 18, MAX_PENDING_BYTES + 1]), skip=st.integers(0, 3))
    def flood_while_pending(self, chunk: int, skip: int) -> None:
        """More than the connection buffers while the login is being decided."""
        if skip:
            return  # only now and then: the login is mostly decided
        heartbeats = ClientHeartbeat().encode() * (chunk // 3 + 1)

        def call() -> None:
            for _ in range(MAX_PENDING_BYTES // len(heartbeats) + 1):
                self.connection.receive_data(heartbeats, self.now)

        events, packets = self.step("receive", call)
        assert shape(events) == [LOST]
        assert len(packets) == 1 and isinstance(packets[0], Debug)

    # ------------------------------------------------------------------ the application

    @precondition(lambda self: self.pending)
    @rule(
        reject=st.sampled_from([None, None, None, "A", "S"]),
        session=sessions,
        sequence=sequences,
        limit=packet_limits,
    )
    def decide(self, reject: str | None, session: str, sequence: int, limit: int | None) -> None:
        """The application accepts the pending login (mostly) or rejects it; the
        connection may have closed meanwhile (a login timeout)."""
        if reject is None:
            self.accept(session, sequence, limit)
        else:
            self.reject(reject)

    @precondition(lambda self: self.state is State.AWAITING_LOGIN and not self.login_sent)
    @rule(data=st.data(), session=sessions, sequence=sequences, wait=delays, limit=packet_limits)
    def log_in(
        self, data: st.DataObject, session: str, sequence: int, wait: float, limit: int | None
    ) -> None:
        """The common case in one rule: the client's Login Request (and what it pipelines),
        split anyhow, then the application accepts it once authenticated (`wait` later)."""
        self.send_packets(data, self.well_formed(data))
        if self.pending:
            self.now += wait
            self.accept(session, sequence, limit)

    def accept(self, session: str, sequence: int, limit: int | None) -> None:
        before = self.state
        waiting, self.waiting = self.waiting, []
        self.pending = False
        connection, now = self.connection, self.now
        if limit is None:
            events, packets = self.step("accept", lambda: connection.accept(session, sequence, now))
        else:
            events, packets = self.step(
                "accept",
                lambda: connection.accept(session, sequence, now, max_packet_length=limit),
            )
        if before is State.CLOSED:
            return  # the login timed out meanwhile: accept() does nothing
        self.limit = self.timers.max_packet_length if limit is None else limit
        assert packets[0] == LoginAccepted(session, sequence)
        request = self.connection.request
        assert request is not None
        assert self.connection.idle_timeout == (
            request.heartbeat_timeout_ms / 1000
            if request.heartbeat_timeout_ms
            else self.timers.idle_timeout
        )
        # The client's silence counts from the accept; what it pipelined is read now.
        self.heard_early = self.heard_late = self.now
        if self.clean:
            expected_events, expected_state, left, _ = self.predict(
                waiting, State.LOGGED_IN, False, self.head()
            )
            assert left == []
            assert shape(events) == expected_events
            assert self.state is expected_state
            if LOST not in expected_events:
                assert packets == [LoginAccepted(session, sequence)]

    def reject(self, reason: str) -> None:
        before = self.state
        self.pending = False
        self.waiting = []
        events, packets = self.step("reject", lambda: self.connection.reject(reason, self.now))
        if before is not State.CLOSED:
            assert packets == [LoginRejected(reason)]  # 2.2.2
            assert events == []
        assert self.state is State.CLOSED

    @precondition(lambda self: self.state is State.LOGGED_IN)
    @rule(skip=st.integers(0, 3))
    def end_session(self, skip: int) -> None:
        if skip:
            return  # only now and then, to see more of a logged-in connection
        events, packets = self.step("end_session", lambda: self.connection.end_session(self.now))
        assert packets == [EndOfSession()]  # 2.2.6
        assert events == []
        assert self.state is State.CLOSED

    @precondition(is_open)
    @rule(payload=st.none() | st.binary(max_size=100), text=st.text(max_size=40))
    def send(self, payload: bytes | None, text: str) -> None:
        """Unsequenced Data (once logged in, else nothing), or Debug (in any state)."""
        if payload is not None:
            logged_in = self.state is State.LOGGED_IN
            events, packets = self.step(
                "unsequenced", lambda: self.connection.send_unsequenced(payload, self.now)
            )
            assert events == []
            assert packets == ([UnsequencedData(payload)] if logged_in else [])
        else:
            events, packets = self.step("debug", lambda: self.connection.send_debug(text, self.now))
            assert events == []
            assert packets == [Debug(text.encode("ascii", "backslashreplace"))]

    @precondition(lambda self: self.state is State.LOGGED_IN)
    @rule(heard=st.booleans())
    def heard_or_sent(self, heard: bool) -> None:
        """The application heard from the client, or sent Sequenced Data, itself."""
        before = self.state
        if heard:
            events, packets = self.step("heard", lambda: self.connection.heard(self.now))
            self.heard_early = self.heard_late = self.now
        else:
            events, packets = self.step("sent", lambda: self.connection.sent(self.now))
            self.last_sent = self.now
        assert (events, packets, self.state) == ([], [], before)

    # ------------------------------------------------------------------ the clock

    @precondition(is_open)
    @rule(delay=delays)
    def advance_and_tick(self, delay: float) -> None:
        self.now += delay
        self.tick()

    @precondition(is_open)
    @rule(just_before=st.booleans(), login_timeout_too=st.booleans())
    def tick_at_deadline(self, just_before: bool, login_timeout_too: bool) -> None:
        if self.state is State.AWAITING_LOGIN and not login_timeout_too:
            just_before = True  # the login timeout is the only deadline: not every time
        deadline = self.connection.next_deadline()
        if math.isfinite(deadline):
            target = math.nextafter(deadline, -math.inf) if just_before else deadline
            self.now = max(self.now, target)
        self.tick()

    @precondition(lambda self: self.state is State.LOGGED_IN)
    @rule(data=st.data(), rounds=st.integers(1, 30), period=st.floats(0.05, 2.0))
    def keep_alive(self, data: st.DataObject, rounds: int, period: float) -> None:
        """A long-lived connection: `period` s pass, a tick, a Client Heartbeat, and again."""
        heartbeat = Item(ClientHeartbeat().encode(), "heartbeat")
        for _ in range(rounds):
            self.now += period
            self.tick()
            if self.state is not State.LOGGED_IN:
                break
            self.send_packets(data, [heartbeat])

    def tick(self) -> None:
        now = self.now
        before = self.state
        last_sent = self.last_sent
        events, packets = self.step("tick", lambda: self.connection.tick(now))
        after = self.state
        if before is State.LOGGED_IN:
            idle = self.connection.idle_timeout
            if after is State.CLOSED:
                # Idle timeout: possibly due (exactly due while the stream is clean).
                assert now >= self.heard_early + idle, "dropped a client not yet silent"
                assert shape(events) == [LOST]
                assert len(packets) == 1 and isinstance(packets[0], Debug)
            else:
                assert now < self.heard_late + idle, "a silent client was not dropped"
                assert events == []
                # 1.3: a heartbeat whenever nothing was sent for the interval.
                due = now >= last_sent + self.timers.heartbeat_interval
                assert packets == ([ServerHeartbeat()] if due else [])
        elif before is State.AWAITING_LOGIN:
            expired = now >= self.created + self.timers.login_timeout
            assert (after is State.CLOSED) == expired
            if expired:
                assert shape(events) == [LOST]
                assert len(packets) == 1 and isinstance(packets[0], Debug)
            else:
                assert (events, packets) == ([], [])
        assert after is State.CLOSED or self.connection.next_deadline() > now

    # ------------------------------------------------------------------ invariants

    @invariant()
    def next_deadline_is_documented(self) -> None:
        state = self.state
        assert isinstance(state, State)
        deadline = self.connection.next_deadline()
        if state is State.CLOSED:
            assert deadline == math.inf
        elif state is State.AWAITING_LOGIN:
            assert deadline == self.created + self.timers.login_timeout
        else:
            idle = self.connection.idle_timeout
            heartbeat = self.last_sent + self.timers.heartbeat_interval
            assert min(self.heard_early + idle, heartbeat) <= deadline
            assert deadline <= min(self.heard_late + idle, heartbeat)

    @invariant()
    def login_request_is_kept(self) -> None:
        assert self.connection.request == self.request


ServerMachine.TestCase.settings = MACHINE_SETTINGS
TestServerStateMachine = ServerMachine.TestCase


# ---------------------------------------------------------------------------- plain property


Step = tuple[Literal["bytes"], bytes] | tuple[Literal["tick"], float]

_steps = st.lists(
    st.one_of(
        st.tuples(st.just("bytes"), st.binary(max_size=80)),
        st.tuples(st.just("bytes"), any_items(100).map(lambda item: item.data)),
        st.tuples(st.just("tick"), delays),
    ),
    max_size=40,
)


@PLAIN_SETTINGS
@given(
    timers=timers_strategy,
    steps=_steps,
    decisions=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_random_bytes_and_ticks(
    timers: ServerTimers, steps: list[Step], decisions: list[bool]
) -> None:
    """Random chunks of random bytes with random ticks between: nothing escapes, and the
    connection only ever reports what it documents."""
    connection = ServerConnection(0.0, timers)
    now = 0.0
    closed = False
    decide = itertools.cycle(decisions)
    for step in steps:
        if step[0] == "bytes":
            connection.receive_data(step[1], now)
        else:
            now += step[1]
            connection.tick(now)
            assert connection.state is State.CLOSED or connection.next_deadline() > now
        events = connection.events_received()
        for event in list(events):
            if isinstance(event, LoginRequested):
                if next(decide):
                    connection.accept("S", 1, now)
                    events += connection.events_received()
                else:
                    connection.reject("A", now)
        packets = server_packets(connection.data_to_send())
        assert isinstance(connection.state, State)
        if closed:
            assert events == [] and packets == []
            assert connection.state is State.CLOSED
        if any(isinstance(event, ConnectionLost) for event in events):
            assert packets and isinstance(packets[-1], Debug)
        closed = connection.state is State.CLOSED


# ---------------------------------------------------------------------------- misuse


def _awaiting() -> ServerConnection:
    return ServerConnection(0.0)


def _pending() -> ServerConnection:
    connection = ServerConnection(0.0)
    connection.receive_data(LoginRequest("alice", "secret").encode(), 0.0)
    assert [type(event) for event in connection.events_received()] == [LoginRequested]
    return connection


def _logged_in() -> ServerConnection:
    connection = _pending()
    connection.accept("S", 1, 0.0)
    connection.data_to_send()
    return connection


@pytest.mark.parametrize(
    ("make", "misuse"),
    [
        (_awaiting, lambda c: c.accept("S", 1, 0.0)),
        (_awaiting, lambda c: c.reject("A", 0.0)),
        (_awaiting, lambda c: c.end_session(0.0)),
        (_pending, lambda c: c.end_session(0.0)),
        (_pending, lambda c: c.accept("ELEVENCHARS", 1, 0.0)),
        (_pending, lambda c: c.accept("sé", 1, 0.0)),
        (_pending, lambda c: c.accept("S", -1, 0.0)),
        (_pending, lambda c: c.accept("S", 10**20, 0.0)),
        (_pending, lambda c: c.reject("AS", 0.0)),
        (_logged_in, lambda c: c.accept("S", 1, 0.0)),
        (_logged_in, lambda c: c.reject("A", 0.0)),
        (_logged_in, lambda c: c.send_unsequenced(b"x" * MAX_PACKET_LENGTH, 0.0)),
        (_logged_in, lambda c: c.send_debug("x" * MAX_PACKET_LENGTH, 0.0)),
    ],
)
def test_misuse_raises_local_protocol_error_and_changes_nothing(
    make: Callable[[], ServerConnection], misuse: Callable[[ServerConnection], None]
) -> None:
    connection = make()
    state, request, deadline = connection.state, connection.request, connection.next_deadline()
    with pytest.raises(LocalProtocolError):
        misuse(connection)
    assert (connection.state, connection.request) == (state, request)
    assert connection.next_deadline() == deadline
    assert connection.data_to_send() == b""
    assert connection.events_received() == []
    if request is not None and state is State.AWAITING_LOGIN:
        connection.accept("S", 1, 0.0)  # still pending: a correct call then works
        assert server_packets(connection.data_to_send()) == [LoginAccepted("S", 1)]
