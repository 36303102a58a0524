"""A deterministic shop for benchmarks: N clients with about 3 purchases each.

    .venv/bin/python bench/generate.py --clients 100000 --url sqlite:///var/bench/100k.db

Clients are spread over 7 markets (locales en-US, en-GB, en-IE, en-AU, fr, fr-CA, fr-BE and
their zones), 20 reps, birthdays on every day of the year; purchases fall over the two years
before 2026-12-01, 3% unpaid and 1% disputed. The same N and seed always give the same rows.
Rows go in with bulk inserts (the importer validates CSV row by row, which is not what is
measured here).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from followup.storage import tables  # noqa: E402
from followup.storage.engine import open_engine  # noqa: E402
from followup.storage.schema import upgrade  # noqa: E402

MARKETS = (
    (
        "en-US",
        "US",
        ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"),
    ),
    ("en-GB", "GB", ("Europe/London",)),
    ("en-IE", "IE", ("Europe/Dublin",)),
    ("en-AU", "AU", ("Australia/Sydney", "Australia/Perth")),
    ("fr", "FR", ("Europe/Paris",)),
    ("fr-CA", "CA", ("America/Toronto", "America/Montreal")),
    ("fr-BE", "BE", ("Europe/Brussels",)),
)
PRODUCTS = (
    ("Roadster", 3_250_000),
    ("Citadine", 1_890_000),
    ("Tyres", 64_000),
    ("Service", 29_000),
)
START = datetime(2024, 12, 1, tzinfo=UTC)
CHUNK = 10_000


def generate(
    engine: Engine, clients: int, seed: int = 7, purchased_on: datetime | None = None
) -> tuple[int, int]:
    """Fills a migrated, empty database. Returns (clients, purchases). With `purchased_on`,
    every client has exactly one paid purchase at that instant instead (a day of thank-yous)."""
    rng = random.Random(seed)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    purchases = 0
    with engine.begin() as conn:
        conn.execute(
            insert(tables.reps),
            [
                {
                    "external_id": f"rep{n}",
                    "name": f"Rep {n}",
                    "email": f"rep{n}@example.com",
                    "signature": f"Rep {n}",
                    "active": True,
                    "updated_at": now,
                }
                for n in range(1, 21)
            ],
        )
    for start in range(0, clients, CHUNK):
        numbers = range(start + 1, min(start + CHUNK, clients) + 1)
        client_rows = []
        for n in numbers:
            locale, country, zones = MARKETS[n % len(MARKETS)]
            client_rows.append(
                {
                    "id": n,
                    "external_id": f"C{n:07d}",
                    "email": f"client{n}@example.com",
                    "first_name": f"First{n}",
                    "last_name": f"Last{n}",
                    "locale": locale,
                    "timezone": zones[n % len(zones)],
                    "country": country,
                    "birthday_month": 1 + n % 12,
                    "birthday_day": 1 + (n // 12) % 28,
                    "birthday_year": 1950 + n % 50,
                    "rep_id": 1 + n % 20,
                    "tier": "",
                    "tags": "",
                    "status": "active",
                    "created_at": now,
                    "updated_at": now,
                }
            )
        purchase_rows = []
        for n in numbers:
            if purchased_on is not None:
                purchase_rows.append(
                    {
                        "external_id": f"P{n:07d}-0",
                        "client_id": n,
                        "purchased_at": purchased_on,
                        "product": "Roadster",
                        "amount_minor": 3_250_000,
                        "currency": "EUR",
                        "status": "paid",
                        "updated_at": now,
                    }
                )
                continue
            for k in range(1 + rng.randrange(5)):  # 1..5, about 3 on average
                product, amount = PRODUCTS[rng.randrange(len(PRODUCTS))]
                roll = rng.random()
                status = "unpaid" if roll < 0.03 else "disputed" if roll < 0.04 else "paid"
                purchase_rows.append(
                    {
                        "external_id": f"P{n:07d}-{k}",
                        "client_id": n,
                        "purchased_at": START + timedelta(minutes=rng.randrange(730 * 24 * 60)),
                        "product": product,
                        "amount_minor": amount,
                        "currency": "EUR" if locale.startswith("fr") else "USD",
                        "status": status,
                        "updated_at": now,
                    }
                )
        purchases += len(purchase_rows)
        with engine.begin() as conn:
            conn.execute(insert(tables.clients), client_rows)
            conn.execute(insert(tables.purchases), purchase_rows)
    return clients, purchases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--url", required=True, help="an empty database (it is migrated)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    engine = open_engine(args.url)
    upgrade(engine)
    began = time.perf_counter()
    clients, purchases = generate(engine, args.clients, args.seed)
    print(
        f"generated {clients} clients and {purchases} purchases into {args.url} "
        f"in {time.perf_counter() - began:.1f} s"
    )


if __name__ == "__main__":
    main()
