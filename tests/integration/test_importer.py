"""CSV import (docs/clients.md): files imported into a real database (SQLite always, PostgreSQL
when FOLLOWUP_TEST_POSTGRES_URL is set); tests/unit/test_import_cells.py has the pure parsers
of single cells."""

from __future__ import annotations

import csv
import gc
import itertools
import warnings
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Table, delete, func, select

from followup.domain.columns import OPTIONAL, REQUIRED
from followup.domain.statuses import ClientStatus, Consent
from followup.importing.fields import parse_email
from followup.importing.importer import HeaderError, ImportReport, Kind, RowError, import_csv
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.engine import reader

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=3)

CLIENT_HEADER = [*REQUIRED[Kind.CLIENTS], *OPTIONAL[Kind.CLIENTS]]
REP_HEADER = [*REQUIRED[Kind.REPS], *OPTIONAL[Kind.REPS]]
PURCHASE_HEADER = [*REQUIRED[Kind.PURCHASES], *OPTIONAL[Kind.PURCHASES]]

#: Hypothesis examples share one function-scoped database; each example starts by emptying it.
DB_PROPERTY = hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- helpers


def client(external_id: str, **cells: str) -> dict[str, str]:
    """A valid clients.csv row; `cells` override single columns."""
    row = {
        "id": external_id,
        "email": f"{external_id.lower()}@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "locale": "en-US",
        "timezone": "America/New_York",
        "country": "US",
        "birthday": "",
        "rep": "",
        "tier": "",
        "tags": "",
        "status": "",
        "marketing_consent": "",
        "consent_at": "",
        "consent_source": "",
    }
    row.update(cells)
    return row


def write_csv(
    path: Path,
    header: Sequence[str],
    rows: Sequence[Mapping[str, str] | Sequence[str]],
    *,
    encoding: str = "utf-8",
    lineterminator: str = "\r\n",
) -> Path:
    """Write `rows` (dicts keyed by column, or raw lists of cells) under `header`."""
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, lineterminator=lineterminator)
        writer.writerow(header)
        for row in rows:
            if isinstance(row, Mapping):
                writer.writerow([row.get(column, "") for column in header])
            else:
                writer.writerow(row)
    return path


def stored(rt: Runtime, table: Table) -> dict[str, dict[str, Any]]:
    """Every row of `table`, by external id."""
    with reader(rt.engine) as conn:
        rows = conn.execute(select(table)).mappings().all()
    return {row["external_id"]: dict(row) for row in rows}


def count(rt: Runtime, table: Table) -> int:
    with reader(rt.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def where(report: ImportReport) -> list[tuple[int, str]]:
    """(line, column) of every error, in the order reported."""
    return [(e.line, e.column) for e in report.errors]


def header_error(match: str, run: Callable[[], object]) -> None:
    """Assert that `run` raises HeaderError matching `match` (and, with warnings as errors,
    that the rejected file was closed)."""
    with pytest.raises(HeaderError, match=match):
        run()
    gc.collect()


def import_reps(rt: Runtime, tmp_path: Path, *ids: str) -> None:
    rows = [{"id": i, "name": f"Rep {i}", "email": f"{i.lower()}@shop.example"} for i in ids]
    report = import_csv(
        rt.engine, Kind.REPS, write_csv(tmp_path / "reps.csv", REP_HEADER, rows), now=NOW
    )
    assert report.errors == []


def import_clients(rt: Runtime, tmp_path: Path, *rows: dict[str, str]) -> None:
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, rows)
    report = import_csv(rt.engine, Kind.CLIENTS, path, now=NOW)
    assert report.errors == []


# ----------------------------------------------------------------------------- the acceptance case


