"""Import profiles: a file's rows -> rows in followup's own columns (docs/clients.md).

A profile says, for each of followup's columns, which of the file's columns holds it (the
first non-empty cell of a list wins), how the file's words become followup's values, the value
when the file has none, and whether several consecutive lines make one record (an order with
one line per item). Pure: the importer feeds it the file's header and rows, and validates what
comes out as it validates a file in followup's own format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from followup.domain.columns import OPTIONAL, REQUIRED, STAND_INS, Kind, columns_of
from followup.importing.fields import FieldError, plain_number
from followup.importing.reader import HeaderError


@dataclass(frozen=True, slots=True)
class Column:
    """How one of followup's columns is read from the file."""

    native: str
    #: The file's columns, in order: the first non-empty cell wins.
    sources: tuple[str, ...] = ()
    #: The file's words (case-insensitive) -> followup's values; other words pass unchanged.
    values: Mapping[str, str] = field(default_factory=dict)
    #: When no source column is in the file, or its cells are empty.
    default: str | None = None
    #: A date-time column's strptime format; the value goes on as ISO 8601.
    format: str | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kind: Kind
    columns: tuple[Column, ...]
    #: The file's column whose equal values on consecutive lines make one record.
    group_by: str | None = None
    #: The native column that summarises a group's lines ("first (+N more)").
    items: str | None = None
    #: The file's decimal mark ("." or ",") for amounts.
    decimal: str = "."
    #: The file's columns that map to nothing are errors (followup's own format), rather
    #: than ignored (a platform's export has many columns followup does not need).
    report_unknown: bool = False

    def column(self, native: str) -> Column | None:
        return next((c for c in self.columns if c.native == native), None)


def native_profile(kind: Kind, decimal: str = ".") -> Profile:
    """followup's own format: each column read from the column of the same name."""
    columns = tuple(Column(name, (name,)) for name in columns_of(kind))
    return Profile("followup's own", kind, columns, decimal=decimal, report_unknown=True)


@dataclass(frozen=True, slots=True)
class Bound:
    """A profile over one file's header: which columns are there, and the rows it makes."""

    profile: Profile
    header: tuple[str, ...]
    #: The native columns this file gives (a source present, or a default), in order.
    native_header: tuple[str, ...]
    #: native column -> the positions of its sources present in the header.
    positions: Mapping[str, tuple[int, ...]]
    #: The file's columns that map to nothing.
    unmapped: tuple[str, ...]
    #: Each native column of native_header with the positions of its sources.
    plan: tuple[tuple[Column, tuple[int, ...]], ...] = ()

    def label(self, native: str) -> str:
        """How an error names a native column: the file's column, and followup's."""
        at = self.positions.get(native, ())
        if not at or self.profile.report_unknown:
            return native
        return f"{' | '.join(self.header[i] for i in at)} ({native})"

    def rows(
        self,
        rows: Iterable[tuple[int, list[str]]],
        rejected: Callable[[int, list[FieldError]], None],
    ) -> Iterator[tuple[int, list[str]]]:
        """The file's rows -> native rows (line of the record's first line, cells in the
        order of native_header). A record that cannot be mapped goes to `rejected` instead,
        with each of its lines' errors at that line (a grouped order's later lines too)."""
        for first, lines in self._records(rows):
            mapped: list[list[str]] = []
            failed: list[tuple[int, list[FieldError]]] = []
            for line, cells in lines:
                errors: list[FieldError] = []
                mapped.append(self._map(cells, errors))
                if errors:
                    failed.append((line, errors))
            if failed:
                for line, errors in failed:
                    rejected(line, errors)
                continue
            yield first, self._merge(mapped)

    def _records(
        self, rows: Iterable[tuple[int, list[str]]]
    ) -> Iterator[tuple[int, list[tuple[int, list[str]]]]]:
        """Each record's first line and its lines (each with its line): one line each, or a
        group."""
        key = self.profile.group_by
        if key is None:
            for line, cells in rows:
                yield line, [(line, cells)]
            return
        at = self.header.index(key)
        group: list[tuple[int, list[str]]] = []
        first, value = 0, None
        for line, cells in rows:
            this = cells[at].strip() if at < len(cells) else ""
            if group and this == value and this:
                group.append((line, cells))
                continue
            if group:
                yield first, group
            group, first, value = [(line, cells)], line, this
        if group:
            yield first, group

    def _map(self, cells: list[str], errors: list[FieldError]) -> list[str]:
        if len(cells) != len(self.header):
            errors.append(
                FieldError("", f"has {len(cells)} cells, the header has {len(self.header)} columns")
            )
            return []
        out = []
        for column, at in self.plan:
            value = next((cells[i].strip() for i in at if cells[i].strip()), "")
            try:
                out.append(self._value(column, value) if value else "")
            except FieldError as exc:
                errors.append(FieldError(self.label(column.native), exc.reason))
                out.append("")
        return out

    def _value(self, column: Column, value: str) -> str:
        value = column.values.get(value.casefold(), value)
        if column.format:
            try:
                value = datetime.strptime(value, column.format).isoformat()
            except ValueError:
                raise FieldError(
                    column.native, f"{value!r} does not match the format {column.format!r}"
                ) from None
        if column.native == "amount" and self.profile.decimal != ".":
            value = plain_number(value, column.native, self.profile.decimal)
        return value

    def _merge(self, mapped: list[list[str]]) -> list[str]:
        """A group's lines -> one row: each column's first non-empty cell, a default where
        none is, and the items column summarised."""
        merged = []
        for at, native in enumerate(self.native_header):
            cells = [m[at] for m in mapped if m[at]]
            value = cells[0] if cells else ""
            if native == self.profile.items and len(cells) > 1:
                value = f"{value} (+{len(cells) - 1} more)"
            if not value:
                column = self.profile.column(native)
                value = (column.default or "") if column is not None else ""
            merged.append(value)
        return merged


