"""Wording shared by messages and log lines."""

from __future__ import annotations

import pytest

from tickertape.text import plural


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "0 messages"), (1, "1 message"), (2, "2 messages"), (1000, "1000 messages")],
)
def test_plural(count: int, expected: str) -> None:
    assert plural(count, "message") == expected


def test_plural_with_its_own_plural() -> None:
    assert (plural(1, "entry", "entries"), plural(3, "entry", "entries")) == (
        "1 entry",
        "3 entries",
    )
