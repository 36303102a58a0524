"""The send-time decision: whether a touch of the queue goes out now, waits, or is skipped, and
what its message says about the client and the occasion.

One pure function, `decide`, takes the touch, its recipient, the suppression of the address,
the client's purchase facts and recent sends, the rules of the configuration and `now`. The
dispatcher calls it for every claimed touch just before composing; the dry-run calls it for
every touch of the day at the instant the dispatcher would: nothing else decides, so what the
dry-run shows for a day is what goes out that day.

Every rule applied at planning time is applied again here, against the facts as they are
now: an unsubscribe, a bounce, a refund, an unpaid bill or marketing consent withdrawn after
planning still stops the message.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from followup.domain import care, occasions
from followup.domain.clients import ClientStats, Recipient
from followup.domain.consent import DEFAULT_RULE, ConsentRule, Purpose, refusal
from followup.domain.occasions import Calendar, Campaign
from followup.domain.planner import TOO_LATE, Politeness, allowed, next_allowed
from followup.domain.statuses import ClientStatus
from followup.domain.touches import DueTouch

#: One touch that went (or may have gone) out to the client: (when its status last changed,
#: its id, its design).
Sent = tuple[datetime, int, str]


class Send(NamedTuple):
    """It goes out now. (A named tuple: one is made for every message sent.)"""

    #: What templates see under `client` besides the recipient's own fields: tier, purchases,
    #: total_spent, first and last purchase, unpaid and disputed.
    client: dict[str, Any]
    #: What templates see as `occasion`: campaign, kind, name, date, years.
    occasion: dict[str, Any]
    #: The design an earlier attempt used, kept while the message still has it (a retry looks
    #: like the first try); None: the composer chooses one.
    variant: str | None
    #: The design of the client's latest message: the next one must look different.
    previous_variant: str | None


@dataclass(frozen=True, slots=True)
class Wait:
    """Not now: the campaign's next allowed local send time, within the touch's lateness."""

    until: datetime

    @property
    def reason(self) -> str:
        return f"outside the send window; next at {self.until.isoformat()}"


@dataclass(frozen=True, slots=True)
class Skip:
    """It must not go out; `reason` is what the ledger records."""

    reason: str


Decision = Send | Wait | Skip


@dataclass(frozen=True, slots=True)
class Rules:
    """What the decision reads from the configuration."""

    calendar: Calendar
    politeness: Politeness
    tiers: care.TierRules
    consent: ConsentRule = DEFAULT_RULE


def decide(
    touch: DueTouch,
    recipient: Recipient | None,
    *,
    suppression: str | None,
    stats: ClientStats,
    sent: Sequence[Sent],
    designs: Collection[str],
    rules: Rules,
    now: datetime,
) -> Decision:
    """The decision for `touch` at `now`. `suppression` is why the recipient's address is
    suppressed (None: it is not); `sent` the client's touches that went or may have gone out;
    `designs` the names of the message's designs today."""
    if touch.not_after < now:
        return Skip(TOO_LATE)
    if recipient is None:
        return Skip("client no longer exists")
    refused = audience(recipient, suppression)
    if refused is not None:
        return Skip(refused)
    campaign = rules.calendar.get(touch.campaign)
    excluded = care.exclusion(
        recipient.status, stats, campaign.exclude if campaign is not None else care.EXCLUSIONS
    )
    if excluded is not None:
        return Skip(excluded)
    # Consent withdrawn after planning stops the message; a campaign gone from the calendar
    # is taken for marketing, the side that never mails without consent.
    purpose = campaign.effective_purpose if campaign is not None else Purpose.MARKETING
    withheld = refusal(
        purpose, recipient.marketing_consent, stats.last_purchase, rules.consent, now
    )
    if withheld is not None:
        return Skip(withheld)
    zone = occasions.zone(recipient.timezone)
    if campaign is not None and not allowed(campaign, now, zone, rules.politeness.quiet):
        later = next_allowed(campaign, now, zone, rules.politeness.quiet, touch.not_after)
        if later is None:
            return Skip(f"{TOO_LATE}: no allowed send time before its lateness ends")
        return Wait(later)
    tier = care.tier(stats, now, rules.tiers, recipient.tier)
    return Send(
        client=care.client_context(stats, tier, _local_date(zone), rules.tiers),
        occasion=occasion_context(campaign, touch, recipient, stats),
        variant=touch.variant if touch.variant in designs else None,
        previous_variant=previous_variant(sent, touch.id),
    )


def audience(recipient: Recipient, suppression: str | None) -> str | None:
    """Why the recipient must get no message at all now, or None: an opt-out or a bounce stops
    every later touch; a purchase refunded or disputed after planning stops its own."""
    if recipient.status != ClientStatus.ACTIVE.value:
        return f"client is {recipient.status}"
    if suppression is not None:
        return f"suppressed ({suppression})"
    if recipient.purchase_status is not None and recipient.purchase_status != "paid":
        return f"purchase is {recipient.purchase_status}"
    return None


def occasion_context(
    campaign: Campaign | None, touch: DueTouch, recipient: Recipient, stats: ClientStats
) -> dict[str, Any]:
    """The template's `occasion`: campaign, kind, name in the client's language (as planned),
    date, and for yearly occasions the years (age, or years since the first purchase, both
    counted in the client's zone)."""
    name = touch.occasion
    context: dict[str, Any] = {"campaign": touch.campaign, "date": touch.occurrence, "years": None}
    if campaign is None:
        context.update(kind="after_purchase", name=name or touch.campaign)
        return context
    context.update(kind=campaign.kind, name=name or campaign.title)
    if campaign.kind != "yearly":
        return context
    year: int | None = None
    if campaign.client_date == "birthday":
        year = recipient.birthday_year
    elif stats.first_purchase is not None:
        year = stats.first_purchase.astimezone(occasions.zone(recipient.timezone)).year
    if year is not None and touch.occurrence.year > year:
        context["years"] = touch.occurrence.year - year
    return context


def previous_variant(sent: Sequence[Sent], touch_id: int) -> str | None:
    """The design of the client's latest touch that went (or may have gone) out, other than
    `touch_id`."""
    others = [entry for entry in sent if entry[1] != touch_id]
    return max(others)[2] if others else None


def _local_date(zone: ZoneInfo) -> Callable[[datetime], date]:
    return lambda instant: instant.astimezone(zone).date()