def bind(profile: Profile, header: list[str], file: str) -> Bound:
    """The profile over a file's header; HeaderError names what the file lacks."""
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise HeaderError(f"{file}:1: column(s) {', '.join(duplicated)} appear more than once")
    positions: dict[str, tuple[int, ...]] = {}
    native_header = []
    plan = []
    for column in profile.columns:
        at = tuple(header.index(s) for s in column.sources if s in header)
        if at or column.default is not None:
            positions[column.native] = at
            native_header.append(column.native)
            plan.append((column, at))
    missing = [
        name
        for name in REQUIRED[profile.kind]
        if name not in positions and STAND_INS.get(name) not in positions
    ]
    if missing:
        raise HeaderError(f"{file}:1: {_missing(profile, missing)}")
    if profile.group_by is not None and profile.group_by not in header:
        raise HeaderError(
            f"{file}:1: missing column {profile.group_by!r} (the {profile.name} profile "
            "groups the lines of one record by it)"
        )
    used = {i for at in positions.values() for i in at}
    unmapped = tuple(h for i, h in enumerate(header) if i not in used)
    return Bound(profile, tuple(header), tuple(native_header), positions, unmapped, tuple(plan))


def _missing(profile: Profile, missing: list[str]) -> str:
    kind = profile.kind
    if profile.report_unknown:
        return (
            f"missing required column(s) {', '.join(missing)} "
            f"(a {kind.value} file has {', '.join(REQUIRED[kind])} "
            f"[, {', '.join(OPTIONAL[kind])}])"
        )
    wanted = []
    for name in missing:
        column = profile.column(name)
        sources = " or ".join(repr(s) for s in column.sources) if column else ""
        wanted.append(f"{name} ({sources or 'not mapped'})")
    return (
        f"missing required column(s) for the {profile.name} profile: {', '.join(wanted)}; "
        f"map them, or give a value for every row in [import.{kind.value}.defaults], in "
        "config.toml (`--preset config`, docs/clients.md#your-own-export)"
    )


def describe(bound: Bound, not_stored: tuple[str, ...] = ()) -> list[str]:
    """How each of the file's columns maps (`followup import ... --explain`), one per line."""
    profile = bound.profile
    lines = [f"profile: {profile.name} ({profile.kind.value}; decimal mark {profile.decimal!r})"]
    rows: list[tuple[str, str]] = []
    if profile.group_by is not None:
        rows.append((profile.group_by, "groups consecutive lines with the same value: one record"))
    for native in bound.native_header:
        column = profile.column(native)
        assert column is not None
        at = bound.positions[native]
        source = " | ".join(bound.header[i] for i in at) if at else "(not in the file)"
        notes = []
        if column.values:
            notes.append(", ".join(f"{k} -> {v}" for k, v in column.values.items()))
        if column.format:
            notes.append(f"format {column.format}")
        if native == profile.items:
            notes.append("a group's first, then (+N more)")
        if column.default is not None:
            notes.append(f"default {column.default!r}")
        if native in not_stored:
            notes.append("not stored by this version of followup")
        rows.append((source, native + (f"  [{'; '.join(notes)}]" if notes else "")))
    width = min(max((len(s) for s, _ in rows), default=0), 40)
    lines += [f"  {source:<{width}} -> {target}" for source, target in rows]
    if bound.unmapped:
        what = "unknown" if profile.report_unknown else "ignored"
        lines.append(f"{what}: {', '.join(bound.unmapped)}")
    return lines
