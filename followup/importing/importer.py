"""CSV import of reps, clients and purchases (docs/clients.md).

Each row is either taken (upserted by its external id) or rejected with file, line, column and
reason. All accepted rows of a file are written in one transaction; with `strict`, one bad row
means nothing is written. The file is streamed: memory does not grow with its length.
"""

from __future__ import annotations

import csv
import enum
import functools
import re
import zoneinfo
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from babel import Locale, UnknownLocaleError
from babel.numbers import is_currency
from sqlalchemy import Connection, Engine

from followup.domain.money import minor_digits
from followup.domain.statuses import ClientStatus, PurchaseStatus
from followup.storage.dialects import ledger_for
from followup.storage.engine import CHUNK, chunks
from followup.storage.tables import clients, purchases, reps


class Kind(enum.StrEnum):
    REPS = "reps"
    CLIENTS = "clients"
    PURCHASES = "purchases"


REQUIRED: dict[Kind, tuple[str, ...]] = {
    Kind.REPS: ("id", "name", "email"),
    Kind.CLIENTS: ("id", "email", "first_name", "last_name", "locale", "timezone", "country"),
    Kind.PURCHASES: ("id", "client", "purchased_at", "product", "amount", "currency"),
}
OPTIONAL: dict[Kind, tuple[str, ...]] = {
    Kind.REPS: ("signature", "active"),
    Kind.CLIENTS: ("birthday", "rep", "tier", "tags", "status"),
    Kind.PURCHASES: ("status",),
}


@dataclass(frozen=True, slots=True)
class RowError:
    file: str
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.column}: {self.reason}" if self.column else f"{where}: {self.reason}"
        )


