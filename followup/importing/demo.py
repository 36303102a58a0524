"""A demo shop: reps, clients and two years of purchases, generated deterministically.

The data is written as the same CSV files a business would import, and imported through the
importer, so the demo exercises the real path. Dates are relative to `today`, so that some
thank-you messages are always due. Every address is at example.com/.org/.net (RFC 2606):
nothing here can reach a real person.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from followup.domain.columns import OPTIONAL, REQUIRED, Kind

REPS = [
    ("rep-joe", "Joe Girard", "joe.girard@example.com", "Joe Girard\nYour salesman, for life"),
    ("rep-amelie", "Amélie Durand", "amelie.durand@example.com", "Amélie Durand\nConseillère"),
    ("rep-sam", "Sam Okafor", "sam.okafor@example.com", "Sam Okafor\nSales & after-sales"),
    ("rep-lea", "Léa Martin", "lea.martin@example.com", "Léa Martin\nService clients"),
]


@dataclass(frozen=True)
class Market:
    locale: str
    country: str
    zones: tuple[str, ...]
    currency: str
    first: tuple[str, ...]
    last: tuple[str, ...]
    reps: tuple[str, ...]


_EN_FIRST = (
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Susan",
    "Sarah",
    "Kevin",
    "Emily",
    "Daniel",
    "Grace",
    "Liam",
    "Olivia",
)
_EN_LAST = (
    "Smith",
    "Johnson",
    "Brown",
    "Taylor",
    "Wilson",
    "Davies",
    "Murphy",
    "O'Brien",
    "Walsh",
    "Clarke",
    "Evans",
    "Walker",
    "Kelly",
    "Byrne",
    "Hughes",
)
_FR_FIRST = (
    "Camille",
    "Louis",
    "Chloé",
    "Hugo",
    "Manon",
    "Jules",
    "Inès",
    "Lucas",
    "Élodie",
    "Gabriel",
    "Zoé",
    "Théo",
    "Margaux",
    "Benoît",
    "Hélène",
)
_FR_LAST = (
    "Martin",
    "Bernard",
    "Dubois",
    "Thomas",
    "Robert",
    "Richard",
    "Petit",
    "Durand",
    "Leroy",
    "Moreau",
    "Lefèvre",
    "Girard",
    "Tremblay",
    "Gagnon",
    "Côté",
)

MARKETS = (
    Market(
        "en-US",
        "US",
        (
            "America/New_York",
            "America/Chicago",
            "America/Denver",
            "America/Los_Angeles",
            "America/Phoenix",
            "Pacific/Honolulu",
        ),
        "USD",
        _EN_FIRST,
        _EN_LAST,
        ("rep-joe", "rep-sam"),
    ),
    Market("en-GB", "GB", ("Europe/London",), "GBP", _EN_FIRST, _EN_LAST, ("rep-sam",)),
    Market("en-IE", "IE", ("Europe/Dublin",), "EUR", _EN_FIRST, _EN_LAST, ("rep-sam",)),
    Market(
        "en-AU",
        "AU",
        ("Australia/Sydney", "Australia/Perth"),
        "AUD",
        _EN_FIRST,
        _EN_LAST,
        ("rep-joe",),
    ),
    Market("fr", "FR", ("Europe/Paris",), "EUR", _FR_FIRST, _FR_LAST, ("rep-amelie", "rep-lea")),
    Market(
        "fr-CA",
        "CA",
        ("America/Toronto", "America/Montreal"),
        "CAD",
        _FR_FIRST,
        _FR_LAST,
        ("rep-lea",),
    ),
    Market("fr-BE", "BE", ("Europe/Brussels",), "EUR", _FR_FIRST, _FR_LAST, ("rep-amelie",)),
)

PRODUCTS = (
    ("Roadster GT", 3_250_000),
    ("City hatchback", 1_890_000),
    ("Family estate", 2_640_000),
    ("Winter tyres (set of 4)", 64_000),
    ("Annual service", 24_900),
    ("Roof box", 42_500),
    ("Child seat", 18_900),
    ("Extended warranty", 99_000),
)
DOMAINS = ("example.com", "example.org", "example.net")


#: The demo's client columns, in the order its rows give them (zone and locale given).
_CLIENT_COLUMNS = (
    *("id", "email", "first_name", "last_name", "locale", "timezone", "country"),
    *("birthday", "rep", "tier", "tags", "status"),
)


def columns(kind: Kind) -> list[str]:
    """Every column of a `kind` import file, required ones first (a client's zone and
    locale before their country)."""
    if kind is Kind.CLIENTS:
        return list(_CLIENT_COLUMNS)
    return [*REQUIRED[kind], *OPTIONAL[kind]]


def write_bulk_shop(
    directory: Path,
    clients: int,
    purchased_on: date,
    *,
    zones: Sequence[str] = ("Europe/London",),
    locales: Sequence[str] = ("en-GB",),
    country: str = "GB",
    purchases: int = 1,
) -> dict[str, Path]:
    """One rep and `clients` clients with `purchases` paid purchases each on `purchased_on`
    (p0, p1, ...; with several, p0.0, p0.1, ...), the zones and locales taken in turn: a shop
    where every client is due the same thank-you."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {kind.value: directory / f"{kind.value}.csv" for kind in Kind}
    with paths["reps"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns(Kind.REPS))
        writer.writerow(["r1", "Joe Girard", "joe@example.com", "Joe", "true"])
    with paths["clients"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns(Kind.CLIENTS))
        for n in range(clients):
            writer.writerow(
                [
                    f"c{n}",
                    f"client{n}@example.com",
                    f"Client{n}",
                    "Test",
                    locales[n % len(locales)],
                    zones[n % len(zones)],
                    country,
                    "",
                    "r1",
                    "",
                    "",
                    "",
                ]
            )
    with paths["purchases"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns(Kind.PURCHASES))
        day = purchased_on.isoformat()
        for n in range(clients):
            for k in range(purchases):
                name = f"p{n}" if purchases == 1 else f"p{n}.{k}"
                writer.writerow([name, f"c{n}", day, "Roadster", f"{100 + k}.00", "EUR", "paid"])
    return paths


