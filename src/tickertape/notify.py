"""Telling a service manager how ``serve`` is doing: systemd's ``sd_notify`` protocol,
a few lines in datagrams to the unix socket ``$NOTIFY_SOCKET`` (a name starting with
``@`` is in the abstract namespace). Without ``$NOTIFY_SOCKET`` nothing is sent.

``READY=1`` once the server accepts connections, then every few seconds a ``STATUS=``
line (the active session, its next sequence number and its rate) and, when the manager
set ``$WATCHDOG_USEC`` (``WatchdogSec=`` in the unit), ``WATCHDOG=1`` at half that
interval; ``STOPPING=1`` when it begins to shut down. A datagram that cannot be sent is
logged once and never stops the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger(__name__)

STATUS_EVERY: Final = 5.0
"""Seconds between two STATUS= lines (shorter when the watchdog wants it)."""


class Notifier:
    """The notify socket, if the service manager gave one. ``status`` makes the text
    of a ``STATUS=`` line; it is called on the event loop."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if name.startswith("@"):
            self.address = b"\0" + name[1:].encode()
        elif name.startswith("/"):
            self.address = name
        self.watchdog: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog = int(usec) / 1e6
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> None:
        """One datagram of ``lines``; a failure is logged (the first time) and ignored."""
        if self.address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager at %r: %s", self.address, exc)

    def ready(self, status: Callable[[], str]) -> None:
        """Say READY=1 and start sending STATUS= (and WATCHDOG=1) lines."""
        if self.address is None:
            return
        self.send("READY=1", f"STATUS={status()}")
        self._task = asyncio.get_running_loop().create_task(self._keep_saying(status))

    async def _keep_saying(self, status: Callable[[], str]) -> None:
        every = STATUS_EVERY if self.watchdog is None else min(STATUS_EVERY, self.watchdog / 2)
        while True:
            await asyncio.sleep(every)
            lines = [f"STATUS={status()}"]
            if self.watchdog is not None:
                lines.append("WATCHDOG=1")
            self.send(*lines)

    async def stopping(self) -> None:
        """Say STOPPING=1 and stop the STATUS= lines."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.send("STOPPING=1", "STATUS=shutting down")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Rate:
    """Messages a second of the active session between two calls, for STATUS= lines."""

    def __init__(self, session: Callable[[], str], next_seq: Callable[[], int]) -> None:
        self._session = session
        self._next_seq = next_seq
        self._last: tuple[str, int, float] | None = None

    def __call__(self) -> str:
        session, next_seq, now = self._session(), self._next_seq(), time.monotonic()
        said = f"session {session}, next sequence {next_seq}"
        last, self._last = self._last, (session, next_seq, now)
        if last is not None and last[0] == session and now > last[2]:
            said += f", {(next_seq - last[1]) / (now - last[2]):.0f} messages/s"
        return said
