"""CSV import of reps, clients and purchases (docs/clients.md).

Each row is either taken (merged by its external id: new, updated, or unchanged and not written)
or rejected with file, line, column and reason. All accepted rows of a file are written in one
transaction; with `strict`, one bad row means nothing is written. A column the file does not
have keeps its stored value. A client's rep changes only when the rep the file names changes
(a `reassign` stays), and never to a retired rep (a warning). The file is streamed, a batch at
a time: memory does not grow with its length.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select

from followup.domain.columns import OPTIONAL, REQUIRED, STAND_INS, Kind, columns_of
from followup.domain.territories import NO_DEFAULTS, Source, TerritoryDefaults
from followup.importing import valid
from followup.importing.fields import FieldError
from followup.importing.profiles import Bound, Profile, bind
from followup.importing.reader import (
    EncodingError,
    HeaderError,
    RowError,
    check_delimiter,
    check_encoding,
    delimiter_hint,
    read_rows,
)
from followup.importing.records import (
    ManyErrors,
    StoredConsent,
    client_record,
    purchase_record,
    rep_record,
    settle_consent,
)
from followup.processes import few_collections
from followup.storage.dialects import ledger_for
from followup.storage.engine import chunks
from followup.storage.imports import Merged, Target, client_zones, merge
from followup.storage.queries import clients_by_email
from followup.storage.tables import clients, purchases, reps

__all__ = ["EncodingError", "HeaderError", "ImportReport", "Kind", "RowError", "import_csv"]

#: Rows read, checked and merged at a time: one merge statement each.
BATCH = 5_000


# ----------------------------------------------------------------------------- the file


@dataclass
class ImportReport:
    """What an import did: `imported` rows taken, of which `created` new, `updated` and
    `unchanged` (not written at all); the rejected rows' errors; `warnings` for what a row
    asked that was not applied (a retired rep) and the zones and locales guessed for a
    country, each with file, line, column and reason."""

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
    #: How many imported rows had each column inferred ({"timezone": 12, "locale": 30}).
    inferred: dict[str, int] = field(default_factory=dict)
    #: (column, country) -> [first line, rows]: values that are [defaults]' guess for a
    #: country, not the country's own (a zone among several).
    guessed: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: country -> the zone most of it lives in, where that was the guess.
    main_zones: dict[str, str] = field(default_factory=dict)
    #: The profile over the file's header (None: followup's own format), for --explain.
    mapping: Bound | None = None
    #: Columns the profile maps that this version of followup does not store.
    not_stored: tuple[str, ...] = ()

    @property
    def rejected_rows(self) -> int:
        return len({e.line for e in self.errors if e.line > 1})

    def guesses(self) -> list[RowError]:
        """One warning per guessed column and country, naming the setting that would decide."""
        found = []
        for (column, country), (line, rows) in sorted(self.guessed.items()):
            setting = "timezones" if column == "timezone" else "locales"
            main = self.main_zones.get(country)
            took = f"{main}, where most of {country} lives," if main else f"[defaults] {column},"
            reason = (
                f"{rows} row(s) of {country} took {took} a guess ({country} has no single "
                f'{column}); give the column or set [defaults.{setting}] {country} = "..." in '
                "config.toml"
            )
            found.append(RowError(self.file, line, column, reason))
        return found


def _note(
    report: ImportReport,
    line: int,
    record: dict[str, Any],
    defaults: TerritoryDefaults,
    now: datetime,
) -> None:
    """Counts a client's inferred columns, and the guesses among them."""
    if not record["inferred"]:
        return
    country = record["country"]
    for column in record["inferred"].split(","):
        report.inferred[column] = report.inferred.get(column, 0) + 1
        found = defaults.infer(column, country, now)
        if found.source in (Source.DEFAULT, Source.MAIN):
            report.guessed.setdefault((column, country), [line, 0])[1] += 1
        if found.source is Source.MAIN:
            report.main_zones[country] = found.value


