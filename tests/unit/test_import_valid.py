"""The import's fast path (importing/valid.py) against records.py's checked path: for any row,
the fast path either declines it (Slow, or a parser's error: the importer then checks the row
by records.py) or returns exactly records.py's record, keys in the same order. And it does
take the valid rows of a plain file (else it would be no fast path at all)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from followup.domain.columns import OPTIONAL, REQUIRED, Kind
from followup.domain.territories import NO_DEFAULTS, NoValue, TerritoryDefaults
from followup.importing import valid
from followup.importing.fields import FieldError, number_rules, plain_number
from followup.importing.records import (
    ManyErrors,
    client_record,
    purchase_record,
)

NOW = datetime(2027, 1, 8, 12, tzinfo=UTC)
SHOP = TerritoryDefaults(timezones={"US": "America/Chicago"}, locale="fr", timezone="UTC")


def _spaced(values: list[str]) -> st.SearchStrategy[str]:
    """One of `values`, sometimes with spaces around it."""
    return st.tuples(st.sampled_from(["", "", " ", "\t"]), st.sampled_from(values)).map(
        lambda pair: pair[0] + pair[1] + pair[0]
    )


_NASTY = ["", " ", "a\nb", "x" * 130, "x" * 300, "é\u2028", "\x00", "ü"]
#: Each column's cells: the first two valid, the others valid or not.
CLIENT_CELLS: dict[str, list[str]] = {
    "id": ["c1", "C-2", "é9", *_NASTY],
    "email": ["ann@example.com", "ANN@EXAMPLE.COM", "bad@", "a..b@example.com", ""],
    "first_name": ["Ann", "Zoë", *_NASTY],
    "last_name": ["Lee", "", *_NASTY],
    "country": ["GB", "us", "BR", "FR", "AQ", "XX", ""],
    "locale": ["en-GB", "en_us", "fr", "zz-ZZ", "", " "],
    "timezone": ["Europe/London", "America/New_York", "Mars/Base", ""],
    "birthday": ["1980-02-29", "--02-29", "1981-02-29", "1800-01-01", "", "soon"],
    "rep": ["r1", "", "x" * 129, "r\t1"],
    "tier": ["VIP", "gold", "", "x" * 65],
    "tags": ["a,b", "", "x" * 1025],
    "status": ["active", "UNSUBSCRIBED", "gone", ""],
    "marketing_consent": ["yes", "No", "1", "maybe", ""],
    "consent_source": ["web form", "", "x" * 129],
    "consent_at": ["2026-01-02", "2026-01-02T10:00", "2026-01-02T10:00Z", "then", ""],
}
PURCHASE_CELLS: dict[str, list[str]] = {
    "id": ["p1", "P 2", *_NASTY],
    "client": ["c1", " c1 ", "c2", "", "x" * 129],
    "purchased_at": ["2027-01-06", "2027-01-06T10:30", "2027-01-06T10:30+01:00", "later", ""],
    "product": ["Shoes", "Chaussures élégantes", *_NASTY, "x" * 513],
    "amount": ["12", "12.50", "0", "1,234.50", "14.450", "12.505", "-1", "€12", "", "1e3"],
    "currency": ["EUR", "usd", "JPY", "KWD", "XYZ", ""],
    "status": ["paid", "REFUNDED", "lost", ""],
}


@st.composite
def files(draw: Any, kind: Kind, cells: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """A header (the required columns, some optional ones, maybe an unknown one, in any
    order) and one row of cells for it."""
    optional = draw(st.lists(st.sampled_from(OPTIONAL[kind]), unique=True))
    extra = draw(st.lists(st.sampled_from(["notes"]), max_size=1))
    header = draw(st.permutations([*REQUIRED[kind], *optional, *extra]))
    # Mostly valid rows (all cells, or all but one), else any cells.
    odd = draw(st.sampled_from([-1, -1, draw(st.integers(0, len(header) - 1)), None]))
    row = []
    for n, column in enumerate(header):
        values = cells.get(column, ["anything"])
        row.append(draw(_spaced(values if odd is None or odd == n else values[:2])))
    return header, row


def _outcome(make: Any) -> Any:
    try:
        return make()
    except (FieldError, ManyErrors, NoValue, valid.Slow) as exc:
        return type(exc)


@given(files(Kind.CLIENTS, CLIENT_CELLS), st.sampled_from([NO_DEFAULTS, SHOP]))
def test_a_client_from_the_fast_path_is_the_checked_record(
    file: tuple[list[str], list[str]], defaults: TerritoryDefaults
) -> None:
    header, cells = file
    fast = valid.clients(header, defaults, NOW)
    assert fast is not None
    found = _outcome(lambda: fast(cells))
    row = {h: c for h, c in zip(header, cells, strict=True) if h != "notes"}
    checked = _outcome(lambda: client_record(row, defaults, NOW))
    if isinstance(found, dict):
        assert found == checked
        assert list(found) == list(checked)


@given(files(Kind.PURCHASES, PURCHASE_CELLS), st.sampled_from(["Europe/London", "Asia/Tokyo"]))
def test_a_purchase_from_the_fast_path_is_the_checked_record(
    file: tuple[list[str], list[str]], zone: str
) -> None:
    header, cells = file
    fast = valid.purchases(header)
    assert fast is not None
    client = cells[header.index("client")].strip()
    found = _outcome(lambda: fast(cells, client, zone))
    row = {h: c for h, c in zip(header, cells, strict=True) if h != "notes"}
    checked = _outcome(lambda: purchase_record({**row, "client": client}, zone))
    if isinstance(found, dict):
        assert isinstance(checked, dict)
        assert checked.pop("client") == client
        assert found == checked
        assert list(found) == list(checked)


def test_the_fast_path_takes_the_valid_rows() -> None:
    header = [*REQUIRED[Kind.CLIENTS], *OPTIONAL[Kind.CLIENTS]]
    cells = ["c1", "ann@example.com", "Ann", "Lee", "us", "", "", "--02-29", "r1", "VIP", "", ""]
    cells += ["yes", "", "2026-01-02"]
    fast = valid.clients(header, SHOP, NOW)
    assert fast is not None
    record = fast(cells)
    assert record == client_record(dict(zip(header, cells, strict=True)), SHOP, NOW)
    assert record["timezone"] == "America/Chicago"
    assert record["inferred"] == "timezone,locale"
    purchase = valid.purchases([*REQUIRED[Kind.PURCHASES], "status"])
    assert purchase is not None
    cells = ["p1", "c1", "2027-01-06T10:30", "Shoes", "12.50", "eur", ""]
    assert purchase(cells, "c1", "Europe/Paris")["amount_minor"] == 1250


def test_headers_the_fast_path_leaves_to_records() -> None:
    assert valid.clients(["id", "email", "first_name", "last_name"], NO_DEFAULTS, NOW) is None
    assert valid.clients([*REQUIRED[Kind.CLIENTS], "id"], NO_DEFAULTS, NOW) is None
    assert valid.purchases(["id", "purchased_at", "product", "amount", "currency"]) is None
    # A file naming its clients by e-mail (client_email standing in for client) is taken.
    by_email = ["id", "client_email", "purchased_at", "product", "amount", "currency"]
    assert valid.purchases(by_email) is not None


@pytest.mark.parametrize(
    "cells",
    [
        ["c1", "ann@example.com", "Ann\n", "Lee", "GB"],  # a control character: checked path
        ["c1", "ann@example.com", "", "Lee", "GB"],
        ["c1", "ann@example.com", "Ann", "Lee", "AQ"],  # no zone to infer: NoValue
    ],
)
def test_the_fast_path_declines_what_it_does_not_know(cells: list[str]) -> None:
    fast = valid.clients(list(REQUIRED[Kind.CLIENTS]), NO_DEFAULTS, NOW)
    assert fast is not None
    with pytest.raises((valid.Slow, FieldError, NoValue)):
        fast(cells)


@given(st.from_regex(r"[0-9]+(\.[0-9]+)?", fullmatch=True))
@example("007")
@example("1.000")
def test_plain_digits_skip_the_number_rules_for_the_same_answer(text: str) -> None:
    assert plain_number(text) == number_rules(text, "amount", ".") == text
