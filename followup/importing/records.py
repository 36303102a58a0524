"""A CSV row -> a validated record of reps, clients or purchases (docs/clients.md): every
column a kind of file has, and the record each row becomes. Pure: references to other rows
(a client's rep, a purchase's client) stay external ids for the importer to resolve."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from followup.domain.statuses import ClientStatus, PurchaseStatus
from followup.importing.fields import (
    FieldError,
    parse_amount,
    parse_birthday,
    parse_bool,
    parse_choice,
    parse_country,
    parse_currency,
    parse_email,
    parse_instant,
    parse_locale,
    parse_signature,
    parse_text,
    parse_timezone,
)


class Kind(enum.StrEnum):
    REPS = "reps"
    CLIENTS = "clients"
    PURCHASES = "purchases"


REQUIRED: dict[Kind, tuple[str, ...]] = {
    Kind.REPS: ("id", "name", "email"),
    Kind.CLIENTS: ("id", "email", "first_name", "last_name", "locale", "timezone", "country"),
    Kind.PURCHASES: ("id", "client", "purchased_at", "product", "amount", "currency"),
}
OPTIONAL: dict[Kind, tuple[str, ...]] = {
    Kind.REPS: ("signature", "active"),
    Kind.CLIENTS: ("birthday", "rep", "tier", "tags", "status"),
    Kind.PURCHASES: ("status",),
}
#: A column that may stand in for a required one: a purchase names its client by id or, when
#: the id is not given, by e-mail (the importer looks the address up).
STAND_INS: dict[str, str] = {"client": "client_email"}


def columns_of(kind: Kind) -> tuple[str, ...]:
    """Every column a `kind` file may have: required, optional, then stand-ins."""
    given = (*REQUIRED[kind], *OPTIONAL[kind])
    return given + tuple(STAND_INS[c] for c in REQUIRED[kind] if c in STAND_INS)


def rep_record(row: Mapping[str, str]) -> dict[str, Any]:
    active = row.get("active", "")
    return {
        "external_id": parse_text(row["id"], "id", 128),
        "name": parse_text(row["name"], "name", 256),
        "email": parse_email(row["email"]),
        "signature": parse_signature(row.get("signature", "")),
        "active": True if not active.strip() else parse_bool(active, "active"),
    }


def client_record(row: Mapping[str, str]) -> dict[str, Any]:
    """A validated client; `rep` stays an external id for the store to resolve."""
    errors: list[FieldError] = []
    record: dict[str, Any] = {}

    def take(key: str, fn: Callable[[], Any]) -> None:
        try:
            record[key] = fn()
        except FieldError as exc:
            errors.append(exc)

    take("external_id", lambda: parse_text(row["id"], "id", 128))
    take("email", lambda: parse_email(row["email"]))
    take("first_name", lambda: parse_text(row["first_name"], "first_name", 256))
    take("last_name", lambda: parse_text(row["last_name"], "last_name", 256, required=False))
    take("locale", lambda: parse_locale(row["locale"]))
    take("timezone", lambda: parse_timezone(row["timezone"]))
    take("country", lambda: parse_country(row["country"]))
    birthday = row.get("birthday", "").strip()
    if birthday:
        take("birthday", lambda: parse_birthday(birthday))
    else:
        record["birthday"] = (None, None, None)
    take("rep", lambda: parse_text(row.get("rep", ""), "rep", 128, required=False))
    take("tier", lambda: parse_text(row.get("tier", ""), "tier", 64, required=False).lower())
    take("tags", lambda: parse_text(row.get("tags", ""), "tags", 1024, required=False))
    status = row.get("status", "").strip()
    record["status"] = ClientStatus.ACTIVE.value
    if status:
        take("status", lambda: parse_choice(status, "status", ClientStatus))
    if errors:
        raise errors[0] if len(errors) == 1 else ManyErrors(errors)
    year, month, day = record.pop("birthday")
    record.update(birthday_year=year, birthday_month=month, birthday_day=day)
    return record


def purchase_record(row: Mapping[str, str], client_zone: str | None) -> dict[str, Any]:
    """A validated purchase; `client` stays an external id. `client_zone` is None when the
    client is unknown, in which case the caller reports that."""
    record: dict[str, Any] = {"external_id": parse_text(row["id"], "id", 128)}
    record["client"] = parse_text(row["client"], "client", 128)
    if client_zone is None:
        raise FieldError("client", f"no client with id {record['client']!r} (import clients first)")
    record["purchased_at"] = parse_instant(row["purchased_at"], client_zone)
    record["product"] = parse_text(row["product"], "product", 512)
    record["currency"] = parse_currency(row["currency"])
    record["amount_minor"] = parse_amount(row["amount"], record["currency"])
    status = row.get("status", "").strip()
    record["status"] = parse_choice(status, "status", PurchaseStatus) if status else "paid"
    return record


class ManyErrors(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors
