"""The batcher: gathers the messages a source makes into batches for the engine.

A producer (a plug-in source's runner, and later the publisher input) :meth:`~Batcher.add`
payloads and asks for ends of session (:meth:`~Batcher.end_session`) while
:meth:`~Batcher.run` publishes whatever has gathered with one
:meth:`~tickertape.server.engine.Engine.publish_many` call (group commit), then the next
lot: a fast producer is published in batches of thousands, a slow one message by message.
A batch is at most the engine's ``max_batch_messages`` and ``max_batch_bytes``; past that
the batcher is :attr:`~Batcher.full` and the producer waits for room
(:meth:`~Batcher.wait_for_room`): a producer faster than the disk is held back, never
dropped. A full disk is waited out (:func:`~tickertape.sources.persist.publish_until_persisted`).

An end of session is published in order: what was added before it goes into the ending
session, what is added after it into the next. It does not decide what a source's output
means (that is the runner's, :mod:`tickertape.sources.plugin_runner`), nor when a source
is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from tickertape.errors import StoreError
from tickertape.server.engine import Engine
from tickertape.sources.persist import publish_until_persisted
from tickertape.wire.soupbintcp import MAX_PAYLOAD

log = logging.getLogger(__name__)


def _new_done() -> asyncio.Future[str]:
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    # A failed end that nobody awaits is not "never retrieved": the log said why.
    done.add_done_callback(lambda f: f.cancelled() or f.exception())
    return done


@dataclass(slots=True)
class _Ending:
    """An end of session among the payloads, and who waits for it."""

    done: asyncio.Future[str] = field(default_factory=_new_done)


class Batcher:
    """Gathers payloads and ends of session into batches, published into ``engine``'s
    active session by :meth:`run`. ``who`` names the producer in the log (``source
    NAME``). Everything is called on the event loop."""

    def __init__(self, engine: Engine, who: str) -> None:
        self.engine = engine
        self.who = who
        self.published = 0
        """Payloads published so far."""
        self._buffer: list[bytes | _Ending] = []
        self._buffered_bytes = 0
        self._endings = 0
        self._in_hand: list[bytes | _Ending] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._finished = False

    # -------------------------------------------------------------- the producer's side

    @property
    def full(self) -> bool:
        """Whether what has gathered makes a whole batch: the producer should
        :meth:`wait_for_room` before it adds more."""
        return (
            len(self._buffer) >= self.engine.config.max_batch_messages
            or self._buffered_bytes >= self.engine.config.max_batch_bytes
        )

    def add(self, payload: bytes) -> None:
        """Add one payload. Raises ``ValueError`` if SoupBinTCP cannot carry it."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(
                f"a message of {len(payload)} bytes: SoupBinTCP carries at most "
                f"{MAX_PAYLOAD} bytes a message"
            )
        self._buffer.append(payload)
        self._buffered_bytes += len(payload)
        self._ready.set()

    def add_many(self, payloads: Sequence[bytes]) -> None:
        """Add payloads at once, in order (the caller checked their sizes: at most
        ``MAX_PAYLOAD`` each)."""
        if not payloads:
            return
        self._buffer.extend(payloads)
        self._buffered_bytes += sum(map(len, payloads))
        self._ready.set()

    def end_session(self) -> asyncio.Future[str]:
        """End the active session after everything added so far; what is added from now
        on goes into the next session. The future is the next session's id once the end
        is done, or raises the :class:`~tickertape.errors.StoreError` saying why it
        failed (the session then goes on); it is cancelled if the batcher stops first."""
        ending = _Ending()
        self._buffer.append(ending)
        self._endings += 1
        self._ready.set()
        return ending.done

    async def wait_for_room(self) -> None:
        """Wait until the gathered batch has been taken to be published."""
        while self.full:
            self._room.clear()
            await self._room.wait()

    def finish(self) -> None:
        """No more input: :meth:`run` returns once everything added is published."""
        self._finished = True
        self._ready.set()

    # -------------------------------------------------------------- the consumer's side

    async def run(self) -> bool:
        """Publish until :meth:`finish` and everything added is published; whether the
        last thing added was an end of session. Raises what publishing raises (the engine
        stopped): then :meth:`cancel_endings`."""
        ended_last = False
        while True:
            if not self._buffer:
                if self._finished:
                    return ended_last
                self._ready.clear()
                await self._ready.wait()
                continue
            taken, self._buffer = self._buffer, []
            self._in_hand = taken
            endings, self._endings = self._endings, 0
            self._buffered_bytes = 0
            self._room.set()
            if not endings:
                await self._publish(cast("list[bytes]", taken))  # no ending: only bytes
                ended_last = False
                continue
            payloads: list[bytes] = []
            for entry in taken:
                if isinstance(entry, bytes):
                    payloads.append(entry)
                    continue
                if payloads:
                    await self._publish(payloads)
                    payloads = []
                ending = self.engine.session_id
                try:
                    following = await self.engine.end_session()
                except StoreError as exc:
                    log.error(
                        "%s: ending session %s failed, so it goes on (the source is told): %s",
                        self.who,
                        ending,
                        exc,
                    )
                    if not entry.done.done():
                        entry.done.set_exception(exc)
                else:
                    if not entry.done.done():
                        entry.done.set_result(following)
                ended_last = True
            if payloads:
                await self._publish(payloads)
                ended_last = False

    async def _publish(self, payloads: list[bytes]) -> None:
        await publish_until_persisted(self.engine, payloads, self.who)
        self.published += len(payloads)

    def cancel_endings(self) -> None:
        """Cancel the futures of the ends of session not done (the batcher stopped)."""
        for entry in (*self._in_hand, *self._buffer):
            if isinstance(entry, _Ending):
                entry.done.cancel()


__all__ = ["Batcher"]
