"""The ledger on SQLite, the embedded default.

Its hot statements (the planner's inserts, the dispatcher's claims, hand-offs, outcomes and
history rows) run on the sqlite3 connection under SQLAlchemy's, with values already in the
text form SQLAlchemy stores them in (tests check both forms agree): SQLAlchemy's
per-statement work cost more than SQLite's own for these small statements. Reads of the
dispatcher's prefetch and the planner's facts go the same way (`rows`).

A writer holds SQLite's only write lock for its whole transaction (BEGIN IMMEDIATE, see
followup.storage.engine): nothing else can change a row between a SELECT and the UPDATE that
follows it, so no row locks are needed. Updates find touches by id alone: beside a status
term, SQLite (no statistics) searched ix_touches_due by status and read every touch in that
status.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Insert, Select, Table, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect

from followup.domain.statuses import WAITING, TouchStatus
from followup.domain.touches import NewTouch
from followup.storage.engine import Driver, chunks, driver
from followup.storage.ledger import Change, Created, Event, HandOff, Ledger
from followup.storage.tables import SENT_PREDICATE


class SqliteLedger(Ledger):
    def insert(self, table: Table) -> Insert:
        return sqlite.insert(table)

    def insert_new_touches(
        self, conn: Connection, batch: list[NewTouch], now: datetime
    ) -> list[Created]:
        """A plain executemany of rows already in SQLite's text form, then the new rows read
        back by id: every id above the previous maximum is this transaction's (it holds the
        write lock)."""
        at = stamp(now)
        rows = [
            (
                t.client_id,
                t.campaign,
                day(t.occurrence),
                t.status.value,
                stamp(t.due_at),
                stamp(t.not_after),
                stamp(t.due_at),
                t.template,
                t.occasion,
                t.purchase_id,
                t.reason,
                0,
                at,
                at,
            )
            for t in batch
        ]
        raw = driver(conn)
        (before,) = raw.execute("SELECT coalesce(max(id), 0) FROM touches").fetchone()
        raw.executemany(_INSERT_TOUCHES, rows)
        created = raw.execute(
            "SELECT id, status, reason, campaign FROM touches WHERE id > ?", (before,)
        )
        return [tuple(row) for row in created]

    def insert_events(self, conn: Connection, rows: Sequence[Event]) -> None:
        if rows:
            driver(conn).executemany(
                _INSERT_EVENT, [(t, stamp(at), f, to, d) for t, at, f, to, d in rows]
            )

    def claim(
        self, conn: Connection, owner: str, now: datetime, lease: timedelta, limit: int
    ) -> list[tuple[int, str]]:
        """The UPDATE is by id only: a `status IN (...)` guard there made SQLite search
        ix_touches_due by status instead of the ids from 10 ids on, so that every claim read
        the whole waiting queue (bench/RESULTS.md)."""
        raw = driver(conn)
        at = stamp(now)
        found = raw.execute(_DUE, (*WAITING, at, at, limit)).fetchall()
        if not found:
            return []
        ids = [touch_id for touch_id, _ in found]
        marks = ", ".join("?" * len(ids))
        claim = (
            "UPDATE touches SET status = ?, updated_at = ?, lease_owner = ?, "  # noqa: S608
            f"lease_expires_at = ?, attempts = attempts + 1, message_id = NULL "
            f"WHERE id IN ({marks})"
        )
        sending, expires = TouchStatus.SENDING.value, stamp(self.database_time(conn) + lease)
        changed = raw.execute(claim, (sending, at, owner, expires, *ids)).rowcount
        if changed != len(ids):
            raise RuntimeError(f"claimed {changed} of {len(ids)} locked touches")
        return [(touch_id, status) for touch_id, status in found]

    def still_in(self, conn: Connection, ids: list[int], status: TouchStatus) -> set[int]:
        marks = ", ".join("?" * len(ids))
        query = f"SELECT id, status FROM touches WHERE id IN ({marks})"  # noqa: S608
        return {row[0] for row in driver(conn).execute(query, ids) if row[1] == status.value}

    def apply_changes(
        self,
        conn: Connection,
        from_status: TouchStatus,
        columns: tuple[str, ...],
        group: list[Change],
    ) -> None:
        driver(conn).executemany(
            _transition(columns),
            [
                (
                    change.to_status.value,
                    stamp(change.at),
                    *[value(change.values[column]) for column in columns],
                    change.touch_id,
                    from_status.value,
                )
                for change in group
            ],
        )

    def hand_off_group(
        self,
        conn: Connection,
        columns: tuple[str, ...],
        group: list[HandOff],
        owner: str,
        now: datetime,
        lease: timedelta,
    ) -> int:
        at, clock = stamp(now), self.database_time(conn)
        until, judged = stamp(clock + lease), stamp(clock)
        rows = [
            (
                until,
                item.message_id,
                at,
                *[value(item.values[column]) for column in columns],
                item.touch_id,
                owner,
                judged,
            )
            for item in group
        ]
        return int(driver(conn).executemany(_hand_off(columns), rows).rowcount)

    def sent_since(self, conn: Connection, since: datetime) -> int:
        """SQLite picks the partial index on its own today; INDEXED BY keeps it so whatever a
        later SQLite or an ANALYZE makes of its plans (through ix_touches_due by status, a
        count read every touch ever sent), and fails loudly if the index is missing."""
        found = driver(conn).execute(_SENT_SINCE, (stamp(since),)).fetchone()
        return int(found[0])

    def mark_planned(self, conn: Connection, versions: Sequence[tuple[int, int]]) -> None:
        if versions:
            driver(conn).executemany(_MARK_PLANNED, versions)

    def upsert(
        self,
        conn: Connection,
        table: Table,
        rows: Sequence[dict[str, Any]],
        key: str,
        keep: Sequence[str] = (),
    ) -> None:
        """One statement compiled once for its columns, run for all the rows at once (an
        executemany): a statement holding the rows' values was compiled anew for each batch,
        which took two thirds of an import."""
        if rows:
            updated = tuple(c for c in rows[0] if c != key and c not in keep)
            conn.execute(_upsert(table, key, updated), list(rows))

    def by_key(
        self, conn: Connection, key: Any, values: Iterable[str], selected: Any, most: int
    ) -> Iterator[Any]:
        """An IN list, searched through the key's index (SQLite has no statistics to mislead
        it); `most` needs no limit here: the callers' keys match at most that many rows or
        want them all."""
        for batch in chunks(sorted(set(values))):
            yield from conn.execute(select(*selected).where(key.in_(batch)))

    def rows(self, conn: Connection, statement: Select[Any], **values: Any) -> list[Any]:
        """Through the driver: the statement (the cache key) is compiled once, its expanding IN
        lists get their `?` marks, and each column's value goes through the result processor
        SQLAlchemy would use. SQLAlchemy's own execution (parameter processing, result
        metadata, a Row per row) cost the dispatcher's prefetch more than SQLite's work. Its
        parameters must need no bind processing (ids, text). It runs in the connection's
        transaction (begun here if need be), as SQLAlchemy would run it: a reader's queries see
        one snapshot."""
        return _compiled(statement).run(driver(conn), values)


# ---------------------------------------------------------------------------- values


def stamp(instant: datetime) -> str:
    """An aware datetime as SQLAlchemy's UTCDateTime stores it on SQLite (UTC,
    "2027-01-01 10:00:00.000000")."""
    if instant.utcoffset() is None:
        raise ValueError(f"a naive datetime cannot be stored: {instant!r}")
    # Kept by the UTC instant: two local times of a repeated hour (fold 0 and 1) compare
    # and hash equal, but are an hour apart.
    return _utc_stamp(instant.astimezone(UTC))


@functools.lru_cache(maxsize=4096)
def _utc_stamp(utc: datetime) -> str:
    """The planner's few distinct due times are formatted once (a few hundred in a day; the
    dispatcher's clock readings, all different, only pass through)."""
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}"
    )


