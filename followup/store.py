"""The database boundary: engine, migrations, bulk upserts, the ledger's state changes.

SQLite (the embedded default, in WAL mode) and PostgreSQL (by URL) behave the same here:
insert-if-absent on the touch key, claims that take a lease in one statement
(FOR UPDATE SKIP LOCKED on PostgreSQL), every state change in a transaction with its history row.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import os
import sqlite3
import stat
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, StatementError
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlmodel import SQLModel

from followup.errors import ConfigError, DatabaseNotReady
from followup.models import SENT_PREDICATE, ClientStatus, TouchStatus
from followup.planner import NewTouch

reps = SQLModel.metadata.tables["reps"]
clients = SQLModel.metadata.tables["clients"]
purchases = SQLModel.metadata.tables["purchases"]
touches = SQLModel.metadata.tables["touches"]
touch_events = SQLModel.metadata.tables["touch_events"]
suppressions = SQLModel.metadata.tables["suppressions"]
watermarks = SQLModel.metadata.tables["planner_watermarks"]
survey_answers = SQLModel.metadata.tables["survey_answers"]
runs = SQLModel.metadata.tables["runs"]
planned_clients = SQLModel.metadata.tables["planned_clients"]
purchase_versions = SQLModel.metadata.tables["purchase_versions"]

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Rows per INSERT statement in bulk operations (SQLite allows 32766 bound parameters).
CHUNK = 500


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def open_engine(url: str, *, create_dir: bool = True) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout and serialised write transactions."""
    try:
        make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"[database] url {url!r} is not a database URL (e.g. sqlite:///var/followup.db or "
            "postgresql+psycopg://user@host/followup)"
        ) from None
    path = sqlite_path(url)
    if path is not None:
        if create_dir:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() and create_dir:
            # Client data is private: the database file is readable by its owner only.
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, stat.S_IRUSR | stat.S_IWUSR)
            os.close(fd)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # IMMEDIATE takes the write lock up front, so two writers queue instead of
            # failing with "database is locked" half-way through a transaction.
            # Readers (see `reader`) begin deferred: with WAL they never block the writer.
            if conn.info.pop(_BEGUN, False):
                return  # `writing` has begun it, without blocking its event loop
            if conn.get_execution_options().get("followup_readonly"):
                conn.exec_driver_sql("BEGIN")
            else:
                _begin_immediate(conn)

        return engine
    try:
        # hide_parameters: a database error must not print client data.
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"[database] url: no driver for {make_url(url).drivername!r} ({exc}); followup "
            "supports sqlite:/// and postgresql+psycopg:// (pip install 'followup[postgres]')"
        ) from None


#: How long SQLite waits for a lock before "database is locked".
BUSY_TIMEOUT_MS = 30_000
#: How long a writer first retries for the write lock in short steps (see _begin_immediate).
QUICK_WAIT = 0.25