class FieldError(ValueError):
    """A cell's value is invalid; raised by the pure parsers below."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


# ----------------------------------------------------------------------------- pure parsers

_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
# Control characters and the other line breaks of str.splitlines() (U+0085, U+2028, U+2029).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n"}


def parse_email(value: str, column: str = "email") -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value) or ".." in value:
        raise FieldError(column, f"{value!r} is not a valid e-mail address")
    local = value.split("@", 1)[0]
    if len(local) > 64 or local.startswith(".") or local.endswith("."):
        raise FieldError(column, f"{value!r} is not a valid e-mail address")
    return value


def parse_text(value: str, column: str, max_length: int, *, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise FieldError(column, "is required")
    if _CONTROL.search(value):
        raise FieldError(column, "contains control characters (line breaks, tabs, ...)")
    if len(value) > max_length:
        raise FieldError(column, f"is longer than {max_length} characters")
    return value


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_timezone(value: str, column: str = "timezone") -> str:
    value = value.strip()
    if value not in _zones():
        raise FieldError(column, f"{value!r} is not an IANA time zone (e.g. Europe/Paris)")
    return value


def parse_locale(value: str, column: str = "locale") -> str:
    """A BCP 47 tag (fr, en-US, fr-CA); returned in its canonical form."""
    value = value.strip()
    try:
        locale = Locale.parse(value.replace("_", "-"), sep="-")
    except (UnknownLocaleError, ValueError, TypeError):
        raise FieldError(column, f"{value!r} is not a known locale (e.g. en, en-US, fr)") from None
    tag = locale.language
    if locale.script:
        tag += "-" + locale.script
    if locale.territory:
        tag += "-" + locale.territory
    return tag


@functools.cache
def _countries() -> frozenset[str]:
    # CLDR also names non-countries: ZZ (unknown region) and the pseudo-regions of RFC 5646.
    pseudo = {"ZZ", "XA", "XB", "QO", "EU", "EZ", "UN"}
    return frozenset(
        str(code)
        for code in Locale("en").territories
        if re.fullmatch(r"[A-Z]{2}", str(code)) and str(code) not in pseudo
    )


def parse_country(value: str, column: str = "country") -> str:
    code = value.strip().upper()
    if code not in _countries():
        raise FieldError(column, f"{value.strip()!r} is not an ISO 3166 alpha-2 country code")
    return code


def parse_birthday(value: str, column: str = "birthday") -> tuple[int | None, int, int]:
    """YYYY-MM-DD, or --MM-DD without a year. Returns (year, month, day)."""
    value = value.strip()
    match = re.fullmatch(r"([0-9]{4}|-)-([0-9]{2})-([0-9]{2})", value)
    if not match:
        raise FieldError(column, f"{value!r} is not YYYY-MM-DD or --MM-DD")
    year = None if match[1] == "-" else int(match[1])
    month, day = int(match[2]), int(match[3])
    try:
        # A year-less birthday may be 29 February: check it against a leap year.
        date(year if year is not None else 2000, month, day)
    except ValueError:
        raise FieldError(column, f"{value!r} is not a date") from None
    if year is not None and not 1850 <= year <= 2100:
        raise FieldError(column, f"{value!r}: year out of range")
    return year, month, day


def parse_signature(value: str, column: str = "signature") -> str:
    """Several lines are allowed; other control characters (NUL, ...) are not."""
    value = value.replace("\r\n", "\n").strip()
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value):
        raise FieldError(column, "contains control characters")
    if len(value) > 2000:
        raise FieldError(column, "is longer than 2000 characters")
    return value


def parse_bool(value: str, column: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise FieldError(column, f"{value!r} is not true/false")


def parse_choice(value: str, column: str, choices: type[enum.StrEnum]) -> str:
    lowered = value.strip().lower()
    allowed = [c.value for c in choices]
    if lowered not in allowed:
        raise FieldError(column, f"{value.strip()!r} is not one of {', '.join(allowed)}")
    return lowered


def parse_instant(value: str, zone: str, column: str = "purchased_at") -> datetime:
    """ISO 8601; a date alone is midnight, and a time without offset is local, in `zone`."""
    value = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            naive = datetime.combine(date.fromisoformat(value), time())
        else:
            naive = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FieldError(column, f"{value!r} is not an ISO 8601 date or date-time") from None
    if naive.tzinfo is None:
        naive = naive.replace(tzinfo=zoneinfo.ZoneInfo(zone))
    if not 1900 <= naive.year <= 2200:
        raise FieldError(column, f"{value!r}: year out of range (1900..2200)")
    return naive.astimezone(UTC)


def parse_amount(value: str, currency: str, column: str = "amount") -> int:
    """A decimal amount -> minor units of `currency` (cents)."""
    text = value.strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise FieldError(column, f"{text!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise FieldError(column, f"{text!r} is not a non-negative amount")
    if amount != 0 and amount.adjusted() > 15:
        raise FieldError(column, f"{text!r} is too large")
    precision = minor_digits(currency)
    # Exact arithmetic: a wide context, and equality to decide whether anything was dropped.
    exact = Context(prec=60)
    quantized = amount.quantize(Decimal(1).scaleb(-precision), context=exact)
    if quantized != amount:
        raise FieldError(column, f"{text!r} has more than {precision} decimals for {currency}")
    minor = quantized.scaleb(precision, context=exact)
    if minor > 10**15:
        raise FieldError(column, f"{text!r} is too large")
    return int(minor)


def parse_currency(value: str, column: str = "currency") -> str:
    code = value.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code) or not is_currency(code):
        raise FieldError(column, f"{value.strip()!r} is not an ISO 4217 currency code")
    return code


# ----------------------------------------------------------------------------- row -> record


def rep_record(row: Mapping[str, str]) -> dict[str, Any]:
    active = row.get("active", "")
    return {
        "external_id": parse_text(row["id"], "id", 128),
        "name": parse_text(row["name"], "name", 256),
        "email": parse_email(row["email"]),
        "signature": parse_signature(row.get("signature", "")),
        "active": True if not active.strip() else parse_bool(active, "active"),
    }


def client_record(row: Mapping[str, str]) -> dict[str, Any]:
    """A validated client; `rep` stays an external id for the store to resolve."""
    errors: list[FieldError] = []
    record: dict[str, Any] = {}

    def take(key: str, fn: Callable[[], Any]) -> None:
        try:
            record[key] = fn()
        except FieldError as exc:
            errors.append(exc)

    take("external_id", lambda: parse_text(row["id"], "id", 128))
    take("email", lambda: parse_email(row["email"]))
    take("first_name", lambda: parse_text(row["first_name"], "first_name", 256))
    take("last_name", lambda: parse_text(row["last_name"], "last_name", 256, required=False))
    take("locale", lambda: parse_locale(row["locale"]))
    take("timezone", lambda: parse_timezone(row["timezone"]))
    take("country", lambda: parse_country(row["country"]))
    birthday = row.get("birthday", "").strip()
    if birthday:
        take("birthday", lambda: parse_birthday(birthday))
    else:
        record["birthday"] = (None, None, None)
    take("rep", lambda: parse_text(row.get("rep", ""), "rep", 128, required=False))
    take("tier", lambda: parse_text(row.get("tier", ""), "tier", 64, required=False).lower())
    take("tags", lambda: parse_text(row.get("tags", ""), "tags", 1024, required=False))
    status = row.get("status", "").strip()
    record["status"] = ClientStatus.ACTIVE.value
    if status:
        take("status", lambda: parse_choice(status, "status", ClientStatus))
    if errors:
        raise errors[0] if len(errors) == 1 else _Many(errors)
    year, month, day = record.pop("birthday")
    record.update(birthday_year=year, birthday_month=month, birthday_day=day)
    return record


def purchase_record(row: Mapping[str, str], client_zone: str | None) -> dict[str, Any]:
    """A validated purchase; `client` stays an external id. `client_zone` is None when the
    client is unknown, in which case the caller reports that."""
    record: dict[str, Any] = {"external_id": parse_text(row["id"], "id", 128)}
    record["client"] = parse_text(row["client"], "client", 128)
    if client_zone is None:
        raise FieldError("client", f"no client with id {record['client']!r} (import clients first)")
    record["purchased_at"] = parse_instant(row["purchased_at"], client_zone)
    record["product"] = parse_text(row["product"], "product", 512)
    record["currency"] = parse_currency(row["currency"])
    record["amount_minor"] = parse_amount(row["amount"], record["currency"])
    status = row.get("status", "").strip()
    record["status"] = parse_choice(status, "status", PurchaseStatus) if status else "paid"
    return record


class _Many(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


# ----------------------------------------------------------------------------- the file


@dataclass
class ImportReport:
    file: str
    kind: Kind
    rows: int = 0
    imported: int = 0
    created: int = 0
    errors: list[RowError] = field(default_factory=list)
    written: bool = False

    @property
    def rejected_rows(self) -> int:
        return len({e.line for e in self.errors if e.line > 1})


class HeaderError(ValueError):
    """The file cannot be read at all (no header, missing required columns)."""


def _rows(
    path: Path, progress: Callable[[int], None] | None
) -> tuple[list[str], Generator[tuple[int, list[str]], None, None], TextIO]:
    handle = path.open(encoding="utf-8-sig", newline="")

    def lines() -> Iterator[str]:
        for line in handle:
            if progress is not None:
                progress(len(line.encode("utf-8")))
            yield line

    reader = csv.reader(lines())
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise HeaderError(f"{path.name}:1: the file is empty (a header row is required)") from None
    except UnicodeDecodeError as exc:
        handle.close()
        raise HeaderError(f"{path.name}: not UTF-8 ({exc.reason})") from None

    def body() -> Generator[tuple[int, list[str]], None, None]:
        previous = reader.line_num
        try:
            for cells in reader:
                start = previous + 1
                previous = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                yield start, cells
        finally:
            handle.close()

    return [h.strip() for h in header], body(), handle


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
        header, rows, handle = _rows(path, progress)
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
    seen: dict[str, int] = {}
    with engine.begin() as conn:
        for batch in chunks(rows, CHUNK):
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
                except _Many as many:
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
                records.append((line, record))
            report.created += _write(conn, kind, [r for _, r in records], lookup, now)
            report.imported += len(records)
        if strict and report.errors:
            conn.rollback()
            report.imported = report.created = 0
            return report
    report.written = report.imported > 0
    return report


@dataclass
class _Lookups:
    """The rows a batch refers to (reps for clients, clients for purchases)."""

    reps: dict[str, int] = field(default_factory=dict)
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
            lookups.reps = ledger_for(conn).id_map(conn, reps, wanted)
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
            record["rep_id"] = self.reps.get(rep) if rep else None
            return record
        record = purchase_record(row, self.client_zones.get(row["client"].strip()))
        record["client_id"] = self.client_ids[record.pop("client")]
        return record


def _write(
    conn: Connection, kind: Kind, records: list[dict[str, Any]], lookups: _Lookups, now: datetime
) -> int:
    """Upsert one batch; returns how many rows were new."""
    if not records:
        return 0
    table = {Kind.REPS: reps, Kind.CLIENTS: clients, Kind.PURCHASES: purchases}[kind]
    ledger = ledger_for(conn)
    existing = ledger.id_map(conn, table, (r["external_id"] for r in records))
    rows = [{**r, "updated_at": now} for r in records]
    keep: tuple[str, ...] = ()
    if kind is Kind.CLIENTS:
        rows = [{**r, "created_at": now} for r in rows]
        keep = ("created_at",)
    ledger.upsert(conn, table, rows, key="external_id", keep=keep)
    return len(records) - len(existing)
