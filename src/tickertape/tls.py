"""TLS contexts for SoupBinTCP over TLS: TLS 1.2 or later, on both sides.

::

    server = SoupBinTCPServer(engine, ServerConfig(ssl=server_context(cert, key)))
    async with subscribe(host, port, ssl=client_context(ca)) as messages: ...

A server behind TLS cannot ``sendfile`` the log (the bytes must be encrypted in the
process), so a subscriber catching up is fed the log read in large ranges instead.

A TLS port stands a :class:`TLSGate` in front of each connection: it looks at the
client's first bytes before anyone takes them, so that a client speaking plain text is
told so (and logged) rather than cut off in silence, and a failed handshake is logged.
:func:`is_client_hello` lets a plain-text port recognise a TLS client the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path

from tickertape.errors import ConfigError

__all__ = [
    "TLSGate",
    "client_context",
    "is_client_hello",
    "reload_server_context",
    "server_context",
]

_HANDSHAKE_RECORD = 0x16
"""The first byte of a TLS handshake record (a Client Hello); the second is 3."""


def is_client_hello(data: bytes) -> bool:
    """Whether ``data``, the first bytes a client sent, start a TLS handshake."""
    return len(data) >= 1 and data[0] == _HANDSHAKE_RECORD and data[1:2] in (b"", b"\x03")


def _readable(path: Path, what: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None


def server_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A server context with the certificate chain ``cert`` and its private key ``key``
    (PEM files). Raises :class:`ConfigError`, one line, if either cannot be read or
    they do not belong together."""
    cert, key = Path(cert), Path(key)
    _readable(cert, "certificate")
    _readable(key, "key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"the TLS key {key} does not belong to the certificate {cert}"
            ) from None
        raise ConfigError(
            f"cannot load the TLS certificate {cert} with the key {key}: expected PEM files "
            f"({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert}: {exc}") from None
    return context


def reload_server_context(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    """Load the certificate chain ``cert`` and key ``key`` again into the live server
    ``context`` (``kill -HUP`` after a renewal): new handshakes use them, connections
    made keep theirs. Both files are read once into a private copy, checked there, then
    loaded from it, so a pair that does not load (:class:`ConfigError`, one line) or a
    file replaced meanwhile leaves ``context`` as it was."""
    cert, key = Path(cert), Path(key)
    try:
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="tickertape-tls-") as directory:  # mode 0700
        copies = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        for copy, pem in zip(copies, (cert_pem, key_pem), strict=True):
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
        try:
            server_context(*copies)
        except ConfigError as exc:
            said = str(exc).replace(str(copies[0]), str(cert)).replace(str(copies[1]), str(key))
            raise ConfigError(said) from None
        context.load_cert_chain(*copies)


