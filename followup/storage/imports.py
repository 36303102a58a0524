"""An import's writes: a batch of records merged into reps, clients or purchases at the
database's bulk rate. Each row is new (inserted), updated (a column it gives differs from the
stored one) or unchanged: an unchanged row is not written at all, so its `updated_at` stays
and the planning triggers (migration 0007) do not fire for it.

Only the columns a record has are written: a column the file does not have keeps its stored
value (a new row takes the column's default). A column may follow another (`Target.follows`):
the client's rep (`rep_id`) changes only when the rep the file names (`file_rep`) changes, so
that an operator's `reassign` survives the next import of the same file.

- SQLite: one `INSERT ... ON CONFLICT DO UPDATE ... WHERE` the row differs, compiled once for
  the batch's columns and run by the sqlite3 driver for every row of the batch (an
  executemany), values in SQLite's stored text form (the writer holds the write lock: the ids
  above the previous maximum are the new rows).
- PostgreSQL: the rows COPY'd (psycopg 3) into a temporary table, then one
  `INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE` the row differs, which says of each
  row it wrote whether it was new; the purchases' statement triggers run once a batch.

The caller owns the transaction (one for the whole file) and has rejected duplicate keys.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import Connection, Date, DateTime, Table, TypeDecorator
from sqlalchemy.dialects import postgresql

from followup.storage.dialects import ledger_for
from followup.storage.engine import CHUNK, driver
from followup.storage.sqlite import value
from followup.storage.tables import clients


@dataclass(frozen=True)
class Target:
    """How the rows of one table are merged."""

    table: Table
    #: The columns set to the import's time when a row is inserted, never updated.
    on_insert: tuple[str, ...] = ()
    #: (column, the column whose change alone lets it change): rep_id follows file_rep.
    follows: tuple[tuple[str, str], ...] = ()
    key: str = "external_id"
    #: Set to the import's time whenever a row is written; never compared.
    stamp: str = "updated_at"


@dataclass
class Merged:
    new: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, other: Merged) -> None:
        self.new += other.new
        self.updated += other.updated
        self.unchanged += other.unchanged


def merge(
    conn: Connection, target: Target, records: Sequence[dict[str, Any]], now: datetime
) -> Merged:
    """Insert the new rows, update the changed ones, leave the others; records with the same
    columns are written together."""
    merged = Merged()
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record), []).append(record)
    write = _postgres if conn.dialect.name == "postgresql" else _sqlite
    for columns, rows in groups.items():
        if target.key not in columns:
            raise ValueError(f"a record of {target.table.name} without {target.key}")
        merged.add(write(conn, _plan(target, columns), rows, now))
    return merged


@dataclass(frozen=True, eq=False)
class _Plan:
    """One group's statement parts: what is inserted, set and compared."""

    target: Target
    given: tuple[str, ...]
    #: Columns the records lack with a default of the code's (SQLAlchemy's), for new rows.
    defaults: dict[str, Any]
    #: The given columns an update writes as they are, and those compared to decide it.
    assigned: tuple[str, ...]
    compared: tuple[str, ...]
    #: (column, the column it follows) for the given columns that follow another.
    following: tuple[tuple[str, str], ...]

    @property
    def inserted(self) -> tuple[str, ...]:
        stamps = (self.target.stamp, *self.target.on_insert)
        return (*self.given, *self.defaults, *stamps)


@functools.cache
def _plan(target: Target, given: tuple[str, ...]) -> _Plan:
    table = target.table
    stamps = {target.stamp, *target.on_insert}
    clash = stamps.intersection(given)
    if clash:
        raise ValueError(f"{', '.join(sorted(clash))} of {table.name} are set by the merge")
    defaults = {
        column.name: column.default.arg  # type: ignore[attr-defined]
        for column in table.columns
        if column.name not in given
        and column.name not in stamps
        and column.default is not None
        and column.default.is_scalar
    }
    leaders = dict(target.follows)
    following = tuple((c, leaders[c]) for c in given if c in leaders)
    for column, leader in following:
        if leader not in given:
            raise ValueError(f"{column} of {table.name} is given without {leader}")
    skipped = {target.key, *leaders}
    assigned = tuple(c for c in given if c not in skipped)
    # A following column changes only with its leader, which is compared: it need not be.
    return _Plan(target, given, defaults, assigned, assigned, following)


