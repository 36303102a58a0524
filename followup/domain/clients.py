"""What the rules know about a client, in the two shapes they need it.

- `ClientFacts`: what the planner reads for one client (zone, country, language, dates,
  purchases, the facts audience rules see).
- `Recipient`: what deciding and composing one touch read (the client, their rep, the
  touch's purchase), in one row.
- `ClientStats`: what the client's purchases say (how many, how much, first and last, unpaid
  or disputed ones); both shapes are built with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class ClientStats:
    """What the purchases say about one client."""

    purchases: int = 0
    #: Sum of paid amounts per currency, in each currency's minor units (cents), by currency
    #: code: (("BRL", 8_900_000), ("EUR", 125_000)). Never summed across currencies here:
    #: care.counted_total converts what [tiers] says can be.
    spent: tuple[tuple[str, int], ...] = ()
    first_purchase: datetime | None = None
    last_purchase: datetime | None = None
    has_unpaid: bool = False
    has_disputed: bool = False


@dataclass(frozen=True, slots=True)
class PurchaseFact:
    purchase_id: int
    purchased_at: datetime
    status: str
    product: str = ""


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What the planner knows about one client."""

    client_id: int
    timezone: str
    country: str
    locale: str
    birthday: tuple[int, int, int | None] | None = None
    #: Local date of the first paid purchase.
    first_purchase: date | None = None
    purchases: tuple[PurchaseFact, ...] = ()
    status: str = "active"
    stats: ClientStats = field(default_factory=ClientStats)
    #: What audience rules see as `client` (tier, purchases, total_spent, ...).
    context: Mapping[str, Any] = field(default_factory=dict)
    #: Marketing consent: yes, no or unknown (followup.domain.consent).
    consent: str = "unknown"


class Recipient(NamedTuple):
    """Who one touch is for and who signs it: the client, their rep (None when the client has
    none or the rep left) and the touch's purchase (None for occasions without one). Read in
    one row; the decision and the composer read nothing else about the client. A named tuple:
    the dispatcher makes one per message, and a tuple is made in a fraction of a frozen
    dataclass's time (`_replace` gives a changed copy)."""

    client_id: int
    client_external_id: str
    email: str
    first_name: str
    last_name: str
    locale: str
    timezone: str
    country: str
    tier: str
    tags: str
    status: str
    rep_id: int | None
    rep_name: str | None
    rep_email: str | None
    rep_signature: str | None
    purchase_external_id: str | None
    purchase_status: str | None
    product: str | None
    amount_minor: int | None
    currency: str | None
    purchased_at: datetime | None
    birthday_year: int | None = None
    #: The columns inferred from the country rather than given ("timezone,locale", or "").
    inferred: str = ""
    #: Marketing consent: yes, no or unknown (followup.domain.consent).
    marketing_consent: str = "unknown"
