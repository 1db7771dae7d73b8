"""The logs of pulled sessions and their leases (tickertape.server.pulls.SessionPull)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from tickertape.errors import SessionNotFound
from tickertape.server.provider import SessionProvider
from tickertape.server.pulls import SessionPull
from tickertape.store.log import ReadableLog


class FakeLog:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.next_seq = 10

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


class Catalogue:
    """Opens fake logs, counting the openings; ``gate`` holds an opening back."""

    def __init__(self) -> None:
        self.opened: list[FakeLog] = []
        self.missing: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def open_closed(self, session: str) -> FakeLog:
        self.gate.wait(30)
        if session in self.missing:
            raise SessionNotFound(session)
        found = FakeLog(session)
        self.opened.append(found)
        return found


class Stream:
    def __init__(self) -> None:
        self.active: Any = FakeLog("active")

    def is_active(self, session_log: Any) -> bool:
        return session_log is self.active


class Provider:
    def __init__(self) -> None:
        self.catalogue = Catalogue()
        self.stream = Stream()


def pulls_of(provider: Provider) -> SessionPull:
    source: SessionProvider = provider  # type: ignore[assignment]  # only what is used
    return SessionPull(source)


def as_log(fake: FakeLog) -> ReadableLog:
    found: ReadableLog = fake  # type: ignore[assignment]
    return found


def fake(session_log: ReadableLog) -> FakeLog:
    found: Any = session_log
    assert isinstance(found, FakeLog)
    return found


def test_one_opening_is_shared_and_closed_after_its_last_reader() -> None:
    async def main() -> None:
        provider = Provider()
        pulls = pulls_of(provider)
        first, second = await asyncio.gather(pulls.open("s1"), pulls.open("s1"))
        assert fake(first.log) is fake(second.log) and len(provider.catalogue.opened) == 1
        first.release()
        first.release()  # once only
        assert not provider.catalogue.opened[0].closed
        with second:
            pass
        assert provider.catalogue.opened[0].closed  # its space can be freed now
        third = await pulls.open("s1")  # opened again
        assert len(provider.catalogue.opened) == 2 and fake(third.log) is not fake(first.log)
        third.release()

    asyncio.run(main())


def test_a_failed_opening_is_not_kept() -> None:
    async def main() -> None:
        provider = Provider()
        pulls = pulls_of(provider)
        provider.catalogue.missing.add("s1")
        with pytest.raises(SessionNotFound):
            await pulls.open("s1")
        provider.catalogue.missing.clear()
        lease = await pulls.open("s1")  # the disk is asked again
        assert fake(lease.log) is provider.catalogue.opened[0]
        lease.release()

    asyncio.run(main())


def test_a_session_that_ends_is_served_by_its_open_log_until_its_readers_go() -> None:
    async def main() -> None:
        provider = Provider()
        pulls = pulls_of(provider)
        active = provider.stream.active
        reader = pulls.reading("s1", as_log(active))
        reader.release()
        assert not active.closed  # the active session's log is never closed here
        reader = pulls.reading("s1", as_log(active))
        provider.stream.active = FakeLog("next")  # the session ends
        pulls.rolled("s1", as_log(active))
        assert not active.closed  # still read
        puller = await pulls.open("s1")
        assert fake(puller.log) is active and not provider.catalogue.opened  # no new opening
        reader.release()
        assert not active.closed
        puller.release()
        assert active.closed

    asyncio.run(main())


def test_a_session_that_ends_unread_is_closed_at_once() -> None:
    async def main() -> None:
        provider = Provider()
        pulls = pulls_of(provider)
        ended = provider.stream.active
        provider.stream.active = FakeLog("next")
        pulls.rolled("s1", as_log(ended))
        assert ended.closed
        lease = await pulls.open("s1")
        assert fake(lease.log) is provider.catalogue.opened[0]
        lease.release()

    asyncio.run(main())


def test_a_pull_waiting_while_the_last_reader_closes_the_log_gets_it_open() -> None:
    """Two pulls wait for one opening; the first to resume reads and lets go at once,
    closing the log before the second resumes: the second opens it again."""

    async def main() -> None:
        provider = Provider()
        pulls = pulls_of(provider)
        provider.catalogue.gate.clear()

        async def read_and_go() -> None:
            lease = await pulls.open("s1")
            lease.release()

        first = asyncio.create_task(read_and_go())
        second = asyncio.create_task(pulls.open("s1"))
        for _ in range(3):
            await asyncio.sleep(0)  # both wait for the one opening
        provider.catalogue.gate.set()
        await first
        got = await second
        assert provider.catalogue.opened[0].closed
        assert fake(got.log) is provider.catalogue.opened[1]
        assert not provider.catalogue.opened[1].closed
        got.release()

    asyncio.run(main())


def test_close_closes_what_is_open() -> None:
    async def main() -> None:
        provider = Provider()
        pulls = pulls_of(provider)
        await pulls.open("s1")
        pulls.close()
        assert provider.catalogue.opened[0].closed

    asyncio.run(main())