def day(value: date) -> str:
    """A date as SQLAlchemy stores it on SQLite ("2027-01-01")."""
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def value(item: Any) -> Any:
    """A value of a touches column in SQLite's form, as SQLAlchemy would bind it."""
    if isinstance(item, datetime):
        return stamp(item)
    if isinstance(item, date):
        return day(item)
    return item


# ---------------------------------------------------------------------------- statements
# Built from the code's constant column names, never from data; the values are bound.

#: The columns insert_new_touches fills, in the order of its rows.
_TOUCH_COLUMNS = (
    "client_id",
    "campaign",
    "occurrence",
    "status",
    "due_at",
    "not_after",
    "next_attempt_at",
    "template",
    "occasion",
    "purchase_id",
    "reason",
    "attempts",
    "created_at",
    "updated_at",
)
_INSERT_TOUCHES = (
    f"INSERT INTO touches ({', '.join(_TOUCH_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(_TOUCH_COLUMNS))}) ON CONFLICT DO NOTHING"
)
_INSERT_EVENT = (
    "INSERT INTO touch_events (touch_id, at, from_status, to_status, detail) VALUES (?, ?, ?, ?, ?)"
)
_DUE = (
    "SELECT id, status FROM touches "  # noqa: S608
    f"WHERE status IN ({', '.join('?' * len(WAITING))}) AND next_attempt_at <= ? "
    "AND not_after >= ? ORDER BY next_attempt_at, id LIMIT ?"
)
_SENT_SINCE = (
    f"SELECT count(*) FROM touches INDEXED BY ix_touches_sent "  # noqa: S608
    f"WHERE {SENT_PREDICATE} AND updated_at >= ?"
)
_MARK_PLANNED = (
    "INSERT INTO planned_clients (client_id, plan_version) VALUES (?, ?) "
    "ON CONFLICT (client_id) DO UPDATE SET plan_version = excluded.plan_version "
    "WHERE excluded.plan_version > planned_clients.plan_version"
)