def _begin_immediate(conn: Connection) -> None:
    """BEGIN IMMEDIATE: take SQLite's write lock, waiting for it as long as BUSY_TIMEOUT_MS.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15 ... ms between tries, while the
    dispatcher's write transactions last a fraction of a millisecond: with several processes
    sending, most of each wait was sleeping after the lock was free again. So the first
    QUICK_WAIT seconds retry every 50 us to 1 ms; after that SQLite's handler waits as before
    (and its error, wrapped by SQLAlchemy, is what the caller sees)."""
    with _busy_handler_off(conn) as dbapi:
        pause, deadline = 0.00005, time.monotonic() + QUICK_WAIT
        while time.monotonic() < deadline:
            if _try_write_lock(dbapi):
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.001)
    conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def _busy_handler_off(conn: Connection) -> Iterator[sqlite3.Connection]:
    """The sqlite3 connection under `conn` with SQLite's busy handler off (a locked database
    answers at once), for the writers' own waits; the handler is back afterwards."""
    dbapi = conn.connection.dbapi_connection
    assert isinstance(dbapi, sqlite3.Connection)
    raw = _Driver(dbapi)
    raw.execute("PRAGMA busy_timeout=0")
    try:
        yield dbapi
    finally:
        raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _try_write_lock(dbapi: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE, once: whether the write lock was taken (False while another writer
    holds it); any other error is raised as SQLAlchemy raises it."""
    try:
        dbapi.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            return False
        raise _wrapped("BEGIN IMMEDIATE", exc) from exc
    return True


#: Connection.info key: `writing` took SQLite's write lock, the begin event must not.
_BEGUN = "followup_begun"


class _Writer:
    """Per event loop and engine: the coroutines that wait for SQLite's write lock, one at a
    time, and the connection they write on while `keeping_writer` holds one for them."""

    __slots__ = ("keeping", "kept", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.kept: Connection | None = None
        self.keeping = 0


_writers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[Engine, _Writer]
] = weakref.WeakKeyDictionary()


def _writer(engine: Engine) -> _Writer:
    engines = _writers.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    writer = engines.get(engine)
    if writer is None:
        writer = engines[engine] = _Writer()
    return writer


@asynccontextmanager
async def writing(engine: Engine) -> AsyncIterator[Connection]:
    """`engine.begin()` for a coroutine whose body does not await. On SQLite, while another
    process holds the write lock, the event loop runs the dispatcher's other connections
    (composing, sending) instead of stopping in BEGIN IMMEDIATE: with two processes sending,
    each spent about a tenth of its time waiting there. The coroutines of one loop wait one at
    a time (SQLite has one write lock), so that waiting never holds more than one of the
    pool's connections: the one `keeping_writer` keeps, or one checked out for the
    transaction."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    writer = _writer(engine)
    async with writer.lock:
        kept = writer.kept if writer.keeping else None
        if kept is not None and not _reusable(kept):
            writer.kept = None
            kept.close()  # back to the pool, which rolls back what SQLite still has open
            kept = None
        conn = kept or engine.connect()
        if writer.keeping:
            writer.kept = conn
        try:
            try:
                await _lock_for_write(conn)
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop(_BEGUN, None)
        except BaseException:
            # Never kept after a failure: a COMMIT that failed can leave SQLite's transaction
            # (and its write lock) open where SQLAlchemy sees none.
            if writer.kept is conn:
                writer.kept = None
            conn.close()
            raise
        if writer.kept is conn and not writer.keeping:
            writer.kept = None  # keeping_writer ended during this transaction
        if writer.kept is not conn:
            conn.close()


def _reusable(conn: Connection) -> bool:
    """Whether a kept connection is as a transaction left it: open, and without a transaction
    SQLAlchemy does not know about."""
    if conn.closed or conn.invalidated:
        return False
    dbapi = conn.connection.dbapi_connection
    return not (isinstance(dbapi, sqlite3.Connection) and dbapi.in_transaction)


@asynccontextmanager
async def keeping_writer(engine: Engine) -> AsyncIterator[None]:
    """Within it, `writing(engine)` on this event loop writes on one connection, checked out
    once instead of for each transaction: the dispatcher writes every few messages, and a
    checkout (SQLAlchemy's Connection, its events, the pool) cost more than a small
    transaction's statements. It goes back to the pool at the end (by the transaction still
    open on it, if one is), and after any failed transaction."""
    if engine.dialect.name != "sqlite":
        yield
        return
    writer = _writer(engine)
    writer.keeping += 1
    try:
        yield
    finally:
        writer.keeping -= 1
        # Nothing to await here (a second cancellation would leave it checked out): if a
        # transaction holds it, `writing` closes it at the end of that transaction.
        if not writer.keeping and writer.kept is not None and not writer.lock.locked():
            writer.kept.close()
            writer.kept = None


async def _lock_for_write(conn: Connection) -> None:
    """BEGIN IMMEDIATE on `conn` without blocking the event loop: retried after the loop has
    run what is ready, then in steps of up to 1 ms, for BUSY_TIMEOUT_MS; then SQLite's error,
    wrapped as SQLAlchemy's. Marks the connection for the begin event (see open_engine)."""
    with _busy_handler_off(conn) as dbapi:
        pause, deadline = 0.0, time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while not _try_write_lock(dbapi):
            if time.monotonic() >= deadline:
                _Driver(dbapi).execute("BEGIN IMMEDIATE")  # a last try: the error, wrapped
                break
            await asyncio.sleep(pause)
            pause = min(max(pause * 2, 0.00005), 0.001)
    conn.info[_BEGUN] = True


@contextmanager
def reader(engine: Engine) -> Iterator[Connection]:
    """A connection for reading only; it is rolled back at the end, so it never writes."""
    with engine.connect() as conn:
        conn.execution_options(followup_readonly=True)
        try:
            yield conn
        finally:
            conn.rollback()


def is_postgres(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


def _script_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _alembic_config(conn: Connection) -> Any:
    config = _script_config()
    config.attributes["connection"] = conn
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to `revision` (followup db upgrade)."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with reader(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def head_revision() -> str:
    """The newest migration shipped with this version (read once per process)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_script_config()).get_current_head()
    assert head is not None
    return str(head)


def check_ready(engine: Engine) -> None:
    """Refuse to work on a database that is missing or behind this version's schema."""
    revision = current_revision(engine)
    if revision is None:
        raise DatabaseNotReady(
            "the database has no followup schema yet; run `followup db upgrade` "
            "(or `followup demo`, which does it)"
        )
    if revision != head_revision():
        raise DatabaseNotReady(
            f"the database schema is at revision {revision}, this followup needs "
            f"{head_revision()}; run `followup db upgrade`"
        )


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())


# ----------------------------------------------------------------------------- bulk writes


def _insert(conn: Connection, table: Table) -> Any:
    if is_postgres(conn):
        return postgresql.insert(table)
    return sqlite.insert(table)


def chunks(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: str,
    keep: Sequence[str] = (),
) -> None:
    """Insert rows (each with the same columns); rows whose `key` exists are updated, except
    the columns in `keep`. A statement compiled once for its columns: one holding the rows'
    values was compiled anew for each batch, which took two thirds of an import."""
    if not rows:
        return
    updated = tuple(c for c in rows[0] if c != key and c not in keep)
    if is_postgres(conn):
        _upsert_unnest(conn, table, rows, key, updated)
        return
    conn.execute(_upsert_sqlite(table, key, updated), list(rows))


@functools.cache
def _upsert_sqlite(table: Table, key: str, updated: tuple[str, ...]) -> Any:
    """SQLite: run for all the rows at once (an executemany)."""
    stmt = sqlite.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[key], set_={c: getattr(stmt.excluded, c) for c in updated}
    )


def _upsert_unnest(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: str,
    updated: tuple[str, ...],
) -> None:
    """PostgreSQL: one statement for the batch, one array per column (unnest). psycopg runs an
    executemany as one INSERT per row, so that the purchases' statement triggers (migration
    0007) ran once per row; a multi-row VALUES statement cost psycopg more to parse than the
    database to run. The columns' Python-side defaults (SQLAlchemy's, which this text does not
    apply) go in for the columns the rows lack."""
    defaults = {
        column.name: column.default.arg  # type: ignore[attr-defined]
        for column in table.columns
        if column.name not in rows[0] and column.default is not None and column.default.is_scalar
    }
    names = (*rows[0], *defaults)
    arrays = {
        f"c{n}": [row[name] for row in rows] if name in rows[0] else [defaults[name]] * len(rows)
        for n, name in enumerate(names)
    }
    for values in arrays.values():
        # SQLAlchemy's UTCDateTime refuses a naive datetime; in an array, PostgreSQL would
        # read it in the session's time zone.
        if any(isinstance(v, datetime) and v.utcoffset() is None for v in values):
            raise ValueError(f"a naive datetime cannot be stored in {table.name}")
    conn.execute(_upsert_unnest_text(table, names, key, updated), arrays)