def acceptance_file(tmp_path: Path) -> Path:
    header = [*REQUIRED[Kind.CLIENTS], "locale", "timezone", "birthday", "nickname"]
    rows = [
        client("C1", first_name="Zoë", last_name="Ñúñez", locale="fr-FR", country="FR"),
        client("C2", email="not-an-email"),
        client("C3", timezone="Europe/Paris", birthday="1984-07-01"),
        client("C4", timezone="Mars/Olympus_Mons"),
        client("C5", birthday="1990-02-30"),
        client("C6", birthday="--02-29", nickname="Sixie"),
    ]
    return write_csv(tmp_path / "clients.csv", header, rows)


def test_acceptance_bad_rows_are_reported_and_good_rows_stored(
    runtime: Runtime, tmp_path: Path
) -> None:
    report = import_csv(runtime.engine, Kind.CLIENTS, acceptance_file(tmp_path), now=NOW)

    assert where(report) == [(1, "nickname"), (3, "email"), (5, "timezone"), (6, "birthday")]
    assert all(e.file == "clients.csv" for e in report.errors)
    unknown, email, zone, birthday = report.errors
    assert "unknown column" in unknown.reason
    assert "'not-an-email' is not a valid e-mail address" in email.reason
    assert "'Mars/Olympus_Mons' is not an IANA time zone" in zone.reason
    assert "'1990-02-30' is not a date" in birthday.reason
    assert str(email) == f"clients.csv:3: email: {email.reason}"

    assert (report.rows, report.imported, report.created, report.rejected_rows) == (6, 3, 3, 3)
    assert report.written
    clients = stored(runtime, tables.clients)
    assert set(clients) == {"C1", "C3", "C6"}
    assert (clients["C1"]["first_name"], clients["C1"]["last_name"]) == ("Zoë", "Ñúñez")
    assert (clients["C1"]["locale"], clients["C1"]["country"]) == ("fr-FR", "FR")
    c3 = clients["C3"]
    assert (c3["birthday_year"], c3["birthday_month"], c3["birthday_day"]) == (1984, 7, 1)
    c6 = clients["C6"]
    assert (c6["birthday_year"], c6["birthday_month"], c6["birthday_day"]) == (None, 2, 29)
    assert c6["status"] == "active"
    assert c6["created_at"] == NOW
    assert c6["updated_at"] == NOW


def test_acceptance_strict_stores_nothing(runtime: Runtime, tmp_path: Path) -> None:
    report = import_csv(
        runtime.engine, Kind.CLIENTS, acceptance_file(tmp_path), now=NOW, strict=True
    )

    assert where(report) == [(1, "nickname"), (3, "email"), (5, "timezone"), (6, "birthday")]
    assert (report.imported, report.created, report.written) == (0, 0, False)
    assert count(runtime, tables.clients) == 0


def test_strict_stores_a_clean_file(runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, [client("C1"), client("C2")])
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW, strict=True)

    assert report.errors == []
    assert (report.imported, report.created, report.written) == (2, 2, True)
    assert count(runtime, tables.clients) == 2


def test_every_bad_cell_of_a_row_is_reported(runtime: Runtime, tmp_path: Path) -> None:
    rows = [client("C1", email="nope", timezone="Nowhere/Town", country="XXX"), client("C2")]
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, rows)
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert where(report) == [(2, "email"), (2, "timezone"), (2, "country")]
    assert report.rejected_rows == 1
    assert set(stored(runtime, tables.clients)) == {"C2"}


# ----------------------------------------------------------------------- updates and duplicates


def test_reimporting_an_id_updates_the_row(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "clients.csv"
    write_csv(path, CLIENT_HEADER, [client("C1", first_name="Ann", tier="Gold")])
    first = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)
    write_csv(
        path,
        CLIENT_HEADER,
        [client("C1", first_name="Anne", email="anne@example.org", status="unsubscribed")],
    )
    second = import_csv(runtime.engine, Kind.CLIENTS, path, now=LATER)

    assert (first.created, second.created, second.imported) == (1, 0, 1)
    assert count(runtime, tables.clients) == 1
    row = stored(runtime, tables.clients)["C1"]
    assert (row["first_name"], row["email"], row["status"]) == (
        "Anne",
        "anne@example.org",
        "unsubscribed",
    )
    assert row["tier"] == ""
    assert row["created_at"] == NOW
    assert row["updated_at"] == LATER


