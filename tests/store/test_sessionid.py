"""Tests of session ids: ``YYYYMMDDNN``, a date then a two-digit roll counter."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickertape.errors import ConfigError
from tickertape.store.sessionid import MAX_ROLLS_PER_DAY, SessionId

DAY = dt.date(2026, 11, 29)


# ---------------------------------------------------------------------------- parse / str


@pytest.mark.parametrize(
    ("text", "day", "counter"),
    [
        ("2026112901", dt.date(2026, 11, 29), 1),
        ("2026112902", dt.date(2026, 11, 29), 2),
        ("2026112999", dt.date(2026, 11, 29), 99),
        ("2024022910", dt.date(2024, 2, 29), 10),  # a leap day
        ("0001010101", dt.date(1, 1, 1), 1),
        ("9999123199", dt.date(9999, 12, 31), 99),
    ],
)
def test_parse_and_str(text: str, day: dt.date, counter: int) -> None:
    session = SessionId.parse(text)
    assert session == SessionId(day, counter)
    assert session.day == day
    assert session.counter == counter
    assert str(session) == text
    assert len(str(session)) == 10
    assert SessionId.is_valid(text)


@given(
    day=st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)),
    counter=st.integers(1, MAX_ROLLS_PER_DAY),
)
def test_str_parse_round_trip(day: dt.date, counter: int) -> None:
    session = SessionId(day, counter)
    text = str(session)
    assert len(text) == 10
    assert text.isascii() and text.isdigit()
    assert SessionId.parse(text) == session
    assert str(SessionId.parse(text)) == text


def test_first_of() -> None:
    assert SessionId.first_of(DAY) == SessionId(DAY, 1)
    assert str(SessionId.first_of(DAY)) == "2026112901"


# ---------------------------------------------------------------------------- invalid ids


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "not YYYYMMDDNN"),
        ("202611290", "not YYYYMMDDNN"),  # 9 characters
        ("20261129011", "not YYYYMMDDNN"),  # 11 characters
        ("20261129", "not YYYYMMDDNN"),  # a date alone
        ("2026112a01", "not YYYYMMDDNN"),
        ("abcdefghij", "not YYYYMMDDNN"),
        ("2026-11-29", "not YYYYMMDDNN"),
        (" 202611290", "not YYYYMMDDNN"),
        ("2026112901\n", "not YYYYMMDDNN"),
        ("+026112901", "not YYYYMMDDNN"),
        # Digits, but not ASCII ones: a session id goes on the wire as ASCII.
        ("\u0662\u0660\u0662\u0666\u0661\u0661\u0662\u0669\u0660\u0661", "not YYYYMMDDNN"),
        ("\uff12\uff10\uff12\uff16\uff11\uff11\uff12\uff19\uff10\uff11", "not YYYYMMDDNN"),
        ("2026023001", "invalid date"),  # 30 February
        ("2025022901", "invalid date"),  # not a leap year
        ("2026130101", "invalid date"),  # month 13
        ("2026000101", "invalid date"),  # month 0
        ("2026113101", "invalid date"),  # 31 November
        ("2026110001", "invalid date"),  # day 0
        ("0000010101", "invalid date"),  # year 0
        ("2026112900", "counter 0"),
    ],
)
def test_parse_rejects(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SessionId.parse(text)
    message = str(caught.value)
    assert says in message
    if says != "counter 0":
        assert repr(text) in message  # the message quotes what was wrong
    else:
        assert "1..99" in message
    assert not SessionId.is_valid(text)


@pytest.mark.parametrize("counter", [0, -1, 100, 1000])
def test_counter_out_of_range(counter: int) -> None:
    with pytest.raises(ConfigError, match=rf"session counter {counter} is out of range 1\.\.99"):
        SessionId(DAY, counter)


# ---------------------------------------------------------------------------- rolls and order


def test_next_roll() -> None:
    first = SessionId.parse("2026112901")
    second = first.next_roll()
    assert second == SessionId(DAY, 2)
    assert str(second) == "2026112902"
    assert second.day == first.day
    assert str(SessionId.parse("2026112909").next_roll()) == "2026112910"
    assert str(SessionId.parse("2026112998").next_roll()) == "2026112999"


def test_counter_99_cannot_roll() -> None:
    last = SessionId.parse("2026112999")
    with pytest.raises(ConfigError, match=r"2026112999 is the last of its day: at most 99 a day"):
        last.next_roll()


def test_every_roll_of_a_day() -> None:
    session = SessionId.first_of(DAY)
    seen = [session]
    while session.counter < MAX_ROLLS_PER_DAY:
        session = session.next_roll()
        seen.append(session)
    assert [s.counter for s in seen] == list(range(1, 100))
    assert seen == sorted(seen)
    with pytest.raises(ConfigError):
        session.next_roll()


def test_ordering() -> None:
    a = SessionId.parse("2026112901")
    b = SessionId.parse("2026112902")
    c = SessionId.parse("2026112910")
    d = SessionId.parse("2026112999")
    e = SessionId.parse("2026113001")
    f = SessionId.parse("2027010101")
    ordered = [a, b, c, d, e, f]
    assert a < b < c < d < e < f
    assert f > e >= e
    assert a.next_roll() > a
    shuffled = ordered[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled) == ordered
    assert max(shuffled) == f
    assert min(shuffled) == a


@given(
    st.lists(
        st.builds(
            SessionId,
            st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2100, 12, 31)),
            st.integers(1, MAX_ROLLS_PER_DAY),
        ),
        max_size=20,
    )
)
def test_ordering_matches_the_text(sessions: list[SessionId]) -> None:
    # Fixed width: ordering ids is ordering their texts (directory listings sort right).
    assert [str(s) for s in sorted(sessions)] == sorted(str(s) for s in sessions)


def test_equal_and_hashable() -> None:
    assert SessionId.parse("2026112901") == SessionId(DAY, 1)
    assert hash(SessionId.parse("2026112901")) == hash(SessionId(DAY, 1))
    assert len({SessionId(DAY, 1), SessionId.parse("2026112901"), SessionId(DAY, 2)}) == 2
