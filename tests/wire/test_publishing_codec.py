"""The publishing convention's bytes: the acknowledgement codec and the constants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import RemoteProtocolError
from tickertape.wire.publishing import (
    END_OF_SESSION_MARKER,
    NO_STREAM,
    Ack,
    redirect_address,
    redirect_text,
)
from tickertape.wire.soupbintcp import MAX_PAYLOAD, SEQUENCE_LENGTH, LoginRequest


def test_ack_encoding_is_the_documented_text() -> None:
    assert Ack(3, "2026120701", 17).encode() == b"ACK 3 2026120701 17"
    assert Ack(3, "2026120701", 0).encode() == b"ACK 3 2026120701 0"


@given(
    st.integers(0, 10**18),
    st.text(st.sampled_from("0123456789ABCDEFZ"), min_size=1, max_size=10),
    st.integers(0, 10**18),
)
def test_ack_round_trips(count: int, session: str, seq: int) -> None:
    assert Ack.decode(Ack(count, session, seq).encode()) == Ack(count, session, seq)


@pytest.mark.parametrize(
    "payload",
    [b"", b"ACK", b"ACK 1 S", b"NAK 1 S 2", b"ACK x S 2", b"ACK 1 S -2", b"ACK 1 S 2 3"],
)
def test_what_is_not_an_ack_is_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not an acknowledgement"):
        Ack.decode(payload)


def test_no_stream_is_the_largest_login_sequence_number() -> None:
    # It fits the 20-digit field of a Login Request, and nothing larger does.
    assert len(str(NO_STREAM)) == SEQUENCE_LENGTH
    LoginRequest("", "", "", NO_STREAM).encode()


def test_end_of_session_marker_fits_a_packet_and_is_not_text() -> None:
    assert len(END_OF_SESSION_MARKER) <= MAX_PAYLOAD
    assert END_OF_SESSION_MARKER.startswith(b"\x1b")  # no line of text is it by accident


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7300", ("127.0.0.1", 7300)),
        ("[::1]:7301", ("::1", 7301)),
        ("node-2.example:9", ("node-2.example", 9)),
    ],
)
def test_a_redirect_names_the_address_a_publisher_goes_to(
    address: str, expected: tuple[str, int]
) -> None:
    assert redirect_address(redirect_text(address)) == expected


def test_a_redirect_with_no_sequencer_names_no_address() -> None:
    text = redirect_text(None)
    assert "no node" in text
    assert redirect_address(text) is None