def test_duplicate_id_in_one_file_names_the_earlier_line(runtime: Runtime, tmp_path: Path) -> None:
    rows = [
        client("C1", first_name="First"),
        client("C2"),
        client(" C1 ", email="again@example.com", first_name="Again"),
    ]
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, rows)
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert where(report) == [(4, "id")]
    assert report.errors[0].reason == "'C1' already appears on line 2"
    assert report.imported == 2
    clients = stored(runtime, tables.clients)
    assert set(clients) == {"C1", "C2"}
    assert clients["C1"]["first_name"] == "First"


@pytest.mark.parametrize(
    ("extra", "cells"), [(["surplus"], len(CLIENT_HEADER) + 1), ([], len(CLIENT_HEADER) - 1)]
)
def test_a_row_with_the_wrong_number_of_cells_is_rejected(
    runtime: Runtime, tmp_path: Path, extra: list[str], cells: int
) -> None:
    good = [client("C1")[c] for c in CLIENT_HEADER]
    bad = [client("C2")[c] for c in CLIENT_HEADER][: cells - len(extra)] + extra
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, [good, bad])
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert report.errors == [
        RowError(
            "clients.csv", 3, "", f"has {cells} cells, the header has {len(CLIENT_HEADER)} columns"
        )
    ]
    assert set(stored(runtime, tables.clients)) == {"C1"}


# ----------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("kind", "column"),
    [(kind, column) for kind in Kind for column in REQUIRED[kind]],
)
def test_a_missing_required_column_is_a_header_error(
    runtime: Runtime, tmp_path: Path, kind: Kind, column: str
) -> None:
    header = [c for c in REQUIRED[kind] if c != column]
    path = write_csv(tmp_path / f"{kind.value}.csv", header, [["x"] * len(header)])
    expected = rf"^{kind.value}\.csv:1: missing required column\(s\) {column} \(a {kind.value} "
    header_error(expected, lambda: import_csv(runtime.engine, kind, path, now=NOW))
    assert count(runtime, tables.clients) == 0