@functools.cache
def _upsert_unnest_text(
    table: Table, names: tuple[str, ...], key: str, updated: tuple[str, ...]
) -> TextClause:
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
        # Table and column names from the models, never from data; the values are bound.
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "  # noqa: S608
        f"SELECT * FROM unnest({arrays}) ON CONFLICT ({quote(key)}) {action}"
    )


class _SqliteSelect:
    """A SELECT compiled once for SQLite and run through the driver (see `rows`)."""

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

    def run(self, raw: _Driver, values: dict[str, Any]) -> list[Any]:
        sql, parameters = self.sql, []
        missing = self.required - values.keys()
        if missing:
            raise ValueError(f"no value for the parameter(s) {', '.join(sorted(missing))}")
        for name in self.names:
            value = values[name] if name in values else self.values[name]
            if name in self.expanding:
                marks = ", ".join("?" * len(value))
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks, 1)
                parameters.extend(value)
            else:
                parameters.append(value)
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
def _sqlite_select(statement: Select[Any]) -> _SqliteSelect:
    return _SqliteSelect(statement, sqlite.dialect())


def rows(conn: Connection, statement: Select[Any], **values: Any) -> list[Any]:
    """`conn.execute(statement, values).all()`: rows with the same values, read by name or by
    position. On SQLite through the driver: the statement (built once by the caller, it is the
    cache key) is compiled once, its expanding IN lists get their `?` marks, and each column's
    value goes through the result processor SQLAlchemy would use. SQLAlchemy's own execution
    (parameter processing, result metadata, a Row per row) cost the dispatcher's prefetch more
    than SQLite's work. Its parameters must need no bind processing (ids, text)."""
    if is_postgres(conn):
        return list(conn.execute(statement, values).all())
    # In the connection's transaction (begun here if need be), as SQLAlchemy would run it:
    # a reader's queries see one snapshot.
    return _sqlite_select(statement).run(_sqlite(conn), values)


def by_external_id(
    conn: Connection, table: Table, external_ids: Iterable[str], *columns: str
) -> Iterator[Any]:
    """The rows of `table` whose external_id is one of `external_ids`: their external_id, id
    and `columns`, CHUNK ids a query.

    On PostgreSQL, each id of the unnested array looks up its row (a LATERAL join, so one
    index search each), not an IN list: without statistics (a table just imported, in the
    import's transaction or with autovacuum off), PostgreSQL expected an IN list of 500 to
    match every row and read the whole table for each batch, comparing each row with the 500
    values; a plain join with the array became a hash join that still read the whole table."""
    selected = [table.c.external_id, table.c.id, *(table.c[name] for name in columns)]
    postgres = is_postgres(conn)
    for batch in chunks(sorted(set(external_ids))):
        if postgres:
            wanted = (
                func.unnest(bindparam("ids", batch, type_=postgresql.ARRAY(String)))
                .table_valued("external_id")
                .render_derived(name="wanted")
            )
            # LIMIT 1 (external_id is unique) keeps PostgreSQL from flattening the subquery
            # into that hash join.
            found = (
                select(*selected)
                .where(table.c.external_id == wanted.c.external_id)
                .limit(1)
                .lateral()
            )
            query = select(*found.c).select_from(wanted).join(found, true())
        else:
            query = select(*selected).where(table.c.external_id.in_(batch))
        yield from conn.execute(query)


def id_map(conn: Connection, table: Table, external_ids: Iterable[str]) -> dict[str, int]:
    """external id -> internal id for the given ids."""
    return {row.external_id: row.id for row in by_external_id(conn, table, external_ids)}


# ----------------------------------------------------------------------------- plan versions


def changed_clients(conn: Connection) -> list[int]:
    """The ids of the clients whose plan version has moved since a plan last read it (or that
    no plan has read yet), in id order: what the daemon re-plans between its plans of every
    client. A read of the clients, their purchases' counters and planned_clients (no index on
    the versions: each change would have to update it)."""
    c, pc = clients, planned_clients
    stale = (
        select(c.c.id)
        .select_from(with_plan_versions(c.outerjoin(pc, pc.c.client_id == c.c.id)))
        .where((pc.c.plan_version.is_(None)) | (pc.c.plan_version != plan_version()))
        .order_by(c.c.id)
    )
    return [row[0] for row in conn.execute(stale)]


def with_plan_versions(joined: Any) -> Any:
    """`joined` (the clients, maybe joined already) with their purchases' counters, for
    plan_version()."""
    return joined.outerjoin(purchase_versions, purchase_versions.c.client_id == clients.c.id)


def plan_version() -> ColumnElement[int]:
    """A client's plan version: its own counter plus its purchases' (see with_plan_versions).
    Both only rise, so a plan that read a version and records it leaves a client changed
    since with a higher one."""
    return clients.c.plan_version + func.coalesce(purchase_versions.c.version, 0)


