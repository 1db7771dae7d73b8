"""A warning logged at most once in a while, with how many times it happened meanwhile.

Both MoldUDP64 endpoints use it, so that a flood of drops or failures (a stuck network, a
requester asking for a damaged session) does not flood the log. It holds no MoldUDP64
logic.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Final

WARN_EVERY: Final = 10.0
"""At most one warning of each kind this often (seconds)."""


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


class ThrottledWarning:
    """A warning logged at most once every :data:`WARN_EVERY` seconds, with how many
    times it happened meanwhile, on ``logger``. Callable from any thread."""

    def __init__(self, logger: logging.Logger, text: str) -> None:
        self._logger = logger
        self._text = text
        self._last = -math.inf
        self._unsaid = 0
        self._lock = threading.Lock()

    def __call__(self, now: float, *args: object) -> None:
        with self._lock:
            self._unsaid += 1
            if now - self._last < WARN_EVERY:
                return
            times, self._unsaid, self._last = self._unsaid, 0, now
        self._logger.warning(self._text + " (%s since the last such warning)", *args, _times(times))


__all__ = ["WARN_EVERY", "ThrottledWarning"]
