"""How many connections the SoupBinTCP endpoint takes at once, in all and per address.

:class:`ConnectionLimits` counts connections in and out and says, for one more, why it
is refused (past a limit); it counts the refusals, and says when one is worth a log line
(the first, then every thousandth). Saying so to the client and closing are the
connection's.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ConnectionLimits"]


class ConnectionLimits:
    """At most ``total`` connections at once, and ``per_source`` from one address."""

    def __init__(
        self, total: int, per_source: int, on_refused: Callable[[str], None] = lambda _: None
    ) -> None:
        """``on_refused(kind)`` is called for each refusal, ``kind`` being ``total`` or
        ``per_address`` (the metrics' labels)."""
        self.total = total
        self.per_source = per_source
        self._on_refused = on_refused
        self._count = 0
        self._per_source: dict[str, int] = {}
        self.refused = 0
        """Connections refused so far."""

    def admit(self, source: str) -> str | None:
        """Count a new connection from ``source`` in; or say why it is refused."""
        if self._count >= self.total:
            self._refuse("total")
            return f"too many connections (this server takes at most {self.total})"
        count = self._per_source.get(source, 0)
        if count >= self.per_source:
            self._refuse("per_address")
            return (
                f"too many connections from {source} (at most {self.per_source} from one address)"
            )
        self._per_source[source] = count + 1
        self._count += 1
        return None

    def _refuse(self, kind: str) -> None:
        self.refused += 1
        self._on_refused(kind)

    def worth_logging(self) -> bool:
        """Whether the refusal just counted is logged: the first, then every thousandth."""
        return self.refused == 1 or self.refused % 1000 == 0

    def forget(self, source: str) -> None:
        """A connection admitted from ``source`` is closed."""
        self._count -= 1
        left = self._per_source.get(source, 0) - 1
        if left > 0:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)