def mark_planned(conn: Connection, versions: Sequence[tuple[int, int]]) -> None:
    """Record (client id, plan_version) for clients that a plan has just read at that version,
    in the transaction that inserts their touches. A version only rises: a slower planner that
    read an older one leaves the newer one, and the client is read again if it is still stale.
    One statement for all (SQLite: an executemany on the driver; PostgreSQL: two arrays)."""
    if not versions:
        return
    if is_postgres(conn):
        ids, numbers = zip(*versions, strict=True)
        conn.execute(_MARK_UNNEST, {"ids": list(ids), "versions": list(numbers)})
    else:
        _sqlite(conn).executemany(_MARK_SQLITE, versions)


_MARK_CONFLICT = (
    "ON CONFLICT (client_id) DO UPDATE SET plan_version = excluded.plan_version "
    "WHERE excluded.plan_version > planned_clients.plan_version"
)
# Constants only, no data: the values are bound.
_MARK_SQLITE = (
    "INSERT INTO planned_clients (client_id, plan_version) "  # noqa: S608
    f"VALUES (?, ?) {_MARK_CONFLICT}"
)
_MARK_UNNEST = text(
    "INSERT INTO planned_clients (client_id, plan_version) SELECT * FROM "  # noqa: S608
    f"unnest(CAST(:ids AS integer[]), CAST(:versions AS integer[])) {_MARK_CONFLICT}"
)


# ----------------------------------------------------------------------------- the ledger


def insert_touches(
    conn: Connection,
    new: Iterable[NewTouch],
    now: datetime,
    created_by_status: dict[str, int] | None = None,
    created_by_campaign: dict[str, int] | None = None,
) -> int:
    """Insert-if-absent on (client, campaign, occurrence); returns how many were new, and
    counts them by status in `created_by_status` when given.

    The database refuses duplicates; the code just tries. Two planners running at once
    therefore never create the same touch twice.
    """
    inserted = 0
    postgres = is_postgres(conn)
    for batch in chunks(new):
        if postgres:
            created = _insert_returning(conn, _touch_rows(batch, now))
        else:
            created = _insert_sqlite(conn, batch, now)
        _insert_events(conn, [(row[0], now, None, row[1], row[2]) for row in created])
        inserted += len(created)
        if created_by_status is not None:
            for row in created:
                created_by_status[row[1]] = created_by_status.get(row[1], 0) + 1
        if created_by_campaign is not None:
            for row in created:
                created_by_campaign[row[3]] = created_by_campaign.get(row[3], 0) + 1
    return inserted


def _touch_rows(batch: list[NewTouch], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "client_id": t.client_id,
            "campaign": t.campaign,
            "occurrence": t.occurrence,
            "status": t.status.value,
            "due_at": t.due_at,
            "not_after": t.not_after,
            "next_attempt_at": t.due_at,
            "template": t.template,
            "occasion": t.occasion,
            "purchase_id": t.purchase_id,
            "reason": t.reason,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for t in batch
    ]


_UNNEST_COLUMNS = (
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
_INSERT_UNNEST = text(
    # Built from the constant column list above, never from data.
    "INSERT INTO touches ("  # noqa: S608
    + ", ".join(name for name, _ in _UNNEST_COLUMNS)
    + ") SELECT * FROM unnest("
    + ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in _UNNEST_COLUMNS)
    + ") ON CONFLICT DO NOTHING RETURNING id, status, reason, campaign"
)


def _insert_returning(conn: Connection, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """PostgreSQL: insert-if-absent, the new rows returned (several planners may be inserting
    at once: only RETURNING says which rows are ours). One statement with one array per
    column (unnest): the same SQL text for any number of rows, nothing to parse per batch."""
    columns = {name: [row[name] for row in rows] for name, _ in _UNNEST_COLUMNS}
    return [tuple(row) for row in conn.execute(_INSERT_UNNEST, columns)]


#: The columns insert_touches fills, in the order of its SQLite rows.
_TOUCH_COLUMNS = tuple(name for name, _ in _UNNEST_COLUMNS)
_INSERT_SQLITE = (
    # Built from the constant column list above, never from data.
    f"INSERT INTO touches ({', '.join(_TOUCH_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(_TOUCH_COLUMNS))}) ON CONFLICT DO NOTHING"
)


def _sqlite_stamp(instant: datetime) -> str:
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


def _sqlite_day(day: date) -> str:
    """A date as SQLAlchemy stores it on SQLite ("2027-01-01")."""
    return f"{day.year:04d}-{day.month:02d}-{day.day:02d}"


def _sqlite_value(value: Any) -> Any:
    """A value of a touches column in SQLite's form, as SQLAlchemy would bind it."""
    if isinstance(value, datetime):
        return _sqlite_stamp(value)
    if isinstance(value, date):
        return _sqlite_day(value)
    return value


class _Driver:
    """The sqlite3 connection under a SQLAlchemy connection. The ledger's hot paths on SQLite
    run their statements on it directly: SQLAlchemy's per-statement work (result metadata,
    events) cost more than SQLite's own for these small statements. Errors are raised as
    SQLAlchemy raises them (callers catch SQLAlchemyError), parameters hidden."""

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.raw.execute(statement, parameters)
        except sqlite3.Error as exc:
            raise _wrapped(statement, exc) from exc

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        try:
            return self.raw.executemany(statement, rows)
        except sqlite3.Error as exc:
            raise _wrapped(statement, exc) from exc


def _wrapped(statement: str, exc: sqlite3.Error) -> StatementError:
    return DBAPIError.instance(statement, None, exc, sqlite3.Error, hide_parameters=True)


def _sqlite(conn: Connection) -> _Driver:
    """The driver under `conn`, in a transaction: begun here (BEGIN IMMEDIATE) when `conn`
    has none yet, as SQLAlchemy would begin it, so that the statements that follow are one
    transaction and never commit one by one."""
    if not conn.in_transaction():
        conn.begin()
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlite3.Connection)
    return _Driver(raw)