def import_csv(
    engine: Engine,
    kind: Kind,
    path: Path,
    *,
    now: datetime,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    defaults: TerritoryDefaults = NO_DEFAULTS,
    profile: Profile | None = None,
    explain: bool = False,
) -> ImportReport:
    """Validate every row of `path` and upsert the good ones in one transaction. The caller
    has checked that the database is at this version's schema. `encoding` (default: UTF-8)
    and `delimiter` (default: sniffed from the header) are checked first (ValueError); a byte
    not in the encoding, at any line, raises EncodingError and writes nothing. A client's zone
    and locale that the file does not give are inferred from the country with `defaults`.

    `profile` maps the file's columns to followup's (importing/profiles.py; None: the file is
    in followup's own format). With `explain`, the import runs and is rolled back: the report
    says what would be stored and rejected, and nothing stored changes."""
    name = path.name
    report = ImportReport(file=name, kind=kind)
    if encoding is not None:
        check_encoding(encoding)
    if delimiter is not None:
        delimiter = check_delimiter(delimiter)

    def unreadable(error: RowError) -> None:
        report.rows += 1
        report.errors.append(error)

    try:
        header, rows, handle = read_rows(
            path, progress, on_error=unreadable, encoding=encoding, delimiter=delimiter
        )
    except FileNotFoundError:
        raise HeaderError(f"{path}: no such file") from None
    try:
        if profile is None:
            _check_header(name, kind, header)
        else:
            report.mapping = bind(profile, header, name)
    except HeaderError:
        # The body generator has not started, so its own `finally` would not close the file.
        handle.close()
        raise
    if report.mapping is not None:
        header, rows = _mapped(report.mapping, rows, report)
    with few_collections():
        report = _import_rows(
            engine,
            kind,
            header,
            rows,
            report,
            now=now,
            strict=strict,
            defaults=defaults,
            explain=explain,
        )
    if report.mapping is not None:
        label = report.mapping.label
        report.errors = [RowError(e.file, e.line, label(e.column), e.reason) for e in report.errors]
        report.warnings = [
            RowError(w.file, w.line, label(w.column), w.reason) for w in report.warnings
        ]
    # Rows the CSV rules could not read are reported as the reader meets them, ahead of the
    # rest of their batch: every error in the file's order.
    report.errors.sort(key=lambda error: error.line)
    return report


def _mapped(
    bound: Bound, rows: Generator[tuple[int, list[str]], None, None], report: ImportReport
) -> tuple[list[str], Generator[tuple[int, list[str]], None, None]]:
    """The file's rows through the profile: followup's header and rows. A row the profile
    cannot map is counted and its errors reported here."""
    kind, name = report.kind, report.file
    known = set(columns_of(kind))
    keep = [i for i, native in enumerate(bound.native_header) if native in known]
    report.not_stored = tuple(n for n in bound.native_header if n not in known)
    if bound.profile.report_unknown:
        for column in bound.unmapped:
            report.errors.append(RowError(name, 1, column, _unknown(kind)))

    def rejected(line: int, errors: list[FieldError]) -> None:
        report.rows += 1
        report.errors.extend(RowError(name, line, e.column, e.reason) for e in errors)

    def native() -> Generator[tuple[int, list[str]], None, None]:
        mapped: Iterator[tuple[int, list[str]]] = bound.rows(rows, rejected)
        try:
            for line, cells in mapped:
                yield line, [cells[i] for i in keep]
        finally:
            rows.close()

    return [bound.native_header[i] for i in keep], native()


def _unknown(kind: Kind) -> str:
    return (
        f"unknown column (a {kind.value} file has "
        f"{', '.join(columns_of(kind))}); its cells are not imported"
    )


