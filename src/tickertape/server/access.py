"""Who may log in to the SoupBinTCP endpoint, what each may do, and how failed logins
are slowed down.

:class:`Access` turns a Login Request's username and password into a :class:`Principal`
(or nothing): from a users file (:mod:`tickertape.auth.users`), from the single account given
with ``serve --user``, or, where anonymous logins are allowed, as an anonymous
subscriber. :class:`LoginThrottle` keeps, per source address, how many logins failed
lately and how long to wait before answering the next failure. :class:`PasswordChecks`
schedules the checks of password hashes: off the event loop, one at a time per address
(a failure's delay included), and no more at once than the machine has cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import math
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from tickertape.auth.user import Permissions, Role
from tickertape.auth.users import Users

__all__ = [
    "ANONYMOUS",
    "Access",
    "Credentials",
    "Grant",
    "LoginThrottle",
    "OneAtATime",
    "PasswordChecks",
    "Principal",
    "is_loopback",
    "may_not_publish",
    "may_not_read",
]


@dataclass(frozen=True, slots=True)
class Credentials:
    """The one username and password accepted, compared case-insensitively."""

    username: str
    password: str

    def match(self, username: str, password: str) -> bool:
        user_ok = hmac.compare_digest(username.upper().encode(), self.username.upper().encode())
        password_ok = hmac.compare_digest(password.upper().encode(), self.password.upper().encode())
        return user_ok and password_ok


class Principal(Protocol):
    """Someone logged in, and what they may do: a :class:`~tickertape.auth.user.User`, or a
    :class:`Grant` to an anonymous login or the one ``--user`` account."""

    @property
    def name(self) -> str: ...

    @property
    def is_admin(self) -> bool: ...

    @property
    def roles(self) -> frozenset[Role]: ...

    @property
    def sessions(self) -> tuple[str, ...] | None: ...

    def may_publish(self) -> bool: ...

    def may_read(self, session_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Grant(Permissions):
    """A login with no users file behind it: its roles, over every session."""

    name: str
    roles: frozenset[Role]
    sessions: tuple[str, ...] | None = None


ANONYMOUS: Final = "(anonymous)"

_EVERYTHING: Final = frozenset(Role)


def may_not_read(principal: Principal, session_id: str) -> str:
    """Why ``principal`` may not read session ``session_id``, in words, for the client."""
    who = "anonymous logins" if principal.name == ANONYMOUS else f"user {principal.name!r}"
    if Role.SUBSCRIBER not in principal.roles:
        return f"{who} may not read sessions (the {Role.SUBSCRIBER} role is needed)"
    patterns = ", ".join(principal.sessions or ())
    return f"{who} may not read session {session_id} (only the sessions matching {patterns})"


def may_not_publish(principal: Principal) -> str:
    """Why ``principal`` may not publish, in words."""
    if principal.name == ANONYMOUS:
        return f"anonymous logins may not publish: log in as a user with the {Role.PUBLISHER} role"
    return f"user {principal.name!r} may not publish (the {Role.PUBLISHER} role is needed)"


def is_loopback(host: str) -> bool:
    """True if ``host`` is a loopback address (or ``localhost``): only this machine can
    connect there."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Access:
    """Decides logins.

    - ``users``: every login names a user of the file, with its password; a blank
      username is anonymous and allowed only if ``anonymous`` is given.
    - ``credentials``: one account, with every role.
    - neither: every login is anonymous (any username and password), if allowed.

    ``anonymous`` is what an anonymous login may do (None: anonymous logins are
    refused). :meth:`authenticate` checks a password hash when there is a users file,
    which takes CPU time on purpose: call it off the event loop then (:attr:`slow`).
    """

    def __init__(
        self,
        *,
        users: Users | None = None,
        credentials: Credentials | None = None,
        anonymous: frozenset[Role] | None = None,
    ) -> None:
        if users is not None and credentials is not None:
            raise ValueError("give a users file or one account, not both")
        self._users = users
        self._credentials = credentials
        self._anonymous = anonymous
        self._lock = threading.Lock()

    @property
    def slow(self) -> bool:
        """True if :meth:`authenticate` hashes a password (tens of milliseconds)."""
        return self._users is not None

    @property
    def has_users(self) -> bool:
        """True if logins are checked against a users file (which may name admins)."""
        return self._users is not None

    @property
    def users(self) -> Users | None:
        """The users file's users, as last loaded (None: there is no users file)."""
        with self._lock:
            return self._users

    @property
    def anonymous(self) -> frozenset[Role] | None:
        return self._anonymous

    def replace_users(self, users: Users) -> None:
        """Use ``users`` from now on (the file was read again); logins already
        accepted keep what they were given."""
        with self._lock:
            self._users = users

    def authenticate(self, username: str, password: str) -> Principal | None:
        """The principal this username and password stand for, or None. Thread-safe."""
        with self._lock:
            users, credentials = self._users, self._credentials
        if users is not None:
            if not username and self._anonymous is not None:
                return Grant(ANONYMOUS, self._anonymous)
            return users.authenticate(username, password)
        if credentials is not None:
            if credentials.match(username, password):
                return Grant(username, _EVERYTHING)
            return None
        if self._anonymous is None:
            return None
        return Grant(username or ANONYMOUS, self._anonymous)


