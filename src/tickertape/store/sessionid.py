"""Session ids: ``YYYYMMDDNN``, the session's date then a two-digit roll counter.

Ten characters, exactly what a SoupBinTCP or MoldUDP64 session field holds. The first
session of a day is ``NN = 01``; each roll on the same day takes the next counter.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from tickertape.errors import ConfigError

MAX_ROLLS_PER_DAY: Final = 99
SESSION_ID_FORM: Final = "ids are YYYYMMDDNN, the date and a two-digit counter, such as 2026112901"
"""What a session id looks like, for messages refusing one."""
_PATTERN: Final = re.compile(r"[0-9]{10}")  # ASCII only: \d matches any Unicode digit


@dataclass(frozen=True, slots=True, order=True)
class SessionId:
    """A session's date and its roll counter within that date."""

    day: dt.date
    counter: int

    def __post_init__(self) -> None:
        if not 1 <= self.counter <= MAX_ROLLS_PER_DAY:
            raise ConfigError(
                f"session counter {self.counter} is out of range 1..{MAX_ROLLS_PER_DAY}"
            )

    @classmethod
    def first_of(cls, day: dt.date) -> SessionId:
        """The first session of ``day``."""
        return cls(day, 1)

    @classmethod
    def parse(cls, text: str) -> SessionId:
        """Parse ``YYYYMMDDNN``; raises :class:`ConfigError` saying what is wrong."""
        if not _PATTERN.fullmatch(text):
            raise ConfigError(f"session id {text!r} is not YYYYMMDDNN (10 digits)")
        try:
            day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError as exc:
            raise ConfigError(f"session id {text!r} has an invalid date: {exc}") from None
        return cls(day, int(text[8:]))

    @classmethod
    def is_valid(cls, text: str) -> bool:
        try:
            cls.parse(text)
        except ConfigError:
            return False
        return True

    def next_roll(self) -> SessionId:
        """The session that replaces this one on the same day."""
        if self.counter == MAX_ROLLS_PER_DAY:
            raise ConfigError(
                f"session {self} is the last of its day: at most {MAX_ROLLS_PER_DAY} a day"
            )
        return SessionId(self.day, self.counter + 1)

    def __str__(self) -> str:
        # Not ``%Y``: C strftime does not zero-pad years before 1000 on every platform.
        day = self.day
        return f"{day.year:04d}{day.month:02d}{day.day:02d}{self.counter:02d}"
