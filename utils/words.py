"""Words for counts in what the program prints: "1 row appended", "2 rows appended"."""

from __future__ import annotations

IRREGULAR = {"day": "days", "entry": "entries", "missing day": "missing days"}


def count(n: int, noun: str, plural: str | None = None) -> str:
    """'1 coin', '0 coins', '3 duplicates': the number and the noun in the form that number takes."""
    return f"{n} {noun if n == 1 else plural or IRREGULAR.get(noun, noun + 's')}"
