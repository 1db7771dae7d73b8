"""``tickertape serve``: check the options together (and with ``--config``), turn them
into an :class:`~tickertape.assembly.AssemblyConfig`, and run that server until SIGINT or
SIGTERM, telling systemd (:mod:`tickertape.notify`) and reloading on SIGHUP
(:mod:`tickertape.cli.hangup`).

The options themselves are in :mod:`tickertape.cli.serve_options`; what the server is
made of, and in which order its parts start and stop, in :mod:`tickertape.assembly`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Final

from tickertape.assembly import Assembly, AssemblyConfig, DemoPlan, StartError
from tickertape.auth.users import Users
from tickertape.cli.config import (
    MASK,
    apply_config,
    mask_url,
    render_config,
    upstream_from,
)
from tickertape.cli.hangup import Hangup
from tickertape.cli.options import read_token
from tickertape.cli.serve_options import FOLLOW_TAKES
from tickertape.cluster.config import ClusterConfig
from tickertape.errors import ConfigError
from tickertape.notify import Notifier, Rate
from tickertape.protocol.server import ServerTimers
from tickertape.server.moldudp64.publisher import default_interface
from tickertape.server.moldudp64.settings import (
    DEFAULT_EOS_SECONDS,
    DEFAULT_REQUEST_RATE,
    DEFAULT_TTL,
    PublisherConfig,
    RequestServerConfig,
)
from tickertape.server.soupbintcp import ServerConfig
from tickertape.sources.plugin import load_source
from tickertape.store.log import Durability
from tickertape.store.retention import Retention
from tickertape.store.schedule import RollSchedule
from tickertape.tls import server_context

log = logging.getLogger("tickertape")


def apply_config_file(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None
) -> argparse.Namespace:
    """With ``--config FILE``, the options parsed again with the file's values as
    defaults (the command line wins); a :class:`ConfigError` names the file's problem."""
    if args.config is None:
        return args
    words = _words(argv)
    in_file = apply_config(args.subparser, args.config, words[words.index("serve") + 1 :])
    args = parser.parse_args(argv)
    if args.follow is not None and set(in_file) - FOLLOW_TAKES:
        named = ", ".join(sorted(d.replace("_", "-") for d in set(in_file) - FOLLOW_TAKES))
        args.subparser.error(f"--follow takes none of {named} (in {args.config})")
    return args


def _words(argv: Sequence[str] | None) -> list[str]:
    return list(sys.argv[1:] if argv is None else argv)


