"""CSV import of reps, clients and purchases (docs/clients.md).

Each row is either taken (merged by its external id: new, updated, or unchanged and not written)
or rejected with file, line, column and reason. All accepted rows of a file are written in one
transaction; with `strict`, one bad row means nothing is written. A column the file does not
have keeps its stored value. A client's rep changes only when the rep the file names changes
(a `reassign` stays), and never to a retired rep (a warning). The file is streamed, a batch at
a time: memory does not grow with its length.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from followup.importing.fields import FieldError
from followup.importing.reader import HeaderError, RowError, read_rows
from followup.importing.records import (
    OPTIONAL,
    REQUIRED,
    Kind,
    ManyErrors,
    client_record,
    purchase_record,
    rep_record,
)
from followup.storage.dialects import ledger_for
from followup.storage.engine import chunks
from followup.storage.imports import Merged, Target, merge
from followup.storage.tables import clients, purchases, reps

__all__ = ["HeaderError", "ImportReport", "Kind", "RowError", "import_csv"]

#: Rows read, checked and merged at a time: one merge statement each.
BATCH = 5_000


# ----------------------------------------------------------------------------- the file


@dataclass
class ImportReport:
    """What an import did: `imported` rows taken, of which `created` new, `updated` and
    `unchanged` (not written at all); the rejected rows' errors; `warnings` for what a row
    asked that was not applied (a retired rep), each with file, line, column and reason."""

    file: str
    kind: Kind
    rows: int = 0
    imported: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)
    written: bool = False

    @property
    def rejected_rows(self) -> int:
        return len({e.line for e in self.errors if e.line > 1})


def import_csv(
    engine: Engine,
    kind: Kind,
    path: Path,
    *,
    now: datetime,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate every row of `path` and upsert the good ones in one transaction. The caller
    has checked that the database is at this version's schema."""
    name = path.name
    report = ImportReport(file=name, kind=kind)
    try:
        header, rows, handle = read_rows(path, progress)
    except FileNotFoundError:
        raise HeaderError(f"{path}: no such file") from None
    try:
        _check_header(name, kind, header)
    except HeaderError:
        # The body generator has not started, so its own `finally` would not close the file.
        handle.close()
        raise
    return _import_rows(engine, kind, header, rows, report, now=now, strict=strict)


def _check_header(name: str, kind: Kind, header: list[str]) -> None:
    missing = [c for c in REQUIRED[kind] if c not in header]
    if missing:
        raise HeaderError(
            f"{name}:1: missing required column(s) {', '.join(missing)} "
            f"(a {kind.value} file has {', '.join(REQUIRED[kind])} "
            f"[, {', '.join(OPTIONAL[kind])}])"
        )
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise HeaderError(f"{name}:1: column(s) {', '.join(duplicated)} appear more than once")


def _import_rows(
    engine: Engine,
    kind: Kind,
    header: list[str],
    rows: Generator[tuple[int, list[str]], None, None],
    report: ImportReport,
    *,
    now: datetime,
    strict: bool,
) -> ImportReport:
    name = report.file
    known = set(REQUIRED[kind]) | set(OPTIONAL[kind])
    unknown = [h for h in header if h not in known]
    for column in unknown:
        report.errors.append(
            RowError(
                name,
                1,
                column,
                f"unknown column (a {kind.value} file has "
                f"{', '.join(REQUIRED[kind] + OPTIONAL[kind])}); its cells are not imported",
            )
        )
    absent = _absent_keys(kind, header)
    seen: dict[str, int] = {}
    merged = Merged()
    with engine.begin() as conn:
        for batch in chunks(rows, BATCH):
            records: list[tuple[int, dict[str, Any]]] = []
            lookup = _Lookups.for_batch(conn, kind, header, batch)
            for line, cells in batch:
                report.rows += 1
                if len(cells) != len(header):
                    report.errors.append(
                        RowError(
                            name,
                            line,
                            "",
                            f"has {len(cells)} cells, the header has {len(header)} columns",
                        )
                    )
                    continue
                row = {h: c for h, c in zip(header, cells, strict=True) if h in known}
                try:
                    record = lookup.record(kind, row)
                except ManyErrors as many:
                    report.errors.extend(
                        RowError(name, line, e.column, e.reason) for e in many.errors
                    )
                    continue
                except FieldError as exc:
                    report.errors.append(RowError(name, line, exc.column, exc.reason))
                    continue
                external_id = record["external_id"]
                if external_id in seen:
                    report.errors.append(
                        RowError(
                            name,
                            line,
                            "id",
                            f"{external_id!r} already appears on line {seen[external_id]}",
                        )
                    )
                    continue
                seen[external_id] = line
                for key in absent:
                    record.pop(key, None)
                records.append((line, record))
            report.warnings.extend(lookup.keep_retired_reps(conn, name, records))
            merged.add(_write(conn, kind, [r for _, r in records], now))
        if strict and report.errors:
            conn.rollback()
            return report
    report.created, report.updated, report.unchanged = merged.new, merged.updated, merged.unchanged
    report.imported = merged.new + merged.updated + merged.unchanged
    report.written = merged.new + merged.updated > 0
    return report


