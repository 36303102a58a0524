"""A real shop's clients come with a country and no zone or language: both are inferred from
the country and marked so (clients.inferred); and spend in other currencies counts for the
VIP tier only as [tiers] says (docs/clients.md). On SQLite and PostgreSQL, through the API."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from followup import api
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.engine import reader
from followup.storage.queries import client_stats
from tests.support.settings import make_settings

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


def write(path: Path, header: Sequence[str], *rows: Sequence[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def stored(rt: Runtime) -> dict[str, Any]:
    c = tables.clients.c
    with reader(rt.engine) as conn:
        rows = conn.execute(select(c.external_id, c.timezone, c.locale, c.inferred)).all()
    return {row.external_id: (row.timezone, row.locale, row.inferred) for row in rows}


SHOPIFY_LIKE = ("id", "email", "first_name", "last_name", "country")


def test_a_file_with_only_a_country_gets_zones_and_locales_marked_inferred(
    tmp_path: Path, database_url: str, open_runtime: Callable[..., Runtime]
) -> None:
    rt = open_runtime(
        make_settings(
            tmp_path,
            database_url,
            defaults={"timezones": "US=America/New_York", "timezone": "America/Sao_Paulo"},
        )
    )
    path = write(
        tmp_path / "clients.csv",
        SHOPIFY_LIKE,
        ("c1", "ana@example.com", "Ana", "Souza", "BR"),
        ("c2", "zoe@example.com", "Zoë", "Martin", "fr"),
        ("c3", "ann@example.com", "Ann", "Lee", "US"),
        ("c4", "kenji@example.com", "Kenji", "Sato", "JP"),
        ("c5", "rui@example.com", "Rui", "Lima", "BR"),
    )
    report = api.import_csv(rt, "clients", path, now=NOW)

    assert report.errors == []
    assert (report.imported, report.inferred) == (5, {"timezone": 5, "locale": 5})
    assert stored(rt) == {
        "c1": ("America/Sao_Paulo", "pt-BR", "timezone,locale"),
        "c2": ("Europe/Paris", "fr-FR", "timezone,locale"),
        "c3": ("America/New_York", "en-US", "timezone,locale"),
        "c4": ("Asia/Tokyo", "ja-JP", "timezone,locale"),
        "c5": ("America/Sao_Paulo", "pt-BR", "timezone,locale"),
    }
    # Brazil's zone is [defaults] timezone's guess: one warning for the country, with its rows.
    assert [str(warning) for warning in report.warnings] == [
        "clients.csv:2: timezone: 2 row(s) of BR took [defaults] timezone, a guess (BR has no "
        'single timezone); give the column or set [defaults.timezones] BR = "..." in '
        "config.toml"
    ]

    # A later file that gives a value clears its mark; a cell left empty infers again.
    later = write(
        tmp_path / "later.csv",
        (*SHOPIFY_LIKE, "timezone", "locale"),
        ("c1", "ana@example.com", "Ana", "Souza", "BR", "America/Manaus", ""),
        ("c2", "zoe@example.com", "Zoë", "Martin", "FR", "Europe/Paris", "fr"),
    )
    again = api.import_csv(rt, "clients", later, now=NOW)
    assert (again.errors, again.inferred, again.warnings) == ([], {"locale": 1}, [])
    assert stored(rt)["c1"] == ("America/Manaus", "pt-BR", "locale")
    assert stored(rt)["c2"] == ("Europe/Paris", "fr", "")


def test_a_country_of_several_zones_takes_where_most_live_with_a_warning(
    tmp_path: Path, runtime: Runtime
) -> None:
    path = write(
        tmp_path / "clients.csv",
        (*SHOPIFY_LIKE, "timezone"),
        ("c1", "ana@example.com", "Ana", "Souza", "BR", ""),
        ("c2", "ann@example.com", "Ann", "Lee", "US", "America/Chicago"),
        ("c3", "bob@example.com", "Bob", "Lee", "XX", ""),
        ("c4", "eve@example.com", "Eve", "Lee", "US", ""),
        ("c5", "sam@example.com", "Sam", "Lee", "AQ", ""),
    )
    report = api.import_csv(runtime, "clients", path, now=NOW)

    assert [(e.line, e.column) for e in report.errors] == [(4, "country"), (6, "timezone")]
    # Antarctica's stations: no zone most of it lives in; refused, naming the setting.
    assert "AQ has 7 time zones (Antarctica/Casey" in report.errors[1].reason
    assert '[defaults.timezones] AQ = "..."' in report.errors[1].reason
    assert [str(warning) for warning in report.warnings] == [
        "clients.csv:2: timezone: 1 row(s) of BR took America/Sao_Paulo, where most of BR "
        "lives, a guess (BR has no single timezone); give the column or set "
        '[defaults.timezones] BR = "..." in config.toml',
        "clients.csv:5: timezone: 1 row(s) of US took America/New_York, where most of US "
        "lives, a guess (US has no single timezone); give the column or set "
        '[defaults.timezones] US = "..." in config.toml',
    ]
    assert stored(runtime) == {
        "c1": ("America/Sao_Paulo", "pt-BR", "timezone,locale"),
        "c2": ("America/Chicago", "en-US", "locale"),
        "c4": ("America/New_York", "en-US", "timezone,locale"),
    }


# ----------------------------------------------------------------------------- tiers per currency


def brl_and_npr_client(rt: Runtime, tmp_path: Path) -> None:
    """One client with two paid purchases: 289,000 BRL (about 49,000 EUR) and 250,000 NPR
    (about 1,600 EUR), each under the 50,000 EUR threshold, together over it."""
    clients = write(
        tmp_path / "clients.csv", SHOPIFY_LIKE, ("c1", "ana@example.com", "Ana", "Souza", "NP")
    )
    purchases = write(
        tmp_path / "purchases.csv",
        ("id", "client", "purchased_at", "product", "amount", "currency"),
        ("p1", "c1", "2026-11-02", "Car", "289000.00", "BRL"),
        ("p2", "c1", "2026-12-02", "Scooter", "250000.00", "NPR"),
    )
    assert api.import_csv(rt, "clients", clients, now=NOW).errors == []
    assert api.import_csv(rt, "purchases", purchases, now=NOW).errors == []


def test_purchases_in_brl_and_npr_do_not_make_a_vip_without_rates(
    tmp_path: Path, runtime: Runtime
) -> None:
    brl_and_npr_client(runtime, tmp_path)
    with reader(runtime.engine) as conn:
        (stats,) = client_stats(conn, 0, 10**9).values()
    assert stats.spent == (("BRL", 28_900_000), ("NPR", 25_000_000))
    assert stats.purchases == 2

    found = api.history(runtime, "c1", NOW)
    assert found is not None and found.spending is not None
    assert found.spending.tier == "new"  # not vip: nothing counted toward 50,000 EUR
    assert (found.spending.counted, found.spending.currency) == (0, "EUR")
    assert found.spending.not_counted == ["BRL", "NPR"]


def test_with_a_rates_table_they_count_converted(
    tmp_path: Path, database_url: str, open_runtime: Callable[..., Runtime]
) -> None:
    rt = open_runtime(
        make_settings(tmp_path, database_url, tiers={"rates": "BRL=0.17, NPR=0.0063"})
    )
    brl_and_npr_client(rt, tmp_path)

    found = api.history(rt, "c1", NOW)
    assert found is not None and found.spending is not None
    # 289,000 x 0.17 + 250,000 x 0.0063 = 49,130 + 1,575 = 50,705.00 EUR.
    assert found.spending.counted == 5_070_500
    assert found.spending.tier == "vip"
    assert found.spending.not_counted == []
    # The zone and locale of a client of Nepal, inferred, are in the history too.
    assert (found.timezone, found.locale, found.inferred) == (
        "Asia/Kathmandu",
        "ne-NP",
        ["timezone", "locale"],
    )


def test_a_file_without_the_zone_keeps_the_one_an_earlier_file_gave(
    tmp_path: Path, runtime: Runtime
) -> None:
    """A column the file does not have keeps its stored value: a zone an earlier file gave
    stays; one that was inferred is inferred again (docs/clients.md)."""
    own = write(
        tmp_path / "crm.csv",
        (*SHOPIFY_LIKE, "timezone", "locale"),
        ("c1", "ana@example.com", "Ana", "Souza", "BR", "America/Manaus", "en-US"),
        ("c2", "joe@example.com", "Joe", "Lee", "FR", "", ""),
    )
    assert api.import_csv(runtime, "clients", own, now=NOW).errors == []
    shop = write(
        tmp_path / "shop.csv",
        SHOPIFY_LIKE,
        ("c1", "ana@example.com", "Ana", "Souza", "BR"),
        ("c2", "joe@example.com", "Joe", "Lee", "FR"),
    )
    report = api.import_csv(runtime, "clients", shop, now=NOW)

    assert report.errors == [] and report.warnings == []
    assert (report.created, report.updated, report.unchanged) == (0, 0, 2)
    assert stored(runtime) == {
        "c1": ("America/Manaus", "en-US", ""),
        "c2": ("Europe/Paris", "fr-FR", "timezone,locale"),
    }
