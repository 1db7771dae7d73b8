"""The login of one SoupBinTCP connection, from its Login Request to its answer.

:class:`Admission` checks the credentials (at once, or, where a password hash is
checked, off the event loop as :class:`~tickertape.server.access.PasswordChecks`
schedules it), answers a failure after the delay of the
:class:`~tickertape.server.access.LoginThrottle`, classifies the login
(:func:`~tickertape.server.login.classify_login`), opens the log of a pulled session
(:class:`~tickertape.server.pulls.SessionPull`), and queues Login Rejected (after a Debug
saying why) or hands the accepted login back to the connection. It stops reading from
the client while a decision is pending. Which rule refuses what is
:mod:`~tickertape.server.login`'s; sending and accepting are the connection's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from tickertape.errors import StoreError
from tickertape.protocol.server import ServerConnection, State
from tickertape.server.access import Principal
from tickertape.server.login import (
    Live,
    Pull,
    Reject,
    classify_login,
    first_of_pull,
    pull_unavailable,
    user_of,
)
from tickertape.server.pulls import Lease
from tickertape.wire.soupbintcp import LoginRequest

if TYPE_CHECKING:
    from tickertape.server.soupbintcp import SoupBinTCPServer

__all__ = ["Admission"]

log = logging.getLogger("tickertape.server.soupbintcp")  # the endpoint's log lines


class Admission:
    """The login of one connection (see the module docstring)."""

    def __init__(
        self,
        server: SoupBinTCPServer,
        session: ServerConnection,
        peer: str,
        source: str,
        *,
        pause_reading: Callable[[], None],
        closing: Callable[[], bool],
        accepted: Callable[[Live, Lease | None, bool], None],
        answered: Callable[[], None],
    ) -> None:
        """``pause_reading()``: read nothing more from the client (until the login is
        accepted); ``closing()``: whether the connection is being closed (a decision is then
        dropped); ``accepted(login, lease, closed)``: accept ``login`` (a pull of a
        closed session if ``closed``, whose log ``lease`` holds); ``answered()``: a
        decision taken off the event loop's turn was queued, act on it."""
        self._server = server
        self._engine = server.engine
        self._session = session
        self._pause_reading = pause_reading
        self._loop = asyncio.get_running_loop()
        self._peer = peer
        self._source = source
        self._closing = closing
        self._accepted = accepted
        self._answered = answered
        self._pull: asyncio.Task[None] | None = None  # a password check or log opening
        self.principal: Principal | None = None
        """Who logged in, once the credentials are checked."""

    @property
    def who(self) -> str:
        """The username of the login, for the logs."""
        return user_of(self._session.request)

    def cancel(self) -> None:
        """The connection is gone: decide nothing more."""
        if self._pull is not None:
            self._pull.cancel()

    def login(self, request: LoginRequest) -> None:
        """A Login Request arrived: decide it (now, or once its password is checked)."""
        access = self._server.access
        if access.slow:
            # Checking a password hash takes tens of milliseconds: off the event loop.
            # The session logic holds back whatever the client sends meanwhile, and we
            # stop reading from it until the login is decided.
            self._pause_reading()
            self._pull = self._loop.create_task(self._authenticate(request))
            return
        self._authorize(request, access.authenticate(request.username, request.password))

    async def _authenticate(self, request: LoginRequest) -> None:
        """Check a password (see :class:`~tickertape.server.access.PasswordChecks`)."""
        principal = await self._server.password_checks.check(
            self._source, request.username, request.password, self._failed
        )
        if principal is None:
            self._reject(self._bad_credentials(request))
            return
        self._authorize(request, principal)
        self._answered()

    def _failed(self) -> float:
        """Count a failed login from this address and say so; the delay before answering."""
        throttle = self._server.login_throttle
        now = self._loop.time()
        delay = throttle.failed(self._source, now)
        self._server.metrics.logins_rejected.labels("bad_credentials").inc()
        log.warning(
            "login of %r from %s rejected: bad username or password (failure %d from "
            "this address; answered in %.2f s)",
            self.who,
            self._peer,
            throttle.failures(self._source, now),
            delay,
            extra={"client": self._peer, "user": self.who},
        )
        return delay

    def _authorize(self, request: LoginRequest, principal: Principal | None) -> None:
        """The credentials are checked: accept or reject the login."""
        if self._closing():
            return  # closed meanwhile (the server is shutting down, say)
        if principal is None:
            self._pause_reading()  # nothing more is read before the answer
            self._loop.call_later(self._failed(), self._reject, self._bad_credentials(request))
            return
        login = classify_login(request, self._engine, principal)
        self._server.login_throttle.succeeded(self._source)
        self.principal = principal
        if isinstance(login, Reject):
            log.warning(
                "login of %r from %s rejected: %s",
                self.who,
                self._peer,
                login.reason,
                extra={"client": self._peer, "user": self.who},
            )
            self._server.metrics.logins_rejected.labels(login.label).inc()
            self._send_rejected(login)
        elif isinstance(login, Live):
            self._accepted(login, None, False)
        else:
            # The answer waits for the log to be opened; the session logic holds back
            # whatever the client sends meanwhile.
            self._pause_reading()
            self._pull = self._loop.create_task(self._login_closed(login))

    def _bad_credentials(self, request: LoginRequest) -> Reject:
        rejected = classify_login(request, self._engine, None)
        assert isinstance(rejected, Reject)
        return rejected

    def _send_rejected(self, reject: Reject) -> None:
        """Debug with the reason, then Login Rejected: ``J`` has no room for a reason."""
        session = self._session
        if session.state is State.AWAITING_LOGIN:
            session.send_debug(reject.reason, self._loop.time())
        session.reject(reject.code, self._loop.time())

    def _reject(self, reject: Reject) -> None:
        """Answer a failed login, once its delay is over."""
        self._send_rejected(reject)
        self._answered()

    async def _login_closed(self, pull: Pull) -> None:
        try:
            lease = await self._server.pulls.open(pull.session)
        except Exception as exc:
            if isinstance(exc, StoreError):
                log.warning("login of %r from %s rejected: %s", self.who, self._peer, exc)
            else:
                log.error(
                    "login of %r from %s rejected: session %s cannot be opened: %s",
                    self.who,
                    self._peer,
                    pull.session,
                    exc,
                )
            self._server.metrics.logins_rejected.labels("session_not_available").inc()
            self._send_rejected(pull_unavailable(pull.session, exc))
        else:
            first = first_of_pull(pull.sequence, lease.log.next_seq)
            self._accepted(Live(pull.session, first, False, False), lease, True)
        self._answered()