DEFAULT_LOGIN_DELAY: Final = 0.25
"""Seconds before answering the first failed login from an address; each further
failure doubles it."""
DEFAULT_MAX_LOGIN_DELAY: Final = 8.0
"""The delay before a Login Rejected never grows past this."""
FORGET_AFTER: Final = 300.0
"""An address with no failed login for this many seconds starts afresh (or ten times the
longest delay, if that is longer)."""
MAX_TRACKED: Final = 65_536
"""Addresses remembered at most; the one whose last failure is oldest is forgotten first."""


class LoginThrottle:
    """Per source address, the delay before answering a failed login: none for an
    address that has not failed lately, then ``base``, doubling with each failure up
    to ``limit``. A successful login from the address clears it. Time is a parameter."""

    def __init__(
        self,
        base: float = DEFAULT_LOGIN_DELAY,
        limit: float = DEFAULT_MAX_LOGIN_DELAY,
        forget_after: float = FORGET_AFTER,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._base = base
        self._limit = limit
        self._forget_after = max(forget_after, 10 * limit)
        self._max_tracked = max_tracked
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failed(self, source: str, now: float) -> float:
        """Record a failed login from ``source``; returns the seconds to wait before
        saying so."""
        count, last = self._failures.pop(source, (0, -math.inf))
        if now - last >= self._forget_after:
            count = 0
        count += 1
        self._failures[source] = (count, now)
        while len(self._failures) > self._max_tracked:
            self._failures.popitem(last=False)
        return min(self._base * (1 << min(count - 1, 32)), self._limit)

    def failures(self, source: str, now: float) -> int:
        """Failed logins from ``source`` that still count."""
        count, last = self._failures.get(source, (0, -math.inf))
        return count if now - last < self._forget_after else 0

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)


class OneAtATime:
    """Credentials from one source address are checked one after the other, a failure's
    delay included: guessing in parallel is then no faster than in turn."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, users of it

    @contextlib.asynccontextmanager
    async def checking(self, source: str) -> AsyncIterator[None]:
        """Held while a check of credentials from ``source`` runs (and, if it failed,
        while its answer is delayed)."""
        lock, users = self._locks.get(source) or (asyncio.Lock(), 0)
        self._locks[source] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[source]
            if users > 1:
                self._locks[source] = (lock, users - 1)
            else:
                del self._locks[source]


class PasswordChecks:
    """Checks of credentials that hash a password (:attr:`Access.slow`): off the event
    loop, one at a time per source address, a failure's delay included, so that guessing
    in parallel is no faster than in turn; and no more at once in all than ``slots``
    (default: the machine's cores)."""

    def __init__(self, access: Access, slots: int | None = None) -> None:
        self._access = access
        self._one_at_a_time = OneAtATime()
        self._slots = asyncio.Semaphore(slots or os.cpu_count() or 2)

    async def check(
        self, source: str, username: str, password: str, failed: Callable[[], float]
    ) -> Principal | None:
        """The principal these credentials stand for, or None once the delay
        ``failed()`` returns (it counts the failure) is over; the next check from
        ``source`` waits until then."""
        async with self._one_at_a_time.checking(source):
            async with self._slots:
                principal = await asyncio.get_running_loop().run_in_executor(
                    None, self._access.authenticate, username, password
                )
            if principal is None:
                await asyncio.sleep(failed())
        return principal