def check(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    """Refuse options that do not go together (an argparse error: exit status 2)."""
    if args.follow is not None:
        _check_follow(args, _words(argv))
    try:
        args.schedule = RollSchedule.parse(args.roll_at, args.timezone)
    except ConfigError as exc:
        args.subparser.error(str(exc))
    if args.demo_end and args.demo_count is None:
        args.subparser.error("--demo-end needs --demo-count: a demo without one never ends")
    if not args.admin_port and (args.admin_token or args.admin_token_file):
        args.subparser.error("--admin-token and --admin-token-file need --admin-port")
    if args.mold is None and not all(
        value is None for value in (args.mold_iface, args.mold_ttl, args.mold_eos_seconds)
    ):
        args.subparser.error("--mold-iface, --mold-ttl and --mold-eos-seconds need --mold")
    if args.mold_request is None and args.mold_request_rate is not None:
        args.subparser.error("--mold-request-rate needs --mold-request")
    if args.upstream_password_file is not None and not args.upstream:
        args.subparser.error("--upstream-password-file needs --upstream")
    _check_cluster(args, _words(argv))


CLUSTER_OPTIONS: Final = (
    "--node",
    "--advertise",
    "--cluster-credentials",
    "--cluster-name",
    "--cluster-retention",
    "--cluster-replicas",
    "--lease-ttl",
)


def _check_cluster(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Refuse the cluster's options without ``--cluster``, and with it the inputs only
    a single server runs."""
    if args.cluster is None:
        given = [o for o in CLUSTER_OPTIONS if any(w.split("=")[0] == o for w in argv)]
        if given:
            args.subparser.error(
                f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --cluster"
            )
        return
    alone = [name for name in ("follow", "upstream", "demo", "source") if getattr(args, name)]
    if alone:
        named = ", ".join(f"--{name}" for name in alone)
        args.subparser.error(
            f"--cluster cannot be combined with {named}: in a cluster, messages come from "
            "publishers connected to the sequencer"
        )


def check_tls(args: argparse.Namespace) -> None:
    """Refuse TLS options that do not go together, and load the certificate and key
    into ``args.tls_context``. A file that cannot be read, or a key that is not the
    certificate's, raises :class:`ConfigError`."""
    if (args.tls_cert is None) != (args.tls_key is None):
        args.subparser.error("--tls-cert and --tls-key go together: give both, or neither")
    args.tls_context = (
        None if args.tls_cert is None else server_context(args.tls_cert, args.tls_key)
    )


def check_config(args: argparse.Namespace) -> int:
    """``serve --check-config``: check what can be checked without serving (files that
    are read, options that go together), print the effective options, secrets masked."""
    read_token(args)
    if args.users is not None:
        Users.load_to_serve(args.users)
    if args.source_rate is not None and args.source is None:
        raise ConfigError("--source-rate needs --source")
    if args.upstream:
        upstream_from(args.upstream, args.upstream_password_file)
        if args.demo or args.source:
            raise ConfigError(
                "--upstream fills the sessions: it cannot be combined with --demo or --source"
            )
    masks = {
        "admin_token": lambda _: MASK,
        "user": lambda credentials: f"{credentials.username}:{MASK}",
        "upstream": mask_url,
    }
    sys.stdout.write(render_config(args.subparser, args, masks))
    return 0


def _check_follow(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Refuse ``--follow`` with an option only a server writing its directory takes."""
    serve: argparse.ArgumentParser = args.subparser
    others = [a for a in serve._actions if a.option_strings and a.dest not in FOLLOW_TAKES]
    unset = object()
    given = argparse.Namespace(**{action.dest: unset for action in others})
    words = list(argv)
    # Defaults are not applied over attributes the namespace already has: whatever is
    # no longer ``unset`` was on the command line.
    serve.parse_known_args(words[words.index("serve") + 1 :], namespace=given)
    named = [a.option_strings[-1] for a in others if getattr(given, a.dest) is not unset]
    if named:
        serve.error(
            f"--follow serves a directory another process writes, read-only: it takes no "
            f"{', '.join(named)} (give those to the server writing it)"
        )


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The SoupBinTCP endpoint's configuration from ``serve``'s options."""
    users = Users.load_to_serve(args.users) if args.users is not None else None
    return ServerConfig(
        host=args.host,
        port=args.port,
        users=users,
        credentials=args.user,
        allow_anonymous=args.allow_anonymous,
        ssl=args.tls_context,
        timers=ServerTimers(login_timeout=args.login_timeout, idle_timeout=args.idle_timeout),
        write_buffer_high=args.max_write_buffer,
        max_connections=args.max_connections,
        max_connections_per_source=args.max_connections_per_source,
        max_client_packet=args.max_client_packet,
    )


def _raise_file_limit(config: ServerConfig) -> None:
    """Let the server hold as many connections as it is configured for, as far as the
    hard limit on open files allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = config.max_connections + 256  # logs, listening sockets, the executor
    if soft < wanted and (hard == resource.RLIM_INFINITY or soft < hard):
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < wanted:
        log.warning(
            "only %d files may be open (ulimit -n): fewer than --max-connections %d",
            soft,
            config.max_connections,
        )


def assembly_config(args: argparse.Namespace) -> AssemblyConfig:
    """The server ``serve``'s options ask for: files read, the source loaded, options
    that cannot go together refused (:class:`ConfigError`)."""
    if args.follow is not None:
        return AssemblyConfig(
            data=args.follow, endpoint=server_config(args), follow=True, admin_port=args.admin_port
        )
    if args.source_rate is not None and args.source is None:
        raise ConfigError("--source-rate needs --source")
    source = load_source(args.source, args.source_rate) if args.source else None
    token = read_token(args)
    endpoint = server_config(args)
    upstream = upstream_from(args.upstream, args.upstream_password_file) if args.upstream else None
    if upstream is not None and (args.demo or args.source):
        raise ConfigError(
            "--upstream fills the sessions: it cannot be combined with --demo or --source"
        )
    return AssemblyConfig(
        data=args.data,
        endpoint=endpoint,
        cluster=_cluster_config(args) if args.cluster else None,
        durability=Durability(args.durability),
        schedule=args.schedule,
        retention=Retention(args.archive_after, args.delete_after),
        admin_port=args.admin_port,
        admin_token=token,
        mold=_mold_publisher(args),
        mold_requests=(
            None
            if args.mold_request is None
            else RequestServerConfig(
                host=args.host,
                port=args.mold_request,
                rate=args.mold_request_rate or DEFAULT_REQUEST_RATE,
            )
        ),
        demo=(
            DemoPlan(args.demo, args.demo_size, args.demo_count, args.demo_end)
            if args.demo
            else None
        ),
        upstream=upstream,
        source=source,
    )


def _cluster_config(args: argparse.Namespace) -> ClusterConfig:
    if args.advertise is not None:
        host, port = args.advertise
    else:
        wildcard = args.host in ("", "0.0.0.0", "::")
        host, port = (socket.gethostname() if wildcard else args.host), args.port
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ClusterConfig(
        servers=args.cluster,
        node=args.node or f"{socket.gethostname()}-{args.port}",
        address=address,
        credentials=args.cluster_credentials,
        name=args.cluster_name,
        replicas=args.cluster_replicas,
        retention_days=args.cluster_retention,
        lease_ttl=args.lease_ttl,
        renew_every=args.lease_ttl / 3,
    )


def _mold_publisher(args: argparse.Namespace) -> PublisherConfig | None:
    if args.mold is None:
        return None
    group, port = args.mold
    return PublisherConfig(
        group,
        port,
        interface=default_interface(args.host) if args.mold_iface is None else args.mold_iface,
        ttl=DEFAULT_TTL if args.mold_ttl is None else args.mold_ttl,
        eos_seconds=DEFAULT_EOS_SECONDS if args.mold_eos_seconds is None else args.mold_eos_seconds,
    )


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM (0), or until an input fails (1)."""
    hangup = Hangup(args)
    config = assembly_config(args)
    _raise_file_limit(config.endpoint)
    assembly = Assembly(config)
    try:
        await assembly.start()
    except StartError as exc:
        print(f"tickertape: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, assembly.stop.set)
    hangup.server = assembly.endpoint
    if assembly.admin is not None and not config.follow:
        hangup.admin = "token" if config.admin_token else "read-only"
    provider = assembly.provider
    notifier = Notifier()
    notifier.ready(Rate(lambda: provider.session_id, lambda: provider.next_seq))
    try:
        await assembly.stop.wait()
        log.info("shutting down")
    finally:
        await notifier.stopping()
        await assembly.close()
        notifier.close()
    return 1 if assembly.inputs.failed or assembly.failure is not None else 0