def client_zones(conn: Connection, external_ids: set[str]) -> Iterator[tuple[str, int, str]]:
    """(external id, id, timezone) of the clients among `external_ids`: a purchases batch's
    clients. On SQLite through the driver (SQLAlchemy's statement and Row per client cost
    a sixth of a purchases import); the values need no conversion."""
    if conn.dialect.name != "sqlite":
        for row in ledger_for(conn).by_external_id(conn, clients, external_ids, "timezone"):
            yield row.external_id, row.id, row.timezone
        return
    raw = driver(conn)
    wanted = sorted(external_ids)
    for start in range(0, len(wanted), CHUNK):
        part = wanted[start : start + CHUNK]
        marks = ", ".join("?" * len(part))
        yield from raw.execute(
            f"SELECT external_id, id, timezone FROM clients WHERE external_id IN ({marks})",  # noqa: S608
            part,
        )


# ----------------------------------------------------------------------------- SQLite


def _sqlite(conn: Connection, plan: _Plan, rows: list[dict[str, Any]], now: datetime) -> Merged:
    raw = driver(conn)
    table = plan.target.table.name
    at = value(now)
    tail = (*(value(v) for v in plan.defaults.values()), at, *(at for _ in plan.target.on_insert))
    (before,) = raw.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()  # noqa: S608
    written = raw.executemany(_sqlite_statement(plan), _sqlite_rows(plan, rows, tail)).rowcount
    (new,) = raw.execute(f"SELECT count(*) FROM {table} WHERE id > ?", (before,)).fetchone()  # noqa: S608
    return Merged(new=new, updated=written - new, unchanged=len(rows) - written)


def _sqlite_rows(
    plan: _Plan, rows: list[dict[str, Any]], tail: tuple[Any, ...]
) -> Iterator[tuple[Any, ...]]:
    """Each row's values in the statement's order, in SQLite's stored form: only the date
    and time columns need converting (`value`); the others go as they are."""
    pick = operator.itemgetter(*plan.given)
    timed = [n for n, c in enumerate(plan.given) if _is_timed(plan.target.table, c)]
    if len(plan.given) == 1:
        for row in rows:
            yield (value(pick(row)), *tail)
        return
    convert = _stamper()
    for row in rows:
        values = pick(row)
        if timed:
            values = list(values)
            for n in timed:
                values[n] = convert(values[n])
        yield (*values, *tail)


def _stamper() -> Callable[[Any], Any]:
    """`value`, each UTC instant converted once (a batch's purchases repeat their dates). Only
    UTC ones: two local times of a repeated hour are equal as keys, yet an hour apart."""
    stamps: dict[datetime, str] = {}

    def convert(item: Any) -> Any:
        if type(item) is datetime and item.tzinfo is UTC:
            found = stamps.get(item)
            if found is None:
                found = stamps[item] = value(item)
            return found
        return value(item)

    return convert


def _is_timed(table: Table, column: str) -> bool:
    """Whether the column holds dates or instants (sqlmodel's UTCDateTime decorates one)."""
    kind = table.c[column].type
    impl = kind.impl if isinstance(kind, TypeDecorator) else kind
    return isinstance(impl, Date | DateTime)


@functools.cache
def _sqlite_statement(plan: _Plan) -> str:
    # Built from the code's column names, never from data; the values are bound.
    table = plan.target.table.name
    names = plan.inserted
    insert = (
        f"INSERT INTO {table} ({', '.join(names)}) "  # noqa: S608
        f"VALUES ({', '.join('?' * len(names))}) ON CONFLICT ({plan.target.key}) "
    )
    if not plan.compared:
        return insert + "DO NOTHING"
    sets = [f"{c} = excluded.{c}" for c in plan.assigned]
    sets += [
        f"{c} = CASE WHEN {table}.{leader} IS excluded.{leader} THEN {table}.{c} "
        f"ELSE excluded.{c} END"
        for c, leader in plan.following
    ]
    sets.append(f"{plan.target.stamp} = excluded.{plan.target.stamp}")
    old = ", ".join(f"{table}.{c}" for c in plan.compared)
    new = ", ".join(f"excluded.{c}" for c in plan.compared)
    return insert + f"DO UPDATE SET {', '.join(sets)} WHERE ({old}) IS NOT ({new})"


