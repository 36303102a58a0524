"""Import profiles (docs/clients.md#your-own-export, docs/import-shopify.md,
docs/import-woocommerce.md), pure: a file's rows -> rows in followup's own columns, the shipped
presets over the sample files of tests/data/presets, the [import.KIND] settings, and the amount
rule (tests/integration/test_import_presets.py imports the same files into a database)."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.config.imports import PRESETS, ImportSettings
from followup.config.settings import load_settings
from followup.domain.columns import REQUIRED, Kind
from followup.domain.statuses import PurchaseStatus
from followup.errors import ConfigError
from followup.importing.fields import FieldError, parse_amount, plain_number
from followup.importing.presets import profile_for
from followup.importing.profiles import Bound, Column, Profile, bind, describe
from followup.importing.reader import HeaderError

DATA = Path(__file__).resolve().parents[1] / "data" / "presets"
NO_CONFIG = ImportSettings()


def shop_clients(preset: str) -> Profile:
    """A preset's clients with a locale and a zone by default: this version requires both,
    and a platform's export has neither (the country will say, docs/clients.md)."""
    defaults = {"locale": "en", "timezone": "Europe/Paris"}
    mapping = {"clients": {"preset": preset, "defaults": defaults}}
    return profile_for(Kind.CLIENTS, "config", ImportSettings.model_validate(mapping))


