"""A client of a running server's admin HTTP API (``serve --admin-port``): one JSON
request, its JSON answer, or a :class:`~tickertape.errors.TickertapeError` saying in
words why there is none (nothing listening, a refusal, not an admin API at all).

What this module does not do: ask for a password or read a token file (the command
line's job, :mod:`tickertape.cli.sessions`), or serve the API
(:mod:`tickertape.server.admin`, not imported: it would load the HTTP server).
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from typing import Any, Final

from tickertape.errors import TickertapeError

ADMIN_HOST: Final = "127.0.0.1"
"""Where the admin API listens (the same as ``server.admin.ADMIN_HOST``)."""
DEFAULT_ADMIN_TIMEOUT: Final = 120.0
"""Seconds to wait for the admin API: a roll drains the publishing queue, an archive
compresses a whole session."""


def bearer(token: str) -> str:
    """The ``Authorization`` header value for an admin token."""
    return f"Bearer {token}"


def basic(user: str, password: str) -> str:
    """The ``Authorization`` header value for a user with the admin role."""
    pair = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class AdminClient:
    """The admin API on ``host:port``; ``authorization`` (:func:`bearer` or
    :func:`basic`) is sent with the requests that change something (POST)."""

    def __init__(
        self,
        port: int,
        *,
        host: str = ADMIN_HOST,
        authorization: str | None = None,
        timeout: float = DEFAULT_ADMIN_TIMEOUT,
    ) -> None:
        self.port = port
        self.host = host
        self.authorization = authorization
        self.timeout = timeout

    def call(self, method: str, path: str) -> dict[str, Any]:
        """``method`` (GET or POST) ``path``; the JSON answer, or a
        :class:`TickertapeError` saying why there is none."""
        where = f"{self.host}:{self.port}"
        headers = {"Accept": "application/json"}
        if method == "POST" and self.authorization is not None:
            headers["Authorization"] = self.authorization
        request = urllib.request.Request(
            f"http://{where}{path}",
            data=b"" if method == "POST" else None,
            headers=headers,
            method=method,
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        try:
            with opener.open(request, timeout=self.timeout) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    message = json.load(exc)["error"]
                except (ValueError, KeyError, TypeError):
                    message = f"HTTP {exc.code} {exc.reason}"
            if exc.code in (401, 403):
                message = f"the server refused: {message}"
            raise TickertapeError(message) from None
        except urllib.error.URLError as exc:
            raise TickertapeError(
                f"cannot reach a tickertape admin API at {where} ({exc.reason}): is the "
                f"server running, started with --admin-port {self.port}?"
            ) from None
        except (http.client.HTTPException, ValueError) as exc:
            raise TickertapeError(
                f"what answers at {where} is not a tickertape admin API "
                f"({exc or type(exc).__name__}); is that the SoupBinTCP port?"
            ) from None
        except TimeoutError:
            raise TickertapeError(
                f"the admin API at {where} did not answer in {self.timeout:.0f} s"
            ) from None