# ----------------------------------------------------------------------------- PostgreSQL


def _postgres(conn: Connection, plan: _Plan, rows: list[dict[str, Any]], now: datetime) -> Merged:
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, psycopg.Connection)
    create, copy, merge_rows, drop = _postgres_statements(plan)
    for name in plan.given:
        if _is_timed(plan.target.table, name):
            _check_aware(plan, name, rows)
    with raw.cursor() as cursor:
        cursor.execute(create)
        with cursor.copy(copy) as sink:
            write = sink.write_row
            if len(plan.given) == 1:
                (only,) = plan.given
                for row in rows:
                    write((row[only],))
            else:
                pick = operator.itemgetter(*plan.given)
                for row in rows:
                    write(pick(row))
        cursor.execute(merge_rows, (*plan.defaults.values(), now))
        found = cursor.fetchone()
        cursor.execute(drop)
    assert found is not None
    new, written = int(found[0]), int(found[1])
    return Merged(new=new, updated=written - new, unchanged=len(rows) - written)


def _check_aware(plan: _Plan, name: str, rows: list[dict[str, Any]]) -> None:
    """In a timestamptz column, PostgreSQL would read a naive datetime in the session's zone;
    SQLAlchemy's UTCDateTime refuses one, and so does this."""
    if any(isinstance(row[name], datetime) and row[name].utcoffset() is None for row in rows):
        raise ValueError(f"a naive datetime cannot be stored in {plan.target.table.name}.{name}")


#: The staging table of a batch: created in the transaction, dropped after the merge.
_STAGING = "followup_import_rows"


@functools.cache
def _postgres_statements(plan: _Plan) -> tuple[str, str, str, str]:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    table = quote(plan.target.table.name)
    given = ", ".join(quote(c) for c in plan.given)
    # The staging table has the target's types (VARCHAR(n) refuses a longer value as the
    # table would); it exists only in this transaction.
    create = (
        f"CREATE TEMPORARY TABLE {_STAGING} ON COMMIT DROP AS "  # noqa: S608
        f"SELECT {given} FROM {table} WITH NO DATA"
    )
    copy = f"COPY {_STAGING} ({given}) FROM STDIN"
    kinds = {c: plan.target.table.c[c].type.compile(dialect=dialect) for c in plan.defaults}
    values = [given, *(f"CAST(%s AS {kinds[c]})" for c in plan.defaults)]
    # The import's time (the clock below), once for the stamp and each on-insert column.
    stamps = 1 + len(plan.target.on_insert)
    names = ", ".join(quote(c) for c in plan.inserted)
    key = quote(plan.target.key)
    select = ", ".join(values) + ", " + ", ".join(["now_"] * stamps)
    action = "DO NOTHING"
    if plan.compared:
        sets = [f"{quote(c)} = EXCLUDED.{quote(c)}" for c in plan.assigned]
        sets += [
            f"{quote(c)} = CASE WHEN {table}.{quote(leader)} IS NOT DISTINCT FROM "
            f"EXCLUDED.{quote(leader)} THEN {table}.{quote(c)} ELSE EXCLUDED.{quote(c)} END"
            for c, leader in plan.following
        ]
        stamp = quote(plan.target.stamp)
        sets.append(f"{stamp} = EXCLUDED.{stamp}")
        old = ", ".join(f"{table}.{quote(c)}" for c in plan.compared)
        new = ", ".join(f"EXCLUDED.{quote(c)}" for c in plan.compared)
        action = f"DO UPDATE SET {', '.join(sets)} WHERE ROW({old}) IS DISTINCT FROM ROW({new})"
    merge = (
        f"WITH written AS (INSERT INTO {table} ({names}) "  # noqa: S608
        f"SELECT {select} FROM {_STAGING} "
        f"CROSS JOIN (SELECT CAST(%s AS timestamptz) AS now_) AS clock "
        f"ON CONFLICT ({key}) {action} RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FROM written"
    )
    return create, copy, merge, f"DROP TABLE {_STAGING}"
