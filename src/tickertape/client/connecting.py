"""Connecting to a SoupBinTCP server, and saying in words what went wrong: the
connection itself (over TLS or not), a rejected login, a connection the server closed,
an error met on the way. The subscriber (:mod:`tickertape.client.soupbintcp`) and the
publishers (:mod:`tickertape.client.publisher`, :mod:`tickertape.client.failover`)
share them; nothing here logs in or reads a stream.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl

from tickertape.errors import LoginRejected
from tickertape.protocol import client as protocol
from tickertape.protocol.client import ClientConnection
from tickertape.wire.soupbintcp import REJECT_NOT_AUTHORIZED

__all__ = ["TLSRefused", "closed_by_server", "describe_error", "open_stream", "rejection"]


class TLSRefused(ConnectionError):
    """The server's TLS certificate failed verification: a wrong CA, or a wrong name."""


def rejection(event: protocol.Rejected, where: str, not_available: str) -> LoginRejected:
    """The error for a Login Rejected from ``where`` (``HOST:PORT``): the reason the server
    gave in a Debug packet before it, else what its code means (``not_available`` for
    ``S``)."""
    if event.text:
        why = event.text
    elif event.reason == REJECT_NOT_AUTHORIZED:
        why = "not authorized: wrong username or password"
    else:
        why = not_available
    return LoginRejected(event.reason, f"login to {where} rejected: {why}")


def closed_by_server(connection: ClientConnection, tls: bool) -> str:
    """Why a connection ended that the server closed: with the text of its last Debug
    packet, if it sent one; if it sent nothing at all to a plain-text client, it may
    expect TLS."""
    said = connection.last_debug
    if said:
        return f"the server closed the connection (it said: {said})"
    if not connection.heard_anything and not tls:
        return (
            "the server closed the connection without a word (if it is a TLS port, "
            "connect with TLS: --tls)"
        )
    return "the server closed the connection"


def describe_error(exc: BaseException) -> str:
    """An error met while connecting, in words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there: is the server running?)"
    if isinstance(exc, TimeoutError):
        return "no answer (a firewall, or a wrong address?)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def open_stream(
    host: str,
    port: int,
    within: float,
    tls: _ssl.SSLContext | None,
    server_hostname: str | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect (in ``within`` seconds), over TLS if ``tls`` is given. A server certificate
    the context does not trust raises :class:`TLSRefused` saying so (to try again would not
    help)."""
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=tls,
                server_hostname=server_hostname if tls is not None else None,
            ),
            within,
        )
    except _ssl.SSLCertVerificationError as exc:
        raise TLSRefused(
            f"TLS: the certificate of {host}:{port} is not trusted: {exc.verify_message}"
        ) from None
    except (_ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError) as exc:
        if tls is None:
            raise
        # A plain-text server closes the connection at the Client Hello, or answers with
        # something that is no TLS record.
        raise ConnectionError(
            f"the TLS handshake with {host}:{port} failed "
            f"({getattr(exc, 'reason', None) or str(exc) or 'the server closed the connection'}): "
            "if the server does not speak TLS there, connect without TLS (no --tls)"
        ) from None
