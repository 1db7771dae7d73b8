"""Time as a parameter: the server asks a clock, so tests can hand it a fake one."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    """What the server needs to know about time."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for timers."""
        ...

    def now(self) -> dt.datetime:
        """The wall-clock time, timezone-aware, for session dates and timestamps."""
        ...


class SystemClock:
    """The machine's clocks; dates in its local timezone."""

    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now().astimezone()
