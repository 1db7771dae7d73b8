"""The admin API's status views: what its reading endpoints answer.

``GET /status`` (the active session and its subscribers), ``GET /status/live`` (everything
the status page shows, with the active session's rate, sampled once a second),
``GET /sessions`` and ``GET /sessions/{id}`` (the sessions on disk, described on a worker
thread, each reread only when its files change) and ``GET /metrics`` (Prometheus's text
format). Every answer but /metrics is JSON (:func:`json_response`).

Not here: routing, authorization, changes and errors (:mod:`tickertape.server.admin`),
the status page's files (:mod:`tickertape.server.admin_page`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections import deque
from dataclasses import asdict
from typing import TYPE_CHECKING, Final

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from tickertape import __version__
from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.sources.follow import Follower
from tickertape.store.inspect import (
    LogFacts,
    LogFactsCache,
    SessionSummary,
    describe,
    find_session,
)

if TYPE_CHECKING:
    from tickertape.server.moldudp64.publisher import MoldPublisher
    from tickertape.server.moldudp64.rerequest import MoldRequestServer

STATUS_FIELDS: Final = ("address", "user", "session", "next_seq", "lag", "live")
"""A subscriber's fields in GET /status (GET /status/live has them all)."""
RATE_HISTORY: Final = 600
"""Seconds of the active session's rate kept for the status page's chart."""


class StatusViews:
    """The reading endpoints of the admin API of one engine and its SoupBinTCP server:
    each an aiohttp handler. :meth:`start` the rate sampler once serving, ``await``
    :meth:`close` when done."""

    def __init__(self, engine: Engine | Follower, server: SoupBinTCPServer) -> None:
        self.engine = engine
        self.server = server
        self.mold_publisher: MoldPublisher | None = None
        """Set by whoever started them: their counters are on the status page."""
        self.mold_requests: MoldRequestServer | None = None
        self._facts = LogFactsCache()
        self._rates: deque[tuple[float, float]] = deque(maxlen=RATE_HISTORY)
        self._sampler: asyncio.Task[None] | None = None
        self._started = time.time()

    @property
    def rates(self) -> list[tuple[float, float]]:
        """The rate samples kept, oldest first: (UNIX time, messages a second)."""
        return list(self._rates)

    def start(self) -> None:
        """Start sampling the active session's rate, once a second."""
        self._sampler = asyncio.create_task(self._sample_rate(), name="admin-rate-sampler")

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    # ------------------------------------------------------------------ the handlers

    async def status(self, request: web.Request) -> web.Response:
        engine = self.engine
        return json_response(
            {
                "session": engine.session_id,
                "next_seq": engine.next_seq,
                "messages": engine.next_seq - 1,
                # Why publishing is paused (a write to the log failed), or null.
                "publishing_error": getattr(engine, "publishing_error", None),
                "subscribers": [
                    {name: getattr(info, name) for name in STATUS_FIELDS}
                    for info in self.server.subscribers()
                ],
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        # Prometheus's text format, or OpenMetrics if the scraper asks for it. Collected
        # here, on the event loop: the collector reads the server's state.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(
            body=encode(self.engine.metrics.registry), headers={"Content-Type": content_type}
        )

    async def live(self, request: web.Request) -> web.Response:
        """What the status page shows, in one answer (the sessions on disk: GET
        /sessions, which the page asks for less often)."""
        engine = self.engine
        root = engine.catalogue.root
        try:
            usage = shutil.disk_usage(root)
            disk: dict[str, object] = {"path": str(root), "free": usage.free, "total": usage.total}
        except OSError as exc:
            disk = {"path": str(root), "error": str(exc)}
        mold = None
        if self.mold_publisher is not None or self.mold_requests is not None:
            mold = {
                "publisher": _fields(self.mold_publisher.stats) if self.mold_publisher else None,
                "requests": _fields(self.mold_requests.stats) if self.mold_requests else None,
            }
        return json_response(
            {
                "version": __version__,
                "time": time.time(),
                "started": self._started,
                "read_only": isinstance(engine, Follower),
                "session": engine.session_id,
                "next_seq": engine.next_seq,
                "messages": engine.next_seq - 1,
                "publishing_error": getattr(engine, "publishing_error", None),
                # Messages a second over the last RATE_HISTORY seconds: [UNIX time, rate].
                "rate": [[round(at, 3), round(rate, 1)] for at, rate in self._rates],
                "clients": [asdict(info) for info in self.server.subscribers()],
                "publishers": [asdict(info) for info in self.server.publishers()],
                "connections": self.server.connections,
                "refused_connections": self.server.refused_connections,
                "mold": mold,
                "disk": disk,
            }
        )

    async def sessions(self, request: web.Request) -> web.Response:
        active, facts = self._active_facts()
        loop = asyncio.get_running_loop()
        summaries = await loop.run_in_executor(None, self._describe_all, active, facts)
        return json_response(
            {"active": active, "sessions": [summary.brief() for summary in summaries]}
        )

    async def session(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        active, facts = self._active_facts()
        loop = asyncio.get_running_loop()
        summary = await loop.run_in_executor(
            None, self._describe_one, session_id, facts if session_id == active else None
        )
        return json_response(summary.detail())

    # ------------------------------------------------------------------ the workings

    async def _sample_rate(self, interval: float = 1.0) -> None:
        """Once a second: how many messages the active session took since the last
        sample, a second's worth (a new session counts from its first message)."""
        loop = asyncio.get_running_loop()
        session, seq, then = self.engine.session_id, self.engine.next_seq, loop.time()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            current, next_seq = self.engine.session_id, self.engine.next_seq
            grown = next_seq - seq if current == session else next_seq - 1
            self._rates.append((time.time(), max(0, grown) / max(now - then, 1e-3)))
            session, seq, then = current, next_seq, now

    def _active_facts(self) -> tuple[str, LogFacts]:
        """The active session's id and size, as the engine knows them: its log is not
        opened again (a read-only open of a log being appended to may catch a batch
        halfway)."""
        engine = self.engine
        session_log = engine.session_log
        facts = LogFacts(engine.next_seq - 1, session_log.end_offset, session_log.recovery.problems)
        return engine.session_id, facts

    def _describe_all(self, active: str, facts: LogFacts) -> list[SessionSummary]:
        summaries = []
        for info in self.engine.catalogue.sessions():
            session_id = str(info.id)
            try:
                summaries.append(
                    describe(
                        session_id,
                        info.path,
                        facts=facts if session_id == active else None,
                        cache=self._facts,
                    )
                )
            except StoreError:
                if info.path.exists():
                    raise
                # Deleted (by the retention policy) since it was listed.
        return summaries

    def _describe_one(self, session_id: str, facts: LogFacts | None) -> SessionSummary:
        directory = find_session(self.engine.catalogue.root, session_id)
        return describe(session_id, directory, facts=facts, cache=self._facts)


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``data`` as an indented JSON answer."""
    return web.Response(
        text=json.dumps(data, indent=2) + "\n",
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _fields(stats: object) -> dict[str, object]:
    """A counters dataclass as JSON-ready fields."""
    return asdict(stats)  # type: ignore[call-overload,no-any-return]
