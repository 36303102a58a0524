"""An import's rows -> records, with a fast path: a row's cells, by position, -> the record that
records.client_record or records.purchase_record makes of the same row, for a row that is
valid. Anything unusual (an invalid cell, a control character anywhere in the row, a column
the path does not know) raises Slow or the parser's FieldError, and the importer then checks
the row by records.py, which finds and reports every error: this path never accepts a row
that records.py would reject, and never returns another record for it. Pure.

It exists for speed (bench/importing.py): no row dict, no error collection, one check for
control characters a row, the country's zone and locale inferred once an import.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from followup.domain.columns import REQUIRED, STAND_INS, Kind
from followup.domain.statuses import ClientStatus, PurchaseStatus
from followup.domain.territories import NoValue, TerritoryDefaults
from followup.importing.fields import (
    FieldError,
    parse_amount,
    parse_birthday,
    parse_choice,
    parse_country,
    parse_currency,
    parse_email,
    parse_instant,
    parse_locale,
    parse_timezone,
)
from followup.importing.records import consent_cells

#: What fields.parse_text refuses anywhere in a cell (control characters, other line breaks).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_CONSENT = ("marketing_consent", "consent_source", "consent_at")
_ACTIVE = ClientStatus.ACTIVE.value
_PAID = PurchaseStatus.PAID.value


class Lookups(Protocol):
    """What the importer knows of a batch (importer._Lookups)."""

    client_ids: dict[str, int]
    client_zones: dict[str, str]

    def record(
        self, kind: Kind, row: dict[str, str], defaults: TerritoryDefaults, now: datetime
    ) -> dict[str, Any]: ...

    def client(self, record: dict[str, Any]) -> dict[str, Any]: ...

    def client_of(self, row: dict[str, str]) -> str: ...


class Slow(Exception):
    """The row is not for the fast path."""


def _text(value: str, longest: int, *, required: bool = True) -> str:
    """fields.parse_text of a cell already known to hold no control character."""
    value = value.strip()
    if (required and not value) or len(value) > longest:
        raise Slow
    return value


def _positions(kind: Kind, header: Sequence[str]) -> dict[str, int] | None:
    """Each column's position, or None when the header lacks a required column or has one
    twice (the checked path then handles every row). Other columns are not read."""
    at = {name: n for n, name in enumerate(header)}
    if any(c not in at and STAND_INS.get(c) not in at for c in REQUIRED[kind]):
        return None
    return at if len(at) == len(header) else None


def clients(
    header: Sequence[str], defaults: TerritoryDefaults, now: datetime
) -> Callable[[Sequence[str]], dict[str, Any]] | None:
    """A function of a row's cells -> records.client_record of the row, or None when the
    header is not for this path."""
    at = _positions(Kind.CLIENTS, header)
    if at is None:
        return None
    i_id, i_email, i_first, i_last, i_country = (at[c] for c in REQUIRED[Kind.CLIENTS])
    i_locale, i_zone, i_birthday, i_rep, i_tier, i_tags, i_status = (
        at.get(c) for c in ("locale", "timezone", "birthday", "rep", "tier", "tags", "status")
    )
    consent = [(c, at[c]) for c in _CONSENT if c in at]
    with_consent = "marketing_consent" in at
    inferred: dict[tuple[str, str], str] = {}

    def infer(column: str, country: str) -> str:
        found = inferred.get((column, country))
        if found is None:
            found = inferred[column, country] = defaults.infer(column, country, now).value
        return found

    def record(cells: Sequence[str]) -> dict[str, Any]:
        if _CONTROL.search("".join(cells)):
            raise Slow
        made: dict[str, Any] = {
            "external_id": _text(cells[i_id], 128),
            "email": parse_email(cells[i_email]),
            "first_name": _text(cells[i_first], 256),
            "last_name": _text(cells[i_last], 256, required=False),
        }
        country = parse_country(cells[i_country])
        given = cells[i_locale] if i_locale is not None else ""
        guessed = ""
        if given.strip():
            made["locale"] = parse_locale(given)
        else:
            made["locale"] = infer("locale", country)
            guessed = "locale"
        given = cells[i_zone] if i_zone is not None else ""
        if given.strip():
            zone = made["timezone"] = parse_timezone(given)
        else:
            zone = made["timezone"] = infer("timezone", country)
            guessed = "timezone," + guessed if guessed else "timezone"
        made["inferred"] = guessed
        made["country"] = country
        birthday = cells[i_birthday].strip() if i_birthday is not None else ""
        year, month, day = parse_birthday(birthday) if birthday else (None, None, None)
        made["rep"] = _text(cells[i_rep], 128, required=False) if i_rep is not None else ""
        made["tier"] = (
            _text(cells[i_tier].lower(), 64, required=False) if i_tier is not None else ""
        )
        made["tags"] = _text(cells[i_tags], 1024, required=False) if i_tags is not None else ""
        status = cells[i_status].strip() if i_status is not None else ""
        made["status"] = parse_choice(status, "status", ClientStatus) if status else _ACTIVE
        if with_consent:
            made["consent"] = consent_cells({c: cells[n] for c, n in consent}, zone)
        made["birthday_year"] = year
        made["birthday_month"] = month
        made["birthday_day"] = day
        return made

    return record


def purchases(
    header: Sequence[str],
) -> Callable[[Sequence[str], str, str], dict[str, Any]] | None:
    """A function of a row's cells, its client's external id (as the importer found it: the
    client cell, or the one client with the row's e-mail address) and zone ->
    records.purchase_record of the row, without its "client", or None when the header is
    not for this path."""
    at = _positions(Kind.PURCHASES, header)
    if at is None:
        return None
    i_id, i_at, i_product, i_amount, i_currency = (
        at[c] for c in ("id", "purchased_at", "product", "amount", "currency")
    )
    i_status = at.get("status")
    #: A status cell -> its value (a file repeats a few).
    statuses: dict[str, str] = {}

    def record(cells: Sequence[str], client: str, zone: str) -> dict[str, Any]:
        if _CONTROL.search("".join(cells)):
            raise Slow
        external_id = cells[i_id].strip()
        product = cells[i_product].strip()
        if not (external_id and client and product):
            raise Slow
        if len(external_id) > 128 or len(client) > 128 or len(product) > 512:
            raise Slow
        currency = parse_currency(cells[i_currency])
        status = cells[i_status] if i_status is not None else ""
        paid = statuses.get(status)
        if paid is None:
            paid = statuses[status] = _status(status)
        return {
            "external_id": external_id,
            "purchased_at": parse_instant(cells[i_at], zone),
            "product": product,
            "currency": currency,
            "amount_minor": parse_amount(cells[i_amount], currency),
            "status": paid,
        }

    return record


def maker(
    kind: Kind, header: list[str], known: set[str], defaults: TerritoryDefaults, now: datetime
) -> Callable[[Lookups, list[str]], dict[str, Any]]:
    """A row's cells and its batch's lookups -> its record: by the fast path where it takes
    the row, else checked by records.py (`lookup.record`: FieldError or ManyErrors naming
    every invalid cell). `known`: the columns of the header that records.py reads."""
    names = [h for h in header if h in known]
    pick = _picker([n for n, h in enumerate(header) if h in known])

    def checked(lookup: Lookups, cells: list[str]) -> dict[str, Any]:
        row = dict(zip(names, pick(cells), strict=True)) if pick else {}
        return lookup.record(kind, row, defaults, now)

    fast_client = clients(header, defaults, now) if kind is Kind.CLIENTS else None
    fast_purchase = purchases(header) if kind is Kind.PURCHASES else None
    if fast_client is not None:
        make_client = fast_client

        def client(lookup: Lookups, cells: list[str]) -> dict[str, Any]:
            try:
                return lookup.client(make_client(cells))
            except (Slow, FieldError, NoValue):
                return checked(lookup, cells)

        return client
    if fast_purchase is not None:
        make_purchase = fast_purchase
        i_client = header.index("client") if "client" in header else None
        i_email = header.index("client_email") if "client_email" in header else None

        def purchase(lookup: Lookups, cells: list[str]) -> dict[str, Any]:
            client = cells[i_client].strip() if i_client is not None else ""
            if not client and i_email is not None:
                try:
                    client = lookup.client_of({"client_email": cells[i_email]})
                except FieldError:
                    return checked(lookup, cells)
                if _CONTROL.search(client):
                    return checked(lookup, cells)
            zone = lookup.client_zones.get(client)
            if not zone:
                return checked(lookup, cells)
            try:
                record = make_purchase(cells, client, zone)
            except (Slow, FieldError):
                return checked(lookup, cells)
            record["client_id"] = lookup.client_ids[client]
            return record

        return purchase
    return checked


def _picker(at: list[int]) -> Callable[[list[str]], tuple[str, ...]] | None:
    """A function of a row's cells -> the cells at `at`, in order (None: no position)."""
    if not at:
        return None
    if len(at) == 1:
        (only,) = at
        return lambda cells: (cells[only],)
    getter: Callable[[list[str]], tuple[str, ...]] = operator.itemgetter(*at)
    return getter


def _status(cell: str) -> str:
    status = cell.strip()
    return parse_choice(status, "status", PurchaseStatus) if status else _PAID
