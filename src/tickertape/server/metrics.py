"""What a server counts, for Prometheus: ``GET /metrics`` on the admin port.

Every server (an engine, or a follower) has its own :class:`Metrics`, with a registry of
its own (not prometheus-client's global one): two servers in one process do not mix
their figures.

Cheap on the hot path. Counters and histograms are bumped once per batch written, per
publish call refused, per login, never per message. What a subscriber is sent is added
to two plain integers per batch (:class:`SentCounts`, on the event loop's thread: no
lock). Everything that can be read off the server when it is scraped is read then, by
:class:`ServerCollector`: subscribers by state, the largest lag, the active session and
its next number, whether publishing is paused, free space on the data directory's disk,
and the MoldUDP64 publisher's and re-request server's own counts.

The metrics, all prefixed ``tickertape_``:

======================================  ===================================================
published_messages_total{session}       messages written and handed to subscribers
published_bytes_total{session}          their payload bytes
batches_written_total                   batches appended to a log (one write, one sync)
batch_messages                          histogram: messages per batch
write_sync_seconds                      histogram: appending a batch and syncing it
publish_to_handoff_seconds              histogram: from the publish call of a batch's
                                        oldest message to the batch handed to the live
                                        subscribers
publish_failures_total{reason}          publish calls refused or failed: too_long,
                                        write_failed (the disk), stopped (the writer
                                        broke, or shutting down), not_permitted, relay,
                                        elsewhere (a cluster node not its sequencer)
logins_accepted_total                   SoupBinTCP logins accepted
logins_rejected_total{reason}           bad_credentials, not_permitted,
                                        session_not_available, not_sequencer
connections_refused_total{limit}        over a connection limit: total, per_address
heartbeat_timeouts_total                logged-in clients dropped for silence or for
                                        reading nothing for the idle timeout
subscriber_messages_sent_total{mode}    messages written to subscribers: live (handed a
                                        batch at the tail), catch_up (read from a log)
subscriber_bytes_sent_total{mode}       the same in bytes (catch_up: the catch-up bytes)
connections                             open SoupBinTCP connections
subscribers{state,transport}            state: live, catching_up, pulling (a closed
                                        session); transport: plain, tls
subscriber_lag_max_messages             the largest lag of a subscriber, in messages
active_session{session}                 1, labelled with the active session's id
next_sequence                           the active session's next sequence number
publishing_paused                       1 while publishing is paused (a write failed)
data_disk_free_bytes                    free bytes on the data directory's disk
start_time_seconds                      when the server started (Unix time)
build_info{version}                     1, labelled with tickertape's version
mold_packets_sent_total                 MoldUDP64 downstream packets holding messages
mold_bytes_sent_total                   their bytes
mold_messages_sent_total                the messages in them
mold_rerequests_total{outcome}          re-requests: answered, throttled, dropped,
                                        malformed, unknown_session, out_of_range,
                                        oversized, failed
======================================  ===================================================

With them, the ``process_`` metrics of prometheus-client (CPU, memory, open files).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, ParamSpec, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tickertape import __version__

if TYPE_CHECKING:
    from tickertape.server.connection_info import SubscriberInfo
    from tickertape.server.moldudp64.settings import PublisherStats, RequestStats

_P = ParamSpec("_P")
_T = TypeVar("_T")

PREFIX: Final = "tickertape_"

PUBLISH_FAILURES: Final = (
    "too_long",
    "write_failed",
    "stopped",
    "not_permitted",
    "relay",
    "elsewhere",
)
LOGIN_REJECTIONS: Final = (
    "bad_credentials",
    "not_permitted",
    "session_not_available",
    "not_sequencer",
)
CONNECTION_LIMITS: Final = ("total", "per_address")
SUBSCRIBER_STATES: Final = ("live", "catching_up", "pulling")

_BATCH_BUCKETS: Final = tuple(float(1 << n) for n in range(15))  # 1 .. 16,384
_SECONDS_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_REREQUEST_OUTCOMES: Final = (
    ("answered", "answered"),
    ("throttled", "rate_limited"),
    ("dropped", "dropped"),
    ("malformed", "malformed"),
    ("unknown_session", "unknown_session"),
    ("out_of_range", "out_of_range"),
    ("oversized", "oversized"),
    ("failed", "failed"),
)


class SentCounts:
    """What subscribers were sent: plain integers, bumped once per batch on the event
    loop's thread, read when scraped."""

    __slots__ = ("catch_up_bytes", "catch_up_messages", "live_bytes", "live_messages")

    def __init__(self) -> None:
        self.live_messages = 0
        self.live_bytes = 0
        self.catch_up_messages = 0
        self.catch_up_bytes = 0


