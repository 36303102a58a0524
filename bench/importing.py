"""`followup import` speed: clients, then purchases, then the same two files again (a nightly
import that changes nothing), into SQLite or PostgreSQL.

    .venv/bin/python bench/importing.py --clients 100000
    .venv/bin/python bench/importing.py --clients 100000 \
        --url postgresql+psycopg://postgres@127.0.0.1:5432/followup_bench

The files are demo.write_bulk_shop's (one rep; N clients in London, one paid purchase each),
imported with importer.import_csv, as the command does (CSV read, each row checked, upserts in
batches). On PostgreSQL the database named in --url is dropped and created again. Prints rows
per second for each of the four imports.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--url", help="a PostgreSQL database (default: a new SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        paths = write_bulk_shop(folder, args.clients, date(2027, 1, 6))
        if args.url:
            fresh_postgres(args.url)
            url = args.url
        else:
            url = f"sqlite:///{folder / 'followup.db'}"
        engine = open_engine(url)
        upgrade(engine)
        importer.import_csv(engine, importer.Kind.REPS, paths["reps"], now=NOW)
        figures = []
        for step in ("first", "again"):
            for kind in (importer.Kind.CLIENTS, importer.Kind.PURCHASES):
                began = time.perf_counter()
                report = importer.import_csv(engine, kind, paths[kind.value], now=NOW)
                seconds = time.perf_counter() - began
                if report.errors:
                    raise RuntimeError(f"{kind.value}: {report.errors[:3]}")
                figures.append((f"{kind.value} ({step})", args.clients / seconds, seconds))
        engine.dispose()
    print(deliver.machine().split(";")[0] + f"; {make_url(url).get_backend_name()}")
    for what, rate, seconds in figures:
        print(f"{what}: {args.clients:,} rows in {seconds:.1f} s = {rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