def read(name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with (DATA / name).open(encoding="utf-8", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, [(line, cells) for line, cells in enumerate(rows, start=2)]


def mapped(
    profile: Profile, name: str
) -> tuple[Bound, list[dict[str, str]], list[tuple[int, list[FieldError]]]]:
    """The sample file `name` through `profile`: its native rows (by column) and rejections."""
    header, rows = read(name)
    bound = bind(profile, header, name)
    rejected: list[tuple[int, list[FieldError]]] = []
    out = [
        {"line": str(line), **dict(zip(bound.native_header, cells, strict=True))}
        for line, cells in bound.rows(rows, lambda line, errors: rejected.append((line, errors)))
    ]
    return bound, out, rejected


# ----------------------------------------------------------------------------- the columns


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("kind", [Kind.CLIENTS, Kind.PURCHASES])
def test_every_shipped_preset_loads(preset: str, kind: Kind) -> None:
    profile = profile_for(kind, preset, NO_CONFIG)
    assert profile.kind is kind and profile.name == preset
    for name in REQUIRED[kind]:
        column = profile.column(name)
        assert column is not None


# ----------------------------------------------------------------------------- shopify


def test_shopify_customers_current_layout() -> None:
    bound, rows, rejected = mapped(shop_clients("shopify"), "shopify_customers.csv")
    assert rejected == []
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"7001", "7002", "7003", "7004"}
    amelie, joerg = by_id["7001"], by_id["7002"]
    assert (amelie["first_name"], amelie["last_name"], amelie["country"]) == (
        "Amélie",
        "Dubois",
        "FR",
    )
    assert amelie["email"] == "amelie.dubois@example.fr"
    assert amelie["tags"] == "vip, newsletter"
    assert amelie["marketing_consent"] == "yes"
    assert joerg["marketing_consent"] == "no"
    assert {r["consent_source"] for r in rows} == {"shopify"}
    assert "Total Spent" in bound.unmapped and "Accepts SMS Marketing" in bound.unmapped


def test_shopify_customers_older_layout_uses_the_email_as_id() -> None:
    _, rows, rejected = mapped(shop_clients("shopify"), "shopify_customers_older.csv")
    assert rejected == []
    assert [(r["id"], r["country"], r["marketing_consent"]) for r in rows] == [
        ("zoe.lefevre@example.be", "BE", "yes"),
        ("hakon@example.no", "NO", "no"),
    ]


def test_shopify_orders_one_purchase_per_order_from_its_item_lines() -> None:
    _, rows, rejected = mapped(
        profile_for(Kind.PURCHASES, "shopify", NO_CONFIG), "shopify_orders.csv"
    )
    assert rejected == []
    by_id = {r["id"]: r for r in rows}
    assert list(by_id) == ["#1001", "#1002", "#1003", "#1004"]
    first = by_id["#1001"]
    assert first["line"] == "2"
    assert first["product"] == "Vélo de ville « Orsay » (+1 more)"
    assert (first["amount"], first["currency"], first["status"]) == ("1234.50", "EUR", "paid")
    assert first["purchased_at"] == "2026-11-20T10:15:02+01:00"
    assert first["client_email"] == "amelie.dubois@example.fr"
    assert by_id["#1002"]["status"] == "refunded"
    pending = by_id["#1003"]
    assert pending["line"] == "5"
    assert pending["status"] == "unpaid"
    assert pending["product"] == "Chambre à air 700x28 (+2 more)"
    # Not paid yet: the order's creation is its date.
    assert pending["purchased_at"] == "2026-12-01T09:30:00+00:00"
    assert by_id["#1004"]["status"] == "paid"  # partially refunded: still a sale


# ----------------------------------------------------------------------------- woocommerce


def test_woocommerce_orders_grouped_with_their_statuses() -> None:
    _, rows, rejected = mapped(
        profile_for(Kind.PURCHASES, "woocommerce", NO_CONFIG), "woocommerce_orders.csv"
    )
    assert rejected == []
    assert [(r["id"], r["status"], r["amount"]) for r in rows] == [
        ("501", "paid", "1,234.50"),
        ("502", "refunded", "49.00"),
        ("503", "unpaid", "35.00"),
        ("504", "refunded", "12.00"),
        ("505", "paid", "18.90"),
    ]
    assert rows[0]["product"] == "Cafetière italienne « Moka » (+1 more)"
    assert rows[2]["purchased_at"] == "2026-12-02 10:00:00"  # no paid_date: the order date
    assert rows[4]["client_email"] == "ines.garcon@example.fr"


def test_woocommerce_customers() -> None:
    _, rows, rejected = mapped(shop_clients("woocommerce"), "woocommerce_customers.csv")
    assert rejected == []
    assert [(r["id"], r["first_name"], r["country"]) for r in rows] == [
        ("31", "Inès", "FR"),
        ("32", "Björn", "SE"),
        ("33", "Chloé", "CA"),
    ]


SHOP_STATUSES = {
    "shopify": (
        "pending",
        "authorized",
        "paid",
        "partially_paid",
        "partially_refunded",
        "refunded",
        "voided",
    ),
    "woocommerce": (
        "pending",
        "processing",
        "on-hold",
        "completed",
        "cancelled",
        "refunded",
        "failed",
    ),
}
NEVER_A_SALE = {"voided", "cancelled", "failed"}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_status_of_a_shop_maps_and_no_unsold_order_is_paid(preset: str) -> None:
    column = profile_for(Kind.PURCHASES, preset, NO_CONFIG).column("status")
    assert column is not None
    for status in SHOP_STATUSES[preset]:
        mapped_to = column.values[status]
        assert mapped_to in {s.value for s in PurchaseStatus}
        if status in NEVER_A_SALE or status.startswith(("pending", "on-hold", "authorized")):
            assert mapped_to != "paid", status


# ----------------------------------------------------------------------------- the mechanics

PLAIN = Profile(
    "test",
    Kind.CLIENTS,
    (
        Column("id", ("No.",)),
        Column("email", ("Mail", "Mail 2")),
        Column("first_name", ("Name",)),
        Column("last_name", ("Surname",)),
        Column("locale", (), default="en"),
        Column("timezone", ("Zone",), default="Europe/Paris"),
        Column("country", ("Land",)),
        Column("status", ("State",), values={"do not mail": "do-not-contact"}),
        Column("birthday", ("Born",), format="%d/%m/%Y"),
    ),
)
PLAIN_HEADER = ["No.", "Mail", "Mail 2", "Name", "Surname", "Zone", "Land", "State", "Born", "X"]


def run(profile: Profile, *rows: list[str]) -> tuple[list[list[str]], list[tuple[int, str]]]:
    bound = bind(profile, PLAIN_HEADER, "crm.csv")
    rejected: list[tuple[int, str]] = []
    out = [
        cells
        for _, cells in bound.rows(
            list(enumerate(rows, start=2)),
            lambda line, errors: rejected.extend((line, str(e)) for e in errors),
        )
    ]
    return out, rejected


def test_sources_defaults_value_maps_and_formats() -> None:
    rows, rejected = run(
        PLAIN,
        ["1", "", "b@example.com", "Bo", "Li", "", "SE", "DO NOT MAIL", "29/02/2000", "x"],
        ["2", "a@example.com", "", "Al", "Ng", "Asia/Tokyo", "JP", "active", "", ""],
    )
    assert rejected == []
    assert rows == [
        ["1", "b@example.com", "Bo", "Li", "en", "Europe/Paris", "SE", "do-not-contact",
         "2000-02-29T00:00:00"],
        ["2", "a@example.com", "Al", "Ng", "en", "Asia/Tokyo", "JP", "active", ""],
    ]  # fmt: skip


def test_a_bad_cell_names_the_files_column_and_followups() -> None:
    _, rejected = run(
        PLAIN, ["1", "a@example.com", "", "Al", "Ng", "", "JP", "", "1999-12-31", ""], ["2"]
    )
    assert rejected == [
        (2, "Born (birthday): '1999-12-31' does not match the format '%d/%m/%Y'"),
        (3, ": has 1 cells, the header has 10 columns"),
    ]


def test_a_missing_required_column_names_where_the_profile_looks() -> None:
    with pytest.raises(HeaderError, match=r"crm.csv:1: .*first_name \('Name'\)"):
        bind(PLAIN, [h for h in PLAIN_HEADER if h != "Name"], "crm.csv")


def test_grouping_takes_consecutive_lines_only() -> None:
    profile = profile_for(Kind.PURCHASES, "shopify", NO_CONFIG)
    header, rows = read("shopify_orders.csv")
    at = header.index("Name")
    # #1001's second line moved after #1002: two records named #1001 (the importer refuses
    # the second as a duplicate id, with both lines).
    moved = [rows[0], rows[2], rows[1], *rows[3:]]
    bound = bind(profile, header, "orders.csv")
    names = [cells[0] for _, cells in bound.rows(moved, lambda *_: None)]
    assert names == ["#1001", "#1002", "#1001", "#1003", "#1004"]
    assert header[at] == "Name"


def test_explain_lists_each_column_the_defaults_and_what_is_ignored() -> None:
    bound = bind(PLAIN, PLAIN_HEADER, "crm.csv")
    text = "\n".join(describe(bound, ("status",)))
    assert "Mail | Mail 2" in text and "-> email" in text
    assert "(not in the file)" in text and "-> locale  [default 'en']" in text
    assert "do not mail -> do-not-contact" in text
    assert "not stored by this version of followup" in text
    assert "ignored: X" in text


# ----------------------------------------------------------------------------- the settings


def config(tmp_path: Path, text: str) -> ImportSettings:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, {}).imports