def _absent_keys(kind: Kind, header: list[str]) -> tuple[str, ...]:
    """The record's keys of the optional columns the file does not have: they are not
    written, so that the stored values stay (a new row takes the column's default)."""
    keys: list[str] = []
    for column in OPTIONAL[kind]:
        if column not in header:
            keys.extend(_RECORD_KEYS.get(column, (column,)))
    return tuple(keys)


#: An optional column -> the keys of the record it gives, where they are not its own name.
_RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "birthday": ("birthday_year", "birthday_month", "birthday_day"),
    "rep": ("rep_id", "file_rep"),
}


@dataclass
class _Lookups:
    """The rows a batch refers to (reps for clients, clients for purchases)."""

    reps: dict[str, int] = field(default_factory=dict)
    #: The reps of the batch that are not active (`reassign --retire`).
    retired: set[str] = field(default_factory=set)
    client_ids: dict[str, int] = field(default_factory=dict)
    client_zones: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_batch(
        cls, conn: Connection, kind: Kind, header: list[str], batch: list[tuple[int, list[str]]]
    ) -> _Lookups:
        lookups = cls()
        if kind is Kind.CLIENTS and "rep" in header:
            at = header.index("rep")
            wanted = {c[at].strip() for _, c in batch if len(c) > at and c[at].strip()}
            for row in ledger_for(conn).by_external_id(conn, reps, wanted, "active"):
                lookups.reps[row.external_id] = row.id
                if not row.active:
                    lookups.retired.add(row.external_id)
        if kind is Kind.PURCHASES:
            at = header.index("client")
            wanted = {c[at].strip() for _, c in batch if len(c) > at}
            for row in ledger_for(conn).by_external_id(conn, clients, wanted, "timezone"):
                lookups.client_ids[row.external_id] = row.id
                lookups.client_zones[row.external_id] = row.timezone
        return lookups

    def record(self, kind: Kind, row: dict[str, str]) -> dict[str, Any]:
        if kind is Kind.REPS:
            return rep_record(row)
        if kind is Kind.CLIENTS:
            record = client_record(row)
            rep = record.pop("rep")
            if rep and rep not in self.reps:
                raise FieldError("rep", f"no rep with id {rep!r} (import reps first)")
            # The rep moves only when the file's rep changes (storage/imports.py).
            record["rep_id"] = self.reps.get(rep) if rep else None
            record["file_rep"] = rep or None
            return record
        record = purchase_record(row, self.client_zones.get(row["client"].strip()))
        record["client_id"] = self.client_ids[record.pop("client")]
        return record

    def keep_retired_reps(
        self, conn: Connection, name: str, records: list[tuple[int, dict[str, Any]]]
    ) -> list[RowError]:
        """A row naming a retired rep does not change its client's rep (nor the rep the file
        named before): each is reported with the rep the client keeps."""
        naming = [(n, r) for n, r in records if r.get("file_rep") in self.retired]
        if not naming:
            return []
        current = _current_reps(conn, [r["external_id"] for _, r in naming])
        warnings = []
        for line, record in naming:
            rep = record.pop("file_rep")
            del record["rep_id"]
            kept = current.get(record["external_id"])
            keeps = f"keeps rep {kept!r}" if kept else "keeps no rep"
            warnings.append(
                RowError(
                    name, line, "rep", f"rep {rep!r} is retired: not applied, the client {keeps}"
                )
            )
        return warnings


def _current_reps(conn: Connection, external_ids: list[str]) -> dict[str, str | None]:
    """client external id -> the external id of its rep now (None: no rep), for the clients
    that exist."""
    found: dict[str, str | None] = {}
    for batch in chunks(external_ids):
        query = (
            select(clients.c.external_id, reps.c.external_id.label("rep"))
            .select_from(clients.outerjoin(reps, reps.c.id == clients.c.rep_id))
            .where(clients.c.external_id.in_(batch))
        )
        found.update({row.external_id: row.rep for row in conn.execute(query)})
    return found


#: How each kind of file is merged (storage/imports.py).
_TARGETS = {
    Kind.REPS: Target(reps),
    Kind.CLIENTS: Target(clients, on_insert=("created_at",), follows=(("rep_id", "file_rep"),)),
    Kind.PURCHASES: Target(purchases),
}


def _write(conn: Connection, kind: Kind, records: list[dict[str, Any]], now: datetime) -> Merged:
    """Merge one batch: new rows inserted, changed rows updated, the others left alone."""
    return merge(conn, _TARGETS[kind], records, now)
