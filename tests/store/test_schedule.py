"""Tests of the roll schedule: when a session ends and which date the next one carries.

Every expected instant is written in UTC, with the local time beside it, so each case can be
checked against the zone's published rules without trusting the code under test.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import struct
import time
import zoneinfo
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import ConfigError
from tickertape.store.schedule import DEFAULT_ROLL_AT, RollSchedule

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
LORD_HOWE = zoneinfo.ZoneInfo("Australia/Lord_Howe")
SANTIAGO = zoneinfo.ZoneInfo("America/Santiago")
UTC_ZONE = zoneinfo.ZoneInfo("UTC")
HOUR = dt.timedelta(hours=1)
TICK = dt.timedelta(microseconds=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=dt.UTC)


def next_roll_utc(rolls: RollSchedule, now: dt.datetime) -> dt.datetime:
    """``rolls.next_roll(now)`` in UTC, so ``==`` compares instants.

    An aware datetime whose offset depends on its fold (a repeated wall time) never
    compares equal to one in another zone (PEP 495), even at the same instant.
    """
    return rolls.next_roll(now).astimezone(dt.UTC)


def schedule(roll_at: str, zone: dt.tzinfo | None) -> RollSchedule:
    hours, minutes = roll_at.split(":")
    return RollSchedule(dt.time(int(hours), int(minutes)), zone)


def assert_roll(rolls: RollSchedule, before: dt.date, at: dt.datetime, after: dt.date) -> None:
    """``at`` is a roll: the session opened just before carries ``before``, at it ``after``."""
    assert rolls.session_day(at - TICK) == before
    assert next_roll_utc(rolls, at - TICK) == at
    assert rolls.session_day(at) == after
    assert rolls.next_roll(at) > at


# ---------------------------------------------------------------------------- midnight


def test_defaults() -> None:
    assert dt.time(0, 0) == DEFAULT_ROLL_AT
    assert RollSchedule() == RollSchedule(dt.time(0, 0), None)
    assert RollSchedule.parse() == RollSchedule()


def test_midnight_in_utc() -> None:
    rolls = RollSchedule(zone=UTC_ZONE)
    noon = utc(2026, 3, 10, 12)
    assert rolls.session_day(noon) == dt.date(2026, 3, 10)
    assert next_roll_utc(rolls, noon) == utc(2026, 3, 11)
    assert rolls.next_roll(noon).tzinfo is UTC_ZONE
    assert_roll(rolls, dt.date(2026, 3, 10), utc(2026, 3, 11), dt.date(2026, 3, 11))
    assert next_roll_utc(rolls, utc(2026, 3, 11)) == utc(2026, 3, 12)


def test_midnight_in_a_zone_is_local_midnight() -> None:
    rolls = RollSchedule(zone=BERLIN)
    # 23:30 UTC on the 10th is 00:30 on the 11th in Berlin (CET, +01:00).
    assert rolls.session_day(utc(2026, 3, 10, 23, 30)) == dt.date(2026, 3, 11)
    assert rolls.session_day(utc(2026, 3, 10, 22, 59)) == dt.date(2026, 3, 10)
    roll = rolls.next_roll(utc(2026, 3, 10, 12))
    assert roll.astimezone(dt.UTC) == utc(2026, 3, 10, 23)
    assert roll.tzinfo is BERLIN
    assert (roll.hour, roll.minute) == (0, 0)
    assert_roll(rolls, dt.date(2026, 3, 10), utc(2026, 3, 10, 23), dt.date(2026, 3, 11))


def test_now_may_be_in_any_zone() -> None:
    rolls = RollSchedule(zone=BERLIN)
    now = utc(2026, 3, 10, 23, 30)
    for zone in (dt.UTC, NEW_YORK, LORD_HOWE, dt.timezone(dt.timedelta(hours=-7))):
        assert rolls.session_day(now.astimezone(zone)) == dt.date(2026, 3, 11)
        assert next_roll_utc(rolls, now.astimezone(zone)) == utc(2026, 3, 11, 23)


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        RollSchedule().session_day(dt.datetime(2026, 3, 10, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        RollSchedule().next_roll(dt.datetime(2026, 3, 10, 12))


# ---------------------------------------------------------------------------- 17:00, trading day


@pytest.mark.parametrize(
    ("now", "day", "roll"),
    [
        # New York in March before DST: EST, -05:00, so 17:00 local is 22:00 UTC.
        (utc(2026, 3, 4, 21, 59, 59, 999999), dt.date(2026, 3, 4), utc(2026, 3, 4, 22)),
        (utc(2026, 3, 4, 22), dt.date(2026, 3, 5), utc(2026, 3, 5, 22)),
        (utc(2026, 3, 4, 22, 0, 1), dt.date(2026, 3, 5), utc(2026, 3, 5, 22)),
        (utc(2026, 3, 5, 3), dt.date(2026, 3, 5), utc(2026, 3, 5, 22)),  # 22:00 on the 4th
        (utc(2026, 3, 5, 5), dt.date(2026, 3, 5), utc(2026, 3, 5, 22)),  # 00:00 on the 5th
        # A Friday evening opens Saturday's date: the schedule knows calendars, not weekends.
        (utc(2026, 3, 6, 22, 30), dt.date(2026, 3, 7), utc(2026, 3, 7, 22)),
    ],
)
def test_roll_at_17_00_opens_the_next_date(
    now: dt.datetime, day: dt.date, roll: dt.datetime
) -> None:
    rolls = RollSchedule.parse("17:00", "America/New_York")
    assert rolls.session_day(now) == day
    assert next_roll_utc(rolls, now) == roll
    assert next_roll_utc(rolls, now).astimezone(NEW_YORK).time() == dt.time(17, 0)


def test_roll_at_17_00_boundary() -> None:
    rolls = RollSchedule.parse("17:00", "America/New_York")
    assert_roll(rolls, dt.date(2026, 3, 4), utc(2026, 3, 4, 22), dt.date(2026, 3, 5))


# ---------------------------------------------------------------------------- daylight saving

# Europe/Berlin 2026: CET (+01) to CEST (+02) on 29 March at 01:00 UTC (02:00 -> 03:00 local);
# back on 25 October at 01:00 UTC (03:00 -> 02:00 local, so 02:00-02:59 happens twice).
# America/New_York 2026: EST (-05) to EDT (-04) on 8 March at 07:00 UTC (02:00 -> 03:00);
# back on 1 November at 06:00 UTC (02:00 -> 01:00, so 01:00-01:59 happens twice).


@pytest.mark.parametrize(
    ("zone", "roll_at", "before", "roll", "after", "following"),
    [
        # Inside the gap: the roll happens when the gap ends, at 03:00 local.
        (
            BERLIN,
            "02:30",
            dt.date(2026, 3, 29),
            utc(2026, 3, 29, 1),  # 03:00 CEST
            dt.date(2026, 3, 30),
            utc(2026, 3, 30, 0, 30),  # 02:30 CEST, 23.5 h later
        ),
        (
            BERLIN,
            "02:00",  # the first instant skipped: also rolls at 03:00
            dt.date(2026, 3, 29),
            utc(2026, 3, 29, 1),
            dt.date(2026, 3, 30),
            utc(2026, 3, 30, 0),
        ),
        (
            NEW_YORK,
            "02:30",
            dt.date(2026, 3, 8),
            utc(2026, 3, 8, 7),  # 03:00 EDT
            dt.date(2026, 3, 9),
            utc(2026, 3, 9, 6, 30),  # 02:30 EDT
        ),
        # Just outside the gap: an ordinary roll on the short day.
        (
            BERLIN,
            "03:00",
            dt.date(2026, 3, 29),
            utc(2026, 3, 29, 1),
            dt.date(2026, 3, 30),
            utc(2026, 3, 30, 1),
        ),
        (
            BERLIN,
            "01:59",
            dt.date(2026, 3, 29),
            utc(2026, 3, 29, 0, 59),  # 01:59 CET
            dt.date(2026, 3, 30),
            utc(2026, 3, 29, 23, 59),  # 01:59 CEST, 23 h later
        ),
        # Midnight on the short day: the day lasts 23 hours.
        (
            BERLIN,
            "00:00",
            dt.date(2026, 3, 28),
            utc(2026, 3, 28, 23),  # 00:00 CET on the 29th
            dt.date(2026, 3, 29),
            utc(2026, 3, 29, 22),  # 00:00 CEST on the 30th
        ),
        (
            NEW_YORK,
            "00:00",
            dt.date(2026, 3, 7),
            utc(2026, 3, 8, 5),  # 00:00 EST on the 8th
            dt.date(2026, 3, 8),
            utc(2026, 3, 9, 4),  # 00:00 EDT on the 9th
        ),
    ],
)
def test_spring_forward(
    zone: dt.tzinfo,
    roll_at: str,
    before: dt.date,
    roll: dt.datetime,
    after: dt.date,
    following: dt.datetime,
) -> None:
    rolls = schedule(roll_at, zone)
    assert_roll(rolls, before, roll, after)
    assert next_roll_utc(rolls, roll - 12 * HOUR) == roll
    assert next_roll_utc(rolls, roll) == following
    assert rolls.next_roll(roll).tzinfo is zone


@pytest.mark.parametrize(
    ("zone", "roll_at", "before", "first", "second", "after", "following"),
    [
        # Inside the repeated hour: the roll happens at the first occurrence only.
        (
            BERLIN,
            "02:30",
            dt.date(2026, 10, 25),
            utc(2026, 10, 25, 0, 30),  # 02:30 CEST
            utc(2026, 10, 25, 1, 30),  # 02:30 CET, the second time
            dt.date(2026, 10, 26),
            utc(2026, 10, 26, 1, 30),  # 02:30 CET on the 26th, 25 h after the first
        ),
        (
            NEW_YORK,
            "01:30",
            dt.date(2026, 11, 1),
            utc(2026, 11, 1, 5, 30),  # 01:30 EDT
            utc(2026, 11, 1, 6, 30),  # 01:30 EST, the second time
            dt.date(2026, 11, 2),
            utc(2026, 11, 2, 6, 30),  # 01:30 EST on the 2nd
        ),
        (
            NEW_YORK,
            "01:00",  # the first repeated instant
            dt.date(2026, 11, 1),
            utc(2026, 11, 1, 5),
            utc(2026, 11, 1, 6),
            dt.date(2026, 11, 2),
            utc(2026, 11, 2, 6),
        ),
    ],
)
def test_fall_back_rolls_at_the_first_occurrence(
    zone: zoneinfo.ZoneInfo,
    roll_at: str,
    before: dt.date,
    first: dt.datetime,
    second: dt.datetime,
    after: dt.date,
    following: dt.datetime,
) -> None:
    rolls = schedule(roll_at, zone)
    assert_roll(rolls, before, first, after)
    assert rolls.next_roll(first).fold == 0
    # The same wall time an hour later is no roll.
    assert first.astimezone(zone).time() == second.astimezone(zone).time()
    assert second.astimezone(zone).fold == 1
    for now in (first, second - TICK, second, second + TICK):
        assert rolls.session_day(now) == after
        assert next_roll_utc(rolls, now) == following


@pytest.mark.parametrize(
    ("zone", "before", "roll", "after", "following"),
    [
        # The long day lasts 25 hours.
        (
            BERLIN,
            dt.date(2026, 10, 24),
            utc(2026, 10, 24, 22),  # 00:00 CEST on the 25th
            dt.date(2026, 10, 25),
            utc(2026, 10, 25, 23),  # 00:00 CET on the 26th
        ),
        (
            NEW_YORK,
            dt.date(2026, 10, 31),
            utc(2026, 11, 1, 4),  # 00:00 EDT on the 1st
            dt.date(2026, 11, 1),
            utc(2026, 11, 2, 5),  # 00:00 EST on the 2nd
        ),
    ],
)
def test_fall_back_midnight(
    zone: dt.tzinfo, before: dt.date, roll: dt.datetime, after: dt.date, following: dt.datetime
) -> None:
    rolls = RollSchedule(zone=zone)
    assert_roll(rolls, before, roll, after)
    assert next_roll_utc(rolls, roll) == following
    assert following - roll == 25 * HOUR
    assert rolls.session_day(following - TICK) == after


def test_midnight_skipped_by_daylight_saving() -> None:
    # America/Santiago, 6 September 2026: 00:00 -04 becomes 01:00 -03 at 04:00 UTC, so the
    # 6th starts at 01:00 and that is when the midnight roll happens.
    rolls = RollSchedule(zone=SANTIAGO)
    assert_roll(rolls, dt.date(2026, 9, 5), utc(2026, 9, 6, 4), dt.date(2026, 9, 6))
    assert next_roll_utc(rolls, utc(2026, 9, 6, 4)) == utc(2026, 9, 7, 3)  # 00:00 -03 on the 7th


def test_fall_back_at_midnight_repeats_the_last_hour() -> None:
    # America/Santiago, 5 April 2026: at 03:00 UTC, when 00:00 -03 would begin, the clock
    # goes back to 23:00 -04 on the 4th. 23:00-23:59 on the 4th happens twice; midnight
    # once, at 04:00 UTC. The 4th's session lasts 25 hours.
    rolls = RollSchedule(zone=SANTIAGO)
    assert_roll(rolls, dt.date(2026, 4, 3), utc(2026, 4, 4, 3), dt.date(2026, 4, 4))
    for repeated in (utc(2026, 4, 5, 2, 30), utc(2026, 4, 5, 3, 30)):  # 23:30 twice
        assert repeated.astimezone(SANTIAGO).time() == dt.time(23, 30)
        assert rolls.session_day(repeated) == dt.date(2026, 4, 4)
    assert_roll(rolls, dt.date(2026, 4, 4), utc(2026, 4, 5, 4), dt.date(2026, 4, 5))


def falls_back_across_midnight() -> zoneinfo.ZoneInfo:
    """A made-up zone, UTC+1 with summer time UTC+2, that changes at 00:30 local.

    In spring 00:30 becomes 01:30; in autumn 00:30 becomes 23:30 the day before, so the
    wall date goes back. No real zone does this in 2026; some did, and one may again.
    """
    # RFC 8536: a version 2 TZif file with no transitions, whose rules are all in the
    # POSIX TZ string in its footer. Each header is followed by one UTC+0 type named "UTC".
    counts = struct.pack(">6l", 0, 0, 0, 0, 1, 4)
    header = b"TZif2" + bytes(15) + counts
    data = struct.pack(">lBB", 0, 0, 0) + b"UTC\0"
    footer = b"\nXST-1XDT,M3.5.0/0:30,M10.5.0/0:30\n"
    return zoneinfo.ZoneInfo.from_file(io.BytesIO(header + data + header + data + footer))


def test_fall_back_across_midnight_keeps_the_date() -> None:
    zone = falls_back_across_midnight()
    # Sunday 25 October 2026: 00:30 XDT (22:30 UTC on the 24th) becomes 23:30 XST on the 24th.
    assert utc(2026, 10, 24, 22, 29).astimezone(zone).date() == dt.date(2026, 10, 25)
    assert utc(2026, 10, 24, 22, 30).astimezone(zone).date() == dt.date(2026, 10, 24)
    rolls = RollSchedule(zone=zone)
    assert_roll(rolls, dt.date(2026, 10, 24), utc(2026, 10, 24, 22), dt.date(2026, 10, 25))
    # Back on the 24th by the wall clock, but the 25th's session has opened and stays open.
    for now in (utc(2026, 10, 24, 22, 30), utc(2026, 10, 24, 22, 59), utc(2026, 10, 24, 23)):
        assert rolls.session_day(now) == dt.date(2026, 10, 25)
        assert next_roll_utc(rolls, now) == utc(2026, 10, 25, 23)  # 00:00 XST on the 26th
    # A roll time inside the repeated half hour happens the first time.
    rolls = RollSchedule(dt.time(0, 15), zone)
    assert_roll(rolls, dt.date(2026, 10, 25), utc(2026, 10, 24, 22, 15), dt.date(2026, 10, 26))
    assert rolls.session_day(utc(2026, 10, 24, 23, 15)) == dt.date(2026, 10, 26)  # 00:15 again
    # Spring, Sunday 29 March: 00:30 XST (23:30 UTC on the 28th) becomes 01:30 XDT.
    rolls = RollSchedule(dt.time(1, 0), zone)
    assert_roll(rolls, dt.date(2026, 3, 29), utc(2026, 3, 28, 23, 30), dt.date(2026, 3, 30))


def test_half_hour_daylight_saving() -> None:
    # Australia/Lord_Howe, 4 October 2026: +10:30 becomes +11 at 15:30 UTC on the 3rd
    # (02:00 -> 02:30 local); 5 April 2026: +11 becomes +10:30 at 15:00 UTC on the 4th
    # (02:00 -> 01:30 local, so 01:30-01:59 happens twice).
    rolls = RollSchedule.parse("02:15", "Australia/Lord_Howe")
    assert_roll(rolls, dt.date(2026, 10, 4), utc(2026, 10, 3, 15, 30), dt.date(2026, 10, 5))
    rolls = RollSchedule.parse("01:45", "Australia/Lord_Howe")
    first = utc(2026, 4, 4, 14, 45)  # 01:45 +11
    assert_roll(rolls, dt.date(2026, 4, 5), first, dt.date(2026, 4, 6))
    assert rolls.session_day(first + dt.timedelta(minutes=30)) == dt.date(
        2026, 4, 6
    )  # 01:45 +10:30
    assert next_roll_utc(rolls, first) == utc(2026, 4, 5, 15, 15)  # 24.5 h later


# ---------------------------------------------------------------------------- calendar edges


def test_year_end() -> None:
    rolls = RollSchedule(zone=BERLIN)
    assert_roll(rolls, dt.date(2026, 12, 31), utc(2026, 12, 31, 23), dt.date(2027, 1, 1))
    rolls = RollSchedule.parse("17:00", "Europe/Berlin")
    assert rolls.session_day(utc(2026, 12, 31, 12)) == dt.date(2026, 12, 31)
    assert_roll(rolls, dt.date(2026, 12, 31), utc(2026, 12, 31, 16), dt.date(2027, 1, 1))
    assert_roll(rolls, dt.date(2027, 1, 1), utc(2027, 1, 1, 16), dt.date(2027, 1, 2))


def test_leap_day() -> None:
    rolls = RollSchedule(zone=UTC_ZONE)
    assert_roll(rolls, dt.date(2028, 2, 28), utc(2028, 2, 29), dt.date(2028, 2, 29))
    assert_roll(rolls, dt.date(2028, 2, 29), utc(2028, 3, 1), dt.date(2028, 3, 1))
    rolls = RollSchedule.parse("17:00", "UTC")
    assert_roll(rolls, dt.date(2028, 2, 28), utc(2028, 2, 28, 17), dt.date(2028, 2, 29))
    assert_roll(rolls, dt.date(2028, 2, 29), utc(2028, 2, 29, 17), dt.date(2028, 3, 1))
    # Not a leap year: the 28th's evening opens 1 March.
    assert_roll(rolls, dt.date(2027, 2, 28), utc(2027, 2, 28, 17), dt.date(2027, 3, 1))


def test_date_change_while_the_server_was_down() -> None:
    # The server opened a session on 10 March and stopped; it starts again days later,
    # across a DST change. The stored session's roll has passed, and the new session
    # carries the restart's date, not the day after the stored one.
    rolls = RollSchedule(zone=BERLIN)
    opened = utc(2026, 3, 10, 9)
    restarted = utc(2026, 3, 30, 7)  # 09:00 CEST
    assert rolls.session_day(opened) == dt.date(2026, 3, 10)
    assert rolls.next_roll(opened) <= restarted
    assert rolls.session_day(restarted) == dt.date(2026, 3, 30)
    assert next_roll_utc(rolls, restarted) == utc(2026, 3, 30, 22)
    # Down for less than a day but across the roll: still a new date.
    assert rolls.session_day(utc(2026, 3, 10, 22, 59)) == dt.date(2026, 3, 10)
    assert rolls.session_day(utc(2026, 3, 10, 23, 1)) == dt.date(2026, 3, 11)


# ---------------------------------------------------------------------------- local zone


@pytest.fixture
def local_berlin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local zone set to Europe/Berlin for one test."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is needed to change the local zone")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_berlin")
@pytest.mark.parametrize("roll_at", ["00:00", "02:00", "02:30", "03:00", "17:00", "23:59"])
@pytest.mark.parametrize(
    "now",
    [
        utc(2026, 3, 10, 12),
        utc(2026, 3, 28, 12),
        utc(2026, 3, 29, 0, 59),
        utc(2026, 3, 29, 1),
        utc(2026, 10, 24, 23),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 15),
        utc(2026, 12, 31, 23),
    ],
)
def test_local_zone_matches_the_named_zone(roll_at: str, now: dt.datetime) -> None:
    local, named = schedule(roll_at, None), schedule(roll_at, BERLIN)
    assert local.session_day(now) == named.session_day(now)
    roll = local.next_roll(now)
    assert roll.astimezone(dt.UTC) == next_roll_utc(named, now)
    assert roll.utcoffset() == named.next_roll(now).utcoffset()


# ---------------------------------------------------------------------------- property


ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "UTC")
START, END = utc(2020, 1, 1), utc(2031, 1, 1)


@functools.cache
def transitions(name: str) -> tuple[dt.datetime, ...]:
    """The instants in 2020-2030 at which ``name`` changes its UTC offset."""
    zone = zoneinfo.ZoneInfo(name)

    def offset(instant: dt.datetime) -> dt.timedelta | None:
        return instant.astimezone(zone).utcoffset()

    found = []
    day = START
    while day < END:
        low, high = day, day + dt.timedelta(days=1)
        if offset(low) != offset(high):
            while high - low > TICK:
                middle = low + (high - low) // 2
                low, high = (middle, high) if offset(middle) == offset(low) else (low, middle)
            found.append(high)
        day += dt.timedelta(days=1)
    return tuple(found)


def test_transitions_are_found() -> None:
    assert len(transitions("Europe/Berlin")) == 22
    assert utc(2026, 3, 29, 1) in transitions("Europe/Berlin")
    assert utc(2026, 10, 3, 15, 30) in transitions("Australia/Lord_Howe")
    assert transitions("UTC") == ()


@st.composite
def cases(draw: st.DrawFn) -> tuple[RollSchedule, dt.datetime]:
    name = draw(st.sampled_from(ZONES))
    roll_at = draw(
        st.one_of(
            st.builds(dt.time, st.integers(0, 23), st.integers(0, 59)),
            # Times that fall in the gaps and repeated hours of these zones.
            st.sampled_from(
                [dt.time(0), dt.time(1, 30), dt.time(1, 45), dt.time(2), dt.time(2, 30)]
            ),
        )
    )
    anywhere = st.datetimes(START.replace(tzinfo=None), END.replace(tzinfo=None)).map(
        lambda naive: naive.replace(tzinfo=dt.UTC)
    )
    near_change = st.tuples(
        st.sampled_from(transitions(name) or (START,)),
        st.timedeltas(-30 * HOUR, 30 * HOUR),
    ).map(lambda pair: pair[0] + pair[1])
    now = draw(st.one_of(anywhere, near_change))
    return RollSchedule(roll_at, zoneinfo.ZoneInfo(name)), now


@given(case=cases(), fraction=st.floats(0, 1, exclude_max=True))
def test_session_day_is_constant_until_next_roll(
    case: tuple[RollSchedule, dt.datetime], fraction: float
) -> None:
    rolls, now = case
    day = rolls.session_day(now)
    wall = rolls.next_roll(now)
    assert wall.tzinfo is rolls.zone
    # Arithmetic on an aware datetime is wall-clock arithmetic within its own zone, and ==
    # across zones is never true in a repeated hour (PEP 495): use UTC from here on.
    roll = wall.astimezone(dt.UTC)

    assert now < roll < now + 26 * HOUR
    assert rolls.session_day(roll) == day + dt.timedelta(days=1)
    # Constant on [now, roll).
    assert rolls.session_day(roll - TICK) == day
    inside = min(now + (roll - now) * fraction, roll - TICK)  # float rounding may reach roll
    assert rolls.session_day(inside) == day
    assert next_roll_utc(rolls, inside) == roll
    # The roll happens at roll_at, or when a gap that swallows roll_at ends; at the
    # first occurrence of a repeated time; on the date before the session's unless midnight.
    assert wall.fold == 0
    late = dt.datetime.combine(wall.date(), wall.time()) - dt.datetime.combine(
        wall.date(), rolls.roll_at
    )
    assert dt.timedelta(0) <= late <= HOUR  # a gap is at most an hour in these zones
    if late:
        assert (wall - late).astimezone(dt.UTC).astimezone(rolls.zone).time() != rolls.roll_at
    midnight = rolls.roll_at == dt.time(0)
    assert rolls.session_day(roll) == wall.date() + dt.timedelta(days=0 if midnight else 1)


# ---------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00", dt.time(0, 0)),
        ("09:05", dt.time(9, 5)),
        ("17:00", dt.time(17, 0)),
        ("23:59", dt.time(23, 59)),
    ],
)
def test_parse_roll_at(text: str, expected: dt.time) -> None:
    assert RollSchedule.parse(text) == RollSchedule(expected, None)


@pytest.mark.parametrize("name", ["Europe/London", "America/New_York", "UTC", "Asia/Kolkata"])
def test_parse_timezone(name: str) -> None:
    rolls = RollSchedule.parse("17:00", name)
    assert rolls.zone == zoneinfo.ZoneInfo(name)
    assert rolls.roll_at == dt.time(17, 0)


def test_parse_roll_at_error_message() -> None:
    with pytest.raises(ConfigError) as caught:
        RollSchedule.parse("25:00")
    assert str(caught.value) == "--roll-at 25:00: expected HH:MM, 00:00 to 23:59"


@pytest.mark.parametrize(
    "text",
    [
        "24:00",
        "12:60",
        "9:30",
        "09:5",
        "",
        "12:00:00",
        "1200",
        "12.00",
        " 12:00",
        "12:00\n",
        "\u0661\u0662:\u0660\u0660",  # Arabic-Indic digits
    ],
)
def test_parse_rejects_roll_at(text: str) -> None:
    with pytest.raises(ConfigError, match="expected HH:MM, 00:00 to 23:59"):
        RollSchedule.parse(text)


def test_parse_timezone_error_message() -> None:
    with pytest.raises(ConfigError) as caught:
        RollSchedule.parse("00:00", "Mars/Base")
    assert str(caught.value) == (
        "--timezone Mars/Base: unknown time zone; use an IANA name such as Europe/London"
    )


@pytest.mark.parametrize(
    "name", ["", "Europe", "europe/nowhere", "../etc/passwd", "/etc/localtime", "zone.tab", "UTC "]
)
def test_parse_rejects_timezone(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown time zone; use an IANA name"):
        RollSchedule.parse("00:00", name)


def test_parse_without_a_time_zone_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zoneinfo, "available_timezones", set)
    with pytest.raises(ConfigError, match="no time zone database; install the tzdata package"):
        RollSchedule.parse("00:00", "Mars/Base")


def test_roll_at_with_a_time_zone_is_refused() -> None:
    with pytest.raises(ConfigError, match="carries a time zone"):
        RollSchedule(dt.time(17, 0, tzinfo=dt.UTC))
