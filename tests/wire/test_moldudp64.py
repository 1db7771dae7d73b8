"""Tests of the MoldUDP64 1.00 codec against the byte layout in the notes.

Section names are those of ``/work/shared/specs/moldudp64-notes.md`` ("notes"): "Downstream
packet" and "Request packet". All numbers there are big-endian.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import LocalProtocolError, RemoteProtocolError
from tickertape.wire.moldudp64 import (
    MAX_DATAGRAM,
    MAX_MESSAGE,
    MAX_MESSAGES,
    Downstream,
    Request,
    blocks_from_soupbintcp,
    end_of_session,
    heartbeat,
    pack,
)

SESSION = "2026112901"
SESSION_FIELD = b"2026112901"

# ---------------------------------------------------------------------------- literal packets

# Notes, "Downstream packet": Session (10, padded with spaces), Sequence Number (u64),
# Message Count (u16), then blocks of u16 Message Length and the data.
TWO_MESSAGES = (
    b"ABC       "  # offset 0, 10 bytes: session, padded on the right with spaces
    b"\x00\x00\x00\x00\x00\x01\x02\x03"  # offset 10, 8 bytes: sequence number 0x010203
    b"\x00\x02"  # offset 18, 2 bytes: message count 2
    b"\x00\x03xyz"  # message 0x010203: length 3, "xyz"
    b"\x00\x00"  # message 0x010204: length 0
)

# Notes, "Downstream packet", Heartbeat: count 0, no blocks, the next sequence number.
HEARTBEAT = SESSION_FIELD + b"\x00\x00\x00\x00\x00\x00\x00\x2a" + b"\x00\x00"

# Notes, "Downstream packet", End of Session: count 0xFFFF, no blocks, one past the last.
END_OF_SESSION = SESSION_FIELD + b"\x00\x00\x00\x00\x00\x00\x00\x2a" + b"\xff\xff"

# Notes, "Request packet": Session, Sequence Number (the first wanted), Requested Message
# Count; exactly 20 bytes.
REQUEST = SESSION_FIELD + b"\x00\x00\x00\x00\x00\x00\x01\x00" + b"\x00\x64"


def test_downstream_with_messages_encodes_to_the_layout() -> None:
    packet = Downstream("ABC", 0x010203, (b"xyz", b""))
    assert packet.encode() == TWO_MESSAGES


def test_downstream_with_messages_decodes_from_the_layout() -> None:
    packet = Downstream.decode(TWO_MESSAGES)
    assert packet == Downstream("ABC", 0x010203, (b"xyz", b""))
    assert not packet.heartbeat
    assert not packet.end_of_session
    # Notes, "Downstream packet": message i has sequence number Sequence Number + i.
    assert packet.next_sequence == 0x010205


def test_heartbeat_against_the_layout() -> None:
    assert heartbeat(SESSION, 42) == HEARTBEAT
    packet = Downstream.decode(HEARTBEAT)
    assert packet == Downstream(SESSION, 42)
    assert packet.heartbeat
    assert packet.next_sequence == 42


def test_end_of_session_against_the_layout() -> None:
    assert end_of_session(SESSION, 42) == END_OF_SESSION
    packet = Downstream.decode(END_OF_SESSION)
    assert packet == Downstream(SESSION, 42, end_of_session=True)
    assert packet.end_of_session
    assert not packet.heartbeat
    assert packet.next_sequence == 42


def test_request_against_the_layout() -> None:
    assert Request(SESSION, 256, 100).encode() == REQUEST
    assert Request.decode(REQUEST) == Request(SESSION, 256, 100)


def test_full_width_numbers() -> None:
    # Notes: "All numbers are big-endian binary"; the sequence number is a whole u64.
    data = Downstream("", (1 << 64) - 1).encode()
    assert data == b" " * 10 + b"\xff" * 8 + b"\x00\x00"
    assert Downstream.decode(data) == Downstream("", (1 << 64) - 1)
    request = Request("S", (1 << 64) - 1, 0xFFFF).encode()
    assert request == b"S         " + b"\xff" * 10
    assert Request.decode(request) == Request("S", (1 << 64) - 1, 0xFFFF)


def test_blank_session_is_ten_spaces() -> None:
    assert Downstream("", 1).encode()[:10] == b" " * 10
    assert Downstream.decode(b" " * 10 + b"\x00" * 7 + b"\x01\x00\x00").session == ""


def test_session_padding_with_nuls_is_accepted() -> None:
    # Notes: padded "with spaces"; some senders pad with NULs, which decode the same.
    data = b"ABC\x00\x00\x00\x00\x00\x00\x00" + HEARTBEAT[10:]
    assert Downstream.decode(data).session == "ABC"


# ---------------------------------------------------------------------------- decode errors


@pytest.mark.parametrize("size", [0, 1, 10, 18, 19])
def test_downstream_shorter_than_the_header(size: int) -> None:
    with pytest.raises(RemoteProtocolError, match="header alone is 20"):
        Downstream.decode(TWO_MESSAGES[:size])


def test_downstream_ends_before_its_count_of_messages() -> None:
    # Count 2, but only the first block is there.
    with pytest.raises(RemoteProtocolError, match="says 2 messages but ends after 1"):
        Downstream.decode(TWO_MESSAGES[:-2])
    # A block whose length field is cut in half.
    with pytest.raises(RemoteProtocolError, match="says 2 messages but ends after 1"):
        Downstream.decode(TWO_MESSAGES[:-1])


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_downstream_message_overruns_the_packet(cut: int) -> None:
    data = TWO_MESSAGES[:-2]  # one message of 3 bytes, then a block of length 0 missing
    data = data[:18] + b"\x00\x01" + data[20:]  # count 1
    with pytest.raises(RemoteProtocolError, match="overruns the packet"):
        Downstream.decode(data[:-cut])


def test_downstream_with_bytes_after_its_last_block() -> None:
    with pytest.raises(RemoteProtocolError, match="1 bytes after the packet's 2 messages"):
        Downstream.decode(TWO_MESSAGES + b"\x00")
    with pytest.raises(RemoteProtocolError, match="2 bytes after the packet's 0 messages"):
        Downstream.decode(HEARTBEAT + b"\x00\x00")


def test_end_of_session_with_a_payload() -> None:
    # Notes, "Downstream packet", End of Session: "no blocks".
    with pytest.raises(RemoteProtocolError, match="End of Session packet with bytes"):
        Downstream.decode(END_OF_SESSION + b"\x00\x01x")


def test_downstream_session_not_ascii() -> None:
    with pytest.raises(RemoteProtocolError, match="not ASCII"):
        Downstream.decode(b"\xff" * 10 + HEARTBEAT[10:])


@pytest.mark.parametrize("size", [0, 19, 21, 22, len(TWO_MESSAGES)])
def test_request_not_twenty_bytes(size: int) -> None:
    # Notes, "Request packet": "Exactly 20 bytes".
    data = (REQUEST + TWO_MESSAGES)[:size]
    with pytest.raises(RemoteProtocolError, match=f"a request of {size} bytes"):
        Request.decode(data)


def test_request_session_not_ascii() -> None:
    with pytest.raises(RemoteProtocolError, match="not ASCII"):
        Request.decode(b"\x80" + REQUEST[1:])


# ---------------------------------------------------------------------------- encode errors


def test_end_of_session_carries_no_messages() -> None:
    with pytest.raises(LocalProtocolError, match="carries no messages"):
        Downstream(SESSION, 1, (b"x",), end_of_session=True).encode()


def test_too_many_messages_for_one_packet() -> None:
    # Notes: "Count 0xFFFF is reserved, so at most 65534 messages a packet".
    assert len(Downstream(SESSION, 1, (b"",) * MAX_MESSAGES).encode()) == 20 + 2 * MAX_MESSAGES
    with pytest.raises(LocalProtocolError, match="65535 messages in one packet; at most 65534"):
        Downstream(SESSION, 1, (b"",) * (MAX_MESSAGES + 1)).encode()


@pytest.mark.parametrize("sequence", [-1, 1 << 64])
def test_sequence_number_out_of_range(sequence: int) -> None:
    with pytest.raises(LocalProtocolError, match="does not fit in a u64"):
        Downstream(SESSION, sequence).encode()


def test_message_too_long_for_a_block() -> None:
    assert len(Downstream(SESSION, 1, (b"x" * 0xFFFF,)).encode()) == 20 + 2 + 0xFFFF
    with pytest.raises(LocalProtocolError, match="65536 bytes does not fit a MoldUDP64 block"):
        Downstream(SESSION, 1, (b"x" * 0x10000,)).encode()


@pytest.mark.parametrize(
    ("session", "match"), [("ABCDEFGHIJK", "11 characters"), ("séance", "not ASCII")]
)
def test_bad_session(session: str, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        Downstream(session, 1).encode()
    with pytest.raises(LocalProtocolError, match=match):
        Request(session, 1, 1).encode()
    with pytest.raises(LocalProtocolError, match=match):
        list(pack(session, 1, [b"x"]))


@pytest.mark.parametrize("count", [0, -1, 0x10000])
def test_request_count_out_of_range(count: int) -> None:
    with pytest.raises(LocalProtocolError, match="1 to 65535"):
        Request(SESSION, 1, count).encode()


# ---------------------------------------------------------------------------- pack


def decode_all(packets: list[bytes]) -> list[Downstream]:
    return [Downstream.decode(packet) for packet in packets]


def check_packing(
    packets: list[bytes], first: int, messages: list[bytes], max_datagram: int = MAX_DATAGRAM
) -> None:
    """Every property ``pack`` promises: no packet over ``max_datagram``, no message
    split or lost, consecutive numbers, and each packet as full as it can be."""
    decoded = decode_all(packets)
    assert all(len(packet) <= max_datagram for packet in packets)
    assert all(packet.messages and not packet.end_of_session for packet in decoded)
    assert all(packet.session == SESSION for packet in decoded)
    assert [m for packet in decoded for m in packet.messages] == messages
    expected = first
    for packet in decoded:
        assert packet.sequence == expected
        expected = packet.next_sequence
    assert expected == first + len(messages)
    for data, packet, after in zip(packets, decoded, decoded[1:], strict=False):
        # Greedy: the next packet's first message did not fit in this one.
        assert len(packet.messages) == MAX_MESSAGES or (
            len(data) + 2 + len(after.messages[0]) > max_datagram
        )


def test_pack_nothing() -> None:
    assert list(pack(SESSION, 1, [])) == []


def test_pack_literal() -> None:
    assert list(pack("ABC", 0x010203, [b"xyz", b""])) == [TWO_MESSAGES]


def test_pack_splits_without_splitting_a_message() -> None:
    messages = [bytes([i % 256]) * (i * 7 % 300) for i in range(500)]
    packets = list(pack(SESSION, 1000, messages))
    assert len(packets) > 1
    check_packing(packets, 1000, messages)


def test_largest_message_fits_alone() -> None:
    # Notes: at most 1472 bytes of UDP payload; 1472 - 20 (header) - 2 (length) = 1450.
    assert MAX_MESSAGE == 1450
    packets = list(pack(SESSION, 7, [b"a", b"m" * 1450, b"z"]))
    assert [len(packet) for packet in packets] == [23, 1472, 23]
    check_packing(packets, 7, [b"a", b"m" * 1450, b"z"])


def test_message_over_1450_bytes_raises() -> None:
    with pytest.raises(LocalProtocolError, match=r"1451 bytes does not fit .* 1472 bytes"):
        list(pack(SESSION, 1, [b"a", b"m" * 1451]))


def test_exact_fill() -> None:
    # Two blocks of 2 + 724 bytes fill 20 + 1452 = 1472 bytes exactly; a third goes on.
    messages = [b"a" * 724, b"b" * 724, b"c"]
    packets = list(pack(SESSION, 1, messages))
    assert [len(packet) for packet in packets] == [1472, 23]
    check_packing(packets, 1, messages)


def test_pack_caps_the_count_at_65534() -> None:
    messages = [b""] * (MAX_MESSAGES + 2)
    packets = list(pack(SESSION, 1, messages, max_datagram=1 << 20))
    assert [len(Downstream.decode(p).messages) for p in packets] == [MAX_MESSAGES, 2]
    check_packing(packets, 1, messages, 1 << 20)


def test_pack_with_a_smaller_datagram() -> None:
    # Nassau caps the payload at 1400 bytes.
    messages = [b"x" * 1378] * 3
    packets = list(pack(SESSION, 1, messages, max_datagram=1400))
    assert [len(packet) for packet in packets] == [1400, 1400, 1400]
    with pytest.raises(LocalProtocolError, match="at most 1378 a message"):
        list(pack(SESSION, 1, [b"x" * 1379], max_datagram=1400))


def test_soupbintcp_sequenced_data_becomes_moldudp64_blocks() -> None:
    # SoupBinTCP: u16 length (counting the 'S'), 'S', payload; MoldUDP64: u16 length, payload.
    soup = b"\x00\x04Sxyz" + b"\x00\x01S" + b"\x00\x03Sab"
    blocks, offsets = blocks_from_soupbintcp(soup, [0, 6, 9, 14], 3)
    assert blocks == b"\x00\x03xyz" + b"\x00\x00" + b"\x00\x02ab"
    assert offsets == [0, 5, 7, 11]
    blocks, offsets = blocks_from_soupbintcp(soup, [0, 6, 9, 14], 2)  # the first two only
    assert (blocks, offsets) == (b"\x00\x03xyz\x00\x00", [0, 5, 7])


# ---------------------------------------------------------------------------- properties

sessions = st.text(string.ascii_letters + string.digits, max_size=10)
sequences = st.integers(min_value=0, max_value=(1 << 64) - 1)
payloads = st.binary(max_size=300)


@given(sessions, sequences, st.lists(payloads, max_size=20))
def test_downstream_round_trip(session: str, sequence: int, messages: list[bytes]) -> None:
    packet = Downstream(session, sequence, tuple(messages))
    assert Downstream.decode(packet.encode()) == packet


@given(sessions, sequences)
def test_end_of_session_round_trip(session: str, sequence: int) -> None:
    packet = Downstream(session, sequence, end_of_session=True)
    assert Downstream.decode(packet.encode()) == packet


@given(sessions, sequences, st.integers(min_value=1, max_value=0xFFFF))
def test_request_round_trip(session: str, sequence: int, count: int) -> None:
    request = Request(session, sequence, count)
    assert Request.decode(request.encode()) == request


@given(
    st.lists(st.binary(max_size=MAX_MESSAGE).map(bytes), max_size=40),
    st.integers(min_value=1, max_value=(1 << 48)),
    st.integers(min_value=22, max_value=3000),
)
def test_pack_properties(messages: list[bytes], first: int, max_datagram: int) -> None:
    if any(20 + 2 + len(message) > max_datagram for message in messages):
        with pytest.raises(LocalProtocolError):
            list(pack(SESSION, first, messages, max_datagram))
    else:
        check_packing(
            list(pack(SESSION, first, messages, max_datagram)), first, messages, max_datagram
        )


def downstream_or_error(data: bytes) -> None:
    try:
        packet = Downstream.decode(data)
    except RemoteProtocolError:
        return
    assert isinstance(packet, Downstream)
    assert len(packet.encode()) == len(data)


@given(st.binary(max_size=200))
def test_random_bytes_to_downstream(data: bytes) -> None:
    downstream_or_error(data)


@given(
    st.sampled_from([SESSION_FIELD, b" " * 10, b"\xff" * 10, b"AB" + b"\x00" * 8]),
    sequences,
    st.integers(min_value=0, max_value=0xFFFF) | st.sampled_from([0, 1, 2, 0xFFFE, 0xFFFF]),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=0xFFFF) | st.integers(0, 8), payloads),
        max_size=5,
    ),
    st.binary(max_size=4),
)
def test_random_blocks_to_downstream(
    session: bytes, sequence: int, count: int, blocks: list[tuple[int, bytes]], tail: bytes
) -> None:
    """Random bytes behind a well-formed header, so that decoding gets past it."""
    data = session + sequence.to_bytes(8, "big") + count.to_bytes(2, "big")
    data += b"".join(length.to_bytes(2, "big") + payload for length, payload in blocks) + tail
    downstream_or_error(data)


@given(st.binary(max_size=40))
def test_random_bytes_to_request(data: bytes) -> None:
    try:
        request = Request.decode(data)
    except RemoteProtocolError:
        assert len(data) != 20 or not data[:10].isascii()
        return
    assert isinstance(request, Request)
    assert len(data) == 20
