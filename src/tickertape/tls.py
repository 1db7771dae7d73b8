"""TLS contexts for SoupBinTCP over TLS: TLS 1.2 or later, on both sides.

::

    server = SoupBinTCPServer(engine, ServerConfig(ssl=server_context(cert, key)))
    async with subscribe(host, port, ssl=client_context(ca)) as messages: ...

A server behind TLS cannot ``sendfile`` the log (the bytes must be encrypted in the
process), so a subscriber catching up is fed the log read in large ranges instead.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from tickertape.errors import ConfigError

__all__ = ["client_context", "reload_server_context", "server_context"]


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
