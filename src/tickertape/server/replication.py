"""Replication: what the engine asks of whatever copies its sessions elsewhere before
they count as persisted (a cluster's journal: :mod:`tickertape.cluster`).

A protocol only. An :class:`~tickertape.server.engine.Engine` given a
:class:`Replicator` hands it each batch the writer has built, and each roll, *before*
writing it to the local log: only once :meth:`Replicator.batch` returns is the batch
written, published to subscribers and acknowledged to publishers. While
:meth:`Replicator.refusal` gives a reason, the engine takes nothing to publish and
ends no session (another node writes: the reason says where to go).
"""

from __future__ import annotations

from typing import Protocol


class Replicator(Protocol):
    """Where batches and rolls go before the local log."""

    def refusal(self) -> str | None:
        """Why nothing may be published here now (None: publishing is taken)."""
        ...

    async def batch(self, session: str, first: int, count: int, data: bytes) -> None:
        """Replicate messages ``first`` to ``first + count - 1`` of ``session`` (``data``:
        their SoupBinTCP Sequenced Data packets). Raises ``StoreError`` if they are not
        replicated: they are then not published."""
        ...

    def written(self) -> None:
        """The batch or roll last replicated is in the local log now."""
        ...

    def not_written(self, error: BaseException) -> None:
        """The batch :meth:`batch` last replicated could not be written to the local log."""
        ...

    async def roll(self, ended: str, next_session: str) -> None:
        """Replicate the end of ``ended``, and ``next_session`` opening after it."""
        ...


__all__ = ["Replicator"]