def test_header_errors_for_unreadable_files(runtime: Runtime, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(HeaderError, match=r"empty\.csv:1: the file is empty"):
        import_csv(runtime.engine, Kind.CLIENTS, empty, now=NOW)

    with pytest.raises(HeaderError, match="no such file"):
        import_csv(runtime.engine, Kind.CLIENTS, tmp_path / "missing.csv", now=NOW)

    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(",".join(CLIENT_HEADER).replace("id", "\xefd", 1).encode("latin-1"))
    with pytest.raises(HeaderError, match=r"latin1\.csv:1: byte 0xEF .* is not UTF-8; .*cp1252"):
        import_csv(runtime.engine, Kind.CLIENTS, latin1, now=NOW)

    twice = write_csv(tmp_path / "twice.csv", [*CLIENT_HEADER, "email"], [])
    header_error(
        r"twice\.csv:1: column\(s\) email appear more than once",
        lambda: import_csv(runtime.engine, Kind.CLIENTS, twice, now=NOW),
    )
    assert count(runtime, tables.clients) == 0


@pytest.mark.parametrize("header", [["id", "name"], ["id", "name", "email", "name"]])
def test_a_rejected_header_closes_the_file(
    runtime: Runtime, tmp_path: Path, header: list[str]
) -> None:
    path = write_csv(tmp_path / "reps.csv", header, [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(HeaderError):
            import_csv(runtime.engine, Kind.REPS, path, now=NOW)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_column_order_is_free_and_optional_columns_may_be_left_out(
    runtime: Runtime, tmp_path: Path
) -> None:
    header = list(reversed([*REQUIRED[Kind.CLIENTS], "locale", "timezone"]))
    path = write_csv(tmp_path / "clients.csv", header, [client("C1", first_name="Ann")])
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert report.errors == []
    row = stored(runtime, tables.clients)["C1"]
    assert (row["first_name"], row["email"], row["timezone"]) == (
        "Ann",
        "c1@example.com",
        "America/New_York",
    )
    assert (row["rep_id"], row["birthday_month"], row["tier"]) == (None, None, "")


def test_a_utf8_bom_before_the_header_is_ignored(runtime: Runtime, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, [client("C1")], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbfid,")
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert report.errors == []
    assert set(stored(runtime, tables.clients)) == {"C1"}


def test_accented_and_non_latin_names_survive(runtime: Runtime, tmp_path: Path) -> None:
    names = {
        "C1": ("Zoë", "Ñúñez-Gómez"),
        "C2": ("Łukasz", "Wąsowski"),
        "C3": ("Søren", "Kierkegård"),
        "C4": ("李", "小龍"),
        "C5": ("Ἀλέξανδρος", "Ῥόδιος"),
        "C6": ("Renée", "O'Connor, Jr."),
    }
    rows = [client(i, first_name=first, last_name=last) for i, (first, last) in names.items()]
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, rows, encoding="utf-8-sig")
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert report.errors == []
    clients = stored(runtime, tables.clients)
    assert {i: (c["first_name"], c["last_name"]) for i, c in clients.items()} == names


# ----------------------------------------------------------------------------- line numbers


def test_multi_line_quoted_cells_keep_later_line_numbers(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "reps.csv"
    path.write_text(
        "id,name,email,signature\r\n"  # line 1
        'R1,Bob Hale,bob@shop.example,"Best regards,\r\nBob\r\nSales, ""Girard"""\r\n'  # 2-4
        "\r\n"  # 5: blank, skipped
        "R2,Eve Stone,not-an-email,\r\n"  # 6
        'R3,Kim Park,kim@shop.example,"Kim\r\n\r\nParts"\r\n'  # 7-9
        "R4,,r4@shop.example,\r\n",  # 10
        encoding="utf-8",
        newline="",
    )
    report = import_csv(runtime.engine, Kind.REPS, path, now=NOW)

    assert where(report) == [(6, "email"), (10, "name")]
    assert report.rows == 4
    reps = stored(runtime, tables.reps)
    assert set(reps) == {"R1", "R3"}
    assert reps["R1"]["signature"] == 'Best regards,\nBob\nSales, "Girard"'
    assert reps["R3"]["signature"] == "Kim\n\nParts"


def test_a_line_break_in_a_client_cell_is_rejected_at_the_row_start(
    runtime: Runtime, tmp_path: Path
) -> None:
    rows = [client("C1", first_name="Ann\nMarie"), client("C2"), client("C3", email="bad")]
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, rows)
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert where(report) == [(2, "first_name"), (5, "email")]
    assert "control characters" in report.errors[0].reason
    assert set(stored(runtime, tables.clients)) == {"C2"}


# ----------------------------------------------------------------------------- references


def test_a_client_with_an_unknown_rep_is_rejected(runtime: Runtime, tmp_path: Path) -> None:
    import_reps(runtime, tmp_path, "R1")
    rows = [client("C1", rep="R1"), client("C2", rep="R9"), client("C3")]
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, rows)
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert where(report) == [(3, "rep")]
    assert report.errors[0].reason == "no rep with id 'R9' (import reps first)"
    clients = stored(runtime, tables.clients)
    assert set(clients) == {"C1", "C3"}
    assert clients["C1"]["rep_id"] == stored(runtime, tables.reps)["R1"]["id"]
    assert clients["C3"]["rep_id"] is None


def test_a_purchase_for_an_unknown_client_is_rejected(runtime: Runtime, tmp_path: Path) -> None:
    import_clients(runtime, tmp_path, client("C1", timezone="Asia/Tokyo", country="JP"))
    rows = [
        {
            "id": "P1",
            "client": "C1",
            "purchased_at": "2027-01-05",
            "product": "Yaris",
            "amount": "1500000",
            "currency": "jpy",
        },
        {
            "id": "P2",
            "client": "C404",
            "purchased_at": "2027-01-05",
            "product": "Corolla",
            "amount": "10",
            "currency": "JPY",
        },
        {
            "id": "P3",
            "client": "C1",
            "purchased_at": "2027-01-06T09:30:00+01:00",
            "product": "Service",
            "amount": "99.5",
            "currency": "EUR",
            "status": "Refunded",
        },
    ]
    path = write_csv(tmp_path / "purchases.csv", PURCHASE_HEADER, rows)
    report = import_csv(runtime.engine, Kind.PURCHASES, path, now=NOW)

    assert where(report) == [(3, "client")]
    assert report.errors[0].reason == "no client with id 'C404' (import clients first)"
    purchases = stored(runtime, tables.purchases)
    assert set(purchases) == {"P1", "P3"}
    client_id = stored(runtime, tables.clients)["C1"]["id"]
    p1, p3 = purchases["P1"], purchases["P3"]
    assert (p1["client_id"], p1["amount_minor"], p1["currency"], p1["status"]) == (
        client_id,
        1500000,
        "JPY",
        "paid",
    )
    # A date alone is midnight in the client's zone (Tokyo, UTC+9).
    assert p1["purchased_at"] == datetime(2027, 1, 4, 15, 0, tzinfo=UTC)
    assert (p3["amount_minor"], p3["status"]) == (9950, "refunded")
    assert p3["purchased_at"] == datetime(2027, 1, 6, 8, 30, tzinfo=UTC)


def test_an_out_of_range_purchase_date_is_a_row_error(runtime: Runtime, tmp_path: Path) -> None:
    import_clients(runtime, tmp_path, client("C1", timezone="Europe/Paris"))
    row = {
        "id": "P1",
        "client": "C1",
        "purchased_at": "0001-01-01",
        "product": "Clio",
        "amount": "1",
        "currency": "EUR",
    }
    path = write_csv(tmp_path / "purchases.csv", PURCHASE_HEADER, [row])
    report = import_csv(runtime.engine, Kind.PURCHASES, path, now=NOW)
    assert where(report) == [(2, "purchased_at")]


def test_a_nul_character_in_a_signature_is_a_row_error(runtime: Runtime, tmp_path: Path) -> None:
    rows = [
        {"id": "R1", "name": "Bob", "email": "bob@shop.example", "signature": "Bob\x00"},
        {"id": "R2", "name": "Eve", "email": "eve@shop.example", "signature": "Eve"},
    ]
    path = write_csv(tmp_path / "reps.csv", REP_HEADER, rows)
    report = import_csv(runtime.engine, Kind.REPS, path, now=NOW)

    reps = stored(runtime, tables.reps)
    assert set(reps) == {"R2"}
    assert where(report) == [(2, "signature")]


# ----------------------------------------------------------------------------- properties

_PRINTABLE = st.characters(exclude_categories=("Cs", "Cc"))
_LOCAL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@st.composite
def valid_emails(draw: st.DrawFn) -> str:
    local = ".".join(
        draw(st.lists(st.text(_LOCAL_CHARS, min_size=1, max_size=10), min_size=1, max_size=3))
    )
    labels = draw(st.lists(_LABEL, min_size=2, max_size=4))
    return f"{local}@{'.'.join(labels)}"


def _text(max_size: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(_PRINTABLE, min_size=min_size, max_size=max_size).filter(
        lambda s: s == s.strip()
    )


@st.composite
def client_rows(draw: st.DrawFn, external_id: str) -> dict[str, str]:
    birthday = draw(
        st.one_of(
            st.just(""),
            st.dates(min_value=date(1850, 1, 1), max_value=date(2100, 12, 31)).map(date.isoformat),
            st.dates(min_value=date(2000, 1, 1), max_value=date(2000, 12, 31)).map(
                lambda d: f"--{d.month:02d}-{d.day:02d}"
            ),
        )
    )
    return {
        "id": external_id,
        "email": draw(valid_emails()),
        "first_name": draw(_text(40, min_size=1)),
        "last_name": draw(_text(40)),
        "locale": draw(st.sampled_from(["en", "en-US", "fr-CA", "pt-BR", "zh-Hant-TW", "de"])),
        "timezone": draw(st.sampled_from(sorted(zoneinfo.available_timezones()))),
        "country": draw(st.sampled_from(["US", "FR", "JP", "BR", "DE", "NZ", "CI"])),
        "birthday": birthday,
        "tier": draw(st.from_regex(r"([a-z]{1,10})?", fullmatch=True)),
        "tags": draw(_text(60)),
        "status": draw(st.sampled_from([s.value for s in ClientStatus])),
        "marketing_consent": draw(st.sampled_from([c.value for c in Consent])),
        "consent_source": draw(_text(60, min_size=1)),
    }


_IDS = itertools.count()


def _empty(rt: Runtime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(delete(tables.clients))


@DB_PROPERTY
@given(data=st.data(), size=st.integers(min_value=1, max_value=4))
def test_valid_client_rows_read_back_equal(
    runtime: Runtime, tmp_path: Path, data: st.DataObject, size: int
) -> None:
    _empty(runtime)
    rows = [data.draw(client_rows(f"C{next(_IDS)}")) for _ in range(size)]
    # consent_at: its own tests (test_consent_import.py).
    header = [c for c in CLIENT_HEADER if c not in ("rep", "consent_at")]
    path = write_csv(tmp_path / "clients.csv", header, rows)
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert report.errors == []
    assert (report.imported, report.created) == (size, size)
    back = stored(runtime, tables.clients)
    for row in rows:
        got = back[row["id"]]
        year, month, day = got["birthday_year"], got["birthday_month"], got["birthday_day"]
        birthday = "" if month is None else f"{year or '-'}-{month:02d}-{day:02d}"
        read = {c: got[c] for c in header if c not in ("id", "birthday")}
        assert read | {"id": got["external_id"], "birthday": birthday} == row


@DB_PROPERTY
@given(email=st.text(st.characters(exclude_categories=("Cs",)), max_size=300))
def test_any_text_in_the_email_cell_is_stored_or_reported(
    runtime: Runtime, tmp_path: Path, email: str
) -> None:
    _empty(runtime)
    path = write_csv(tmp_path / "clients.csv", CLIENT_HEADER, [client("C1", email=email)])
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    clients = stored(runtime, tables.clients)
    if report.errors:
        assert where(report) == [(2, "email")]
        assert clients == {}
    else:
        assert clients["C1"]["email"] == email.strip() == parse_email(email)


@given(email=valid_emails())
def test_generated_valid_emails_parse_to_themselves(email: str) -> None:
    assert parse_email(email) == email


def test_a_large_amount_in_a_small_currency_unit_is_stored(
    runtime: Runtime, tmp_path: Path
) -> None:
    """3.5 billion rupiah is an ordinary car price; it needs a 64-bit column."""
    import_clients(runtime, tmp_path, client("C1", timezone="Asia/Jakarta"))
    row = {
        "id": "P1",
        "client": "C1",
        "purchased_at": "2027-01-04",
        "product": "Car",
        "amount": "3500000000",
        "currency": "IDR",
    }
    path = write_csv(tmp_path / "purchases.csv", PURCHASE_HEADER, [row])
    report = import_csv(runtime.engine, Kind.PURCHASES, path, now=NOW)
    assert report.errors == []
    assert stored(runtime, tables.purchases)["P1"]["amount_minor"] == 350_000_000_000


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_unicode_line_separator_in_a_name_is_a_row_error(
    runtime: Runtime, tmp_path: Path, separator: str
) -> None:
    path = write_csv(
        tmp_path / "clients.csv", CLIENT_HEADER, [client("C1", first_name=f"An{separator}n")]
    )
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)
    assert where(report) == [(2, "first_name")]
