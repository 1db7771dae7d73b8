"""Wording shared by messages and log lines."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` and ``noun``, made plural unless ``count`` is 1: ``1 message``,
    ``2 messages``, ``0 messages`` (``nouns`` for a plural that is not ``noun + "s"``)."""
    if count == 1:
        return f"1 {noun}"
    return f"{count} {nouns if nouns is not None else noun + 's'}"


def article(noun: str) -> str:
    """``noun`` after ``a`` or ``an``, as its first letter asks: ``a list``, ``an int``."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun
