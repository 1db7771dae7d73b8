"""Fixed-width ASCII fields of SoupBinTCP packets: encode and parse, nothing else.

Alpha fields are padded with spaces (left-justified unless ``right``), numeric fields
hold decimal digits padded on the left with spaces (spec 4.1, sections 1.5, 2.2.1,
2.3.1). The packets that use them are :mod:`tickertape.wire.soupbintcp`'s.
"""

from __future__ import annotations

from tickertape.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["alpha", "numeric", "parse_alpha", "parse_numeric"]

_STRIP = b" \x00"


def alpha(value: str, width: int, field: str, *, right: bool = False) -> bytes:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise LocalProtocolError(f"{field} {value!r} is not ASCII") from None
    if len(raw) > width:
        raise LocalProtocolError(
            f"{field} {value!r} is {len(raw)} characters; SoupBinTCP allows at most {width}"
        )
    return raw.rjust(width) if right else raw.ljust(width)


def numeric(value: int, width: int, field: str) -> bytes:
    if value < 0:
        raise LocalProtocolError(f"{field} {value} is negative")
    raw = str(value).encode("ascii")
    if len(raw) > width:
        raise LocalProtocolError(f"{field} {value} does not fit in {width} digits")
    return raw.rjust(width)


def parse_alpha(raw: bytes, field: str) -> str:
    try:
        return raw.strip(_STRIP).decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{field} {raw!r} is not ASCII") from None


def parse_numeric(raw: bytes, field: str) -> int:
    digits = raw.strip(_STRIP)
    if not digits:
        return 0
    if not digits.isdigit():
        raise RemoteProtocolError(f"{field} {raw!r} is not a decimal number")
    return int(digits)
