"""The columns of each kind of import file (docs/clients.md): which are required, which
optional, and which may stand in for a required one. Data only: the importer reads rows by
them (importing/records.py) and the settings check that a mapping names them
(config/imports.py)."""

from __future__ import annotations

import enum


class Kind(enum.StrEnum):
    REPS = "reps"
    CLIENTS = "clients"
    PURCHASES = "purchases"


REQUIRED: dict[Kind, tuple[str, ...]] = {
    Kind.REPS: ("id", "name", "email"),
    Kind.CLIENTS: ("id", "email", "first_name", "last_name", "country"),
    Kind.PURCHASES: ("id", "client", "purchased_at", "product", "amount", "currency"),
}
OPTIONAL: dict[Kind, tuple[str, ...]] = {
    Kind.REPS: ("signature", "active"),
    #: locale and timezone: inferred from the country when absent or empty (territories).
    Kind.CLIENTS: (
        "locale",
        "timezone",
        "birthday",
        "rep",
        "tier",
        "tags",
        "status",
        "marketing_consent",
        "consent_at",
        "consent_source",
    ),
    Kind.PURCHASES: ("status",),
}
#: A column that may stand in for a required one: a purchase names its client by id or, when
#: the id is not given, by e-mail (the importer looks the address up).
STAND_INS: dict[str, str] = {"client": "client_email"}


def columns_of(kind: Kind) -> tuple[str, ...]:
    """Every column a `kind` file may have: required, optional, then stand-ins."""
    given = (*REQUIRED[kind], *OPTIONAL[kind])
    return given + tuple(STAND_INS[c] for c in REQUIRED[kind] if c in STAND_INS)
