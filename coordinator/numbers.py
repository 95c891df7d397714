"""Numbers read from URL paths and headers: ASCII digits only, bounded length, within the database's range.

``str.isdigit()`` accepts Unicode digits (``²``, ``٠``) that ``int()`` then refuses or reads as something the
client did not write, so every path segment or header holding a number goes through :func:`parse_ascii_int`.
"""

from __future__ import annotations

DB_INT_MAX = 2**31 - 1
"""The largest value of an ``Integer`` column (round numbers, model versions, event ids) on every database."""

MAX_DIGITS = 20
"""Longer digit strings are refused as out of range without being converted."""


class NumberTextError(ValueError):
    """The text is not a number (``out_of_range`` False) or is one the database cannot hold (True)."""

    def __init__(self, message: str, *, out_of_range: bool) -> None:
        super().__init__(message)
        self.out_of_range = out_of_range


def parse_ascii_int(text: str, *, maximum: int = DB_INT_MAX) -> int:
    """``text`` (ASCII digits ``0-9`` only, no sign or spaces) as an integer in ``[0, maximum]``."""
    if not text or not (text.isascii() and text.isdigit()):
        raise NumberTextError(f"{text[:40]!r} is not a non-negative integer", out_of_range=False)
    if len(text) > MAX_DIGITS or int(text) > maximum:
        raise NumberTextError(f"{text[:40]!r} is out of range (at most {maximum})", out_of_range=True)
    return int(text)
