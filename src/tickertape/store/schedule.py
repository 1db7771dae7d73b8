"""When sessions roll: the schedule behind ``--roll-at HH:MM`` and ``--timezone ZONE``.

Sans-I/O and clock-free: every method takes the instant it is asked about. A session opened
at ``now`` carries the date :meth:`RollSchedule.session_day` gives; it ends, and the next
session opens with counter 01, at :meth:`RollSchedule.next_roll`.

The roll of calendar day ``D`` happens at the first instant whose local wall time is at or
after ``D roll_at``. So a roll time that a spring-forward gap skips happens when the gap ends
(02:30 becomes 03:00), and one that a fall-back repeats happens at its first occurrence
(fold 0). The session that opens at that roll carries ``D`` when ``roll_at`` is midnight and
``D + 1`` otherwise: the trading-day convention, where an evening roll opens tomorrow.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Final

from tickertape.errors import ConfigError

DEFAULT_ROLL_AT: Final = dt.time(0, 0)

_MIDNIGHT: Final = dt.time(0, 0)
_HH_MM: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")  # ASCII digits only
_ONE_DAY: Final = dt.timedelta(days=1)
_RESOLUTION: Final = dt.timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class RollSchedule:
    """The local time of day at which sessions roll, and the zone that time is read in.

    ``zone`` ``None`` means the machine's local zone, as the operating system reports it.
    """

    roll_at: dt.time = DEFAULT_ROLL_AT
    zone: dt.tzinfo | None = None

    def __post_init__(self) -> None:
        if self.roll_at.tzinfo is not None:
            raise ConfigError(
                f"roll time {self.roll_at} carries a time zone; give a wall time and put "
                "the zone in RollSchedule.zone"
            )

    @classmethod
    def parse(cls, roll_at: str = "00:00", timezone: str | None = None) -> RollSchedule:
        """Build a schedule from the ``--roll-at`` and ``--timezone`` options.

        ``roll_at`` is ``HH:MM`` (24-hour); ``timezone`` is an IANA name such as
        ``Europe/London``, or ``None`` for the machine's local zone. Raises
        :class:`ConfigError` saying which option is wrong and what it should look like.
        """
        match = _HH_MM.fullmatch(roll_at)
        if match is None:
            raise ConfigError(f"--roll-at {roll_at}: expected HH:MM, 00:00 to 23:59")
        at = dt.time(int(match[1]), int(match[2]))
        return cls(at, None if timezone is None else _zone_named(timezone))

    def session_day(self, now: dt.datetime) -> dt.date:
        """The date a session opened at ``now`` (timezone-aware) carries."""
        return self._label(self._latest_roll_day(now))

    def next_roll(self, now: dt.datetime) -> dt.datetime:
        """The first instant strictly after ``now`` at which :meth:`session_day` changes.

        Aware, in :attr:`zone` (or the machine's local zone). Convert it to UTC before doing
        arithmetic or ``==``. Python does wall-clock arithmetic within a zone and ignores
        fold when it compares two datetimes in the same zone. Across zones, ``==`` is never
        true for a time in a repeated hour (PEP 495).
        """
        # _latest_roll_day leaves the following roll strictly after now.
        return self._roll(self._latest_roll_day(now) + _ONE_DAY).astimezone(self.zone)

    # ------------------------------------------------------------------------ internals

    def _label(self, roll_day: dt.date) -> dt.date:
        """The date of the session that the roll of ``roll_day`` opens."""
        return roll_day if self.roll_at == _MIDNIGHT else roll_day + _ONE_DAY

    def _latest_roll_day(self, now: dt.datetime) -> dt.date:
        """The calendar day whose roll is the latest one at or before ``now``."""
        if now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware, got naive {now.isoformat()}")
        # Rolls are strictly increasing in their day and within a day or so of the local
        # date, so walking from the local date settles in a step or two. Walking rather
        # than assuming covers a fall-back across midnight, which repeats part of a date.
        day = self._wall(now).date()
        while self._roll(day + _ONE_DAY) <= now:
            day += _ONE_DAY
        while self._roll(day) > now:
            day -= _ONE_DAY
        return day

    def _roll(self, day: dt.date) -> dt.datetime:
        """The instant (UTC) of the roll of ``day``: the first at or after ``day roll_at``."""
        wall = dt.datetime.combine(day, self.roll_at)
        earlier, later = sorted(self._instants(wall))
        # Both exist and are equal on an ordinary day; in a repeated hour both exist and
        # the earlier is the first occurrence; in a gap neither reads back as ``wall``.
        for instant in (earlier, later):
            if self._wall(instant) == wall:
                return instant
        # In a gap the two readings straddle the transition: the earlier is before it and
        # reads earlier than ``wall``, the later is after it. Find the transition.
        low, high = earlier, later
        while high - low > _RESOLUTION:
            middle = low + (high - low) // 2
            if self._wall(middle) >= wall:
                high = middle
            else:
                low = middle
        return high

    def _wall(self, instant: dt.datetime) -> dt.datetime:
        """The local wall time, naive, at an aware instant."""
        return instant.astimezone(self.zone).replace(tzinfo=None)

    def _instants(self, wall: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """The instants (UTC) that a naive local ``wall`` time names, read with fold 0 and 1.

        With ``zone`` ``None`` the datetime stays naive, which Python reads as local time.
        """
        return (
            wall.replace(tzinfo=self.zone, fold=0).astimezone(dt.UTC),
            wall.replace(tzinfo=self.zone, fold=1).astimezone(dt.UTC),
        )


def _zone_named(name: str) -> dt.tzinfo:
    """The IANA zone ``name``, or a :class:`ConfigError` that says how to name one."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass  # a bad name, a path outside the database, or a file that is not a zone
    if not zoneinfo.available_timezones():
        raise ConfigError(
            f"--timezone {name}: this machine has no time zone database; "
            "install the tzdata package, or leave --timezone out to use the local zone"
        )
    raise ConfigError(
        f"--timezone {name}: unknown time zone; use an IANA name such as Europe/London"
    )
