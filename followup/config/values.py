"""Values written as text in config.toml and calendars/*.toml (local times, hours, weekdays,
delays), and where a key stands in a TOML file, for errors that name the line."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import time
from typing import Any

from dateutil.relativedelta import relativedelta

from followup.domain.occasions import Window

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def line_of(text: str, table: str, key: str | None) -> int:
    """The line of `key` in `[table]` (or of the table's header) in a TOML file; 1 if unknown."""
    lines = text.splitlines()
    dotted = r"\s*\.\s*".join(map(re.escape, table.split(".")))
    header = re.compile(r"^\s*\[\s*" + dotted + r"\s*\]")
    for number, line in enumerate(lines, start=1):
        if header.match(line):
            if key is None:
                return number
            for offset, inner in enumerate(lines[number:], start=number + 1):
                if re.match(r"^\s*\[", inner):
                    break
                if re.match(r"^\s*" + re.escape(key) + r"\s*=", inner):
                    return offset
            return number
    return 1


def parse_time(value: Any) -> time:
    if isinstance(value, time):
        return value
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", str(value).strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"expected a local time like 10:00, got {value!r}")
    return time(int(match[1]), int(match[2]))


def parse_window(value: str) -> Window:
    match = re.fullmatch(r"\s*(\S+)\s*-\s*(\S+)\s*", value)
    if not match:
        raise ValueError(f'expected hours like "08:00-20:00", got {value!r}')
    return Window(parse_time(match[1]), parse_time(match[2]))


def parse_weekdays(value: str | Sequence[str]) -> frozenset[int]:
    """ "mon-fri", "sat,sun" or ["mon", "wed"] -> weekday numbers (Monday = 0)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    days: set[int] = set()
    for item in items:
        item = str(item).strip().lower()[:3] if "-" not in str(item) else str(item).strip().lower()
        if "-" in item:
            start, end = (part.strip()[:3] for part in item.split("-", 1))
            if start not in WEEKDAYS or end not in WEEKDAYS:
                raise ValueError(f"unknown weekday in {item!r} (use mon..sun)")
            a, b = WEEKDAYS.index(start), WEEKDAYS.index(end)
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        elif item in WEEKDAYS:
            days.add(WEEKDAYS.index(item))
        else:
            raise ValueError(f"unknown weekday {item!r} (use mon..sun)")
    if not days:
        raise ValueError("no weekday given")
    return frozenset(days)


_DELAY = re.compile(r"\s*(\d{1,4})\s*(day|days|week|weeks|month|months|year|years)\s*")


def parse_delay(value: str) -> relativedelta:
    """ "2 days", "6 months", "1 year" -> a calendar delay."""
    match = _DELAY.fullmatch(value)
    if not match:
        raise ValueError(f'expected a delay like "2 days" or "6 months", got {value!r}')
    count, unit = int(match[1]), match[2].rstrip("s")
    return {
        "day": relativedelta(days=count),
        "week": relativedelta(weeks=count),
        "month": relativedelta(months=count),
        "year": relativedelta(years=count),
    }[unit]
