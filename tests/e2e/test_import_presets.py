"""End to end: `followup import KIND FILE --preset NAME [--explain]`, the installed executable
over the hand-made Shopify exports of tests/data/presets: the mapping shown, the rows that
would be rejected, and nothing written (docs/clients.md#importing-a-shops-own-files)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.support.executable import followup
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e

DATA = ROOT / "tests" / "data" / "presets"
SHOP_CLIENTS = """
[import.clients]
preset = "shopify"
[import.clients.defaults]
locale = "en"
timezone = "Europe/Paris"
"""


def dump(folder: Path) -> list[str]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return list(conn.iterdump())


@pytest.fixture
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder after `followup init`, with the Shopify customers imported through config: one
    for each test, which may import into it (xdist runs a module's tests in any order)."""
    folder = tmp_path_factory.mktemp("shop")
    followup(folder, "init")
    with (folder / "config.toml").open("a", encoding="utf-8") as config:
        config.write(SHOP_CLIENTS)
    shutil.copy(DATA / "shopify_orders.csv", folder / "orders_export.csv")
    result = followup(
        folder, "import", "clients", str(DATA / "shopify_customers.csv"), "--preset", "config"
    )
    assert "4 imported (4 new, 0 updated, 0 unchanged), 0 rejected" in result.stdout
    return folder


def test_explain_shows_the_mapping_and_writes_nothing(shop: Path) -> None:
    before = dump(shop)
    result = followup(
        shop, "import", "purchases", "orders_export.csv", "--preset", "shopify", "--explain"
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "profile: shopify (purchases; decimal mark '.')"
    assert any(
        line.split()
        == [
            "Name",
            "->",
            "groups",
            "consecutive",
            "lines",
            "with",
            "the",
            "same",
            "value:",
            "one",
            "record",
        ]
        for line in lines
    )
    assert any(
        line.split()[:4] == ["Paid", "at", "|", "Created"] and "-> purchased_at" in line
        for line in lines
    )
    assert any("Lineitem name" in line and "-> product" in line for line in lines)
    assert any("Financial Status" in line and "voided -> refunded" in line for line in lines)
    assert any(line.startswith("ignored: ") and "Lineitem price" in line for line in lines)
    assert lines[-1] == (
        "orders_export.csv: 4 would be imported (4 new, 0 updated, 0 unchanged), 0 rejected "
        "(--explain: nothing was written)"
    )
    assert dump(shop) == before


def test_explain_lists_the_rows_that_would_be_rejected(shop: Path) -> None:
    text = (shop / "orders_export.csv").read_text(encoding="utf-8")
    bad = shop / "bad_orders.csv"
    bad.write_text(
        text.replace("joerg.mueller@example.de", "nobody@example.com").replace(
            ",1234.50,", ',"1,234.5x",', 1
        ),
        encoding="utf-8",
    )
    before = dump(shop)
    result = followup(
        shop,
        "import",
        "purchases",
        "bad_orders.csv",
        "--preset",
        "shopify",
        "--explain",
        check=False,
    )
    assert result.returncode == 1
    assert (
        "bad_orders.csv:4: Email (client_email): no client with e-mail 'nobody@example.com'"
        in result.stderr
    )
    assert "bad_orders.csv:2: Total (amount): '1,234.5x' is not a number" in result.stderr
    assert (
        "2 would be imported (2 new, 0 updated, 0 unchanged), 2 rejected "
        "(--explain: nothing was written)" in result.stdout
    )
    assert dump(shop) == before


def test_then_the_import_itself(shop: Path) -> None:
    result = followup(shop, "import", "purchases", "orders_export.csv", "--preset", "shopify")
    summary = "orders_export.csv: 4 imported (4 new, 0 updated, 0 unchanged), 0 rejected"
    assert summary in result.stdout
    with sqlite3.connect(shop / "var" / "followup.db") as conn:
        stored = sorted(conn.execute("SELECT external_id, amount_minor, status FROM purchases"))
    assert stored == [
        ("#1001", 123450, "paid"),
        ("#1002", 7990, "refunded"),
        ("#1003", 5900, "unpaid"),
        ("#1004", 8900000, "paid"),
    ]


def test_a_preset_or_mark_that_does_not_exist(shop: Path) -> None:
    result = followup(
        shop, "import", "purchases", "orders_export.csv", "--preset", "magento", check=False
    )
    assert result.returncode == 1
    assert (
        "--preset 'magento': no such preset (they are shopify, woocommerce, or config"
        in result.stderr
    )
    result = followup(
        shop, "import", "purchases", "orders_export.csv", "--decimal", ";", check=False
    )
    assert result.returncode == 2
    assert "--decimal" in result.stderr


def test_a_mapping_naming_no_column_of_followup_is_refused(tmp_path: Path) -> None:
    followup(tmp_path, "init")
    with (tmp_path / "config.toml").open("a", encoding="utf-8") as config:
        config.write('\n[import.clients]\nemial = "E-mail address"\n')
    result = followup(
        tmp_path,
        "import",
        "clients",
        str(DATA / "shopify_customers.csv"),
        "--preset",
        "config",
        check=False,
    )
    assert result.returncode == 1
    assert (
        "[import] clients" in result.stderr
        and "'emial' is not a column of followup's clients" in result.stderr
    )