def _check_header(name: str, kind: Kind, header: list[str]) -> None:
    missing = [c for c in REQUIRED[kind] if c not in header and STAND_INS.get(c) not in header]
    if missing:
        inferred = "; locale and timezone, when absent, come from the country"
        raise HeaderError(
            f"{name}:1: missing required column(s) {', '.join(missing)} "
            f"(a {kind.value} file has {', '.join(REQUIRED[kind])} "
            f"[, {', '.join(OPTIONAL[kind])}]{inferred if kind is Kind.CLIENTS else ''})"
            + delimiter_hint(header, REQUIRED[kind])
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
    defaults: TerritoryDefaults,
    explain: bool = False,
) -> ImportReport:
    name = report.file
    known = set(columns_of(kind))
    unknown = [h for h in header if h not in known]
    for column in unknown:
        report.errors.append(RowError(name, 1, column, _unknown(kind)))
    report.errors.extend(_consent_without_state(name, kind, header))
    absent = _absent_keys(kind, header)
    make = valid.maker(kind, header, known, defaults, now)
    width = len(header)
    seen: dict[str, int] = {}
    merged = Merged()
    with engine.begin() as conn:
        while batch := list(islice(rows, BATCH)):
            records: list[tuple[int, dict[str, Any]]] = []
            lookup = _Lookups.for_batch(conn, kind, header, batch, origin=(name, now))
            report.rows += len(batch)
            for line, cells in batch:
                if len(cells) != width:
                    report.errors.append(
                        RowError(
                            name,
                            line,
                            "",
                            f"has {len(cells)} cells, the header has {len(header)} columns",
                        )
                    )
                    continue
                try:
                    record = make(lookup, cells)
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
                if kind is Kind.CLIENTS:
                    _note(report, line, record, defaults, now)
            report.warnings.extend(lookup.keep_retired_reps(conn, name, records))
            merged.add(_write(conn, kind, [r for _, r in records], now))
        if explain:
            conn.rollback()
            return _count(report, merged, written=False)
        if strict and report.errors:
            conn.rollback()
            report.inferred.clear()
            report.guessed.clear()
            return report
    return _count(report, merged, written=True)


def _count(report: ImportReport, merged: Merged, *, written: bool) -> ImportReport:
    """The merge's counts into the report, and the warnings in the file's order; `written`:
    the transaction was committed (not an --explain)."""
    report.created, report.updated, report.unchanged = merged.new, merged.updated, merged.unchanged
    report.imported = merged.new + merged.updated + merged.unchanged
    report.written = written and merged.new + merged.updated > 0
    report.warnings.extend(report.guesses())
    report.warnings.sort(key=lambda warning: warning.line)
    return report


def _consent_without_state(name: str, kind: Kind, header: list[str]) -> list[RowError]:
    """A consent's date or source in a file without the consent itself: reported, not read."""
    if kind is not Kind.CLIENTS or "marketing_consent" in header:
        return []
    reason = "without a marketing_consent column its cells are not imported"
    return [RowError(name, 1, c, reason) for c in ("consent_at", "consent_source") if c in header]


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
    # Given or inferred from the country: always in the record.
    "locale": (),
    "timezone": (),
    # With marketing_consent, settled from the file and the stored consent (records.py).
    "consent_source": (),
    "consent_at": (),
}