@functools.cache
def _transition(columns: tuple[str, ...]) -> str:
    """transition_many's UPDATE, guarded by the status it expects."""
    assignments = ", ".join(f"{column} = ?" for column in ("status", "updated_at", *columns))
    return f"UPDATE touches SET {assignments} WHERE id = ? AND status = ?"  # noqa: S608


@functools.cache
def _hand_off(columns: tuple[str, ...]) -> str:
    """hand_off_many's UPDATE: only a touch still leased by its owner, lease not expired."""
    names = ("lease_expires_at", "message_id", "updated_at", *columns)
    assignments = ", ".join(f"{column} = ?" for column in names)
    return (
        f"UPDATE touches SET {assignments} "  # noqa: S608
        f"WHERE id = ? AND status = '{TouchStatus.SENDING.value}' AND lease_owner = ? "
        "AND lease_expires_at >= ?"
    )


@functools.cache
def _upsert(table: Table, key: str, updated: tuple[str, ...]) -> Any:
    statement = sqlite.insert(table)
    return statement.on_conflict_do_update(
        index_elements=[key], set_={c: getattr(statement.excluded, c) for c in updated}
    )


class _Compiled:
    """A SELECT compiled once for SQLite and run through the driver (see SqliteLedger.rows)."""

    __slots__ = ("convert", "expanding", "make", "names", "required", "sql", "values")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.names = tuple(compiled.positiontup or ())
        binds = compiled.binds
        self.expanding = frozenset(name for name in self.names if binds[name].expanding)
        self.values = dict(compiled.params)
        #: Parameters without a value in the statement: the caller must give them.
        self.required = frozenset(name for name in self.names if binds[name].required)
        for name in self.names:
            if binds[name].type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise ValueError(f"parameter {name!r} needs SQLAlchemy's processing")
        # What SQLAlchemy does to a column's value, for the columns where it does something.
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]
        self.convert = tuple((n, f) for n, f in enumerate(processors) if f is not None)
        #: Rows by position and by the names SQLite gives the columns, as SQLAlchemy's.
        self.make: Callable[[Iterable[Any]], Any] | None = None

    def run(self, raw: Driver, values: dict[str, Any]) -> list[Any]:
        sql, parameters = self.sql, []
        missing = self.required - values.keys()
        if missing:
            raise ValueError(f"no value for the parameter(s) {', '.join(sorted(missing))}")
        for name in self.names:
            given = values[name] if name in values else self.values[name]
            if name in self.expanding:
                marks = ", ".join("?" * len(given))
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks, 1)
                parameters.extend(given)
            else:
                parameters.append(given)
        cursor = raw.execute(sql, parameters)
        make, convert = self.make, self.convert
        if make is None:
            names = [column[0] for column in cursor.description]
            shape: Any = collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]
            if list(shape._fields) != names:
                raise ValueError(f"column names that a row cannot have as attributes: {names}")
            make = self.make = shape._make
        if not convert:
            return [make(row) for row in cursor]
        found = []
        for row in cursor:
            processed = list(row)
            for n, process in convert:
                processed[n] = process(processed[n])
            found.append(make(processed))
        return found


@functools.cache
def _compiled(statement: Select[Any]) -> _Compiled:
    return _Compiled(statement, sqlite.dialect())
