"""The kinds of value the ``tickertape`` commands take, one validator each.

Each is an ``argparse`` ``type=``: it returns the value, or raises
:class:`argparse.ArgumentTypeError` with a message that argparse prefixes with the
option's name (``argument --port: 99999 is not a port number (0 to 65535)``). Every
option that takes a value of a kind uses that kind's validator, so a value is checked
when the command line is parsed, before anything is opened, and the same mistake gets
the same message whichever command it is given to.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from typing import Final

from tickertape.errors import ConfigError
from tickertape.server.soupbintcp import Credentials
from tickertape.store.sessionid import SESSION_ID_FORM, SessionId
from tickertape.wire.soupbintcp import MAX_PAYLOAD

MAX_PORT: Final = 65535


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def port(text: str) -> int:
    """A port to listen on: 0 to 65535 (0: any free port)."""
    value = _whole(text)
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0 to {MAX_PORT})")
    return value


def remote_port(text: str) -> int:
    """A port to connect or send to: 1 to 65535."""
    value = _whole(text)
    if not 0 < value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{text} is not a port to connect to (1 to {MAX_PORT})")
    return value


def count(text: str) -> int:
    """A number of things (messages, connections, bytes): 1 or more."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def days(text: str) -> int:
    """A number of days: 0 or more."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a number of days, 0 or more")
    return value


def positive(text: str) -> float:
    """A rate or a duration that cannot be 0."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def not_negative(text: str) -> float:
    """A duration that may be 0."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative: 0 or more")
    return value


def sequence(text: str) -> int:
    """A message's sequence number: 1 or more."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: sequence numbers start at 1")
    return value


def start_sequence(text: str) -> int:
    """Where a subscriber starts: a sequence number, or 0 for the next message published."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"{text}: sequence numbers start at 1 (0: from the next message published)"
        )
    return value


def session_id(text: str) -> str:
    """A session id, ``YYYYMMDDNN``."""
    try:
        return str(SessionId.parse(text))
    except ConfigError as exc:
        if len(text) == 10 and text.isascii() and text.isdigit():
            raise argparse.ArgumentTypeError(str(exc)) from None  # a bad date or counter
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a session id: {SESSION_ID_FORM}"
        ) from None


def payload_size(text: str) -> int:
    """The size of one SoupBinTCP message."""
    value = _whole(text)
    if not 0 < value <= MAX_PAYLOAD:
        raise argparse.ArgumentTypeError(
            f"{text}: a SoupBinTCP message holds 1 to {MAX_PAYLOAD} bytes"
        )
    return value


def ttl(text: str) -> int:
    """A multicast TTL."""
    value = _whole(text)
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"{text}: a TTL is 0 to 255")
    return value


def credentials(text: str) -> Credentials:
    """``NAME:PASSWORD``, as SoupBinTCP can carry them."""
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    if len(username) > 6 or len(password) > 10:
        raise argparse.ArgumentTypeError(
            "SoupBinTCP allows usernames of at most 6 characters and passwords of at most 10"
        )
    return Credentials(username, password)


def ipv4(text: str) -> str:
    """An IPv4 address."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def mold_group(text: str) -> tuple[str, int]:
    """A MoldUDP64 ``GROUP:PORT``."""
    host, value = _address(text, "GROUP:PORT, such as 239.1.1.1:30001")
    return ipv4(host), value


def _address(text: str, form: str = "HOST:PORT, such as 10.0.0.1:30002") -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {form}")
    return host, remote_port(port_text)


def request_address(text: str) -> tuple[str, int]:
    """A MoldUDP64 re-request server's ``IPV4:PORT``."""
    host, value = _address(text)
    return ipv4(host), value


def tcp_address(text: str) -> tuple[str, int]:
    """A SoupBinTCP server's ``HOST:PORT``."""
    host, value = _address(text)
    if any(c.isspace() for c in host):
        raise argparse.ArgumentTypeError(f"{host!r} is not a host name or address")
    return host, value


def cluster_name(text: str) -> str:
    """A name JetStream takes in a stream's, a subject's and a bucket's name: letters,
    digits, ``-`` and ``_``."""
    if not text or not all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a cluster's name is letters, digits, '-' and '_' (it names "
            "JetStream's stream, subject and bucket)"
        )
    return text


def nats_urls(text: str) -> tuple[str, ...]:
    """NATS servers: ``nats://HOST:PORT[,nats://HOST:PORT...]`` (``tls://`` too)."""
    urls = tuple(part.strip() for part in text.split(","))
    for url in urls:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("nats", "tls") or not rest:
            raise argparse.ArgumentTypeError(
                f"{url!r}: expected nats://HOST:PORT (several separated by commas)"
            )
        tcp_address(rest.rsplit("@", 1)[-1])
    return urls


def servers(text: str) -> list[tuple[str, int]]:
    """SoupBinTCP servers, ``HOST:PORT[,HOST:PORT...]`` (an IPv6 address in brackets:
    ``[::1]:7300``)."""
    found = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise argparse.ArgumentTypeError(
                f"{text!r}: an empty server between commas; expected HOST:PORT[,HOST:PORT...]"
            )
        host, value = _address(item, "HOST:PORT[,HOST:PORT...], such as 10.0.0.1:7300")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise argparse.ArgumentTypeError(
                f"{item!r}: an IPv6 address goes in brackets: [{host}]:{value}"
            )
        if not host or any(c.isspace() or c in "[]" for c in host):
            raise argparse.ArgumentTypeError(f"{item!r}: {host!r} is not a host name or address")
        found.append((host, value))
    return found
