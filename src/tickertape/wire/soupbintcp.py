"""SoupBinTCP 4.00 and 4.10 packets: pure encode and decode.

Every packet is ``u16 length`` (big-endian, the number of bytes after the length field),
then a one-byte packet type, then a type-specific payload (spec 4.1, section 1.1). Text
fields are ASCII; alpha fields are padded with spaces, numeric fields hold ASCII decimal
digits padded on the left with spaces (section 1.5, 2.2.1, 2.3.1).

Nothing here touches a socket. Decoders take a *frame*: the packet without its length
field (type byte first), as handed out by :class:`~tickertape.wire.framing.Framer`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from tickertape.errors import LocalProtocolError, RemoteProtocolError
from tickertape.wire.fields import alpha, numeric, parse_alpha, parse_numeric

MAX_PACKET_LENGTH: Final = 0xFFFF
"""The largest value of the u16 length field: type byte plus payload."""

MAX_PAYLOAD: Final = MAX_PACKET_LENGTH - 1
"""The largest message a Sequenced or Unsequenced Data packet can carry."""

SESSION_LENGTH: Final = 10
SEQUENCE_LENGTH: Final = 20
USERNAME_LENGTH: Final = 6
PASSWORD_LENGTH: Final = 10
HEARTBEAT_TIMEOUT_LENGTH: Final = 5

LOGIN_REQUEST_400_LENGTH: Final = 1 + USERNAME_LENGTH + PASSWORD_LENGTH + SESSION_LENGTH + 20
"""Login Request length field in 3.00 and 4.00: 47 bytes (spec 4.0, section 2.3.1)."""
LOGIN_REQUEST_410_LENGTH: Final = LOGIN_REQUEST_400_LENGTH + HEARTBEAT_TIMEOUT_LENGTH
"""Login Request length field in 4.10: 52 bytes, with the heartbeat timeout (spec 4.1, 2.3.1)."""

REJECT_NOT_AUTHORIZED: Final = "A"
REJECT_SESSION_NOT_AVAILABLE: Final = "S"

_HEADER = struct.Struct(">HB")
_SEQUENCED: Final = 0x53  # "S"


# ---------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True)
class Debug:
    """Free-form human-readable text, sent by either side at any time (section 2.1)."""

    TYPE: ClassVar[bytes] = b"+"
    text: bytes = b""

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.text)


@dataclass(frozen=True, slots=True)
class LoginAccepted:
    """The server accepted a login (section 2.2.1).

    ``sequence`` is the number of the next Sequenced Data packet it will send.
    """

    TYPE: ClassVar[bytes] = b"A"
    session: str
    sequence: int

    def encode(self) -> bytes:
        return _frame(
            self.TYPE,
            alpha(self.session, SESSION_LENGTH, "session", right=True)
            + numeric(self.sequence, SEQUENCE_LENGTH, "sequence number"),
        )


@dataclass(frozen=True, slots=True)
class LoginRejected:
    """The server refused a login and will close the connection (section 2.2.2).

    ``reason`` is ``"A"`` (not authorized) or ``"S"`` (session not available).
    """

    TYPE: ClassVar[bytes] = b"J"
    reason: str

    def encode(self) -> bytes:
        return _frame(self.TYPE, alpha(self.reason, 1, "reject reason code"))


@dataclass(frozen=True, slots=True)
class SequencedData:
    """One sequenced message; its number is implied by counting (section 2.2.3)."""

    TYPE: ClassVar[bytes] = b"S"
    payload: bytes

    def encode(self) -> bytes:
        return encode_sequenced(self.payload)


@dataclass(frozen=True, slots=True)
class UnsequencedData:
    """One unsequenced message, in either direction (sections 2.2.4 and 2.3.2)."""

    TYPE: ClassVar[bytes] = b"U"
    payload: bytes

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.payload)


@dataclass(frozen=True, slots=True)
class ServerHeartbeat:
    """Sent by the server after a second in which it sent nothing else (section 2.2.5)."""

    TYPE: ClassVar[bytes] = b"H"

    def encode(self) -> bytes:
        return _SERVER_HEARTBEAT


@dataclass(frozen=True, slots=True)
class EndOfSession:
    """The session is finished; the server closes the connection shortly after (2.2.6)."""

    TYPE: ClassVar[bytes] = b"Z"

    def encode(self) -> bytes:
        return _END_OF_SESSION


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """The first packet a client sends (section 2.3.1).

    A blank ``session`` asks for the active session; ``sequence`` is the next sequence
    number wanted, 0 meaning "from the next message published". ``heartbeat_timeout_ms``
    is the 4.10 field: ``None`` encodes the 47-byte 4.00 packet.
    """

    TYPE: ClassVar[bytes] = b"L"
    username: str
    password: str
    session: str = ""
    sequence: int = 0
    heartbeat_timeout_ms: int | None = None

    def encode(self) -> bytes:
        body = (
            alpha(self.username, USERNAME_LENGTH, "username")
            + alpha(self.password, PASSWORD_LENGTH, "password")
            + alpha(self.session, SESSION_LENGTH, "requested session")
            + numeric(self.sequence, SEQUENCE_LENGTH, "requested sequence number")
        )
        if self.heartbeat_timeout_ms is not None:
            body += numeric(
                self.heartbeat_timeout_ms, HEARTBEAT_TIMEOUT_LENGTH, "heartbeat timeout"
            )
        return _frame(self.TYPE, body)


@dataclass(frozen=True, slots=True)
class ClientHeartbeat:
    """Sent by a client after a second in which it sent nothing else (section 2.3.3)."""

    TYPE: ClassVar[bytes] = b"R"

    def encode(self) -> bytes:
        return _CLIENT_HEARTBEAT


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """The client asks the server to close the connection at once (section 2.3.4)."""

    TYPE: ClassVar[bytes] = b"O"

    def encode(self) -> bytes:
        return _LOGOUT_REQUEST


_Login = LoginAccepted | LoginRejected
ServerPacket = Debug | _Login | SequencedData | UnsequencedData | ServerHeartbeat | EndOfSession
ClientPacket = Debug | LoginRequest | UnsequencedData | ClientHeartbeat | LogoutRequest


# ---------------------------------------------------------------------------- encoding


def _frame(packet_type: bytes, body: bytes) -> bytes:
    length = 1 + len(body)
    if length > MAX_PACKET_LENGTH:
        raise LocalProtocolError(
            f"a {packet_type.decode()!r} packet of {length} bytes does not fit the u16 "
            f"length field; messages are limited to {MAX_PAYLOAD} bytes"
        )
    return length.to_bytes(2, "big") + packet_type + body


_SERVER_HEARTBEAT: Final = _frame(b"H", b"")
_END_OF_SESSION: Final = _frame(b"Z", b"")
_CLIENT_HEARTBEAT: Final = _frame(b"R", b"")
_LOGOUT_REQUEST: Final = _frame(b"O", b"")


def encode_sequenced(payload: bytes) -> bytes:
    """Encode one Sequenced Data packet (section 2.2.3)."""
    if len(payload) > MAX_PAYLOAD:
        raise LocalProtocolError(
            f"a message of {len(payload)} bytes does not fit a SoupBinTCP packet; "
            f"the limit is {MAX_PAYLOAD} bytes"
        )
    return _HEADER.pack(len(payload) + 1, _SEQUENCED) + payload


class _Headers(dict[int, bytes]):
    """Packet headers of one type by payload length, made on first use."""

    def __init__(self, packet_type: int) -> None:
        super().__init__()
        self.packet_type = packet_type

    def __missing__(self, size: int) -> bytes:
        header = _HEADER.pack(size + 1, self.packet_type)
        self[size] = header
        return header


_HEADERS: Final = _Headers(_SEQUENCED)
_UNSEQUENCED_HEADERS: Final = _Headers(0x55)


def encode_sequenced_many(payloads: Sequence[bytes], *, checked: bool = False) -> bytes:
    """Encode consecutive Sequenced Data packets as one byte string: a log batch.

    ``checked=True`` skips the length check, for a caller that has made it already.
    """
    return _encode_many(_HEADERS, payloads, checked)


def encode_unsequenced_many(payloads: Sequence[bytes]) -> bytes:
    """Encode consecutive Unsequenced Data packets as one byte string (a publisher's)."""
    return _encode_many(_UNSEQUENCED_HEADERS, payloads, False)


def _encode_many(headers: _Headers, payloads: Sequence[bytes], checked: bool) -> bytes:
    if not payloads:
        return b""
    longest = 0 if checked else max(map(len, payloads))
    if longest > MAX_PAYLOAD:
        raise LocalProtocolError(
            f"a message of {longest} bytes does not fit a SoupBinTCP packet; "
            f"the limit is {MAX_PAYLOAD} bytes"
        )
    # Interleave headers and payloads without a Python-level loop: this runs once per
    # message on the publishing hot path.
    parts: list[bytes] = [b""] * (2 * len(payloads))
    parts[0::2] = map(headers.__getitem__, map(len, payloads))
    parts[1::2] = payloads
    return b"".join(parts)


# ---------------------------------------------------------------------------- decoding


def _expect_empty(frame: bytes, packet: ServerPacket | ClientPacket) -> ServerPacket | ClientPacket:
    if len(frame) != 1:
        raise RemoteProtocolError(
            f"{type(packet).__name__} packet has {len(frame) - 1} bytes of payload; it has none"
        )
    return packet


def decode_server_packet(frame: bytes) -> ServerPacket:
    """Decode a packet sent by a server. ``frame`` is the packet without its length field.

    Raises :class:`RemoteProtocolError` for an empty frame, a type a server does not
    send, or a malformed fixed-size packet.
    """
    if not frame:
        raise RemoteProtocolError("empty packet: every packet has at least a type byte")
    kind = frame[0]
    if kind == _SEQUENCED:
        return SequencedData(bytes(frame[1:]))
    if kind == 0x48:  # H
        return _expect_empty(frame, ServerHeartbeat())  # type: ignore[return-value]
    if kind == 0x55:  # U
        return UnsequencedData(bytes(frame[1:]))
    if kind == 0x2B:  # +
        return Debug(bytes(frame[1:]))
    if kind == 0x41:  # A
        if len(frame) != 1 + SESSION_LENGTH + SEQUENCE_LENGTH:
            raise RemoteProtocolError(
                f"Login Accepted packet of {len(frame)} bytes; it is always "
                f"{1 + SESSION_LENGTH + SEQUENCE_LENGTH}"
            )
        return LoginAccepted(
            parse_alpha(frame[1:11], "session"),
            parse_numeric(frame[11:31], "sequence number"),
        )
    if kind == 0x4A:  # J
        if len(frame) != 2:
            raise RemoteProtocolError(
                f"Login Rejected packet of {len(frame)} bytes; it is always 2"
            )
        return LoginRejected(parse_alpha(frame[1:2], "reject reason code"))
    if kind == 0x5A:  # Z
        return _expect_empty(frame, EndOfSession())  # type: ignore[return-value]
    raise RemoteProtocolError(f"unknown packet type {bytes(frame[:1])!r} from a server")


def decode_client_packet(frame: bytes) -> ClientPacket:
    """Decode a packet sent by a client. ``frame`` is the packet without its length field.

    Raises :class:`RemoteProtocolError` for an empty frame, a type a client does not
    send, a Login Request that is neither 47 nor 52 bytes, or a non-numeric number.
    """
    if not frame:
        raise RemoteProtocolError("empty packet: every packet has at least a type byte")
    kind = frame[0]
    if kind == 0x55:  # U
        return UnsequencedData(bytes(frame[1:]))
    if kind == 0x52:  # R
        return _expect_empty(frame, ClientHeartbeat())  # type: ignore[return-value]
    if kind == 0x4C:  # L
        return _decode_login_request(frame)
    if kind == 0x4F:  # O
        return _expect_empty(frame, LogoutRequest())  # type: ignore[return-value]
    if kind == 0x2B:  # +
        return Debug(bytes(frame[1:]))
    raise RemoteProtocolError(f"unknown packet type {bytes(frame[:1])!r} from a client")


def _decode_login_request(frame: bytes) -> LoginRequest:
    if len(frame) not in (LOGIN_REQUEST_400_LENGTH, LOGIN_REQUEST_410_LENGTH):
        raise RemoteProtocolError(
            f"Login Request packet of {len(frame)} bytes; it is {LOGIN_REQUEST_400_LENGTH} "
            f"(SoupBinTCP 4.00) or {LOGIN_REQUEST_410_LENGTH} (4.10)"
        )
    timeout = None
    if len(frame) == LOGIN_REQUEST_410_LENGTH:
        timeout = parse_numeric(frame[47:52], "heartbeat timeout")
    return LoginRequest(
        username=parse_alpha(frame[1:7], "username"),
        password=parse_alpha(frame[7:17], "password"),
        session=parse_alpha(frame[17:27], "requested session"),
        sequence=parse_numeric(frame[27:47], "requested sequence number"),
        heartbeat_timeout_ms=timeout,
    )