_SQLITE_EVENT = (
    "INSERT INTO touch_events (touch_id, at, from_status, to_status, detail) VALUES (?, ?, ?, ?, ?)"
)


def _insert_events(
    conn: Connection, rows: Sequence[tuple[int, datetime, str | None, str, str | None]]
) -> None:
    """History rows (touch id, at, from status, to status, detail) in one executemany; on
    SQLite in its text form through the driver (the dispatcher writes several per message)."""
    if not rows:
        return
    if is_postgres(conn):
        conn.execute(
            _EVENT,
            [
                {"touch_id": t, "at": at, "from_status": f, "to_status": to, "detail": d}
                for t, at, f, to, d in rows
            ],
        )
        return
    stamp = _sqlite_stamp
    _sqlite(conn).executemany(_SQLITE_EVENT, [(t, stamp(at), f, to, d) for t, at, f, to, d in rows])


def _insert_sqlite(conn: Connection, batch: list[NewTouch], now: datetime) -> list[tuple[Any, ...]]:
    """SQLite: a plain executemany of rows already in SQLite's text form (no per-value type
    processing), then the new rows read back by id. Safe because
    a SQLite writer holds the database's only write lock (BEGIN IMMEDIATE) for the whole
    transaction: every id above the previous maximum is ours."""
    stamp = _sqlite_stamp
    at = stamp(now)
    rows = [
        (
            t.client_id,
            t.campaign,
            _sqlite_day(t.occurrence),
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
    raw = _sqlite(conn)
    (before,) = raw.execute("SELECT coalesce(max(id), 0) FROM touches").fetchone()
    raw.executemany(_INSERT_SQLITE, rows)
    created = [
        tuple(row)
        for row in raw.execute(
            "SELECT id, status, reason, campaign FROM touches WHERE id > ?", (before,)
        )
    ]
    return created


def transition(
    conn: Connection,
    touch_id: int,
    from_status: TouchStatus,
    to_status: TouchStatus,
    now: datetime,
    detail: str | None = None,
    **values: Any,
) -> bool:
    """Move one touch between states, guarded by its current status; keeps the history row.

    Returns False (and changes nothing) when the touch was no longer in `from_status`.
    """
    result = conn.execute(
        _transition_statement(tuple(sorted(values))),
        {
            "_id": touch_id,
            "_from": from_status.value,
            "status": to_status.value,
            "updated_at": now,
            **values,
        },
    )
    if result.rowcount != 1:
        return False
    _insert_events(conn, [(touch_id, now, from_status.value, to_status.value, detail)])
    return True


_EVENT = touch_events.insert()


@dataclass(frozen=True, slots=True)
class Change:
    """One touch's state change for `transition_many`."""

    touch_id: int
    to_status: TouchStatus
    at: datetime
    detail: str | None
    values: dict[str, Any]


def transition_many(
    conn: Connection, from_status: TouchStatus, changes: Sequence[Change]
) -> list[bool]:
    """`transition` for many touches in the caller's transaction: touches that change the same
    columns share one executemany. Returns, per change, whether the touch was still in
    `from_status` (if not, it is left as it is, without a history row)."""
    ids = [change.touch_id for change in changes]
    postgres = is_postgres(conn)
    still: set[int] = set()
    for chunk in chunks(ids, CHUNK):
        if postgres:
            # Locked until the end of the transaction: nobody else moves them in between.
            current = (
                select(touches.c.id)
                .where(touches.c.id.in_(chunk), touches.c.status == from_status.value)
                .with_for_update()
            )
            still.update(row.id for row in conn.execute(current))
        else:
            # This transaction holds SQLite's only write lock: nothing moves them in between.
            # By ids alone: beside a status term, SQLite (no statistics) searched
            # ix_touches_due by status, reading every touch in it (a claimed batch is
            # "sending") for each group of outcomes recorded.
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT id, status FROM touches WHERE id IN ({marks})"  # noqa: S608
            status = from_status.value
            still.update(row[0] for row in _sqlite(conn).execute(query, chunk) if row[1] == status)
    groups: dict[tuple[str, ...], list[Change]] = {}
    for change in changes:
        if change.touch_id in still:
            groups.setdefault(tuple(sorted(change.values)), []).append(change)
    for columns, group in groups.items():
        if postgres:
            conn.execute(
                _transition_statement(columns),
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
            continue
        value = _sqlite_value
        _sqlite(conn).executemany(
            _sqlite_transition(columns),
            [
                (
                    change.to_status.value,
                    _sqlite_stamp(change.at),
                    *[value(change.values[column]) for column in columns],
                    change.touch_id,
                    from_status.value,
                )
                for change in group
            ],
        )
    _insert_events(
        conn,
        [
            (change.touch_id, change.at, from_status.value, change.to_status.value, change.detail)
            for change in changes
            if change.touch_id in still
        ],
    )
    return [change.touch_id in still for change in changes]


@functools.cache
def _sqlite_transition(columns: tuple[str, ...]) -> str:
    """transition_many's UPDATE for SQLite, by column names from the code, never from data."""
    assignments = ", ".join(f"{column} = ?" for column in ("status", "updated_at", *columns))
    return f"UPDATE touches SET {assignments} WHERE id = ? AND status = ?"  # noqa: S608


@functools.cache
def _transition_statement(columns: tuple[str, ...]) -> Any:
    """One statement per set of columns, built once: the dispatcher runs it for every touch."""
    return (
        update(touches)
        .where(touches.c.id == bindparam("_id"), touches.c.status == bindparam("_from"))
        .values(
            status=bindparam("status"),
            updated_at=bindparam("updated_at"),
            **{column: bindparam(column) for column in columns},
        )
    )


def hand_off(
    conn: Connection,
    touch_id: int,
    owner: str,
    now: datetime,
    lease: timedelta,
    message_id: str,
    **values: Any,
) -> bool:
    """Just before the SMTP transaction: renew our lease, and mark the touch as handed to the
    mailer (its Message-ID is set, with any other `values`, e.g. the variant). False if the
    lease was lost; then nothing may be sent."""
    return hand_off_many(conn, [HandOff(touch_id, message_id, values)], owner, now, lease)[0]


@dataclass(frozen=True, slots=True)
class HandOff:
    touch_id: int
    message_id: str
    values: dict[str, Any]


def hand_off_many(
    conn: Connection, hand_offs: Sequence[HandOff], owner: str, now: datetime, lease: timedelta
) -> list[bool]:
    """`hand_off` for several touches in one executemany (the caller's transaction). Returns,
    per touch, whether it is ours to send."""
    groups: dict[tuple[str, ...], list[HandOff]] = {}
    for item in hand_offs:
        groups.setdefault(tuple(sorted(item.values)), []).append(item)
    expires = now + lease
    changed = 0
    postgres = is_postgres(conn)
    for columns, group in groups.items():
        if postgres:
            changed += conn.execute(
                _hand_off_statement(columns),
                [
                    {
                        "_id": item.touch_id,
                        "_owner": owner,
                        "_now": now,
                        "lease_expires_at": expires,
                        "message_id": item.message_id,
                        "updated_at": now,
                        **item.values,
                    }
                    for item in group
                ],
            ).rowcount
        else:
            at, until, value = _sqlite_stamp(now), _sqlite_stamp(expires), _sqlite_value
            changed += (
                _sqlite(conn)
                .executemany(
                    _sqlite_hand_off(columns),
                    [
                        (
                            until,
                            item.message_id,
                            at,
                            *[value(item.values[column]) for column in columns],
                            item.touch_id,
                            owner,
                            at,
                        )
                        for item in group
                    ],
                )
                .rowcount
            )
    if changed == len(hand_offs):
        return [True] * len(hand_offs)
    # Some lease was lost: ours are the rows that now carry our lease and Message-ID.
    ours = {
        (row.id, row.message_id)
        for row in conn.execute(
            select(touches.c.id, touches.c.message_id).where(
                touches.c.id.in_([item.touch_id for item in hand_offs]),
                touches.c.status == TouchStatus.SENDING.value,
                touches.c.lease_owner == owner,
                touches.c.updated_at == now,
            )
        )
    }
    return [(item.touch_id, item.message_id) in ours for item in hand_offs]


@functools.cache
def _sqlite_hand_off(columns: tuple[str, ...]) -> str:
    """hand_off_many's UPDATE for SQLite, by column names from the code, never from data."""
    names = ("lease_expires_at", "message_id", "updated_at", *columns)
    assignments = ", ".join(f"{column} = ?" for column in names)
    return (
        f"UPDATE touches SET {assignments} "  # noqa: S608
        f"WHERE id = ? AND status = '{TouchStatus.SENDING.value}' AND lease_owner = ? "
        "AND lease_expires_at >= ?"
    )


@functools.cache
def _hand_off_statement(columns: tuple[str, ...]) -> Any:
    return (
        update(touches)
        .where(
            touches.c.id == bindparam("_id"),
            touches.c.status == TouchStatus.SENDING.value,
            touches.c.lease_owner == bindparam("_owner"),
            touches.c.lease_expires_at >= bindparam("_now"),
        )
        .values(
            lease_expires_at=bindparam("lease_expires_at"),
            message_id=bindparam("message_id"),
            updated_at=bindparam("updated_at"),
            **{column: bindparam(column) for column in columns},
        )
    )


def expire_leases(conn: Connection, now: datetime) -> int:
    """Touches left in "sending" past their lease. Those handed to the mailer (Message-ID set)
    may have been accepted by the server: they become uncertain and are reported, never resent
    on their own. Those never handed over go back to the queue. Returns how many are uncertain."""
    stale = conn.execute(
        select(touches.c.id, touches.c.lease_owner, touches.c.message_id).where(
            touches.c.status == TouchStatus.SENDING.value, touches.c.lease_expires_at < now
        )
    ).all()
    unsent = [row for row in stale if row.message_id is None]
    for row in unsent:
        release(conn, [row.id], str(row.lease_owner), now)
    stale = [row for row in stale if row.message_id is not None]
    for row in stale:
        transition(
            conn,
            row.id,
            TouchStatus.SENDING,
            TouchStatus.UNCERTAIN,
            now,
            detail=f"lease of {row.lease_owner} expired while sending; the server may have "
            "accepted the message",
            reason="uncertain: the sender stopped while sending",
            lease_owner=None,
            lease_expires_at=None,
        )
    return len(stale)


def release(conn: Connection, touch_ids: Sequence[int], owner: str, now: datetime) -> int:
    """Give back claimed touches that were never handed to the mailer: they return to the
    queue (planned, or retry if tried before) with the attempt taken back."""
    rows = conn.execute(
        select(touches.c.id, touches.c.attempts).where(
            touches.c.id.in_(list(touch_ids)),
            touches.c.status == TouchStatus.SENDING.value,
            touches.c.lease_owner == owner,
        )
    ).all()
    for row in rows:
        back = TouchStatus.PLANNED if row.attempts <= 1 else TouchStatus.RETRY
        transition(
            conn,
            row.id,
            TouchStatus.SENDING,
            back,
            now,
            detail=f"released unsent by {owner}",
            lease_owner=None,
            lease_expires_at=None,
            message_id=None,
            attempts=max(row.attempts - 1, 0),
        )
    return len(rows)


def requeue_uncertain(conn: Connection, now: datetime, operator: str) -> int:
    """The operator decided: uncertain touches are sent again (their Message-ID is unchanged,
    so a receiving system that saw the first copy can recognise the second)."""
    rows = conn.execute(
        select(touches.c.id).where(touches.c.status == TouchStatus.UNCERTAIN.value)
    ).all()
    for row in rows:
        transition(
            conn,
            row.id,
            TouchStatus.UNCERTAIN,
            TouchStatus.RETRY,
            now,
            detail=f"resend requested by {operator}",
            reason=None,
            next_attempt_at=now,
            not_after=now + timedelta(days=1),
        )
    return len(rows)


def skip_too_late(conn: Connection, now: datetime) -> int:
    """Due touches past their lateness limit are recorded as skipped, never sent late."""
    late = conn.execute(
        select(touches.c.id, touches.c.status).where(
            touches.c.status.in_([TouchStatus.PLANNED.value, TouchStatus.RETRY.value]),
            touches.c.not_after < now,
            # Implied (a waiting touch's next attempt is never after its lateness limit), and
            # the index's: only the due touches are read, not the whole queue planned ahead
            # (0.5-0.85 s with 1M waiting, at the start of each dispatch run).
            touches.c.next_attempt_at <= now,
        )
    ).all()
    for row in late:
        transition(
            conn,
            row.id,
            TouchStatus(row.status),
            TouchStatus.SKIPPED,
            now,
            detail="too late",
            reason="too late",
        )
    return len(late)


def claim_due(
    conn: Connection, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[int]:
    """Take a lease on up to `limit` due touches; returns their ids.

    One statement, so that a crash leaves each touch either unclaimed or claimed with a lease.
    On PostgreSQL, SKIP LOCKED lets several daemons claim disjoint sets without waiting.
    """
    if not is_postgres(conn):
        return _claim_sqlite(conn, owner, now, lease, limit)
    due = (
        select(touches.c.id, touches.c.status)
        .where(
            touches.c.status.in_([TouchStatus.PLANNED.value, TouchStatus.RETRY.value]),
            touches.c.next_attempt_at <= now,
            touches.c.not_after >= now,
        )
        .order_by(touches.c.next_attempt_at, touches.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    found = conn.execute(due).all()
    if not found:
        return []
    ids = [row.id for row in found]
    # One UPDATE for the batch, by id only: the rows are locked FOR UPDATE, they cannot change
    # in between (see _claim_sqlite for why not by status too).
    result = conn.execute(
        update(touches)
        .where(touches.c.id.in_(ids))
        .values(
            status=TouchStatus.SENDING.value,
            updated_at=now,
            lease_owner=owner,
            lease_expires_at=now + lease,
            attempts=touches.c.attempts + 1,
            # Set again at hand-off: a claimed touch without one was never given to the mailer.
            message_id=None,
        )
    )
    if result.rowcount != len(ids):
        raise RuntimeError(f"claimed {result.rowcount} of {len(ids)} locked touches")
    detail = f"claimed by {owner}"
    sending = TouchStatus.SENDING.value
    _insert_events(conn, [(row.id, now, row.status, sending, detail) for row in found])
    return ids


_SQLITE_DUE = (
    "SELECT id, status FROM touches WHERE status IN (?, ?) AND next_attempt_at <= ? "
    "AND not_after >= ? ORDER BY next_attempt_at, id LIMIT ?"
)


def _claim_sqlite(
    conn: Connection, owner: str, now: datetime, lease: timedelta, limit: int
) -> list[int]:
    """claim_due on SQLite, its statements through the driver (SQLAlchemy's execution cost
    more than the statements): the same SELECT, UPDATE and history rows as on PostgreSQL.

    The UPDATE is by id only. The rows cannot change in between: this transaction holds the
    only write lock (BEGIN IMMEDIATE). A `status IN (...)` guard there made SQLite (no
    statistics) search ix_touches_due by status instead of the ids from 10 ids on: every claim
    read the whole waiting queue (0.5 s a claim with 1M touches planned)."""
    raw = _sqlite(conn)
    at = _sqlite_stamp(now)
    waiting = (TouchStatus.PLANNED.value, TouchStatus.RETRY.value)
    found = raw.execute(_SQLITE_DUE, (*waiting, at, at, limit)).fetchall()
    if not found:
        return []
    ids = [touch_id for touch_id, _ in found]
    marks = ", ".join("?" * len(ids))
    update_ = (
        "UPDATE touches SET status = ?, updated_at = ?, lease_owner = ?, lease_expires_at = ?, "  # noqa: S608
        f"attempts = attempts + 1, message_id = NULL WHERE id IN ({marks})"
    )
    sending = TouchStatus.SENDING.value
    changed = raw.execute(update_, (sending, at, owner, _sqlite_stamp(now + lease), *ids)).rowcount
    if changed != len(ids):
        raise RuntimeError(f"claimed {changed} of {len(ids)} locked touches")
    detail = f"claimed by {owner}"
    _insert_events(conn, [(touch_id, now, status, sending, detail) for touch_id, status in found])
    return ids


def address_hash(email: str) -> str:
    """What the suppression list keeps of an erased client's address."""
    return "sha256:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()


def suppressed(conn: Connection, email: str) -> str | None:
    """Why an address must not be mailed (unsubscribed, bounced, erased, ...), or None. An
    erased client's address is found by its hash."""
    row = conn.execute(
        select(suppressions.c.reason).where(
            suppressions.c.email.in_([email.lower(), address_hash(email)])
        )
    ).first()
    return None if row is None else str(row.reason)


def suppress(
    conn: Connection, email: str, reason: str, now: datetime, detail: str | None = None
) -> None:
    stmt = (
        _insert(conn, suppressions)
        .values(email=email.lower(), reason=reason, detail=detail, created_at=now)
        .on_conflict_do_nothing(index_elements=["email"])
    )
    conn.execute(stmt)


def sent_since(conn: Connection, since: datetime) -> int:
    """How many touches were sent at or after `since` (their last change: being sent), for
    the hourly and daily limits. Counted in ix_touches_sent, which holds only sent touches:
    the window's entries are read, not every touch ever sent (1 s a count with 900,000 sent
    through ix_touches_due; the dispatcher counts before each batch)."""
    if is_postgres(conn):
        query = select(func.count()).where(
            # The partial index's own term, as text: with a bound value, a prepared
            # statement's generic plan (psycopg prepares what runs five times) could not use it.
            text(SENT_PREDICATE),
            touches.c.updated_at >= since,
        )
        return int(conn.execute(query).scalar_one())
    # SQLite picks the partial index on its own today; INDEXED BY keeps it so whatever a
    # later SQLite or an ANALYZE makes of its plans (through ix_touches_due by status, a
    # count read every touch ever sent), and fails loudly if the index is missing.
    found = _sqlite(conn).execute(_SENT_SINCE_SQLITE, (_sqlite_stamp(since),)).fetchone()
    return int(found[0])


_SENT_SINCE_SQLITE = (
    f"SELECT count(*) FROM touches INDEXED BY ix_touches_sent "  # noqa: S608 (constants)
    f"WHERE {SENT_PREDICATE} AND updated_at >= ?"
)


def touch_counts(conn: Connection) -> dict[str, int]:
    result = conn.execute(select(touches.c.status, func.count()).group_by(touches.c.status))
    return {str(status): int(count) for status, count in result}


def get_watermark(conn: Connection, campaign: str) -> datetime | None:
    row = conn.execute(
        select(watermarks.c.planned_until).where(watermarks.c.campaign == campaign)
    ).first()
    return None if row is None else cast(datetime, row.planned_until)


def set_watermark(conn: Connection, campaign: str, until: datetime) -> None:
    upsert(conn, watermarks, [{"campaign": campaign, "planned_until": until}], key="campaign")


# ----------------------------------------------------------------------------- the daemon


def unsubscribe(conn: Connection, client_id: int, now: datetime) -> bool:
    """One-click unsubscribe: suppress the client's address and mark an active client
    unsubscribed (a bounced or do-not-contact client keeps that stronger status).
    Idempotent; False when no such client exists."""
    row = conn.execute(select(clients.c.email).where(clients.c.id == client_id)).first()
    if row is None:
        return False
    suppress(conn, str(row.email), ClientStatus.UNSUBSCRIBED.value, now, detail="one-click")
    conn.execute(
        update(clients)
        .where(clients.c.id == client_id, clients.c.status == ClientStatus.ACTIVE.value)
        .values(status=ClientStatus.UNSUBSCRIBED.value, updated_at=now)
    )
    return True


def record_run(
    conn: Connection,
    kind: str,
    owner: str,
    started_at: datetime,
    finished_at: datetime,
    outcome: str,
    detail: str | None = None,
) -> None:
    """Keep the last run of a periodic job (by any instance)."""
    row = {
        "kind": kind,
        "owner": owner[:128],
        "started_at": started_at,
        "finished_at": finished_at,
        "outcome": outcome,
        "detail": detail,
    }
    upsert(conn, runs, [row], key="kind")


def last_runs(conn: Connection) -> dict[str, dict[str, Any]]:
    """kind -> the last run's columns."""
    return {str(row.kind): dict(row._mapping) for row in conn.execute(select(runs))}


def waiting_statuses() -> list[str]:
    return [TouchStatus.PLANNED.value, TouchStatus.RETRY.value]


def queue_depth(conn: Connection, now: datetime) -> tuple[int, int]:
    """(touches waiting to be sent, of which due now)."""
    waiting = touches.c.status.in_(waiting_statuses())
    total = conn.execute(select(func.count()).where(waiting)).scalar_one()
    due = conn.execute(
        select(func.count()).where(waiting, touches.c.next_attempt_at <= now)
    ).scalar_one()
    return int(total), int(due)


def touch_counts_by_campaign(conn: Connection) -> dict[tuple[str, str], int]:
    """(status, campaign) -> touches: one GROUP BY over the ledger."""
    result = conn.execute(
        select(touches.c.status, touches.c.campaign, func.count()).group_by(
            touches.c.status, touches.c.campaign
        )
    )
    return {(str(status), str(campaign)): int(count) for status, campaign, count in result}


def settle_owner(conn: Connection, owner: str, now: datetime) -> tuple[int, int]:
    """A stopping worker gives up its leases now instead of letting them expire: touches it
    never handed to the mailer go back to the queue; those handed over whose outcome it does
    not know become uncertain. Returns (released, uncertain)."""
    rows = conn.execute(
        select(touches.c.id, touches.c.message_id).where(
            touches.c.status == TouchStatus.SENDING.value, touches.c.lease_owner == owner
        )
    ).all()
    released = release(conn, [row.id for row in rows if row.message_id is None], owner, now)
    uncertain = 0
    for row in rows:
        if row.message_id is not None and transition(
            conn,
            row.id,
            TouchStatus.SENDING,
            TouchStatus.UNCERTAIN,
            now,
            detail=f"{owner} stopped while sending; the server may have accepted the message",
            reason="uncertain: the sender stopped while sending",
            lease_owner=None,
            lease_expires_at=None,
        ):
            uncertain += 1
    return released, uncertain