class Metrics:
    """One server's metrics and the registry they are in."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.started = time.time()
        self.sent = SentCounts()
        self.mold_publisher: PublisherStats | None = None
        """Set by the MoldUDP64 publisher of this server, if there is one."""
        self.mold_requests: RequestStats | None = None
        """Set by the MoldUDP64 re-request server of this server, if there is one."""
        registry = self.registry
        self.published_messages = Counter(
            PREFIX + "published_messages",
            "Messages published (written, then handed to subscribers), by session.",
            ["session"],
            registry=registry,
        )
        self.published_bytes = Counter(
            PREFIX + "published_bytes",
            "Payload bytes of the messages published, by session.",
            ["session"],
            registry=registry,
        )
        self.batches_written = Counter(
            PREFIX + "batches_written",
            "Batches appended to a session's log (one write and one sync each).",
            registry=registry,
        )
        self.batch_messages = Histogram(
            PREFIX + "batch_messages",
            "Messages per batch written.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.write_seconds = Histogram(
            PREFIX + "write_sync_seconds",
            "Seconds to append a batch to the log and sync it (per the durability policy).",
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.handoff_seconds = Histogram(
            PREFIX + "publish_to_handoff_seconds",
            "Seconds from the publish call of a batch's oldest message to the batch handed "
            "to the live subscribers.",
            buckets=_SECONDS_BUCKETS,
            registry=registry,
        )
        self.publish_failures = Counter(
            PREFIX + "publish_failures",
            "Publish calls refused or failed, by reason.",
            ["reason"],
            registry=registry,
        )
        self.logins_accepted = Counter(
            PREFIX + "logins_accepted", "SoupBinTCP logins accepted.", registry=registry
        )
        self.logins_rejected = Counter(
            PREFIX + "logins_rejected",
            "SoupBinTCP logins rejected, by reason.",
            ["reason"],
            registry=registry,
        )
        self.connections_refused = Counter(
            PREFIX + "connections_refused",
            "Connections refused at once because a connection limit was reached.",
            ["limit"],
            registry=registry,
        )
        self.heartbeat_timeouts = Counter(
            PREFIX + "heartbeat_timeouts",
            "Logged-in clients dropped for being silent, or reading nothing, for the idle timeout.",
            registry=registry,
        )
        for reason in PUBLISH_FAILURES:
            self.publish_failures.labels(reason)
        for reason in LOGIN_REJECTIONS:
            self.logins_rejected.labels(reason)
        for limit in CONNECTION_LIMITS:
            self.connections_refused.labels(limit)
        ProcessCollector(registry=registry)
        self._session: tuple[str, Counter, Counter] | None = None
        self._collector: ServerCollector | None = None

    # ------------------------------------------------------------------ bumping

    def batch_published(self, session: str, count: int, size: int, oldest: float) -> None:
        """A batch of ``count`` messages, ``size`` payload bytes, was written and handed
        to subscribers; ``oldest``: :func:`time.perf_counter` at the publish call of its
        oldest message."""
        cached = self._session
        if cached is None or cached[0] != session:
            cached = self._session = (
                session,
                self.published_messages.labels(session),
                self.published_bytes.labels(session),
            )
        cached[1].inc(count)
        cached[2].inc(size)
        self.batches_written.inc()
        self.batch_messages.observe(count)
        self.handoff_seconds.observe(time.perf_counter() - oldest)

    def timed(self, write: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``write(*args)``, its duration observed as a write and sync (on the writer's
        thread: the histogram is thread-safe)."""
        start = time.perf_counter()
        result = write(*args, **kwargs)
        self.write_seconds.observe(time.perf_counter() - start)
        return result

    def publish_failed(self, reason: str, calls: int = 1) -> None:
        self.publish_failures.labels(reason).inc(calls)

    # ------------------------------------------------------------------ scraping

    def watch(self, tail: ScrapedTail, server: ScrapedServer) -> None:
        """Read ``tail`` and ``server`` at every scrape (see :class:`ServerCollector`)."""
        self.unwatch()
        self._collector = ServerCollector(self, tail, server)
        self.registry.register(self._collector)

    def unwatch(self) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None


def metrics_of(source: object) -> Metrics:
    """The metrics of a session source (an engine, a follower); fresh ones, counted
    nowhere, for something without (a test's stand-in)."""
    found = getattr(source, "metrics", None)
    return found if isinstance(found, Metrics) else Metrics()


class _Catalogue(Protocol):
    @property
    def root(self) -> Path: ...


class ScrapedTail(Protocol):
    """What a scrape reads of an engine or a follower."""

    @property
    def session_id(self) -> str: ...

    @property
    def next_seq(self) -> int: ...

    @property
    def catalogue(self) -> _Catalogue: ...


class _ServerConfig(Protocol):
    @property
    def ssl(self) -> object: ...


class ScrapedServer(Protocol):
    """What a scrape reads of the SoupBinTCP server."""

    @property
    def config(self) -> _ServerConfig: ...

    @property
    def connections(self) -> int: ...

    def subscribers(self) -> list[SubscriberInfo]: ...