@dataclass
class _Lookups:
    """The rows a batch refers to (reps for clients, clients for purchases)."""

    reps: dict[str, int] = field(default_factory=dict)
    #: The reps of the batch that are not active (`reassign --retire`).
    retired: set[str] = field(default_factory=set)
    client_ids: dict[str, int] = field(default_factory=dict)
    client_zones: dict[str, str] = field(default_factory=dict)
    #: The stored marketing consent of the batch's clients, read when the file has the column.
    consents: dict[str, StoredConsent] = field(default_factory=dict)
    #: The file's name and the import's `now`: a consent's source and date when it has none.
    origin: tuple[str, datetime] = ("", datetime.min)
    #: Lower-cased address -> its clients, for purchases that name their client by e-mail.
    by_email: dict[str, list[Any]] = field(default_factory=dict)
    #: A file without the timezone or locale column: those columns, and the stored
    #: (timezone, locale, inferred) of the batch's clients.
    unplaced: tuple[str, ...] = ()
    places: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    @classmethod
    def for_batch(
        cls,
        conn: Connection,
        kind: Kind,
        header: list[str],
        batch: list[tuple[int, list[str]]],
        *,
        origin: tuple[str, datetime],
    ) -> _Lookups:
        lookups = cls(origin=origin)
        if kind is Kind.CLIENTS and "rep" in header:
            at = header.index("rep")
            wanted = {c[at].strip() for _, c in batch if len(c) > at and c[at].strip()}
            for row in ledger_for(conn).by_external_id(conn, reps, wanted, "active"):
                lookups.reps[row.external_id] = row.id
                if not row.active:
                    lookups.retired.add(row.external_id)
        lookups.unplaced = tuple(c for c in ("timezone", "locale") if c not in header)
        if kind is Kind.CLIENTS and lookups.unplaced:
            found_places = ledger_for(conn).by_external_id(
                conn, clients, _cells(header, batch, "id"), "timezone", "locale", "inferred"
            )
            lookups.places = {
                row.external_id: (row.timezone, row.locale, row.inferred) for row in found_places
            }
        if kind is Kind.CLIENTS and "marketing_consent" in header:
            at = header.index("id")
            wanted = {c[at].strip() for _, c in batch if len(c) > at}
            found = ledger_for(conn).by_external_id(
                conn, clients, wanted, "marketing_consent", "consent_source", "consent_at"
            )
            lookups.consents = {
                row.external_id: (row.marketing_consent, row.consent_source, row.consent_at)
                for row in found
            }
        if kind is Kind.PURCHASES:
            wanted = _cells(header, batch, "client")
            if "client_email" in header:
                lookups.by_email = clients_by_email(conn, _cells(header, batch, "client_email"))
            for same in lookups.by_email.values():
                for row in same:
                    lookups.client_ids[row.external_id] = row.id
                    lookups.client_zones[row.external_id] = row.timezone
            wanted -= set(lookups.client_ids)
            for external_id, client_id, zone in client_zones(conn, wanted):
                lookups.client_ids[external_id] = client_id
                lookups.client_zones[external_id] = zone
        return lookups

    def client_of(self, row: dict[str, str]) -> str:
        """A purchase's client: its id, else the one client with its e-mail address."""
        given = row.get("client", "").strip()
        address = row.get("client_email", "").strip()
        if given or not address:
            return given
        found = self.by_email.get(address.lower(), [])
        if not found:
            raise FieldError(
                "client_email", f"no client with e-mail {address!r} (import clients first)"
            )
        if len(found) > 1:
            ids = ", ".join(sorted(str(r.external_id) for r in found))
            raise FieldError(
                "client_email",
                f"{len(found)} clients have the e-mail {address!r} ({ids}): "
                "give the client's id in the client column",
            )
        return str(found[0].external_id)

    def record(
        self, kind: Kind, row: dict[str, str], defaults: TerritoryDefaults, now: datetime
    ) -> dict[str, Any]:
        if kind is Kind.REPS:
            return rep_record(row)
        if kind is Kind.CLIENTS:
            return self.client(client_record(row, defaults, now))
        client = self.client_of(row)
        if client != row.get("client"):
            row = {**row, "client": client}
        record = purchase_record(row, self.client_zones.get(client))
        record["client_id"] = self.client_ids[record.pop("client")]
        return record

    def client(self, record: dict[str, Any]) -> dict[str, Any]:
        """A client's record with its rep and consent resolved (FieldError: no such rep)."""
        rep = record.pop("rep")
        if rep and rep not in self.reps:
            raise FieldError("rep", f"no rep with id {rep!r} (import reps first)")
        # The rep moves only when the file's rep changes (storage/imports.py).
        record["rep_id"] = self.reps.get(rep) if rep else None
        record["file_rep"] = rep or None
        if "consent" in record:
            self._settle_consent(record)
        self._keep_given_places(record)
        return record

    def _keep_given_places(self, record: dict[str, Any]) -> None:
        """A file without the timezone (or locale) column: a stored client keeps the zone an
        earlier file gave; only one whose zone was inferred has it inferred again (a column
        the file does not have keeps its stored value, docs/clients.md)."""
        stored = self.places.get(record["external_id"])
        if stored is None:
            return
        marks = record["inferred"].split(",") if record["inferred"] else []
        stored_marks = stored[2].split(",")
        for column in self.unplaced:
            if column not in stored_marks:
                record[column] = stored[0] if column == "timezone" else stored[1]
                marks = [mark for mark in marks if mark != column]
        record["inferred"] = ",".join(marks)

    def _settle_consent(self, record: dict[str, Any]) -> None:
        """The file's consent cells -> the client's consent columns (records.settle_consent).
        Only a file with the consent column gives them: without it, the stored consent of
        every client stays as it is (the upsert updates the columns its records have)."""
        name, now = self.origin
        state, source, at = settle_consent(
            record.pop("consent"),
            self.consents.get(record["external_id"]),
            f"import:{name}"[:128],
            now,
        )
        record.update(marketing_consent=state, consent_source=source, consent_at=at)

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


def _cells(header: list[str], batch: list[tuple[int, list[str]]], column: str) -> set[str]:
    """The stripped non-empty cells of `column` in a batch (none when it is not a column)."""
    if column not in header:
        return set()
    at = header.index(column)
    return {c[at].strip() for _, c in batch if len(c) > at and c[at].strip()}


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
