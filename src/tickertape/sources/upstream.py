"""An upstream feed: this server as a client of another SoupBinTCP server, re-serving it.

``tickertape serve --upstream soupbintcp://HOST:PORT[?user=..&password=..&session=..]``

The local sessions take the upstream's ids and sequence numbers: each message is
persisted locally (per the local durability policy) before it is re-published. When the
connection drops, the feed logs in again with the next sequence number it needs; after a
restart it resumes from its own log. The upstream's End of Session ends the local session
(once the upstream's next session is known, the local one rolls to it). Servers can be
chained this way to spread subscribers over machines.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Final

from tickertape.client.soupbintcp import Subscription, active_session
from tickertape.errors import ConfigError, LoginRejected, StoreError
from tickertape.server.engine import Engine
from tickertape.sources.persist import publish_until_persisted
from tickertape.store.sessionid import SessionId
from tickertape.wire.soupbintcp import REJECT_SESSION_NOT_AVAILABLE

log = logging.getLogger(__name__)

DEFAULT_RETRY: Final = 1.0
"""Seconds between attempts to learn the upstream's next session after it ended one."""
DEFAULT_ROLL_RETRY: Final = 1.0
"""Seconds before a roll into the upstream's next session that failed is tried again."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the feed comes from: ``soupbintcp://HOST:PORT[?user=&password=&session=]``."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    session: str = ""

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"--upstream {url!r}: {exc}") from None
        if parts.scheme != "soupbintcp" or not parts.hostname or port is None:
            raise ConfigError(
                f"--upstream {url!r}: expected soupbintcp://HOST:PORT"
                "[?user=NAME&password=SECRET&session=ID]"
            )
        if parts.username or parts.password or parts.path not in ("", "/"):
            raise ConfigError(
                f"--upstream {url!r}: give the user and password as ?user=NAME&password=SECRET"
                ", and no path"
            )
        query = urllib.parse.parse_qs(parts.query)
        unknown = set(query) - {"user", "password", "session"}
        if unknown:
            raise ConfigError(
                f"--upstream: unknown parameter {sorted(unknown)[0]!r}; "
                "known: user, password, session"
            )

        def one(name: str) -> str:
            return query.get(name, [""])[-1]

        session = one("session")
        # Local sessions take the upstream's ids, which must be tickertape's YYYYMMDDNN.
        if session and not SessionId.is_valid(session):
            raise ConfigError(f"--upstream session {session!r} is not YYYYMMDDNN")
        return cls(parts.hostname, port, one("user"), one("password"), session)


async def first_session(upstream: Upstream) -> str:
    """The session the feed starts with: the one named, or the upstream's active one."""
    if upstream.session:
        return upstream.session
    try:
        return await active_session(
            upstream.host, upstream.port, username=upstream.username, password=upstream.password
        )
    except LoginRejected as exc:
        raise LoginRejected(exc.reason, f"the upstream refused the relay: {exc}") from None


async def run_upstream(engine: Engine, upstream: Upstream) -> None:
    """Relay the upstream's sessions into ``engine``, forever (or until cancelled).
    Meanwhile nothing else may publish into the engine or roll it."""
    engine.relay_from = f"{upstream.host}:{upstream.port}"
    while True:
        session = engine.session_id
        subscription = Subscription(
            upstream.host,
            upstream.port,
            session,
            engine.next_assigned,
            username=upstream.username,
            password=upstream.password,
            wait=True,  # a relay waits for its upstream to come back
        )
        log.info(
            "upstream %s:%d: session %s from sequence %d",
            upstream.host,
            upstream.port,
            session,
            engine.next_assigned,
        )
        try:
            async with subscription:
                async for batch in subscription.batches():
                    expected = engine.next_assigned
                    fresh = [m for m in batch if m.seq >= expected]
                    if not fresh:
                        continue
                    if engine.session_id != session:
                        raise ConfigError(
                            f"the local session changed from {session} to "
                            f"{engine.session_id} under the upstream feed"
                        )
                    if fresh[0].seq != expected:
                        raise ConfigError(
                            f"upstream session {session} skipped from {expected} to "
                            f"{fresh[0].seq}: the local log and the upstream disagree"
                        )
                    await publish_until_persisted(
                        engine, [m.payload for m in fresh], "upstream feed"
                    )
        except LoginRejected as exc:
            if exc.reason != REJECT_SESSION_NOT_AVAILABLE:
                raise LoginRejected(exc.reason, f"the upstream refused the relay: {exc}") from None
            log.info("upstream does not serve session %s: %s", session, exc)
        # End of Session (or a session the upstream does not have): follow the upstream
        # to its active session.
        following = await _next_session(upstream, after=session)
        log.info("upstream session %s ended; next is %s", session, following)
        while True:
            try:
                await engine.roll(to=following)
                break
            except StoreError as exc:
                # The disk is full, say: the server serves on what it has, and follows
                # the upstream once it can.
                log.error(
                    "upstream feed: cannot follow the upstream into session %s (trying "
                    "again in %g s): %s",
                    following,
                    DEFAULT_ROLL_RETRY,
                    exc,
                )
                await asyncio.sleep(DEFAULT_ROLL_RETRY)


async def _next_session(upstream: Upstream, after: str) -> str:
    """The upstream's active session once it is not ``after``."""
    while True:
        try:
            active = await active_session(
                upstream.host,
                upstream.port,
                username=upstream.username,
                password=upstream.password,
            )
        except (OSError, ConnectionError) as exc:
            log.warning("upstream %s:%d unreachable: %s", upstream.host, upstream.port, exc)
            active = after
        if active and active != after:
            return active
        await asyncio.sleep(DEFAULT_RETRY)
