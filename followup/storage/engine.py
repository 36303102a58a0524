"""Engines and connections: SQLite (the embedded default, in WAL mode) and PostgreSQL (by URL).

SQLite writers take the write lock up front (BEGIN IMMEDIATE) and wait for it in short steps,
without blocking the event loop when they run in one (`writing`); readers begin deferred and,
with WAL, never block a writer. A transaction is opened by the caller, in one of three ways:
`engine.begin()` (a plain write transaction), `writing(engine)` (a coroutine's write
transaction) and `reader(engine)` (read only, rolled back at the end).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, StatementError

from followup.errors import ConfigError

T = TypeVar("T")

#: Rows per INSERT statement in bulk operations (SQLite allows 32766 bound parameters).
CHUNK = 500


def chunks(items: Iterable[T], size: int = CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


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
    raw = Driver(dbapi)
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
                Driver(dbapi).execute("BEGIN IMMEDIATE")  # a last try: the error, wrapped
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


class Driver:
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


def driver(conn: Connection) -> Driver:
    """The driver under `conn`, in a transaction: begun here (BEGIN IMMEDIATE) when `conn`
    has none yet, as SQLAlchemy would begin it, so that the statements that follow are one
    transaction and never commit one by one."""
    if not conn.in_transaction():
        conn.begin()
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlite3.Connection)
    return Driver(raw)
