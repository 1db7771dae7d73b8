"""Pulls of sessions other than the active one, and the logs they read.

:class:`SessionPull` opens the log of a closed session once (off the event loop: opening
checks every batch's checksum), shares it among the connections reading it, and closes it
when the last one stops, so that archiving or deleting the session frees its space; the
next pull opens it again. A session that ends while connections read it is handed over by
the engine, still open, and closed in the same way once they are done. Each reader holds a
:class:`Lease` (released once, explicitly or as a context manager); there is no count to
keep by hand. What a pull sends, and when, is the subscriber's and the connection's.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from tickertape.server.provider import SessionProvider
from tickertape.store.log import ReadableLog

__all__ = ["Lease", "SessionPull"]


class Lease:
    """One reader of a session's log: the log stays open until every lease on it is
    released."""

    def __init__(self, pulls: SessionPull, session: str, session_log: ReadableLog) -> None:
        self._pulls = pulls
        self.session = session
        self.log = session_log
        self._held = True

    def release(self) -> None:
        """This reader reads the log no more (once; later calls do nothing)."""
        if self._held:
            self._held = False
            self._pulls.released(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class SessionPull:
    """The logs being read, by session: opened once, closed after their last reader."""

    def __init__(self, provider: SessionProvider) -> None:
        self._provider = provider
        self._opening: dict[str, asyncio.Future[ReadableLog]] = {}
        self._readers: dict[ReadableLog, int] = {}

    def reading(self, session: str, session_log: ReadableLog) -> Lease:
        """A lease on a log already open (the active session's)."""
        self._readers[session_log] = self._readers.get(session_log, 0) + 1
        return Lease(self, session, session_log)

    async def open(self, session: str) -> Lease:
        """A lease on the log of ``session``, not the active one: opened off the event
        loop if nobody reads it yet; pulls of the same session meanwhile wait for the same
        opening. Raises what the opening raises (``StoreError``, ``SessionNotFound``);
        the next pull asks the disk again then."""
        while True:
            opening = self._opening.get(session)
            if opening is None:
                loop = asyncio.get_running_loop()
                opening = loop.run_in_executor(None, self._provider.catalogue.open_closed, session)
                self._opening[session] = opening
            try:
                session_log = await asyncio.shield(opening)
            except Exception:
                if self._opening.get(session) is opening:
                    del self._opening[session]  # failed: ask the disk again next time
                raise
            if self._opening.get(session) is opening:
                return self.reading(session, session_log)
            # Its last reader closed it while this one waited: open it again.

    def rolled(self, ended: str, ended_log: ReadableLog) -> None:
        """The engine ended a session: its log, still open, serves pulls from now on,
        until nobody reads it (it is closed at once if nobody does)."""
        handed: asyncio.Future[ReadableLog] = asyncio.get_running_loop().create_future()
        handed.set_result(ended_log)
        self._opening[ended] = handed
        self._close_if_unread(ended, ended_log)

    def released(self, lease: Lease) -> None:
        """A reader stopped reading (called by :meth:`Lease.release`)."""
        left = self._readers.get(lease.log, 0) - 1
        if left > 0:
            self._readers[lease.log] = left
            return
        self._readers.pop(lease.log, None)
        self._close_if_unread(lease.session, lease.log)

    def _close_if_unread(self, session: str, session_log: ReadableLog) -> None:
        """Close a closed session's log that nobody reads, so that archiving or deleting
        it frees its space; the next pull opens it again."""
        if self._readers.get(session_log, 0) > 0 or self._provider.stream.is_active(session_log):
            return
        cached = self._opening.get(session)
        if (
            cached is not None
            and cached.done()
            and not cached.cancelled()
            and cached.exception() is None
            and cached.result() is session_log
        ):
            del self._opening[session]
        session_log.close()

    def close(self) -> None:
        """Close every log open for pulls (the server is shut down)."""
        for opening in self._opening.values():
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                opening.result().close()
        self._opening.clear()