def _ascii(value: str) -> str:
    table = str.maketrans("éèêëàâîïôöûüçÉÈÊÀÂÎÔÛÇ' ", "eeeeaaiioouucEEEAAIOUC--")
    return value.translate(table).lower()


def write_csvs(
    directory: Path, today: date, clients: int = 240, seed: int = 1977
) -> dict[str, Path]:
    """Write reps.csv, clients.csv and purchases.csv for a demo shop; returns their paths."""
    # One generator drawn from in a fixed order (each client, then its purchases): the same
    # seed and day give the same files.
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.csv" for name in ("reps", "clients", "purchases")}
    _write(paths["reps"], Kind.REPS, [[*rep, "true"] for rep in REPS])
    client_rows: list[list[str]] = []
    purchase_rows: list[list[str]] = []
    start = today - timedelta(days=730)
    for number in range(1, clients + 1):
        market = MARKETS[(number - 1) % len(MARKETS)]
        external_id = f"C{number:04d}"
        zone = market.zones[number % len(market.zones)]
        client_rows.append(_client_row(rng, number, market, external_id, zone))
        for index in range(rng.randint(1, 5)):
            day = _purchase_day(rng, number, index, today, start)
            purchase_number = len(purchase_rows) + 1
            purchase_rows.append(
                _purchase_row(rng, purchase_number, external_id, market, day, ZoneInfo(zone))
            )
    _write(paths["clients"], Kind.CLIENTS, client_rows)
    _write(paths["purchases"], Kind.PURCHASES, purchase_rows)
    return paths


def _write(path: Path, kind: Kind, rows: Sequence[Sequence[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns(kind))
        writer.writerows(rows)


def _client_row(
    rng: random.Random, number: int, market: Market, external_id: str, zone: str
) -> list[str]:
    first, last = rng.choice(market.first), rng.choice(market.last)
    email = f"{_ascii(first)}.{_ascii(last)}.{number}@{DOMAINS[number % 3]}"
    birthday = _birthday(rng, number)
    tier = "vip" if number % 17 == 0 else ""
    status = "do-not-contact" if number % 61 == 0 else ""
    return [
        external_id,
        email,
        first,
        last,
        market.locale,
        zone,
        market.country,
        birthday,
        rng.choice(market.reps),
        tier,
        "",
        status,
    ]


def _birthday(rng: random.Random, number: int) -> str:
    """Every shape the importer takes: 29 February, none, a month and day, a full date."""
    if number % 50 == 7:
        return f"{rng.choice([1960, 1972, 1984, 1996, 2000])}-02-29"
    if number % 9 == 0:
        return ""
    if number % 13 == 0:
        return f"--{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    born = date(rng.randint(1950, 2004), rng.randint(1, 12), rng.randint(1, 28))
    return born.isoformat()


def _purchase_day(rng: random.Random, number: int, index: int, today: date, start: date) -> date:
    if index == 0 and number % 4 == 0:
        # Recent buyers: a thank-you is due for them around today.
        return today - timedelta(days=rng.randint(0, 4))
    return start + timedelta(days=rng.randint(0, 725))


def _purchase_row(
    rng: random.Random,
    purchase_number: int,
    external_id: str,
    market: Market,
    day: date,
    zone: ZoneInfo,
) -> list[str]:
    at = datetime.combine(day, time(rng.randint(9, 18), rng.choice([0, 15, 30, 45])), zone)
    product, amount = rng.choice(PRODUCTS)
    status = "paid"
    if purchase_number % 23 == 0:
        status = "unpaid"
    elif purchase_number % 37 == 0:
        status = "disputed"
    elif purchase_number % 41 == 0:
        status = "refunded"
    return [
        f"P{purchase_number:05d}",
        external_id,
        at.isoformat(),
        product,
        f"{amount / 100:.2f}",
        market.currency,
        status,
    ]
