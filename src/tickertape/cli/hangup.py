"""``kill -HUP`` of ``tickertape serve``: reopen the log files, reload the users file
and the TLS certificate, and say in one line what was reloaded, or why not. It never
stops the server.

The reloading itself is done by the parts (:meth:`SoupBinTCPServer.reload_users
<tickertape.server.soupbintcp.SoupBinTCPServer.reload_users>`,
:func:`tickertape.tls.reload_server_context`); this module decides when, and says it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
from pathlib import Path

from tickertape.auth.users import Users
from tickertape.errors import ConfigError
from tickertape.logs import reopen_log_files
from tickertape.server.soupbintcp import SoupBinTCPServer
from tickertape.text import plural
from tickertape.tls import reload_server_context

log = logging.getLogger("tickertape")


class Hangup:
    """``kill -HUP``, from the moment ``serve`` starts: it never stops the server. With
    ``--users`` the users file is read again (a file that does not load leaves the users
    as they were), with ``--tls-cert`` the certificate and key (likewise); either way one
    line says what was reloaded, or why nothing was."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._users_file: Path | None = args.users
        self._tls: tuple[Path, Path, ssl.SSLContext] | None = (
            None if args.tls_context is None else (args.tls_cert, args.tls_key, args.tls_context)
        )
        self.server: SoupBinTCPServer | None = None
        """Set once the SoupBinTCP server runs: until then there is nothing to reload."""
        self.admin: str | None = None
        """How the admin API takes changes besides admin users: None (no admin API, or
        one that never takes changes), "token" or "read-only"."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self._soon)

    def _soon(self) -> None:
        reopened = reopen_log_files()  # first: the SIGHUP line goes into the new file
        task = self._loop.create_task(self._reload(reopened))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self, reopened: list[str]) -> None:
        said = [f"log file {name} reopened" for name in reopened]
        if self.server is None:
            nothing = "nothing else" if said else "nothing"
            said.append(f"{nothing} reloaded: the server is still starting")
            log.info("SIGHUP: %s", "; ".join(said))
            return
        failed = False
        if self._users_file is not None:
            try:
                said.append(await self._reload_users(self.server, self._users_file))
            except Exception as exc:  # whatever it is, it must not stop the server
                why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                said.append(f"the users file was not reloaded, the old users stay: {why}")
                failed = True
        if self._tls is not None:
            cert, key, context = self._tls
            try:
                await self._loop.run_in_executor(None, reload_server_context, context, cert, key)
                said.append(f"TLS certificate {cert} reloaded, for new connections")
            except Exception as exc:
                why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                said.append(f"the TLS certificate was not reloaded, the old one stays: {why}")
                failed = True
        if not said:
            said.append("nothing to reload (no --users file, no --tls-cert); serving on")
        log.log(logging.ERROR if failed else logging.INFO, "SIGHUP: %s", "; ".join(said))

    async def _reload_users(self, server: SoupBinTCPServer, path: Path) -> str:
        """Read the users file again and use it; what changed, in a few words."""
        users = await self._loop.run_in_executor(None, Users.load_to_serve, path)
        old = server.access.users or Users()
        server.reload_users(users)
        said = f"users file {path} reloaded: {plural(len(users), 'user')}; "
        said += users.changes_from(old)
        before, after = old.admins(), users.admins()
        if self.admin is not None and before != after:
            if after:
                said += f"; the admin API now accepts changes from {', '.join(after)}"
            elif self.admin == "token":
                said += "; no user has the admin role: the admin API takes the token only"
            else:
                said += "; no user has the admin role: the admin API is read-only"
        return said