def client_context(ca: Path | str | None = None) -> ssl.SSLContext:
    """A client context that checks the server's certificate and host name: against the
    CA certificates in the PEM file ``ca`` only if given (pinned), else against the
    system's trust store. Raises :class:`ConfigError` if ``ca`` cannot be loaded."""
    if ca is None:
        context = ssl.create_default_context()
    else:
        ca = Path(ca)
        _readable(ca, "CA file")
        try:
            context = ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load the TLS CA file {ca}: no PEM certificates ({exc})"
            ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class TLSGate:
    """Makes the protocols of a TLS port's connections (``gate.factory``): each waits for
    the client's first bytes and looks at them without taking them. A TLS handshake goes
    on (``loop.start_tls``) to a protocol made by ``factory``; a failed one is logged. A
    client that speaks plain text is logged, sent ``plain_answer`` (which can say, in its
    own protocol, to connect with TLS) and closed. A client that sends nothing within
    ``timeout`` seconds, or does not finish the handshake in that time, is dropped."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        timeout: float,
        plain_answer: bytes,
        log: logging.Logger,
    ) -> None:
        self._factory = factory
        self._context = context
        self._timeout = timeout
        self._plain_answer = plain_answer
        self._log = log
        self._waiting: weakref.WeakSet[_Gated] = weakref.WeakSet()

    def factory(self) -> asyncio.Protocol:
        gated = _Gated(self)
        self._waiting.add(gated)
        return gated

    def close(self) -> None:
        """Drop every connection still at the gate (the server is closing)."""
        for gated in list(self._waiting):
            gated.drop()


class _Gated(asyncio.Protocol):
    """One connection at a :class:`TLSGate`, until it is handed on or refused."""

    def __init__(self, gate: TLSGate) -> None:
        self._gate = gate
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peek: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        # Nothing is read through the transport until the first bytes are seen: a
        # duplicate of the socket peeks at them, and the TLS layer or the refusal reads.
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        try:
            self._peek = socket.socket(fileno=os.dup(sock.fileno()))
            self._peek.setblocking(False)
            self._loop.add_reader(self._peek.fileno(), self._readable)
        except OSError as exc:
            self._gate._log.warning("cannot look at what %s sends: %s", self._peer, exc)
            self.drop()
            return
        self._timer = self._loop.call_later(self._gate._timeout, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_peeking()
        if self._timer is not None:
            self._timer.cancel()
        self._gate._waiting.discard(self)

    def _stop_peeking(self) -> None:
        if self._peek is not None:
            self._loop.remove_reader(self._peek.fileno())
            self._peek.close()
            self._peek = None

    def _readable(self) -> None:
        assert self._peek is not None and self._transport is not None
        try:
            head = self._peek.recv(3, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            head = b""
        if not head:  # gone before saying anything
            self.drop()
        elif is_client_hello(head):
            self._stop_peeking()
            self._handshake = self._loop.create_task(self._start_tls())
        else:
            self._refuse_plain()

    def _refuse_plain(self) -> None:
        assert self._peek is not None and self._transport is not None
        self._gate._log.warning(
            "%s speaks plain text on this TLS port: told to connect with TLS, and closed",
            self._peer,
        )
        # Take what it sent: a close with unread input would be a reset, which could
        # lose the answer on the way.
        with contextlib.suppress(OSError):
            while self._peek.recv(65536):
                pass
        self._stop_peeking()
        self._transport.write(self._gate._plain_answer)
        self._transport.close()

    async def _start_tls(self) -> None:
        transport = self._transport
        assert transport is not None
        handover = _Handover()
        try:
            tls = await self._loop.start_tls(
                transport,
                handover,
                self._gate._context,
                server_side=True,
                ssl_handshake_timeout=self._gate._timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            if isinstance(exc, ConnectionError) and not isinstance(exc, ssl.SSLError):
                reason = "the client closed the connection (does it trust the certificate?)"
            else:
                reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            self._gate._log.warning("TLS handshake with %s failed: %s", self._peer, reason)
            transport.abort()
            return
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._gate._waiting.discard(self)
        if tls is None:  # the connection closed meanwhile
            transport.abort()
            return
        protocol = self._gate._factory()
        tls.set_protocol(protocol)
        handover.hand_to(protocol, tls)

    def _too_slow(self) -> None:
        if self._handshake is None:
            self._gate._log.info(
                "%s sent nothing in %.0f s: connection dropped", self._peer, self._gate._timeout
            )
            self.drop()

    def drop(self) -> None:
        self._stop_peeking()
        if self._handshake is not None:
            self._handshake.cancel()
        if self._transport is not None:
            self._transport.abort()


class _Handover(asyncio.Protocol):
    """Holds what arrives between the end of the handshake and the moment the
    application's protocol takes the TLS transport (the client's first packet can come
    with the handshake's last bytes), then hands it over in order."""

    def __init__(self) -> None:
        self._received: list[bytes] = []
        self._eof = False
        self._lost: list[Exception | None] = []

    def data_received(self, data: bytes) -> None:
        self._received.append(data)

    def eof_received(self) -> bool:
        self._eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost.append(exc)

    def hand_to(self, protocol: asyncio.Protocol, transport: asyncio.Transport) -> None:
        protocol.connection_made(transport)
        for data in self._received:
            protocol.data_received(data)
        self._received.clear()
        if self._eof:
            protocol.eof_received()
        for exc in self._lost:
            protocol.connection_lost(exc)