def test_a_config_mapping_lies_over_its_preset(tmp_path: Path) -> None:
    settings = config(
        tmp_path,
        '[import.clients]\npreset = "shopify"\nemail = "E-mail"\n'
        '[import.clients.defaults]\nlocale = "fr"\n',
    )
    profile = profile_for(Kind.CLIENTS, "config", settings)
    assert profile.name == "config [import.clients]"
    email, locale, consent = (profile.column(n) for n in ("email", "locale", "marketing_consent"))
    assert email is not None and email.sources == ("E-mail",)
    assert locale is not None and locale.default == "fr" and locale.sources == ("locale",)
    assert consent is not None and consent.values["no"] == "no"  # from the preset


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[import.clients]\nemial = "Mail"\n', "'emial' is not a column of followup's clients"),
        ('[import.purchases]\nclient = ""\n', "client: the file's column name"),
        ('[import.clients.defaults]\ncolour = "red"\n', "'colour' is not a column"),
        ('[import.clients.values.moods]\nhappy = "yes"\n', "'moods' is not a column"),
        ('[import.purchases]\ndecimal = ";"\n', "[import.purchases] decimal"),
        ('[import.clients]\npreset = "magento"\n', "[import.clients] preset"),
        ('[import.orders]\nid = "x"\n', "[import] orders: unknown key"),
    ],
)
def test_a_bad_mapping_is_refused_naming_the_key(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, text)
    assert error in str(caught.value)
    assert str(tmp_path / "config.toml") in str(caught.value)


