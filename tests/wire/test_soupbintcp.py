"""Tests of the SoupBinTCP 4.00/4.10 codec and framer against the spec texts.

Spec references are to /work/shared/specs/soupbintcp_4.0.txt ("spec 4.0") and
soupbintcp_4.1.txt ("spec 4.1"). Spec offsets count from the start of the packet,
length field included; a *frame* (what :class:`Framer` hands out) starts at spec offset 2.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import LocalProtocolError, RemoteProtocolError
from tickertape.wire.framing import Framer, PacketTooLong
from tickertape.wire.soupbintcp import (
    MAX_PAYLOAD,
    ClientHeartbeat,
    ClientPacket,
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
    encode_sequenced,
    encode_sequenced_many,
)

Decoder = Callable[[bytes], ServerPacket | ClientPacket]

# ---------------------------------------------------------------------------- helpers

# A partial next packet: its length field says 5 bytes follow, only 2 have arrived.
TRAILER = b"\x00\x05S\x01"
TRAILER_REST = b"\x02\x03\x04"
TRAILER_FRAME = b"S\x01\x02\x03\x04"

FEED_MODES = pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
"""Every decoder test runs three ways: all input fed to a Framer at once, one byte at a
time, and followed by a partial next packet that must stay buffered."""


def frame_stream(data: bytes, mode: str, framer: Framer | None = None) -> list[bytes]:
    """Feed ``data`` to a Framer as ``mode`` says and return the frames it hands out."""
    framer = framer if framer is not None else Framer()
    frames: list[bytes] = []
    if mode == "whole":
        framer.feed(data)
        frames.extend(framer)
        assert framer.buffered == 0
    elif mode == "bytewise":
        for i in range(len(data)):
            framer.feed(data[i : i + 1])
            frames.extend(framer)
            assert framer.buffered == i + 1 - sum(2 + len(f) for f in frames)
        assert framer.buffered == 0
    elif mode == "trailing":
        framer.feed(data + TRAILER)
        frames.extend(framer)
        assert framer.buffered == len(TRAILER)
        assert list(framer) == []  # asking again hands out nothing new
        assert framer.buffered == len(TRAILER)
        # The buffered partial packet is intact: completing it yields it.
        framer.feed(TRAILER_REST)
        assert list(framer) == [TRAILER_FRAME]
        assert framer.buffered == 0
    else:  # pragma: no cover
        raise AssertionError(mode)
    return frames


def decode_one(data: bytes, mode: str, decoder: Decoder) -> ServerPacket | ClientPacket:
    """Frame ``data`` (exactly one packet) and decode it."""
    frames = frame_stream(data, mode)
    assert len(frames) == 1
    assert frames[0] == data[2:]
    return decoder(frames[0])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given positions (any order, duplicates allowed)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# ---------------------------------------------------------------------------- encoding


def test_encode_debug() -> None:
    """spec 4.1, section 2.1: length (2, big-endian), "+" at offset 2, free text at 3."""
    assert Debug(b"hello world").encode() == b"\x00\x0c" + b"+" + b"hello world"
    assert Debug().encode() == b"\x00\x01+"


def test_encode_login_accepted() -> None:
    """spec 4.1, section 2.2.1: "A" at offset 2; Session at offset 3, 10 bytes, left padded
    with spaces; Sequence Number at offset 13, 20 bytes of ASCII digits, left padded with
    spaces. Length field = 1 + 10 + 20 = 31."""
    expected = b"\x00\x1f" + b"A" + b"       ABC" + b"                  42"
    assert len(expected) == 2 + 31
    assert LoginAccepted("ABC", 42).encode() == expected


def test_encode_login_accepted_full_width_fields() -> None:
    """spec 4.1, section 2.2.1: a 10-character session and a 20-digit sequence fill their
    fields with no padding."""
    expected = b"\x00\x1f" + b"A" + b"SESSION001" + b"12345678901234567890"
    assert LoginAccepted("SESSION001", 12345678901234567890).encode() == expected


@pytest.mark.parametrize("reason", ["A", "S"])
def test_encode_login_rejected(reason: str) -> None:
    """spec 4.1, section 2.2.2: "J" at offset 2, Reject Reason Code at offset 3, 1 byte
    ("A" not authorized, "S" session not available). Length field = 2."""
    assert LoginRejected(reason).encode() == b"\x00\x02" + b"J" + reason.encode()


def test_encode_sequenced_data() -> None:
    """spec 4.1, section 2.2.3: "S" at offset 2, the message from offset 3, any bytes."""
    payload = b"\x00\n\xff binary \r\n"
    expected = b"\x00\x0e" + b"S" + payload  # 1 + 13
    assert SequencedData(payload).encode() == expected
    assert encode_sequenced(payload) == expected
    assert encode_sequenced(b"") == b"\x00\x01S"


def test_encode_sequenced_many() -> None:
    """spec 4.1, sections 1.1 and 2.2.3: consecutive packets, each with its own length."""
    assert encode_sequenced_many([b"ab", b"", b"xyz"]) == (
        b"\x00\x03Sab" + b"\x00\x01S" + b"\x00\x04Sxyz"
    )
    assert encode_sequenced_many([]) == b""


def test_encode_sequenced_largest_payload() -> None:
    """spec 4.1, section 1.1: the u16 length counts the type byte, so the largest message
    is 65534 bytes, giving a length field of 0xFFFF."""
    payload = b"x" * MAX_PAYLOAD
    assert encode_sequenced(payload)[:3] == b"\xff\xffS"
    assert encode_sequenced_many([payload])[:3] == b"\xff\xffS"
    assert UnsequencedData(payload).encode()[:3] == b"\xff\xffU"


def test_encode_unsequenced_data() -> None:
    """spec 4.1, section 2.2.4 (server to client) and section 2.3.2 (client to server):
    "U" at offset 2, the message from offset 3. Same layout in both directions."""
    assert UnsequencedData(b"order:1").encode() == b"\x00\x08" + b"U" + b"order:1"
    assert UnsequencedData(b"").encode() == b"\x00\x01U"


def test_encode_server_heartbeat() -> None:
    """spec 4.1, section 2.2.5: length 1, "H" at offset 2, nothing else."""
    assert ServerHeartbeat().encode() == b"\x00\x01H"


def test_encode_end_of_session() -> None:
    """spec 4.1, section 2.2.6: length 1, "Z" at offset 2, nothing else."""
    assert EndOfSession().encode() == b"\x00\x01Z"


def test_encode_login_request_400() -> None:
    """spec 4.0, section 2.3.1: "L" at offset 2; Username at 3 (6 bytes) and Password at 9
    (10 bytes), padded on the right with spaces; Requested Session at 19 (10 bytes);
    Requested Sequence Number at 29 (20 bytes, numeric, left padded with spaces).
    Length field = 1 + 6 + 10 + 10 + 20 = 47."""
    expected = (
        b"\x00\x2f" + b"L" + b"user  " + b"secret    " + b"SESS1     " + b"                1234"
    )
    assert len(expected) == 2 + 47
    packet = LoginRequest("user", "secret", session="SESS1", sequence=1234)
    assert packet.encode() == expected


def test_encode_login_request_400_blank_session() -> None:
    """spec 4.0, section 2.3.1: an all-blank Requested Session logs into the currently
    active session; sequence 0 means "start from the most recent message"."""
    expected = b"\x00\x2f" + b"L" + b"u     " + b"p         " + b" " * 10 + b" " * 19 + b"0"
    assert LoginRequest("u", "p").encode() == expected


def test_encode_login_request_410() -> None:
    """spec 4.1, section 2.3.1: as 4.00 plus Heartbeat Timeout at offset 49, 5 bytes,
    numeric milliseconds. Length field = 47 + 5 = 52."""
    expected = (
        b"\x00\x34"
        + b"L"
        + b"user  "
        + b"secret    "
        + b"SESS1     "
        + b"                1234"
        + b"15000"
    )
    assert len(expected) == 2 + 52
    packet = LoginRequest("user", "secret", "SESS1", 1234, heartbeat_timeout_ms=15000)
    assert packet.encode() == expected


def test_encode_login_request_410_short_timeout() -> None:
    """spec 4.1, section 2.3.1: a short Heartbeat Timeout is left padded with spaces."""
    encoded = LoginRequest("user", "secret", heartbeat_timeout_ms=500).encode()
    assert encoded[:3] == b"\x00\x34L"
    assert encoded[49:54] == b"  500"


def test_encode_client_heartbeat() -> None:
    """spec 4.1, section 2.3.3: length 1, "R" at offset 2, nothing else."""
    assert ClientHeartbeat().encode() == b"\x00\x01R"


def test_encode_logout_request() -> None:
    """spec 4.1, section 2.3.4: length 1, "O" at offset 2, nothing else."""
    assert LogoutRequest().encode() == b"\x00\x01O"


# ---------------------------------------------------------------------------- decoding

LOGIN_400_WIRE = (
    b"\x00\x2f" + b"L" + b"user  " + b"secret    " + b"SESS1     " + b"                1234"
)
LOGIN_410_WIRE = LOGIN_400_WIRE[:2].replace(b"\x2f", b"\x34") + LOGIN_400_WIRE[2:] + b"15000"

SERVER_CASES: list[tuple[bytes, ServerPacket]] = [
    # spec 4.1, section 2.1: Debug.
    (b"\x00\x06+hello", Debug(b"hello")),
    (b"\x00\x01+", Debug(b"")),
    # spec 4.1, section 2.2.1: Login Accepted; session and sequence left padded with spaces.
    (b"\x00\x1fA" + b"       ABC" + b"                  42", LoginAccepted("ABC", 42)),
    # spec 4.1, section 2.2.2: Login Rejected, reason "A" or "S".
    (b"\x00\x02JA", LoginRejected("A")),
    (b"\x00\x02JS", LoginRejected("S")),
    # spec 4.1, section 2.2.3: Sequenced Data, any bytes.
    (b"\x00\x05S\x00\xff\n\r", SequencedData(b"\x00\xff\n\r")),
    (b"\x00\x01S", SequencedData(b"")),
    # spec 4.1, section 2.2.4: Unsequenced Data from the server.
    (b"\x00\x04Uabc", UnsequencedData(b"abc")),
    # spec 4.1, section 2.2.5: Server Heartbeat.
    (b"\x00\x01H", ServerHeartbeat()),
    # spec 4.1, section 2.2.6: End of Session.
    (b"\x00\x01Z", EndOfSession()),
]

CLIENT_CASES: list[tuple[bytes, ClientPacket]] = [
    # spec 4.1, section 2.1: Debug from the client.
    (b"\x00\x03+hi", Debug(b"hi")),
    # spec 4.0, section 2.3.1: 47-byte Login Request, no heartbeat timeout.
    (LOGIN_400_WIRE, LoginRequest("user", "secret", "SESS1", 1234)),
    # spec 4.1, section 2.3.1: 52-byte Login Request; Heartbeat Timeout at offset 49.
    (LOGIN_410_WIRE, LoginRequest("user", "secret", "SESS1", 1234, 15000)),
    # spec 4.1, section 2.3.2: Unsequenced Data from the client.
    (b"\x00\x04U\x00\x01\x02", UnsequencedData(b"\x00\x01\x02")),
    # spec 4.1, section 2.3.3: Client Heartbeat.
    (b"\x00\x01R", ClientHeartbeat()),
    # spec 4.1, section 2.3.4: Logout Request.
    (b"\x00\x01O", LogoutRequest()),
]


@FEED_MODES
@pytest.mark.parametrize(("wire", "expected"), SERVER_CASES)
def test_decode_server_packet(wire: bytes, expected: ServerPacket, mode: str) -> None:
    """spec 4.1, section 2.2 (and 2.1): each packet a server sends decodes, and re-encodes
    to the same bytes."""
    assert decode_one(wire, mode, decode_server_packet) == expected
    assert expected.encode() == wire


@FEED_MODES
@pytest.mark.parametrize(("wire", "expected"), CLIENT_CASES)
def test_decode_client_packet(wire: bytes, expected: ClientPacket, mode: str) -> None:
    """spec 4.1, section 2.3 (and 2.1): each packet a client sends decodes, and re-encodes
    to the same bytes."""
    assert decode_one(wire, mode, decode_client_packet) == expected
    assert expected.encode() == wire


@FEED_MODES
def test_decode_conversation(mode: str) -> None:
    """spec 4.1, section 1.1: logical packets arrive back to back on the stream; each is
    handed out once and in order however the bytes were chunked."""
    wire = b"".join(w for w, _ in SERVER_CASES)
    frames = frame_stream(wire, mode)
    assert [decode_server_packet(f) for f in frames] == [p for _, p in SERVER_CASES]


@FEED_MODES
def test_decode_login_request_410_five_digit_timeout(mode: str) -> None:
    """spec 4.1, section 2.3.1: the Heartbeat Timeout is the 5 bytes at offset 49 (frame
    bytes 47..51), so all five digits count."""
    wire = LOGIN_400_WIRE.replace(b"\x00\x2f", b"\x00\x34", 1) + b"99999"
    packet = decode_one(wire, mode, decode_client_packet)
    assert isinstance(packet, LoginRequest)
    assert packet.heartbeat_timeout_ms == 99999


# ---------------------------------------------------------------------------- tolerance


@FEED_MODES
@pytest.mark.parametrize(
    "session_field",
    [
        b"       ABC",
        b"ABC       ",
        b"\x00\x00\x00\x00\x00\x00\x00ABC",
        b"ABC\x00\x00\x00\x00\x00\x00\x00",
    ],
    ids=["left-spaces", "right-spaces", "left-nuls", "right-nuls"],
)
@pytest.mark.parametrize(
    "sequence_field",
    [
        b"                  42",
        b"00000000000000000042",
        b"42                  ",
        b"\x00" * 18 + b"42",
        b"  000000000000000042",
    ],
    ids=["left-spaces", "left-zeros", "right-spaces", "left-nuls", "spaces-then-zeros"],
)
def test_decode_login_accepted_padding(
    session_field: bytes, sequence_field: bytes, mode: str
) -> None:
    """spec 4.1, section 2.2.1 says left padded with spaces; decoding also accepts right
    padding, NUL padding, and a zero-padded sequence number."""
    wire = b"\x00\x1fA" + session_field + sequence_field
    assert decode_one(wire, mode, decode_server_packet) == LoginAccepted("ABC", 42)


@FEED_MODES
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            b"user  " + b"secret    " + b"SESS1     " + b"                1234" + b"  500",
            LoginRequest("user", "secret", "SESS1", 1234, 500),
        ),
        (
            b"  user" + b"    secret" + b"     SESS1" + b"00000000000000001234" + b"00500",
            LoginRequest("user", "secret", "SESS1", 1234, 500),
        ),
        (
            b"user\x00\x00"
            + b"secret\x00\x00\x00\x00"
            + b"\x00" * 10
            + b"1234"
            + b" " * 16
            + b"500  ",
            LoginRequest("user", "secret", "", 1234, 500),
        ),
    ],
    ids=["spec-padding", "left-padded-zeros", "nul-and-right-padding"],
)
def test_decode_login_request_410_padding(fields: bytes, expected: LoginRequest, mode: str) -> None:
    """spec 4.1, section 2.3.1: username and password should be right padded with spaces;
    decoding strips spaces and NULs from either side, and accepts numbers padded with
    spaces or zeros on the left (or spaces on the right)."""
    wire = b"\x00\x34L" + fields
    assert len(wire) == 2 + 52
    assert decode_one(wire, mode, decode_client_packet) == expected


@FEED_MODES
@pytest.mark.parametrize(
    "sequence_field",
    [b"                   7", b"00000000000000000007", b"7                   "],
    ids=["left-spaces", "left-zeros", "right-spaces"],
)
def test_decode_login_request_400_sequence_padding(sequence_field: bytes, mode: str) -> None:
    """spec 4.0, section 2.3.1: Requested Sequence Number at offset 29, 20 bytes numeric."""
    wire = b"\x00\x2fL" + b"u     " + b"p         " + b" " * 10 + sequence_field
    expected = LoginRequest("u", "p", "", 7, None)
    assert decode_one(wire, mode, decode_client_packet) == expected


# ---------------------------------------------------------------------------- malformed


@FEED_MODES
@pytest.mark.parametrize(
    "wire",
    [LOGIN_400_WIRE, LOGIN_410_WIRE, b"\x00\x01R", b"\x00\x01O", b"\x00\x01X", b"\x00\x01a"],
    ids=["login-400", "login-410", "client-heartbeat", "logout", "X", "lowercase-a"],
)
def test_decode_server_packet_rejects_client_types(wire: bytes, mode: str) -> None:
    """spec 4.1, section 2.2: a server sends only +, A, J, S, U, H and Z."""
    (frame,) = frame_stream(wire, mode)
    kind = frame[:1].decode()
    with pytest.raises(RemoteProtocolError, match=f"unknown packet type b'{kind}' from a server"):
        decode_server_packet(frame)


@FEED_MODES
@pytest.mark.parametrize(
    "wire",
    [
        b"\x00\x01S",
        b"\x00\x04Sabc",
        b"\x00\x01H",
        b"\x00\x01Z",
        b"\x00\x02JA",
        b"\x00\x1fA" + b" " * 30,
        b"\x00\x01l",
    ],
    ids=["sequenced", "sequenced-payload", "server-heartbeat", "end", "rejected", "accepted", "l"],
)
def test_decode_client_packet_rejects_server_types(wire: bytes, mode: str) -> None:
    """spec 4.1, section 2.3: a client sends only +, L, U, R and O."""
    (frame,) = frame_stream(wire, mode)
    kind = frame[:1].decode()
    with pytest.raises(RemoteProtocolError, match=f"unknown packet type b'{kind}' from a client"):
        decode_client_packet(frame)


def test_decode_empty_frame() -> None:
    """spec 4.1, section 1.1: every packet has a type byte. An empty frame cannot come out
    of a Framer (a length of 0 is refused there), so this calls the decoders directly."""
    with pytest.raises(RemoteProtocolError, match="empty packet"):
        decode_server_packet(b"")
    with pytest.raises(RemoteProtocolError, match="empty packet"):
        decode_client_packet(b"")


@FEED_MODES
def test_framer_rejects_zero_length(mode: str) -> None:
    """spec 4.1, section 1.1: the length includes the 1-byte packet type, so 0 is invalid."""
    with pytest.raises(RemoteProtocolError, match="packet length 0: every packet has at least"):
        frame_stream(b"\x00\x00" + b"S", mode)


@FEED_MODES
def test_framer_rejects_length_above_max(mode: str) -> None:
    """spec 4.1, section 1.1 defines no maximum; a Framer enforces its own max_length."""
    with pytest.raises(
        RemoteProtocolError, match="packet length 101: this endpoint accepts at most 100"
    ):
        frame_stream(b"\x00\x65S" + b"x" * 100, mode, Framer(max_length=100))


@FEED_MODES
def test_framer_accepts_length_equal_to_max(mode: str) -> None:
    """spec 4.1, section 1.1: a packet exactly max_length long is fine."""
    frames = frame_stream(b"\x00\x64S" + b"x" * 99, mode, Framer(max_length=100))
    assert [decode_server_packet(f) for f in frames] == [SequencedData(b"x" * 99)]


def test_framer_error_after_good_packets() -> None:
    """spec 4.1, section 1.1: packets before a bad length field are still handed out; the
    error comes when the bad one is reached, and again on retry (no resync)."""
    framer = Framer()
    framer.feed(b"\x00\x01H" + b"\x00\x02JA" + b"\x00\x00")
    assert next(framer) == b"H"
    assert next(framer) == b"JA"
    with pytest.raises(RemoteProtocolError, match="packet length 0"):
        next(framer)
    with pytest.raises(RemoteProtocolError, match="packet length 0"):
        next(framer)


def test_framer_needs_two_bytes_for_length() -> None:
    """spec 4.1, section 1.1: the two-byte length may itself arrive split."""
    framer = Framer()
    framer.feed(b"\x00")
    assert list(framer) == []
    assert framer.buffered == 1
    framer.feed(b"\x01")
    assert list(framer) == []
    assert framer.buffered == 2
    framer.feed(b"H")
    assert list(framer) == [b"H"]
    assert framer.buffered == 0


@FEED_MODES
@pytest.mark.parametrize("length", [1, 46, 48, 51, 53, 100])
def test_decode_login_request_wrong_length(length: int, mode: str) -> None:
    """spec 4.0/4.1, section 2.3.1: a Login Request is 47 bytes (4.00) or 52 (4.10)."""
    wire = length.to_bytes(2, "big") + b"L" + b" " * (length - 1)
    (frame,) = frame_stream(wire, mode)
    with pytest.raises(
        RemoteProtocolError,
        match=rf"Login Request packet of {length} bytes; it is 47 \(SoupBinTCP 4.00\) or 52",
    ):
        decode_client_packet(frame)


@FEED_MODES
@pytest.mark.parametrize("length", [1, 30, 32])
def test_decode_login_accepted_wrong_length(length: int, mode: str) -> None:
    """spec 4.1, section 2.2.1: a Login Accepted is always 1 + 10 + 20 = 31 bytes."""
    wire = length.to_bytes(2, "big") + b"A" + b"1" * (length - 1)
    (frame,) = frame_stream(wire, mode)
    with pytest.raises(
        RemoteProtocolError, match=f"Login Accepted packet of {length} bytes; it is always 31"
    ):
        decode_server_packet(frame)


@FEED_MODES
@pytest.mark.parametrize("length", [1, 3])
def test_decode_login_rejected_wrong_length(length: int, mode: str) -> None:
    """spec 4.1, section 2.2.2: a Login Rejected is always 2 bytes (type and reason)."""
    wire = length.to_bytes(2, "big") + b"J" + b"A" * (length - 1)
    (frame,) = frame_stream(wire, mode)
    with pytest.raises(
        RemoteProtocolError, match=f"Login Rejected packet of {length} bytes; it is always 2"
    ):
        decode_server_packet(frame)


@FEED_MODES
@pytest.mark.parametrize(
    "sequence_field",
    [
        b"                 4x2",
        b"-1".rjust(20),
        b"1 2".rjust(20),
        b"+5".rjust(20),
        b"0x10".rjust(20),
    ],
    ids=["letter", "negative", "inner-space", "plus", "hex"],
)
def test_decode_login_accepted_non_numeric_sequence(sequence_field: bytes, mode: str) -> None:
    """spec 4.1, section 2.2.1: Sequence Number holds ASCII decimal digits."""
    wire = b"\x00\x1fA" + b"       ABC" + sequence_field
    (frame,) = frame_stream(wire, mode)
    with pytest.raises(RemoteProtocolError, match=r"sequence number .* is not a decimal number"):
        decode_server_packet(frame)


@FEED_MODES
def test_decode_login_request_non_numeric_sequence(mode: str) -> None:
    """spec 4.0, section 2.3.1: Requested Sequence Number is numeric."""
    wire = b"\x00\x2fL" + b"u     " + b"p         " + b" " * 10 + b"abc".rjust(20)
    (frame,) = frame_stream(wire, mode)
    with pytest.raises(
        RemoteProtocolError, match=r"requested sequence number b'.*abc' is not a decimal number"
    ):
        decode_client_packet(frame)


@FEED_MODES
def test_decode_login_request_non_numeric_heartbeat_timeout(mode: str) -> None:
    """spec 4.1, section 2.3.1: Heartbeat Timeout is numeric."""
    wire = LOGIN_410_WIRE[:-5] + b"5x000"
    (frame,) = frame_stream(wire, mode)
    with pytest.raises(RemoteProtocolError, match=r"heartbeat timeout .* is not a decimal number"):
        decode_client_packet(frame)


@FEED_MODES
def test_decode_non_ascii_session(mode: str) -> None:
    """spec 4.1, section 1.5: character fields are ASCII."""
    wire = b"\x00\x1fA" + b"    \xc3\xa9ABCD" + b"1".rjust(20)
    (frame,) = frame_stream(wire, mode)
    with pytest.raises(RemoteProtocolError, match=r"session .* is not ASCII"):
        decode_server_packet(frame)


@FEED_MODES
@pytest.mark.parametrize(
    ("wire", "decoder", "name"),
    [
        (b"\x00\x02H\x00", decode_server_packet, "ServerHeartbeat"),
        (b"\x00\x04Zbye", decode_server_packet, "EndOfSession"),
        (b"\x00\x02R ", decode_client_packet, "ClientHeartbeat"),
        (b"\x00\x03Oxx", decode_client_packet, "LogoutRequest"),
    ],
    ids=["H", "Z", "R", "O"],
)
def test_decode_empty_packet_with_payload(
    wire: bytes, decoder: Decoder, name: str, mode: str
) -> None:
    """spec 4.1, sections 2.2.5, 2.2.6, 2.3.3, 2.3.4: these packets are the type byte alone
    (length 1)."""
    (frame,) = frame_stream(wire, mode)
    extra = len(frame) - 1
    with pytest.raises(
        RemoteProtocolError, match=f"{name} packet has {extra} bytes of payload; it has none"
    ):
        decoder(frame)


# ---------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LoginRequest("abcdefg", "p"), "username 'abcdefg' is 7 characters.*at most 6"),
        (lambda: LoginRequest("u", "p" * 11), "password 'p{11}' is 11 characters.*at most 10"),
        (
            lambda: LoginRequest("u", "p", session="s" * 11),
            "requested session 's{11}' is 11 characters.*at most 10",
        ),
        (lambda: LoginAccepted("s" * 11, 1), "session 's{11}' is 11 characters.*at most 10"),
        (lambda: LoginRequest("u", "p", sequence=-1), "requested sequence number -1 is negative"),
        (lambda: LoginAccepted("S", -5), "sequence number -5 is negative"),
        (
            lambda: LoginRequest("u", "p", heartbeat_timeout_ms=-1),
            "heartbeat timeout -1 is negative",
        ),
        (
            lambda: LoginRequest("u", "p", heartbeat_timeout_ms=100_000),
            "heartbeat timeout 100000 does not fit in 5 digits",
        ),
        (lambda: LoginAccepted("S", 10**20), "does not fit in 20 digits"),
        (lambda: LoginRequest("usér", "p"), "username 'usér' is not ASCII"),
        (lambda: LoginRequest("u", "pässwörd"), "password 'pässwörd' is not ASCII"),
        (lambda: LoginRequest("u", "p", session="séssion"), "requested session .* is not ASCII"),
        (lambda: LoginAccepted("€", 1), "session '€' is not ASCII"),
        (lambda: LoginRejected("AB"), "reject reason code 'AB' is 2 characters"),
    ],
    ids=[
        "username-7",
        "password-11",
        "requested-session-11",
        "accepted-session-11",
        "negative-requested-sequence",
        "negative-accepted-sequence",
        "negative-timeout",
        "timeout-6-digits",
        "sequence-21-digits",
        "username-non-ascii",
        "password-non-ascii",
        "session-non-ascii",
        "accepted-session-non-ascii",
        "reason-2",
    ],
)
def test_encode_field_errors(make: Callable[[], ServerPacket | ClientPacket], match: str) -> None:
    """spec 4.1, sections 1.5, 2.2.1, 2.2.2 and 2.3.1: fixed-width ASCII fields; numbers are
    non-negative decimal digits that must fit their width."""
    with pytest.raises(LocalProtocolError, match=match):
        make().encode()


@pytest.mark.parametrize(
    ("encode", "match"),
    [
        (encode_sequenced, "65535 bytes does not fit.*limit is 65534"),
        (lambda p: encode_sequenced_many([b"ok", p]), "65535 bytes does not fit.*limit is 65534"),
        (lambda p: SequencedData(p).encode(), "65535 bytes does not fit.*limit is 65534"),
        (lambda p: UnsequencedData(p).encode(), "'U' packet of 65536 bytes.*limited to 65534"),
        (lambda p: Debug(p).encode(), "'\\+' packet of 65536 bytes.*limited to 65534"),
    ],
    ids=["encode_sequenced", "encode_sequenced_many", "SequencedData", "UnsequencedData", "Debug"],
)
def test_encode_payload_too_long(encode: Callable[[bytes], bytes], match: str) -> None:
    """spec 4.1, section 1.1: the u16 length counts the type byte, so a message can be at
    most 65534 bytes."""
    with pytest.raises(LocalProtocolError, match=match):
        encode(b"x" * (MAX_PAYLOAD + 1))


def test_login_request_field_widths_at_limit() -> None:
    """spec 4.1, section 2.3.1: fields exactly their width encode without padding."""
    packet = LoginRequest("abcdef", "0123456789", "SESSION123", 10**20 - 1, 99999)
    encoded = packet.encode()
    assert encoded == b"\x00\x34L" + b"abcdef0123456789SESSION123" + b"9" * 20 + b"99999"
    assert decode_client_packet(encoded[2:]) == packet


# ---------------------------------------------------------------------------- properties

ALLOWED = (
    Debug,
    LoginAccepted,
    LoginRejected,
    SequencedData,
    UnsequencedData,
    ServerHeartbeat,
    EndOfSession,
    LoginRequest,
    ClientHeartbeat,
    LogoutRequest,
)
OPAQUE = (Debug, SequencedData, UnsequencedData, ServerHeartbeat, EndOfSession)
OPAQUE_CLIENT = (Debug, UnsequencedData, ClientHeartbeat, LogoutRequest)


@st.composite
def plausible_packets(draw: st.DrawFn) -> bytes:
    """A packet with a correct length field, any type byte, and a body whose size is near
    the fixed sizes the decoders check, so fuzzing reaches the field parsers."""
    kind = draw(st.sampled_from(b"+AJSUHZLRO\x00X"))
    size = draw(st.sampled_from([0, 1, 2, 29, 30, 31, 45, 46, 47, 50, 51, 52]) | st.integers(0, 80))
    alphabet = st.sampled_from(b" \x000123456789ABCabc-+\xff")
    body = bytes(draw(st.lists(alphabet, min_size=size, max_size=size)))
    return (1 + size).to_bytes(2, "big") + bytes([kind]) + body


stream_parts = st.lists(st.binary(max_size=60) | plausible_packets(), max_size=8)


@given(parts=stream_parts, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_fuzz_framer_and_decoders(parts: list[bytes], cuts: list[int]) -> None:
    """Random bytes, randomly chunked: the Framer and both decoders produce packets or raise
    RemoteProtocolError, and nothing else."""
    data = b"".join(parts)
    framer = Framer()
    frames: list[bytes] = []
    failed = False
    for chunk in split(data, cuts):
        framer.feed(chunk)
        try:
            frames.extend(framer)
        except RemoteProtocolError:
            failed = True
            break
    if not failed:
        # Every byte is either in a frame handed out or still buffered.
        assert sum(2 + len(f) for f in frames) + framer.buffered == len(data)
    for frame in frames:
        assert frame
        for decoder, opaque in (
            (decode_server_packet, OPAQUE),
            (decode_client_packet, OPAQUE_CLIENT),
        ):
            try:
                packet = decoder(frame)
            except RemoteProtocolError:
                continue
            assert isinstance(packet, ALLOWED)
            if isinstance(packet, opaque):
                assert packet.encode() == len(frame).to_bytes(2, "big") + frame


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=30),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_sequenced_many_round_trip(payloads: list[bytes], cuts: list[int]) -> None:
    """spec 4.1, sections 1.1 and 2.2.3: a batch of Sequenced Data packets, split anywhere,
    frames back to exactly the same messages."""
    data = encode_sequenced_many(payloads)
    assert data == b"".join(encode_sequenced(p) for p in payloads)
    framer = Framer()
    frames: list[bytes] = []
    for chunk in split(data, cuts):
        framer.feed(chunk)
        frames.extend(framer)
    assert framer.buffered == 0
    assert [decode_server_packet(f) for f in frames] == [SequencedData(p) for p in payloads]


alnum = string.ascii_letters + string.digits


@given(
    username=st.text(alnum, max_size=6),
    password=st.text(alnum, max_size=10),
    session=st.text(alnum, max_size=10),
    sequence=st.integers(min_value=0, max_value=10**20 - 1),
    heartbeat_timeout_ms=st.none() | st.integers(min_value=0, max_value=99_999),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_login_request_round_trip(
    username: str,
    password: str,
    session: str,
    sequence: int,
    heartbeat_timeout_ms: int | None,
    cuts: list[int],
) -> None:
    """spec 4.0 and 4.1, section 2.3.1: a Login Request decodes to what was encoded."""
    packet = LoginRequest(username, password, session, sequence, heartbeat_timeout_ms)
    encoded = packet.encode()
    assert len(encoded) == (2 + 47 if heartbeat_timeout_ms is None else 2 + 52)
    framer = Framer()
    frames: list[bytes] = []
    for chunk in split(encoded, cuts):
        framer.feed(chunk)
        frames.extend(framer)
    assert framer.buffered == 0
    assert [decode_client_packet(f) for f in frames] == [packet]


# ---------------------------------------------------------------------------- runs


def run_stream(data: bytes, cuts: list[int], packet_type: int) -> tuple[list[bytes], list[bytes]]:
    """Feed ``data`` cut at ``cuts``; take runs of ``packet_type`` and other frames as a
    receiver does. Returns the payloads of the runs and the other frames, in order."""
    framer = Framer()
    payloads: list[bytes] = []
    others: list[bytes] = []
    bounds = [0, *cuts, len(data)]
    for start, end in itertools.pairwise(bounds):
        framer.feed(data[start:end])
        while True:
            payloads += framer.run(packet_type)
            frame = next(framer, None)
            if frame is None:
                break
            others.append(frame)
    assert framer.buffered == 0
    return payloads, others


@given(
    st.lists(st.tuples(st.sampled_from([b"U", b"R", b"+"]), st.binary(max_size=40)), max_size=40),
    st.data(),
)
def test_any_split_of_the_stream_gives_the_same_payloads(
    packets: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    """Runs of one packet type come out as the same payloads, and the other packets as
    the same frames, however the stream is cut into reads."""
    stream = b"".join(len(body + kind).to_bytes(2, "big") + kind + body for kind, body in packets)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(stream) - 1)))))
    cuts = [cut for cut in cuts if 0 < cut < len(stream)]
    payloads, others = run_stream(stream, cuts, ord("U"))
    assert payloads == [body for kind, body in packets if kind == b"U"]
    assert others == [kind + body for kind, body in packets if kind != b"U"]


@given(st.integers(9, 300), st.integers(1, 30), st.data())
def test_a_long_run_of_one_size_any_split(count: int, size: int, data: st.DataObject) -> None:
    """Many packets of one size (the strided fast path), cut anywhere, one odd packet
    after them: the same payloads, in order."""
    bodies = [bytes([n % 256]) * size for n in range(count)] + [b"odd"]
    stream = encode_sequenced_many(bodies)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=5)))
    payloads, others = run_stream(stream, cuts, ord("S"))
    assert payloads == bodies and others == []


def test_run_stops_at_another_type_and_at_a_bad_length() -> None:
    framer = Framer(max_length=10)
    framer.feed(b"\x00\x02Sa\x00\x02Sb\x00\x01H\x00\x02Sc\x00\x0bS")
    assert framer.run(ord("S")) == [b"a", b"b"]
    assert framer.run(ord("S")) == []  # the heartbeat is next
    assert next(framer) == b"H"
    assert framer.run(ord("S")) == [b"c"]
    with pytest.raises(PacketTooLong):
        next(framer)


def test_a_uniform_run_with_one_wrong_header_falls_back() -> None:
    # Twelve packets of one length, the seventh of another type: the run stops there.
    packets = [b"\x00\x02S" + bytes([n]) for n in range(12)]
    packets[6] = b"\x00\x02U\x06"
    framer = Framer()
    framer.feed(b"".join(packets))
    assert framer.run(ord("S")) == [bytes([n]) for n in range(6)]
    assert next(framer) == b"U\x06"
    assert framer.run(ord("S")) == [bytes([n]) for n in range(7, 12)]


def test_a_packet_trickling_in_is_handed_out_whole() -> None:
    framer = Framer()
    packet = UnsequencedData(b"x" * 1000).encode()
    for byte in range(len(packet) - 1):
        framer.feed(packet[byte : byte + 1])
        assert framer.run(ord("U")) == []
    framer.feed(packet[-1:])
    assert framer.run(ord("U")) == [b"x" * 1000]
