"""Planning a New Year's Day where every client is greeted, against the raw bulk insert floor.

    .venv/bin/python bench/plan.py --clients 100000
    .venv/bin/python bench/plan.py --clients 100000 \\
        --url postgresql+psycopg://postgres@127.0.0.1:5432/followup_bench

1. Generates a deterministic shop (bench/generate.py) into a fresh database: a temporary SQLite
   file, or the PostgreSQL database of --url (dropped and created again).
2. In a child process, runs followup's planner with the shipped calendar for the window
   2026-12-31 00:00 UTC .. 2027-01-02 00:00 UTC (New Year's Day in every zone), exactly as
   `followup plan` does; prints touches per second and the child's peak RSS.
3. In another child process, the floor: the same rows (read back from the ledger) inserted with
   one DBAPI executemany into a table of the same shape and unique key in the same database.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

PLAN = """
import json, resource, sys, time
from datetime import UTC, datetime
from pathlib import Path
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.config import load_settings
settings = load_settings(Path(sys.argv[2]), {"FOLLOWUP_DATABASE_URL": sys.argv[1]})
rt = Runtime.open(settings)
began = time.perf_counter()
report = plan(rt, datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC),
                  processes=int(sys.argv[3]))
seconds = time.perf_counter() - began
print(json.dumps({"seconds": seconds, "touches": report.planned + report.skipped,
                  "clients": report.clients,
                  "rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024}))
"""

FLOOR = """
import json, sys, time
from sqlalchemy import text
from followup.storage.engine import open_engine
engine = open_engine(sys.argv[1])
columns = ("client_id, campaign, occurrence, status, due_at, not_after, next_attempt_at, "
           "template, occasion, attempts, created_at, updated_at")
with engine.begin() as conn:
    rows = [tuple(r) for r in conn.execute(text(f"SELECT {columns} FROM touches"))]
    conn.execute(text("DROP TABLE IF EXISTS bench_floor"))
    conn.execute(text("CREATE TABLE bench_floor AS SELECT * FROM touches WHERE 1 = 0"))
    conn.execute(text("CREATE UNIQUE INDEX bench_floor_key "
                      "ON bench_floor (client_id, campaign, occurrence)"))
raw = engine.raw_connection()
try:
    cursor = raw.cursor()
    marks = ", ".join(["%s" if engine.dialect.name == "postgresql" else "?"] * 12)
    began = time.perf_counter()
    cursor.executemany(f"INSERT INTO bench_floor ({columns}) VALUES ({marks})", rows)
    raw.commit()
    seconds = time.perf_counter() - began
finally:
    raw.close()
with engine.begin() as conn:
    conn.execute(text("DROP TABLE bench_floor"))
print(json.dumps({"seconds": seconds, "rows": len(rows)}))
"""


def run(code: str, *args: str) -> dict[str, float]:
    result = subprocess.run(
        [PYTHON, "-c", code, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    data: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def fresh_postgres(url: str) -> None:
    from sqlalchemy import create_engine, make_url, text

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--url", help="a PostgreSQL database to (re)create; default SQLite")
    parser.add_argument(
        "--processes", type=int, default=1, help="planning processes ([schedule] plan_processes)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or f"sqlite:///{folder}/bench.db"
        if args.url:
            fresh_postgres(url)
        began = time.perf_counter()
        subprocess.run(
            [
                PYTHON,
                str(ROOT / "bench" / "generate.py"),
                "--clients",
                str(args.clients),
                "--url",
                url,
            ],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        generated = time.perf_counter() - began
        plan = run(PLAN, url, str(ROOT / "config.toml"), str(args.processes))
        floor = run(FLOOR, url)
    rate = plan["touches"] / plan["seconds"]
    floor_rate = floor["rows"] / floor["seconds"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"database: {'PostgreSQL' if args.url else 'SQLite (WAL)'}; shop of {args.clients} "
        f"clients generated in {generated:.1f} s"
    )
    print(
        f"plan ({args.processes} process(es)): {plan['touches']:.0f} touches for "
        f"{plan['clients']:.0f} clients in {plan['seconds']:.1f} s = {rate:,.0f} touches/s; "
        f"peak RSS {plan['rss_mb']:.0f} MB (the largest process)"
    )
    print(
        f"floor (raw executemany of the same {floor['rows']:.0f} rows): "
        f"{floor['seconds']:.1f} s = {floor_rate:,.0f} rows/s"
    )
    print(f"planning takes {plan['seconds'] / floor['seconds']:.1f}x the raw insert")


if __name__ == "__main__":
    main()
