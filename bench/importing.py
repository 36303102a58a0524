"""`followup import` speed against the database's raw bulk insert of the same rows: clients,
then purchases, then the same two files again (a nightly import that changes nothing), into
SQLite or PostgreSQL.

    .venv/bin/python bench/importing.py --clients 1000000 --purchases 3
    .venv/bin/python bench/importing.py --clients 1000000 --purchases 3 \
        --url postgresql+psycopg://postgres@127.0.0.1:5432/followup_bench_import

The files are demo.write_bulk_shop's (one rep; N clients in London, `--purchases` paid
purchases each), imported with importer.import_csv, as the command does (CSV read, each row
checked, merged in batches, one transaction a file). The floor, in the same run: the rows the
import stored, read back in the database's own form and written into a second, empty database
at the same schema (the planning triggers included) by the rawest bulk path there is: the
sqlite3 driver's executemany of one INSERT on SQLite, psycopg's COPY on PostgreSQL, one
transaction a table. The floor neither reads the CSV file nor checks a value: it is what the
database itself costs. Also printed: the time to read each file with csv.reader alone.

On PostgreSQL the database named in --url, and the same name with "_floor", are dropped and
created again. Prints rows per second of each step and its ratio to the floor.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deliver  # noqa: E402
from plan import fresh_postgres  # noqa: E402

from followup.importing import importer  # noqa: E402
from followup.importing.demo import write_bulk_shop  # noqa: E402
from followup.storage.engine import open_engine  # noqa: E402
from followup.storage.schema import upgrade  # noqa: E402

NOW = datetime(2027, 1, 8, 12, tzinfo=UTC)
#: The columns each table's rows are copied with (the id included: the purchases name theirs).
COLUMNS = {
    "clients": (
        "id, external_id, email, first_name, last_name, locale, timezone, country, "
        "birthday_month, birthday_day, birthday_year, rep_id, tier, tags, status, "
        "marketing_consent, consent_source, consent_at, file_rep, inferred, created_at, "
        "updated_at"
    ),
    "purchases": (
        "id, external_id, client_id, purchased_at, product, amount_minor, currency, status, "
        "updated_at"
    ),
}


def stored_rows(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    """The rows as the database holds them (SQLite's text forms; PostgreSQL's values)."""
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        cursor.execute(f"SELECT {COLUMNS[table]} FROM {table} ORDER BY id")
        return [tuple(row) for row in cursor.fetchall()]


def floor(engine: Engine, table: str, rows: list[tuple[Any, ...]]) -> float:
    """Seconds to write `rows` into `table` by the database's raw bulk path, committed."""
    columns = COLUMNS[table]
    with engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        began = time.perf_counter()
        if engine.dialect.name == "sqlite":
            raw.execute("BEGIN IMMEDIATE")
            marks = ", ".join("?" * len(columns.split(",")))
            raw.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)
            raw.execute("COMMIT")
        else:
            with (
                raw.cursor() as cursor,
                cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            raw.commit()
        return time.perf_counter() - began


def csv_seconds(path: Path) -> float:
    began = time.perf_counter()
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for _ in csv.reader(handle):
            pass
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=3, help="purchases per client")
    parser.add_argument("--url", help="a PostgreSQL database (default: a new SQLite file)")
    args = parser.parse_args()
    sizes = {"clients": args.clients, "purchases": args.clients * args.purchases}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        paths = write_bulk_shop(folder, args.clients, date(2027, 1, 6), purchases=args.purchases)
        if args.url:
            floor_url = str(make_url(args.url).set(database=f"{make_url(args.url).database}_floor"))
            for url in (args.url, floor_url):
                fresh_postgres(url)
            url = args.url
        else:
            url = f"sqlite:///{folder / 'followup.db'}"
            floor_url = f"sqlite:///{folder / 'floor.db'}"
        engine, floor_engine = open_engine(url), open_engine(floor_url)
        for each in (engine, floor_engine):
            upgrade(each)
            importer.import_csv(each, importer.Kind.REPS, paths["reps"], now=NOW)
        seconds: dict[str, float] = {}
        for step in ("first", "again"):
            for kind in (importer.Kind.CLIENTS, importer.Kind.PURCHASES):
                began = time.perf_counter()
                report = importer.import_csv(engine, kind, paths[kind.value], now=NOW)
                seconds[f"{kind.value} ({step})"] = time.perf_counter() - began
                if report.errors:
                    raise RuntimeError(f"{kind.value}: {report.errors[:3]}")
                expected = (sizes[kind.value], 0) if step == "first" else (0, sizes[kind.value])
                if (report.created, report.unchanged) != expected:
                    raise RuntimeError(f"{kind.value} ({step}): {report}")
        for table in ("clients", "purchases"):
            seconds[f"{table} (floor)"] = floor(floor_engine, table, stored_rows(engine, table))
            seconds[f"{table} (csv.reader alone)"] = csv_seconds(paths[table])
        engine.dispose()
        floor_engine.dispose()
    print(deliver.machine().split(";")[0] + f"; {make_url(url).get_backend_name()}")
    for what, took in seconds.items():
        table = what.split(" ")[0]
        rows = sizes[table]
        ratio = took / seconds[f"{table} (floor)"]
        print(
            f"{what}: {rows:,} rows in {took:.1f} s = {rows / took:,.0f} rows/s "
            f"({ratio:.2f}x the floor)"
        )


if __name__ == "__main__":
    main()