def test_preset_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="no such preset"):
        profile_for(Kind.CLIENTS, "magento", NO_CONFIG)
    with pytest.raises(ConfigError, match=r"no \[import.clients\] mapping"):
        profile_for(Kind.CLIENTS, "config", NO_CONFIG)


def test_the_commands_decimal_wins_over_the_profiles(tmp_path: Path) -> None:
    settings = config(tmp_path, '[import.purchases]\ndecimal = ","\n')
    assert profile_for(Kind.PURCHASES, "config", settings).decimal == ","
    assert profile_for(Kind.PURCHASES, "config", settings, ".").decimal == "."
    assert profile_for(Kind.PURCHASES, None, settings, ",").decimal == ","


# ----------------------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    ("value", "decimal", "plain"),
    [
        ("1,234.50", ".", "1234.50"),
        ("1,234,567", ".", "1234567"),
        ("1 234.50", ".", "1234.50"),
        ("1\u00a0234,50", ",", "1234.50"),
        ("1.234.567,89", ",", "1234567.89"),
        ("1.234", ",", "1234"),
        ("12,5", ",", "12.5"),
        ("0.99", ".", "0.99"),
    ],
)
def test_number_formats(value: str, decimal: str, plain: str) -> None:
    assert plain_number(value, "amount", decimal) == plain


@pytest.mark.parametrize(
    ("value", "decimal", "reason"),
    [
        ("1,234", ".", "is ambiguous"),
        ("12,50", ".", "for a decimal comma, import with --decimal ,"),
        ("1,23,456.00", ".", "--decimal ,"),
        ("12.50", ",", "decimal mark ','"),
        ("1.234,5.0", ",", "is not a number"),
        ("€12.50", ".", "remove the currency symbol"),
        ("12.50 $", ".", "remove the currency symbol"),
        ("1,234 567", ".", "--decimal ,"),
    ],
)
def test_number_formats_refused(value: str, decimal: str, reason: str) -> None:
    with pytest.raises(FieldError) as caught:
        plain_number(value, "Total (amount)", decimal)
    assert caught.value.column == "Total (amount)"
    assert reason in caught.value.reason


def grouped(units: int, separator: str) -> str:
    text = f"{units:,}"
    return text.replace(",", separator)


AMOUNTS = st.integers(min_value=0, max_value=10**12)


@given(AMOUNTS, st.sampled_from([",", " ", "\u00a0", ""]))
def test_point_decimals_with_any_thousands_separator_round_trip(minor: int, sep: str) -> None:
    units, cents = divmod(minor, 100)
    assert parse_amount(f"{grouped(units, sep)}.{cents:02d}", "EUR") == minor


@given(AMOUNTS, st.sampled_from([".", " ", "\u202f", ""]))
def test_comma_decimals_round_trip_with_the_option(minor: int, sep: str) -> None:
    units, cents = divmod(minor, 100)
    assert parse_amount(f"{grouped(units, sep)},{cents:02d}", "EUR", decimal=",") == minor