class ServerCollector(Collector):
    """What is read off the server when it is scraped, rather than counted as it goes.
    Runs on the event loop (``GET /metrics`` collects there): it reads the server's
    state without locks."""

    def __init__(self, metrics: Metrics, tail: ScrapedTail, server: ScrapedServer) -> None:
        self.metrics = metrics
        self.tail = tail
        self.server = server

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        metrics, tail, server = self.metrics, self.tail, self.server
        sent = metrics.sent
        messages = CounterMetricFamily(
            PREFIX + "subscriber_messages_sent",
            "Messages written to subscribers: live (handed a batch at the tail) or "
            "catch_up (read from a log).",
            labels=["mode"],
        )
        messages.add_metric(["live"], sent.live_messages)
        messages.add_metric(["catch_up"], sent.catch_up_messages)
        yield messages
        sent_bytes = CounterMetricFamily(
            PREFIX + "subscriber_bytes_sent",
            "Bytes of Sequenced Data written to subscribers, live or catching up.",
            labels=["mode"],
        )
        sent_bytes.add_metric(["live"], sent.live_bytes)
        sent_bytes.add_metric(["catch_up"], sent.catch_up_bytes)
        yield sent_bytes

        active = tail.session_id
        transport = "plain" if server.config.ssl is None else "tls"
        states = dict.fromkeys(SUBSCRIBER_STATES, 0)
        lag = 0
        for one in server.subscribers():
            state = "live" if one.live else "catching_up" if one.session == active else "pulling"
            states[state] += 1
            lag = max(lag, one.lag)
        subscribers = GaugeMetricFamily(
            PREFIX + "subscribers",
            "Subscribers connected, by state (live, catching_up, pulling: a closed "
            "session) and transport (plain, tls).",
            labels=["state", "transport"],
        )
        for state, count in states.items():
            subscribers.add_metric([state, transport], count)
            subscribers.add_metric([state, "tls" if transport == "plain" else "plain"], 0)
        yield subscribers
        yield GaugeMetricFamily(
            PREFIX + "connections", "Open SoupBinTCP connections.", value=server.connections
        )
        yield GaugeMetricFamily(
            PREFIX + "subscriber_lag_max_messages",
            "The largest lag of a subscriber: messages of its session not yet sent to it.",
            value=lag,
        )
        session = GaugeMetricFamily(
            PREFIX + "active_session",
            "1, labelled with the active session's id.",
            labels=["session"],
        )
        session.add_metric([active], 1)
        yield session
        yield GaugeMetricFamily(
            PREFIX + "next_sequence",
            "The active session's next sequence number.",
            value=tail.next_seq,
        )
        paused = getattr(tail, "publishing_error", None) is not None
        yield GaugeMetricFamily(
            PREFIX + "publishing_paused",
            "1 while publishing is paused: a write to the log failed (the disk is full, "
            "say); the next batch tries again.",
            value=int(paused),
        )
        try:
            free = float(shutil.disk_usage(tail.catalogue.root).free)
        except OSError:
            free = float("nan")
        yield GaugeMetricFamily(
            PREFIX + "data_disk_free_bytes",
            "Free bytes on the disk of the data directory.",
            value=free,
        )
        yield GaugeMetricFamily(
            PREFIX + "start_time_seconds",
            "When the server started, in seconds since the Unix epoch.",
            value=metrics.started,
        )
        info = GaugeMetricFamily(
            PREFIX + "build_info", "1, labelled with tickertape's version.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield from _mold(metrics.mold_publisher, metrics.mold_requests)


def _mold(publisher: PublisherStats | None, requests: RequestStats | None) -> Iterator[Metric]:
    """The MoldUDP64 publisher's and re-request server's counts (zero without them)."""
    yield CounterMetricFamily(
        PREFIX + "mold_packets_sent",
        "MoldUDP64 downstream packets holding messages, sent.",
        value=publisher.packets if publisher else 0,
    )
    yield CounterMetricFamily(
        PREFIX + "mold_bytes_sent",
        "Bytes of the MoldUDP64 downstream packets holding messages.",
        value=publisher.bytes if publisher else 0,
    )
    yield CounterMetricFamily(
        PREFIX + "mold_messages_sent",
        "Messages in the MoldUDP64 downstream packets sent.",
        value=publisher.messages if publisher else 0,
    )
    rerequests = CounterMetricFamily(
        PREFIX + "mold_rerequests",
        "MoldUDP64 re-requests, by outcome: answered, throttled (over the requester's "
        "rate), dropped (no room), malformed, unknown_session, out_of_range, oversized, "
        "failed.",
        labels=["outcome"],
    )
    for outcome, field in _REREQUEST_OUTCOMES:
        rerequests.add_metric([outcome], getattr(requests, field) if requests else 0)
    yield rerequests


__all__ = ["Metrics", "SentCounts", "ServerCollector", "metrics_of"]
