"""End to end, a shop's own exports as they come (issue "a real shop's data goes in as it is"):
Shopify's customers and orders exports and WooCommerce's, through the installed executable,
with the orders saved with semicolons (Excel in much of Europe) and the WooCommerce customers in
Windows-1252. `--explain` shows the mapping and writes nothing; the right clients, consent
states, zones, locales and purchases are stored (multi-line orders grouped, refunded and
pending orders not counted as paid); a dry-run then shows the thank-you of a paid order, and
the New Year greeting of a client who said "no" skipped "no marketing consent"."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from tests.support.executable import followup
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e

DATA = ROOT / "tests" / "data" / "presets"
#: Two days after WooCommerce order 505 (paid 4 December 2026, Paris): its thank-you is due.
NOW = "2026-12-06T06:00:00Z"


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute(sql))


def dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def semicolons(source: Path, target: Path) -> None:
    """The file as Excel saves CSV where the comma is the decimal mark: `;` between cells."""
    with source.open(encoding="utf-8", newline="") as handle:
        table = list(csv.reader(handle))
    out = io.StringIO()
    csv.writer(out, delimiter=";", lineterminator="\r\n").writerows(table)
    target.write_text(out.getvalue(), encoding="utf-8", newline="")


@pytest.fixture
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shop")
    followup(folder, "init", env={"FOLLOWUP_NOW": NOW})
    (folder / "customers_export.csv").write_bytes((DATA / "shopify_customers.csv").read_bytes())
    semicolons(DATA / "shopify_orders.csv", folder / "orders_export.csv")
    woo = (DATA / "woocommerce_customers.csv").read_text(encoding="utf-8")
    (folder / "woo_customers.csv").write_bytes(woo.encode("cp1252"))
    (folder / "woo_orders.csv").write_bytes((DATA / "woocommerce_orders.csv").read_bytes())
    return folder


def test_a_shops_exports_go_in_as_they_are_and_the_dry_run_shows_them(shop: Path) -> None:
    db = shop / "var" / "followup.db"
    env = {"FOLLOWUP_NOW": NOW}

    # --explain: how each column maps, and nothing written.
    before = dump(db)
    explained = followup(
        shop, "import", "clients", "customers_export.csv", "--preset", "shopify", "--explain",
        env=env,
    )  # fmt: skip
    mapped = [line.split() for line in explained.stdout.splitlines()]
    assert ["Email", "->", "email"] in mapped, explained.stdout
    assert any(
        line[:5] == ["Accepts", "Email", "Marketing", "->", "marketing_consent"] for line in mapped
    ), explained.stdout
    assert "nothing was written" in explained.stdout
    assert dump(db) == before

    customers = followup(
        shop, "import", "clients", "customers_export.csv", "--preset", "shopify", env=env
    )
    # Brazil has four zones: Ana takes the one most Brazilians live in, and the import says so.
    assert (
        "warning: customers_export.csv:5: timezone: 1 row(s) of BR took America/Sao_Paulo"
        in customers.stderr
    )
    # Windows-1252 without the option: refused whole, naming the option to use.
    refused = followup(
        shop, "import", "clients", "woo_customers.csv", "--preset", "woocommerce",
        env=env, check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "--encoding cp1252" in refused.stderr and "Traceback" not in refused.stderr
    followup(
        shop, "import", "clients", "woo_customers.csv", "--preset", "woocommerce",
        "--encoding", "cp1252", env=env,
    )  # fmt: skip
    # The semicolon file's delimiter is found by itself.
    followup(shop, "import", "purchases", "orders_export.csv", "--preset", "shopify", env=env)
    followup(shop, "import", "purchases", "woo_orders.csv", "--preset", "woocommerce", env=env)

    clients = rows(
        db,
        "SELECT external_id, first_name, country, timezone, locale, marketing_consent, inferred"
        " FROM clients ORDER BY external_id",
    )
    assert clients == [
        ("31", "Inès", "FR", "Europe/Paris", "fr-FR", "unknown", "timezone,locale"),
        ("32", "Björn", "SE", "Europe/Stockholm", "sv-SE", "unknown", "timezone,locale"),
        ("33", "Chloé", "CA", "America/Toronto", "en-CA", "unknown", "timezone,locale"),
        ("7001", "Amélie", "FR", "Europe/Paris", "fr-FR", "yes", "timezone,locale"),
        ("7002", "Jörg", "DE", "Europe/Berlin", "de-DE", "no", "timezone,locale"),
        ("7003", "Siobhán", "IE", "Europe/Dublin", "en-IE", "yes", "timezone,locale"),
        ("7004", "Ana", "BR", "America/Sao_Paulo", "pt-BR", "no", "timezone,locale"),
    ]
    purchases = rows(
        db,
        "SELECT p.external_id, c.external_id, p.product, p.amount_minor, p.currency, p.status"
        " FROM purchases p JOIN clients c ON c.id = p.client_id ORDER BY p.external_id",
    )
    assert purchases == [
        ("#1001", "7001", "Vélo de ville « Orsay » (+1 more)", 123450, "EUR", "paid"),
        ("#1002", "7002", "Helm „Alpen“", 7990, "EUR", "refunded"),
        ("#1003", "7003", "Chambre à air 700x28 (+2 more)", 5900, "EUR", "unpaid"),
        ("#1004", "7004", "Bicicleta elétrica Carbono", 8900000, "BRL", "paid"),
        ("501", "31", "Cafetière italienne « Moka » (+1 more)", 123450, "EUR", "paid"),
        ("502", "32", "Kaffekvarn", 4900, "SEK", "refunded"),
        ("503", "33", "Théière en fonte", 3500, "CAD", "unpaid"),
        ("504", "33", "Filtres (x100)", 1200, "CAD", "refunded"),
        ("505", "31", "Tasse en grès", 1890, "EUR", "paid"),  # a guest's order, by e-mail
    ]

    # The day's dry-run: the thank-you of the paid order of 4 December.
    followup(shop, "run", "--dry-run", "--out", "today", env=env)
    today = json.loads((shop / "today" / "manifest.json").read_text(encoding="utf-8"))
    assert [(m["client"], m["campaign"]) for m in today["messages"]] == [("31", "thank_you")]
    assert today["messages"][0]["subject"] == "Merci, Inès !"

    # New Year: greeted with consent (yes, or unknown under the default soft opt-in: every
    # client imported is the shop's customer); Jörg said no: skipped with the reason; Siobhán
    # and Chloé have an unpaid order: excluded as before.
    followup(shop, "run", "--dry-run", "--on", "2027-01-01", "--out", "new-year", env=env)
    new_year = json.loads((shop / "new-year" / "manifest.json").read_text(encoding="utf-8"))
    assert sorted(m["client"] for m in new_year["messages"]) == ["31", "32", "7001"]
    skipped = {s["client"]: s["reason"] for s in new_year["skipped"]}
    assert skipped["7002"] == "no marketing consent"
    assert skipped["7003"] == skipped["33"] == "excluded: unpaid purchase"

    tonights_export_again_changes_nothing_and_never_undoes_a_no(shop)


def tonights_export_again_changes_nothing_and_never_undoes_a_no(shop: Path) -> None:
    """The same exports imported again, as a nightly sync does, after Amélie said no on the
    phone."""
    db = shop / "var" / "followup.db"
    env = {"FOLLOWUP_NOW": "2026-12-07T02:00:00Z"}
    followup(shop, "consent", "7001", "no", "--source", "phone call", env=env)
    said = rows(db, "SELECT marketing_consent, consent_source, consent_at FROM clients"
                    " WHERE external_id = '7001'")  # fmt: skip
    before = rows(db, "SELECT * FROM clients ORDER BY id")

    again = followup(
        shop, "import", "clients", "customers_export.csv", "--preset", "shopify", env=env
    )
    assert "4 imported (0 new, 0 updated, 4 unchanged), 0 rejected" in again.stdout
    for name in ("orders_export.csv", "woo_orders.csv"):
        preset = "shopify" if name.startswith("orders") else "woocommerce"
        result = followup(shop, "import", "purchases", name, "--preset", preset, env=env)
        assert "0 new, 0 updated" in result.stdout and "0 rejected" in result.stdout
    assert rows(db, "SELECT * FROM clients ORDER BY id") == before
    assert said[0][:2] == ("no", "phone call")

    # A customer whose consent cell is blank (Shopify writes nothing when never asked).
    blank = shop / "blank_consent.csv"
    lines = (shop / "customers_export.csv").read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([lines[0]]))
    cells = dict.fromkeys(header, "")
    cells.update({"Customer ID": "7005", "First Name": "Zed", "Email": "zed@example.com"})
    cells["Default Address Country Code"] = "US"
    out = io.StringIO()
    csv.writer(out).writerows([header, [cells[h] for h in header]])
    blank.write_text(out.getvalue(), encoding="utf-8")
    followup(shop, "import", "clients", "blank_consent.csv", "--preset", "shopify", env=env)
    assert rows(
        db, "SELECT marketing_consent, timezone FROM clients WHERE external_id = '7005'"
    ) == [("unknown", "America/New_York")]
