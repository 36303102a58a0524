"""The ledger on PostgreSQL, for production and for several daemons on one database.

Several processes write at once here: a claim selects due touches FOR UPDATE SKIP LOCKED (each
daemon takes a disjoint set without waiting), state changes lock their rows before they are
checked, and inserts say with RETURNING which rows are this call's. Bulk writes send one array
per column (unnest): one statement for any number of rows, nothing for psycopg to parse per
batch, and statement triggers (migration 0007) that run once per batch, not once per row.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Insert,
    Interval,
    Select,
    String,
    Table,
    TextClause,
    bindparam,
    func,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from followup.domain.statuses import WAITING, TouchStatus
from followup.domain.touches import NewTouch
from followup.storage.engine import chunks
from followup.storage.ledger import Change, Created, Event, HandOff, Ledger, transition_statement
from followup.storage.tables import SENT_PREDICATE, touch_events, touches


class PostgresLedger(Ledger):
    def insert(self, table: Table) -> Insert:
        return postgresql.insert(table)

    def insert_new_touches(
        self, conn: Connection, batch: list[NewTouch], now: datetime
    ) -> list[Created]:
        """Insert-if-absent; RETURNING gives the rows this statement created (other planners
        may be inserting at once)."""
        columns = {
            "client_id": [t.client_id for t in batch],
            "campaign": [t.campaign for t in batch],
            "occurrence": [t.occurrence for t in batch],
            "status": [t.status.value for t in batch],
            "due_at": [t.due_at for t in batch],
            "not_after": [t.not_after for t in batch],
            "next_attempt_at": [t.due_at for t in batch],
            "template": [t.template for t in batch],
            "occasion": [t.occasion for t in batch],
            "purchase_id": [t.purchase_id for t in batch],
            "reason": [t.reason for t in batch],
            "attempts": [0] * len(batch),
            "created_at": [now] * len(batch),
            "updated_at": [now] * len(batch),
        }
        return [tuple(row) for row in conn.execute(_INSERT_TOUCHES, columns)]

    def insert_events(self, conn: Connection, rows: Sequence[Event]) -> None:
        if rows:
            conn.execute(
                touch_events.insert(),
                [
                    {"touch_id": t, "at": at, "from_status": f, "to_status": to, "detail": d}
                    for t, at, f, to, d in rows
                ],
            )

    def claim(
        self, conn: Connection, owner: str, now: datetime, lease: timedelta, limit: int
    ) -> list[tuple[int, str]]:
        due = (
            select(touches.c.id, touches.c.status)
            .where(
                touches.c.status.in_(WAITING),
                touches.c.next_attempt_at <= now,
                touches.c.not_after >= now,
            )
            .order_by(touches.c.next_attempt_at, touches.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        found = [(row.id, row.status) for row in conn.execute(due)]
        if not found:
            return []
        ids = [touch_id for touch_id, _ in found]
        # By id only: the rows are locked FOR UPDATE, they cannot change in between.
        result = conn.execute(
            update(touches)
            .where(touches.c.id.in_(ids))
            .values(
                status=TouchStatus.SENDING.value,
                updated_at=now,
                lease_owner=owner,
                lease_expires_at=_DATABASE_TIME + lease,
                attempts=touches.c.attempts + 1,
                # Set again at hand-off: a claimed touch without one was never given to the
                # mailer.
                message_id=None,
            )
        )
        if result.rowcount != len(ids):
            raise RuntimeError(f"claimed {result.rowcount} of {len(ids)} locked touches")
        return found

    def database_time(self, conn: Connection) -> datetime:
        """The server's time when the statement started: one clock for every daemon."""
        found: datetime = conn.execute(select(_DATABASE_TIME)).scalar_one()
        return found

    def still_in(self, conn: Connection, ids: list[int], status: TouchStatus) -> set[int]:
        # Locked until the end of the transaction: nobody else moves them in between.
        current = (
            select(touches.c.id)
            .where(touches.c.id.in_(ids), touches.c.status == status.value)
            .with_for_update()
        )
        return {row.id for row in conn.execute(current)}

    def apply_changes(
        self,
        conn: Connection,
        from_status: TouchStatus,
        columns: tuple[str, ...],
        group: list[Change],
    ) -> None:
        conn.execute(
            transition_statement(columns),
            [
                {
                    "_id": change.touch_id,
                    "_from": from_status.value,
                    "status": change.to_status.value,
                    "updated_at": change.at,
                    **change.values,
                }
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
        rows = [
            {
                "_id": item.touch_id,
                "_owner": owner,
                "_lease": lease,
                "message_id": item.message_id,
                "updated_at": now,
                **item.values,
            }
            for item in group
        ]
        return int(conn.execute(_hand_off(columns), rows).rowcount)

    def sent_since(self, conn: Connection, since: datetime) -> int:
        """The partial index's own term, as text: with a bound value, a prepared statement's
        generic plan (psycopg prepares what runs five times) could not use it."""
        query = select(func.count()).where(text(SENT_PREDICATE), touches.c.updated_at >= since)
        return int(conn.execute(query).scalar_one())

    def mark_planned(self, conn: Connection, versions: Sequence[tuple[int, int]]) -> None:
        if versions:
            ids, numbers = zip(*versions, strict=True)
            conn.execute(_MARK_PLANNED, {"ids": list(ids), "versions": list(numbers)})

    def upsert(
        self,
        conn: Connection,
        table: Table,
        rows: Sequence[dict[str, Any]],
        key: str,
        keep: Sequence[str] = (),
    ) -> None:
        """One array per column (psycopg ran an executemany as one INSERT per row, so that the
        purchases' statement triggers ran once per row). The columns' Python-side defaults
        (SQLAlchemy's, which this text does not apply) go in for the columns the rows lack."""
        if not rows:
            return
        updated = tuple(c for c in rows[0] if c != key and c not in keep)
        defaults = {
            column.name: column.default.arg  # type: ignore[attr-defined]
            for column in table.columns
            if column.name not in rows[0]
            and column.default is not None
            and column.default.is_scalar
        }
        names = (*rows[0], *defaults)
        arrays = {
            f"c{n}": [row[name] for row in rows]
            if name in rows[0]
            else [defaults[name]] * len(rows)
            for n, name in enumerate(names)
        }
        for values in arrays.values():
            # SQLAlchemy's UTCDateTime refuses a naive datetime; in an array, PostgreSQL would
            # read it in the session's time zone.
            if any(isinstance(v, datetime) and v.utcoffset() is None for v in values):
                raise ValueError(f"a naive datetime cannot be stored in {table.name}")
        conn.execute(_upsert(table, names, key, updated), arrays)

    def by_key(
        self, conn: Connection, key: Any, values: Iterable[str], selected: Any, most: int
    ) -> Iterator[Any]:
        """Each value of the unnested array looks up its rows (a LATERAL join, one index search
        each), not an IN list: without statistics (a table just imported, in the import's
        transaction or with autovacuum off), PostgreSQL expected an IN list of 500 to match
        every row and read the whole table for each batch; a plain join with the array became
        a hash join that still read the whole table. The LIMIT (`most` rows a value: 1 for a
        unique key) keeps PostgreSQL from flattening the subquery into that hash join."""
        for batch in chunks(sorted(set(values))):
            wanted = (
                func.unnest(bindparam("keys", batch, type_=postgresql.ARRAY(String)))
                .table_valued("value")
                .render_derived(name="wanted")
            )
            found = select(*selected).where(key == wanted.c.value).limit(most).lateral()
            yield from conn.execute(select(*found.c).select_from(wanted).join(found, true()))

    def rows(self, conn: Connection, statement: Select[Any], **values: Any) -> list[Any]:
        return list(conn.execute(statement, values).all())


# ---------------------------------------------------------------------------- statements
# Built from the code's constant column names, never from data; the values are bound.

_TOUCH_COLUMNS = (
    ("client_id", "integer"),
    ("campaign", "varchar"),
    ("occurrence", "date"),
    ("status", "varchar"),
    ("due_at", "timestamptz"),
    ("not_after", "timestamptz"),
    ("next_attempt_at", "timestamptz"),
    ("template", "varchar"),
    ("occasion", "varchar"),
    ("purchase_id", "integer"),
    ("reason", "text"),
    ("attempts", "integer"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_INSERT_TOUCHES = text(
    "INSERT INTO touches ("  # noqa: S608
    + ", ".join(name for name, _ in _TOUCH_COLUMNS)
    + ") SELECT * FROM unnest("
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _TOUCH_COLUMNS)
    + ") ON CONFLICT DO NOTHING RETURNING id, status, reason, campaign"
)
_MARK_PLANNED = text(
    "INSERT INTO planned_clients (client_id, plan_version) SELECT * FROM "
    "unnest(CAST(:ids AS integer[]), CAST(:versions AS integer[])) "
    "ON CONFLICT (client_id) DO UPDATE SET plan_version = excluded.plan_version "
    "WHERE excluded.plan_version > planned_clients.plan_version"
)


#: The clock of leases (`Ledger.database_time`): the server's, at the start of the statement.
_DATABASE_TIME = func.statement_timestamp(type_=DateTime(timezone=True))


@functools.cache
def _hand_off(columns: tuple[str, ...]) -> Any:
    """hand_off_many's UPDATE: only a touch still leased by its owner, lease not expired."""
    return (
        update(touches)
        .where(
            touches.c.id == bindparam("_id"),
            touches.c.status == TouchStatus.SENDING.value,
            touches.c.lease_owner == bindparam("_owner"),
            touches.c.lease_expires_at >= _DATABASE_TIME,
        )
        .values(
            lease_expires_at=_DATABASE_TIME + bindparam("_lease", type_=Interval()),
            message_id=bindparam("message_id"),
            updated_at=bindparam("updated_at"),
            **{column: bindparam(column) for column in columns},
        )
    )


@functools.cache
def _upsert(table: Table, names: tuple[str, ...], key: str, updated: tuple[str, ...]) -> TextClause:
    dialect: Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    quote = dialect.identifier_preparer.quote
    # Strings as unbounded VARCHAR: a cast to VARCHAR(n) would cut a longer value silently,
    # where the column itself refuses it.
    kinds = [table.c[name].type.compile(dialect=dialect) for name in names]
    kinds = ["VARCHAR" if kind.startswith("VARCHAR") else kind for kind in kinds]
    arrays = ", ".join(f"CAST(:c{n} AS {kind}[])" for n, kind in enumerate(kinds))
    action = "DO NOTHING"
    if updated:
        action = "DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in updated)
    return text(
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "  # noqa: S608
        f"SELECT * FROM unnest({arrays}) ON CONFLICT ({quote(key)}) {action}"
    )