@given(AMOUNTS, st.sampled_from([".", " ", ""]), st.booleans())
def test_a_comma_decimal_file_without_the_option_is_never_misread(
    minor: int, sep: str, whole: bool
) -> None:
    """A European amount read with the default decimal point is refused or read right: never
    a silent wrong value (the currency's decimals catch "1.234" meaning 1234 EUR)."""
    units, cents = divmod(minor, 100)
    text = grouped(units, sep) if whole else f"{grouped(units, sep)},{cents:02d}"
    truth = units * 100 if whole else minor
    try:
        read = parse_amount(text, "EUR")
    except FieldError:
        return
    assert read == truth


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from([".", " ", ""]))
def test_a_dot_grouped_yen_amount_is_never_misread(units: int, sep: str) -> None:
    """'1.000' JPY from a file whose dots group thousands: refused, or read as 1000."""
    try:
        read = parse_amount(grouped(units, sep), "JPY")
    except FieldError as exc:
        assert "--decimal ," in exc.reason or "decimals for JPY" in exc.reason
        return
    assert read == units


@given(st.text(alphabet="0123456789.,  ", min_size=1, max_size=14))
def test_a_value_never_reads_as_two_numbers(text: str) -> None:
    """Whatever plain_number returns is a plain decimal, equal under both marks when both
    read the value with neither separator present."""
    for decimal in (".", ","):
        try:
            plain = plain_number(text, "amount", decimal)
        except FieldError:
            continue
        if plain.strip() and plain[0].isdigit():
            Decimal(plain)  # a plain decimal number, or left for parse_amount to judge


# ----------------------------------------------------------------------------- the docs' samples

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("preset", PRESETS)
def test_the_samples_of_each_preset_page_map_without_an_error(preset: str) -> None:
    page = (DOCS / f"import-{preset}.md").read_text(encoding="utf-8")
    samples = re.findall(r"```csv\n(.*?)```", page, re.S)
    assert len(samples) == 2
    rejected: list[object] = []
    for sample in samples:
        header, *rows = list(csv.reader(io.StringIO(sample)))
        kind = (
            Kind.CLIENTS if header[0].lower().replace(" ", "_") == "customer_id" else Kind.PURCHASES
        )
        profile = (
            shop_clients(preset) if kind is Kind.CLIENTS else profile_for(kind, preset, NO_CONFIG)
        )
        bound = bind(profile, header, f"import-{preset}.md")
        out = list(bound.rows(list(enumerate(rows, start=2)), lambda *e: rejected.append(e)))
        assert rejected == [] and out, (kind, out)


def test_a_bad_line_of_an_order_rejects_the_whole_order_on_its_line() -> None:
    profile = profile_for(Kind.PURCHASES, "shopify", NO_CONFIG)
    header, rows = read("shopify_orders.csv")
    broken = [(line, cells if line != 6 else cells[:-1]) for line, cells in rows]
    at = header.index("Paid at")
    broken[2][1][at] = "20/11/2026"  # #1002's date, on line 4
    bound = bind(profile, header, "orders.csv")
    rejected: list[tuple[int, list[str]]] = []
    kept = [
        cells[0]
        for _, cells in bound.rows(
            broken, lambda line, errors: rejected.append((line, [str(e) for e in errors]))
        )
    ]
    assert kept == ["#1001", "#1004"]
    assert rejected == [
        (4, ["Paid at | Created at (purchased_at): '20/11/2026' does not match the format "
             "'%Y-%m-%d %H:%M:%S %z'"]),
        # Line 6, #1003's second item, is short: the order is rejected, the error on line 6.
        (6, [": has 70 cells, the header has 71 columns"]),
    ]  # fmt: skip


def test_a_grouping_column_missing_from_the_file() -> None:
    header, _ = read("shopify_orders.csv")
    mapping = {"purchases": {"preset": "shopify", "id": "Id"}}
    profile = profile_for(Kind.PURCHASES, "config", ImportSettings.model_validate(mapping))
    with pytest.raises(HeaderError, match="missing column 'Name'"):
        bind(profile, [h if h != "Name" else "Order" for h in header] + ["Name x"], "o.csv")
