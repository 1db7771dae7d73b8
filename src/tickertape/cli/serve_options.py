"""The options of ``tickertape serve``: what each one is, its kind of value and its
default, and which of them ``--follow`` takes.

How they are checked together and turned into a server is :mod:`tickertape.cli.serve`'s
business; the server itself is put together by :mod:`tickertape.assembly`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from tickertape.cli import argtypes
from tickertape.cli.config import UPSTREAM_PASSWORD_VARIABLE, add_config_options
from tickertape.cli.options import DEFAULT_DATA, add_token_options, add_verbose
from tickertape.client.admin import ADMIN_HOST
from tickertape.cluster.config import DEFAULT_LEASE_TTL, DEFAULT_RETENTION_DAYS
from tickertape.cluster.config import DEFAULT_NAME as DEFAULT_CLUSTER_NAME
from tickertape.defaults import DEFAULT_HOST, DEFAULT_PORT
from tickertape.logs import add_log_options
from tickertape.protocol.server import DEFAULT_IDLE_TIMEOUT, DEFAULT_LOGIN_TIMEOUT
from tickertape.server.moldudp64.settings import (
    DEFAULT_EOS_SECONDS,
    DEFAULT_REQUEST_RATE,
    DEFAULT_TTL,
)
from tickertape.server.soupbintcp import (
    DEFAULT_MAX_CLIENT_PACKET,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_WRITE_BUFFER_HIGH,
)
from tickertape.sources.demo import DEFAULT_DEMO_SIZE
from tickertape.store.log import Durability


def add_parser(verbs: Any) -> None:
    serve = verbs.add_parser(
        "serve",
        help="run the server on a data directory",
        description="Serve the sessions in a data directory over SoupBinTCP. Today's session "
        "is continued if it was not ended, else the next session of the day is opened.",
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    serve.add_argument(
        "--port",
        type=argtypes.port,
        default=DEFAULT_PORT,
        help="port (%(default)s; 0: any free port)",
    )
    serve.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="data directory (%(default)s)"
    )
    serve.add_argument(
        "--follow",
        type=Path,
        metavar="DIR",
        help="instead of --data: serve, read-only, the data directory DIR that another "
        "tickertape server on this host is writing, its new messages, new sessions and "
        "ended sessions as they come; nothing in DIR is changed (takes --host, --port, "
        "the options for who may connect, TLS, --admin-port (read-only) and --verbose; "
        "the others are for the server writing DIR)",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="re-serve another SoupBinTCP server's sessions (same ids and sequence "
        "numbers, each message persisted here first): soupbintcp://HOST:PORT"
        "[?user=NAME&password=SECRET&session=ID]; sessions then roll with the upstream's",
    )
    serve.add_argument(
        "--upstream-password-file",
        type=Path,
        metavar="FILE",
        help="the --upstream password, from FILE's first line instead of the URL (default: "
        f"${UPSTREAM_PASSWORD_VARIABLE} if set)",
    )
    serve.add_argument(
        "--durability",
        choices=[d.value for d in Durability],
        default=Durability.BATCH.value,
        help="when messages are synced to disk before they are published: none (the page "
        "cache decides), batch (one fdatasync per batch, the default), always (every "
        "publish call synced on its own)",
    )
    serve.add_argument(
        "--demo",
        type=argtypes.positive,
        metavar="RATE",
        help="publish RATE demo messages a second into the active session",
    )
    serve.add_argument(
        "--demo-size",
        type=argtypes.payload_size,
        default=DEFAULT_DEMO_SIZE,
        metavar="N",
        help="bytes per demo message (%(default)s)",
    )
    serve.add_argument(
        "--demo-count",
        type=argtypes.count,
        metavar="N",
        help="stop the demo source after N messages (default: run forever)",
    )
    serve.add_argument(
        "--demo-end",
        action="store_true",
        help="end the session when the demo source has published --demo-count messages "
        "(a finite input ends its session; the next one opens)",
    )
    serve.add_argument(
        "--source",
        metavar="SPEC",
        help="publish what a Python callable makes: python:MODULE:FUNCTION or "
        "python:FILE.py:FUNCTION, an async generator of payloads (or, with --source-rate, "
        "a function called at that rate); see tickertape.sources.plugin",
    )
    serve.add_argument(
        "--source-rate",
        type=argtypes.positive,
        metavar="N",
        help="call the --source function N times a second (a plain function, called on a "
        "thread of its own so that one that blocks holds up only itself; or an async "
        "function, on the event loop, which it must not block; not an async generator)",
    )
    serve.add_argument(
        "--archive-after",
        type=argtypes.days,
        metavar="DAYS",
        help="archive (compress) ended sessions DAYS days old or more, by the date in their "
        "id (0: every ended session, today's too; default: never)",
    )
    serve.add_argument(
        "--delete-after",
        type=argtypes.days,
        metavar="DAYS",
        help="delete ended sessions DAYS days old or more, by the date in their id (0: "
        "every ended session, today's too; default: never; nothing is deleted unless "
        "this is given)",
    )
    serve.add_argument(
        "--user",
        type=argtypes.credentials,
        metavar="NAME:PASSWORD",
        help="accept only this one account, with every role (the password shows in the "
        "process list: prefer --users). Without --user or --users, a server on a loopback "
        "address accepts anyone",
    )
    serve.add_argument(
        "--roll-at",
        default="00:00",
        metavar="HH:MM",
        help="roll to a new session every day at this local time; after a time other than "
        "midnight the new session carries the next day's date (%(default)s)",
    )
    serve.add_argument(
        "--timezone",
        metavar="ZONE",
        help="the IANA time zone --roll-at is read in, such as Europe/London "
        "(default: this machine's)",
    )
    serve.add_argument(
        "--admin-port",
        type=argtypes.port,
        default=0,
        metavar="PORT",
        help=f"serve the admin HTTP API, a live status page at http://{ADMIN_HOST}:PORT/ "
        "and Prometheus metrics at /metrics, on "
        f"{ADMIN_HOST}:PORT (default 0: none of them)",
    )
    add_token_options(
        serve,
        "allow changes (roll, end, archive) through the admin API to callers that send "
        "'Authorization: Bearer TOKEN' (default: the admin API only reads; with --users, "
        "users with the admin role may change things too)",
        user=False,
    )
    serve.add_argument(
        "--mold",
        type=argtypes.mold_group,
        metavar="GROUP:PORT",
        help="also multicast the active session as MoldUDP64 to GROUP:PORT (from the "
        "moment the server starts; earlier messages by re-request)",
    )
    serve.add_argument(
        "--mold-iface",
        type=argtypes.ipv4,
        metavar="ADDR",
        help="send MoldUDP64 from the interface with this local IPv4 address (default: "
        "the loopback if --host is a loopback address, so that it works on one machine; "
        "else the route to the group decides)",
    )
    serve.add_argument(
        "--mold-ttl",
        type=argtypes.ttl,
        metavar="N",
        help=f"multicast TTL, how many routers the packets may cross ({DEFAULT_TTL})",
    )
    serve.add_argument(
        "--mold-eos-seconds",
        type=argtypes.not_negative,
        metavar="S",
        help="after a session ends, repeat its MoldUDP64 End of Session once a second "
        f"for S seconds ({DEFAULT_EOS_SECONDS:g})",
    )
    serve.add_argument(
        "--mold-request",
        type=argtypes.port,
        metavar="PORT",
        help="answer MoldUDP64 re-requests on UDP --host:PORT, for the active session and "
        "every closed one on disk",
    )
    serve.add_argument(
        "--mold-request-rate",
        type=argtypes.positive,
        metavar="N",
        help=f"messages a second each re-requester may be sent ({DEFAULT_REQUEST_RATE:g})",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve SoupBinTCP over TLS (1.2 or later) with this certificate chain (PEM); "
        "needs --tls-key; both are read again on SIGHUP (for new connections)",
    )
    serve.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)"
    )
    _add_access_options(serve)
    _add_cluster_options(serve)
    add_verbose(serve)
    add_log_options(serve)
    add_config_options(serve)
    serve.set_defaults(subparser=serve)  # to report errors found after parsing


FOLLOW_TAKES: Final = frozenset(
    {
        "help",
        "host",
        "port",
        "user",
        "verbose",
        "follow",
        "tls_cert",
        "tls_key",
        "users",
        "allow_anonymous",
        "max_connections",
        "max_connections_per_source",
        "max_client_packet",
        "login_timeout",
        "idle_timeout",
        "max_write_buffer",
        "admin_port",
        "log_level",
        "log_format",
        "log_file",
        "config",
        "check_config",
    }
)
"""The ``serve`` options that make sense with ``--follow``: the others are for the server
that writes the directory."""


def _add_cluster_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "cluster",
        "Serve as one node of a cluster that shares its sessions through NATS JetStream "
        "(pip install 'tickertape[cluster]'; see docs/cluster.md). One node at a time, the "
        "sequencer, takes publishers; every node serves subscribers the same bytes.",
    )
    group.add_argument(
        "--cluster",
        type=argtypes.nats_urls,
        metavar="URLS",
        help="the cluster's NATS servers: nats://HOST:PORT[,nats://HOST:PORT...]",
    )
    group.add_argument(
        "--node",
        metavar="NAME",
        help="this node's name, unique in the cluster (default: the host name and --port)",
    )
    group.add_argument(
        "--advertise",
        type=argtypes.tcp_address,
        metavar="HOST:PORT",
        help="where publishers reach this node, said to them by the other nodes while it "
        "is the sequencer (default: --host:--port, or the host name if --host is a "
        "wildcard address)",
    )
    group.add_argument(
        "--cluster-credentials",
        type=Path,
        metavar="FILE",
        help="a NATS credentials file (.creds) to connect with",
    )
    group.add_argument(
        "--cluster-name",
        type=argtypes.cluster_name,
        default=DEFAULT_CLUSTER_NAME,
        metavar="NAME",
        help="the cluster's journal is the JetStream stream TICKERTAPE-NAME (%(default)s)",
    )
    group.add_argument(
        "--cluster-retention",
        type=argtypes.positive,
        default=DEFAULT_RETENTION_DAYS,
        metavar="DAYS",
        help="how long JetStream keeps the journal; each node keeps its own logs as "
        "--archive-after and --delete-after say (%(default)g)",
    )
    group.add_argument(
        "--cluster-replicas",
        type=argtypes.count,
        default=3,
        metavar="N",
        help="replicas of the journal: the number of NATS servers, 3 or 5 (%(default)s)",
    )
    group.add_argument(
        "--lease-ttl",
        type=argtypes.positive,
        default=DEFAULT_LEASE_TTL,
        metavar="SECONDS",
        help="a sequencer silent this long is replaced: about the failover time "
        "(%(default)g; it renews every third of it)",
    )


def _add_access_options(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "who may connect",
        "SoupBinTCP usernames have at most 6 letters or digits, passwords at most 10; both "
        "are case-insensitive. Each limit closes a connection that passes it with a Debug "
        "packet saying why.",
    )
    group.add_argument(
        "--users",
        type=Path,
        metavar="FILE",
        help="the users who may log in, with their roles (made with 'tickertape users'); "
        "read again on SIGHUP",
    )
    group.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="accept anonymous subscribers (a blank username) even when --host is not a "
        "loopback address. Without --users or --user, a server on a loopback address "
        "accepts anyone; elsewhere it refuses to start without this",
    )
    group.add_argument(
        "--max-connections",
        type=argtypes.count,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="connections open at once (%(default)s)",
    )
    group.add_argument(
        "--max-connections-per-source",
        type=argtypes.count,
        default=DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        metavar="N",
        help="connections open at once from one IP address (%(default)s)",
    )
    group.add_argument(
        "--max-client-packet",
        type=argtypes.count,
        default=DEFAULT_MAX_CLIENT_PACKET,
        metavar="BYTES",
        help="the longest packet a logged-in client that may not publish can send; before "
        "its login a client may send only a Login Request, a publisher messages as long as "
        "the server accepts (%(default)s)",
    )
    group.add_argument(
        "--max-write-buffer",
        type=argtypes.count,
        default=DEFAULT_WRITE_BUFFER_HIGH,
        metavar="BYTES",
        help="a subscriber's unsent bytes past which it leaves the live stream and reads "
        "the log once they drain: with one batch on top, its memory bound (%(default)s)",
    )
    group.add_argument(
        "--idle-timeout",
        type=argtypes.positive,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="drop a logged-in client silent this long, unless its SoupBinTCP 4.10 login "
        "asks for another timeout (%(default)g)",
    )
    group.add_argument(
        "--login-timeout",
        type=argtypes.positive,
        default=DEFAULT_LOGIN_TIMEOUT,
        metavar="SECONDS",
        help="close a connection whose login is not done this long after it opened (%(default)g)",
    )
