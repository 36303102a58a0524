"""The planner: pure functions from facts and `now` to touches. No I/O, no clock.

Local time is computed with zoneinfo: a send time that does not exist on a DST day (the clocks
jump over it) moves forward by the length of the gap; an ambiguous one (the clocks repeat it)
takes the first of the two instants.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from followup.models import TouchStatus

TOO_LATE = "too late"


@dataclass(frozen=True, slots=True)
class NewTouch:
    """A touch the planner wants in the ledger (inserted only if its key is absent)."""

    client_id: int
    campaign: str
    occurrence: date
    due_at: datetime
    not_after: datetime
    template: str
    purchase_id: int | None = None
    status: TouchStatus = TouchStatus.PLANNED
    reason: str | None = None


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `zone`.

    fold=0 selects the first of two ambiguous instants; for a time in a DST gap it applies the
    offset in force before the gap, which lands the same distance after the gap's end.
    """
    return datetime.combine(day, at).replace(tzinfo=zone, fold=0).astimezone(UTC)


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    return instant.astimezone(zone).date()


@dataclass(frozen=True, slots=True)
class AfterPurchase:
    """A campaign that follows each paid purchase by `delay_days` (the thank-you)."""

    name: str
    template: str
    delay_days: int
    send_time: time
    lateness: timedelta


@dataclass(frozen=True, slots=True)
class PurchaseFact:
    purchase_id: int
    client_id: int
    purchased_at: datetime
    timezone: str
    status: str


def after_purchase_due(campaign: AfterPurchase, fact: PurchaseFact) -> tuple[date, datetime]:
    """(occurrence, due instant) of `campaign` for one purchase.

    The occurrence is the purchase's local date: two purchases on one day get one thank-you.
    """
    zone = ZoneInfo(fact.timezone)
    occurrence = local_date(fact.purchased_at, zone)
    due = local_instant(occurrence + timedelta(days=campaign.delay_days), campaign.send_time, zone)
    return occurrence, due


def plan_after_purchase(
    campaign: AfterPurchase,
    facts: Iterable[PurchaseFact],
    *,
    since: datetime,
    until: datetime,
    now: datetime,
) -> Iterator[NewTouch]:
    """Touches of `campaign` due in [since, until]. Those already past their lateness at `now`
    are recorded as skipped "too late", never planned."""
    seen: set[tuple[int, date]] = set()
    for fact in facts:
        if fact.status != "paid":
            continue
        occurrence, due = after_purchase_due(campaign, fact)
        if not since <= due <= until or (fact.client_id, occurrence) in seen:
            continue
        seen.add((fact.client_id, occurrence))
        not_after = due + campaign.lateness
        late = not_after < now
        yield NewTouch(
            client_id=fact.client_id,
            campaign=campaign.name,
            occurrence=occurrence,
            due_at=due,
            not_after=not_after,
            template=campaign.template,
            purchase_id=fact.purchase_id,
            status=TouchStatus.SKIPPED if late else TouchStatus.PLANNED,
            reason=TOO_LATE if late else None,
        )


def purchase_window(
    campaign: AfterPurchase, since: datetime, until: datetime
) -> tuple[datetime, datetime]:
    """The purchase instants that can yield a due time in [since, until]: margins for the
    local date (UTC-12 .. UTC+14), the send time, and clock changes between purchase and due
    (up to a whole skipped day, as in Samoa at the end of 2011)."""
    delay = timedelta(days=campaign.delay_days)
    return since - delay - timedelta(days=2), until - delay + timedelta(days=2)


def message_id(client_id: int, campaign: str, occurrence: date, domain: str) -> str:
    """A Message-ID derived from the touch key: the same touch always has the same one."""
    digest = hashlib.sha256(f"{client_id}/{campaign}/{occurrence.isoformat()}".encode()).hexdigest()
    return f"<{digest[:32]}@{domain}>"
