"""Suppression lists: addresses that must never be mailed again, from a file."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from followup.importing.fields import FieldError, parse_email


def read_suppression_list(path: Path) -> tuple[list[str], list[str]]:
    """The addresses of a suppression list: a CSV file with an `email` column, or one address
    per line. Returns (addresses, errors with file and line)."""
    addresses: list[str] = []
    errors: list[str] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if "," in first or first.strip().lower() == "email":
            reader = csv.DictReader(handle)
            if "email" not in (reader.fieldnames or []):
                return [], [f"{path}:1: email: missing column"]
            rows: Iterator[tuple[int, str]] = (
                (reader.line_num, row.get("email") or "") for row in reader
            )
        else:
            rows = ((number, line.strip()) for number, line in enumerate(handle, start=1))
        for number, value in rows:
            if not value.strip():
                continue
            try:
                addresses.append(parse_email(value))
            except FieldError as exc:
                errors.append(f"{path}:{number}: email: {exc.reason}")
    return addresses, errors
