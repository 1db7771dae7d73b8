"""The admin API: a small HTTP/JSON interface to a running server, on 127.0.0.1 only.

::

    GET  /                         the status page (HTML; it polls GET /status/live)
    GET  /status/live              what the status page shows: the active session, its
                                   rate (messages a second, sampled each second, over
                                   the last minutes), every connected client (with its
                                   state and since when), publishers, the MoldUDP64
                                   counters, disk free
    GET  /status                   the active session, its next sequence number, why
                                   publishing is paused if it is, and every connected
                                   subscriber (address, user, session, next_seq, lag,
                                   live)
    GET  /sessions                 every session: id, state, messages, bytes on disk
    GET  /sessions/{id}            one session in detail; 404 if there is none
    GET  /metrics                  the server's metrics, in Prometheus's text format
                                   (see :mod:`tickertape.server.metrics`)
    POST /roll                     end the active session (End of Session to every
                                   subscriber) and open the next at once
    POST /sessions/{id}/archive    archive an ended session; 409 for the active one

A server that follows another's data directory (``serve --follow``) serves the reading
endpoints only: every change is refused (403), pointing at the server writing it.

Reading needs nothing: the status page and its data neither. Changing needs
``Authorization: Bearer TOKEN`` with the token the server was started with, or
``Authorization: Basic`` with the username and password of a user with the ``admin``
role in the server's users file; a server with neither refuses every change (403).
A wrong token or password is counted with the failed SoupBinTCP logins of the caller's
address and answered after the same delay; checks from one address are made one after
the other. Every answer is JSON (but the status page's files); an error is
``{"error": "..."}`` saying what to do about it. A request that is not HTTP, or not
addressed to 127.0.0.1, is answered 4xx and logged as one WARNING line.

Nothing here blocks the event loop: listing sessions opens their logs (which reads them
to check their checksums) and archiving compresses a whole log, both on a worker thread.

This module holds the HTTP side: the routes, who may change things (token or admin user),
the changes themselves (roll, archive) and the errors. The reading endpoints are
:mod:`tickertape.server.admin_status`; the status page's files
:mod:`tickertape.server.admin_page`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from tickertape.errors import SessionNotFound, TickertapeError
from tickertape.server.access import OneAtATime
from tickertape.server.admin_page import PAGE, page_file
from tickertape.server.admin_status import StatusViews, json_response
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.sources.follow import Follower
from tickertape.store.archive import archive_session
from tickertape.store.inspect import STATE_ARCHIVED, find_session

if TYPE_CHECKING:
    from tickertape.server.moldudp64.publisher import MoldPublisher
    from tickertape.server.moldudp64.rerequest import MoldRequestServer

log = logging.getLogger(__name__)

ADMIN_HOST: Final = "127.0.0.1"
"""The only address the admin API listens on: it is for the machine's operator."""
DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0
_ALLOWED_HOSTS: Final = frozenset({"127.0.0.1", "localhost"})
_ENDPOINTS: Final = (
    "GET /, GET /status, GET /status/live, GET /sessions, GET /sessions/{id}, GET /metrics, "
    "POST /roll, POST /sessions/{id}/archive"
)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Where the admin API listens, and the token that lets a caller change things."""

    port: int = 0
    """0: a free port, chosen by the system (see :attr:`AdminServer.port`)."""
    token: str | None = None
    """None: reads only; every change is refused."""


class ApiError(Exception):
    """An answer other than success: an HTTP status and a message a person can act on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class AdminServer:
    """The admin API of one engine and its SoupBinTCP server. ``await start()``, then
    ``await close()`` before the server and engine are closed."""

    def __init__(
        self,
        engine: Engine | Follower,
        server: SoupBinTCPServer,
        config: AdminConfig | None = None,
    ) -> None:
        self.engine = engine
        self.server = server
        self.config = config or AdminConfig()
        self.status = StatusViews(engine, server)
        """The reading endpoints (and the rate sampler)."""
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self._port = 0
        self._archiving: set[str] = set()
        self._checking = OneAtATime()

    @property
    def mold_publisher(self) -> MoldPublisher | None:
        """Set by whoever started it: its counters are on the status page."""
        return self.status.mold_publisher

    @mold_publisher.setter
    def mold_publisher(self, publisher: MoldPublisher | None) -> None:
        self.status.mold_publisher = publisher

    @property
    def mold_requests(self) -> MoldRequestServer | None:
        """Set by whoever started it: its counters are on the status page."""
        return self.status.mold_requests

    @mold_requests.setter
    def mold_requests(self, requests: MoldRequestServer | None) -> None:
        self.status.mold_requests = requests

    def bind(self) -> None:
        """Bind the port now (an ``OSError`` if it is taken): :meth:`start` then serves
        on it. A server binds before it opens its session, so that a taken port changes
        nothing."""
        self._socket = socket.create_server((ADMIN_HOST, self.config.port))

    async def start(self) -> None:
        app = web.Application(middlewares=[self._answer_errors])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/status/live", self.status.live)
        app.router.add_get("/status", self.status.status)
        app.router.add_get("/sessions", self.status.sessions)
        app.router.add_get("/sessions/{id}", self.status.session)
        app.router.add_get("/metrics", self.status.metrics)
        app.router.add_post("/roll", self._roll)
        app.router.add_post("/sessions/{id}/archive", self._archive)
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=DEFAULT_SHUTDOWN_TIMEOUT,
            logger=_RequestLog(),
        )
        await runner.setup()
        try:
            site: web.BaseSite
            if self._socket is not None:
                site = web.SockSite(runner, self._socket)
            else:
                site = web.TCPSite(runner, ADMIN_HOST, self.config.port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self.engine.metrics.watch(self.engine, self.server)
        self.status.start()
        log.info("admin API listening on %s:%d%s", ADMIN_HOST, self._port, self._who_may_change())

    def _who_may_change(self) -> str:
        """For the log: who may change things through this admin API."""
        if isinstance(self.engine, Follower):
            return f" (read-only: this server follows {self.engine.root})"
        users = self.server.access.users
        admins = users.admins() if users is not None else []
        if self.config.token:
            return f" (changes: with the token, or as {', '.join(admins)})" if admins else ""
        if admins:
            return f" (changes: as a user with the admin role: {', '.join(admins)})"
        if users is not None:
            return (
                " (read-only: no user has the admin role; give one the admin role in the "
                "users file and send SIGHUP, or start with --admin-token, to allow changes)"
            )
        return " (read-only: start with --admin-token to allow changes)"

    @property
    def port(self) -> int:
        """The port actually bound."""
        if self._runner is None:
            raise RuntimeError("the admin API is not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        """The address and port actually bound."""
        if self._runner is None:
            raise RuntimeError("the admin API is not started")
        host, port = self._runner.addresses[0][:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self._runner is None and self._socket is not None:
            self._socket.close()  # bound, never served
        await self.status.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.engine.metrics.unwatch()

    # ------------------------------------------------------------------ the page

    async def _page(self, request: web.Request) -> web.Response:
        return self._file(PAGE)

    async def _static(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.Response:
        response = page_file(name)
        if response is None:
            raise ApiError(404, f"no such file: /static/{name}")
        return response

    # ------------------------------------------------------------------ changing

    def _writable(self) -> Engine:
        """The engine, if this server writes its sessions; else 403: a follower's admin
        API only reads."""
        engine = self.engine
        if isinstance(engine, Follower):
            raise ApiError(
                403,
                f"this server follows {engine.root}, which another process writes: it changes "
                "nothing there; ask the admin API of the server writing it",
            )
        return engine

    async def _roll(self, request: web.Request) -> web.Response:
        engine = self._writable()
        await self._authorize(request)
        relay = getattr(engine, "relay_from", None)
        if relay is not None:
            raise ApiError(
                409,
                f"this server relays {relay}: its sessions end and roll with the upstream's",
            )
        ended = engine.session_id
        log.info("admin API: roll of session %s asked by %s", ended, request.remote)
        following = await engine.roll()
        return json_response({"ended": ended, "session": following})

    async def _archive(self, request: web.Request) -> web.Response:
        self._writable()
        await self._authorize(request)
        session_id = request.match_info["id"]
        if session_id == self.engine.session_id:
            raise ApiError(
                409,
                f"session {session_id} is the active session and cannot be archived: roll it "
                "first (POST /roll, or tickertape sessions roll), then archive it",
            )
        if session_id in self._archiving:
            raise ApiError(409, f"session {session_id} is being archived already")
        loop = asyncio.get_running_loop()
        directory: Path = await loop.run_in_executor(
            None, find_session, self.engine.catalogue.root, session_id
        )
        log.info("admin API: archiving session %s, asked by %s", session_id, request.remote)
        self._archiving.add(session_id)
        try:
            result = await loop.run_in_executor(None, archive_session, directory)
        finally:
            self._archiving.discard(session_id)
        return json_response(
            {
                "session": session_id,
                "state": STATE_ARCHIVED,
                "messages": result.messages,
                "chunks": result.chunks,
                "original_bytes": result.original_bytes,
                "archived_bytes": result.archived_bytes,
            }
        )

    async def _authorize(self, request: web.Request) -> None:
        token = self.config.token
        admins = self.server.access.has_users  # a users file may name admins
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        scheme, given = scheme.lower(), given.strip()
        if scheme == "basic" and admins:
            await self._authorize_user(request, given)
            return
        if not token:
            log.warning("admin API: refused a change asked by %s: no token", request.remote)
            raise ApiError(
                403 if not admins else 401,
                "this server accepts no changes through its admin API: start it with "
                "--admin-token TOKEN (or --admin-token-file FILE), then send "
                "'Authorization: Bearer TOKEN'"
                if not admins
                else "this call changes the server: log in as a user with the admin role "
                "('Authorization: Basic'; tickertape sessions: --admin-user NAME)",
                {} if not admins else {"WWW-Authenticate": 'Basic realm="tickertape"'},
            )
        if scheme != "bearer" or not given:
            raise ApiError(
                401,
                "this call changes the server and needs the admin token: send "
                "'Authorization: Bearer TOKEN' (tickertape sessions: --admin-token or "
                "--admin-token-file)",
                {"WWW-Authenticate": 'Bearer realm="tickertape"'},
            )
        source = request.remote or "?"
        async with self._checking.checking(source):
            # The header's bytes as they came (aiohttp decodes them as UTF-8, keeping
            # any other byte as a surrogate): a token in any encoding is just wrong.
            if hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
                self.server.login_throttle.succeeded(source)
                return
            await self._refuse_slowly(source, ": wrong token")
        raise ApiError(
            401,
            "wrong admin token: use the one the server was started with "
            "(--admin-token or --admin-token-file)",
            {"WWW-Authenticate": 'Bearer realm="tickertape", error="invalid_token"'},
        )

    async def _authorize_user(self, request: web.Request, given: str) -> None:
        """``Authorization: Basic``: a user of the users file with the admin role. The
        password is checked on a thread; failures are slowed down as logins are."""
        source = request.remote or "?"
        try:
            username, _, password = base64.b64decode(given, validate=True).decode().partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            # ValueError: a byte outside ASCII in the header.
            log.warning(
                "admin API: refused a change asked by %s: the Basic credentials are not "
                "base64 of NAME:PASSWORD in UTF-8",
                source,
            )
            raise ApiError(400, "the Basic credentials are not base64 of NAME:PASSWORD") from None
        loop = asyncio.get_running_loop()
        async with self._checking.checking(source):
            principal = await loop.run_in_executor(
                None, self.server.access.authenticate, username, password
            )
            if principal is not None and principal.is_admin:
                self.server.login_throttle.succeeded(source)
                log.info(
                    "admin API: %s authorized as %r",
                    source,
                    principal.name,
                    extra={"client": source, "user": principal.name},
                )
                return
            await self._refuse_slowly(
                source,
                f" as {username!r}: "
                + ("not an admin" if principal is not None else "bad username or password"),
            )
        raise ApiError(
            401 if principal is None else 403,
            "bad username or password"
            if principal is None
            else f"user {principal.name!r} does not have the admin role",
            {"WWW-Authenticate": 'Basic realm="tickertape"'},
        )

    async def _refuse_slowly(self, source: str, why: str) -> None:
        """A failed check from ``source``: counted with the failed SoupBinTCP logins of
        that address, logged, and answered only after their delay."""
        loop = asyncio.get_running_loop()
        throttle = self.server.login_throttle
        delay = throttle.failed(source, loop.time())
        log.warning(
            "admin API: refused a change asked by %s%s (failure %d from this address; "
            "answered in %.2f s)",
            source,
            why,
            throttle.failures(source, loop.time()),
            delay,
        )
        await asyncio.sleep(delay)

    # ------------------------------------------------------------------ errors

    @web.middleware
    async def _answer_errors(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        # A page elsewhere could point a browser at this port through a host name that
        # resolves to 127.0.0.1 (DNS rebinding): answer only requests addressed here.
        try:
            host = request.url.host
        except ValueError:  # a byte no host name has (UnicodeError is a ValueError)
            log.warning(
                "admin API: answered 400 to a malformed request from %s: its Host header "
                "is not a host name",
                request.remote,
            )
            return _error(400, "the Host header is not a host name: send Host: 127.0.0.1")
        if host not in _ALLOWED_HOSTS:
            log.warning(
                "admin API: answered 403 to a request from %s addressed to %s, not to %s",
                request.remote,
                host,
                ADMIN_HOST,
            )
            return _error(
                403, f"the admin API answers requests addressed to {ADMIN_HOST} only, not {host}"
            )
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, str(exc), exc.headers)
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return _error(405, f"{request.method} {request.path} is not allowed: use {allowed}")
        except web.HTTPNotFound:
            return _error(
                404, f"no such endpoint: {request.method} {request.path}; there are {_ENDPOINTS}"
            )
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason)
        except SessionNotFound as exc:
            return _error(404, str(exc))
        except TickertapeError as exc:
            return _error(409, str(exc))
        except OSError as exc:
            log.error("admin API: %s %s failed: %s", request.method, request.path, exc)
            return _error(500, f"the server could not do it: {exc}")
        except Exception as exc:
            log.exception("admin API: %s %s failed", request.method, request.path)
            return _error(500, f"internal error ({exc}); the server's log has the details")


class _RequestLog:
    """Stands for aiohttp's server logger. A request aiohttp cannot parse (garbage, TLS
    on this plain port, a bad header) is answered 4xx by aiohttp and logged here as one
    WARNING line, not as an ERROR with a traceback; anything else goes to aiohttp's
    logger as it would have."""

    def debug(self, msg: str, *args: object, **kwargs: Any) -> None:
        if not self._malformed(args, kwargs):
            server_logger.debug(msg, *args, **kwargs)

    def exception(self, msg: str, *args: object, **kwargs: Any) -> None:
        if not self._malformed(args, kwargs):
            server_logger.exception(msg, *args, **kwargs)

    @staticmethod
    def _malformed(args: tuple[object, ...], kwargs: dict[str, Any]) -> bool:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            return False
        # aiohttp's message: what is wrong, then the bytes, then a line of ^ under them.
        lines = [line.strip() for line in (error.message or "").splitlines()]
        reason = " ".join(line for line in lines if line.strip("^")) or type(error).__name__
        log.warning(
            "admin API: answered %d to a malformed request from %s: %s",
            error.code,
            args[0] if args else "?",
            reason[:200],
        )
        return True


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


__all__ = ["ADMIN_HOST", "AdminConfig", "AdminServer", "ApiError"]
