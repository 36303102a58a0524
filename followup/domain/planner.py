"""The planner: pure functions from facts and `now` to touches. No I/O, no clock.

For one client it takes the campaigns of the calendar, the client's facts (zone, country,
language, birthday, purchases) and the ledger's touches around the window, and returns the
touches to insert: planned at a local send time, deferred past a collision, or skipped with a
reason ("too late", "capped: ...").

Local time is computed with zoneinfo: a send time that does not exist on a DST day (the clocks
jump over it) moves forward by the length of the gap; an ambiguous one (the clocks repeat it)
takes the first of the two instants.

Politeness: at most `max_touches` capped touches per client in any rolling `per` window.
Candidates are placed by priority (highest first), then due time; a candidate that would break
the cap moves to the campaign's send time on a later day while that is within its lateness,
else it is skipped with the reason naming the touch it collided with.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from followup.domain import care, occasions
from followup.domain.clients import ClientFacts
from followup.domain.consent import DEFAULT_RULE, ConsentRule, refusal
from followup.domain.occasions import Campaign, Occurrence, Window, occurrences
from followup.domain.statuses import COUNTING, TouchStatus
from followup.domain.touches import LedgerTouch, NewTouch

TOO_LATE = "too late"
QUIET = Window(time(21), time(8))


@dataclass(frozen=True, slots=True)
class Politeness:
    """At most `max_touches` capped touches per client in any `per` of the client's wall clock
    (local days, whatever DST does to their length); nothing in quiet hours."""

    max_touches: int = 1
    per: timedelta = timedelta(days=3)
    quiet: Window | None = QUIET


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `zone`.

    fold=0 selects the first of two ambiguous instants; for a time in a DST gap it applies the
    offset in force before the gap, which lands the same distance after the gap's end.
    """
    return datetime.combine(day, at).replace(tzinfo=zone, fold=0).astimezone(UTC)


def local_date(instant: datetime, zone: ZoneInfo) -> date:
    return instant.astimezone(zone).date()


def allowed(campaign: Campaign, instant: datetime, zone: ZoneInfo, quiet: Window | None) -> bool:
    """Whether `campaign` may send at `instant`: weekday, window and quiet hours, all local."""
    local = instant.astimezone(zone)
    at = local.time().replace(tzinfo=None)
    if local.weekday() not in campaign.weekdays or not campaign.window.contains(at):
        return False
    return quiet is None or not quiet.contains(at)


def next_allowed(
    campaign: Campaign,
    instant: datetime,
    zone: ZoneInfo,
    quiet: Window | None,
    limit: datetime,
) -> datetime | None:
    """The first instant >= `instant` and before `limit` at which `campaign` may send:
    `instant` itself if allowed, else the send time of a later allowed day. None if there is
    none. Never `limit` itself: the dispatcher takes a touch up a little after its time, and a
    touch due at its lateness limit would always be found too late by then."""
    if instant >= limit:
        return None
    if allowed(campaign, instant, zone, quiet):
        return instant
    day = local_date(instant, zone)
    for offset in range(0, 15):
        slot = local_instant(day + timedelta(days=offset), campaign.send_time, zone)
        if slot >= limit:
            return None
        if slot >= instant and allowed(campaign, slot, zone, quiet):
            return slot
    return None


@lru_cache(maxsize=4096)
def _local_span(earliest: datetime, ahead: datetime, timezone: str) -> tuple[date, date]:
    """The local dates, with a day's margin each side, that [earliest, ahead] covers."""
    zone = occasions.zone(timezone)
    return (
        local_date(earliest, zone) - timedelta(days=1),
        local_date(ahead, zone) + timedelta(days=1),
    )


def nominal_due(campaign: Campaign, occurrence: Occurrence, zone: ZoneInfo) -> datetime:
    """When the occasion asks to be greeted: its day at the send time, local."""
    return local_instant(occurrence.day, campaign.send_time, zone)


#: More than any change of a zone's UTC offset since 1995 (DST moves clocks by an hour, half an
#: hour on Lord Howe Island; Antarctica/Casey moved 3 hours, backward changes of 7 to 23 hours
#: are older): instants this much further apart than `per` in real time are not within `per`
#: on the wall clock (the comparisons are strict).
_OFFSET_CHANGE = timedelta(hours=3)


def arbitration_reach(politeness: Politeness) -> timedelta:
    """How far past a plan's horizon occasions still take part in its arbitration: `per` on
    the client's wall clock, which can be up to _OFFSET_CHANGE longer in real time."""
    return politeness.per + _OFFSET_CHANGE


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    """`instant` on the client's wall clock (naive): the cap counts the client's days, so the
    same hour on two consecutive days is a day apart across a DST change too, where 23 or 25
    hours pass."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _near(
    taken: Sequence[tuple[datetime, str]], at: datetime, politeness: Politeness, zone: ZoneInfo
) -> list[tuple[timedelta, datetime, str]]:
    """The capped touches less than `per` from `at` on the client's wall clock: each one's
    signed offset from `at` on that clock, its instant and its campaign."""
    wall, reach, per = _wall(at, zone), arbitration_reach(politeness), politeness.per
    return [
        (offset, t, name)
        for t, name in taken
        if abs(t - at) < reach and abs(offset := _wall(t, zone) - wall) < per
    ]


def _cap_allows(near: Sequence[tuple[timedelta, datetime, str]], politeness: Politeness) -> bool:
    """Whether one more capped touch keeps every rolling window of `per` within the cap, given
    the touches `_near` it."""
    per, limit = politeness.per, politeness.max_touches
    if len(near) < limit:
        return True
    zero = timedelta(0)  # the new touch
    points = sorted([*(offset for offset, _, _ in near), zero])
    for i, start in enumerate(points):
        if start > zero:
            break
        if sum(1 for t in points[i:] if t - start < per) > limit:
            return False
    return True


@dataclass(frozen=True, slots=True)
class _Candidate:
    campaign: Campaign
    occurrence: Occurrence
    nominal: datetime
    #: Why this client must not get it (an exclusion, no marketing consent), recorded as a
    #: skip.
    excluded: str | None = None


def screen(campaign: Campaign, client: ClientFacts) -> tuple[bool, str | None]:
    """(whether the campaign is for this client at all, an exclusion reason). A client outside
    a campaign's audience gets no touch; an excluded one gets a skipped touch with the reason."""
    excluded = care.exclusion(client.status, client.stats, campaign.exclude)
    if excluded is not None:
        return True, excluded
    if not campaign.audience:
        return True, None
    try:
        return care.in_audience(campaign.audience, client.context), None
    except care.AudienceError as exc:
        return True, f"audience rule failed: {exc}"


def _no_consent(
    campaign: Campaign, client: ClientFacts, rule: ConsentRule, at: datetime
) -> str | None:
    """NO_CONSENT when a marketing occasion must not go to the client at `at`."""
    return refusal(campaign.effective_purpose, client.consent, client.stats.last_purchase, rule, at)


#: Kinds whose occurrences depend on the client's own dates (purchases, birthday).
PER_CLIENT_KINDS = frozenset({"after_purchase", "yearly"})


def campaigns_for(
    campaigns: Iterable[Campaign],
    client: ClientFacts,
    *,
    since: dict[str, datetime],
    until: datetime,
    politeness: Politeness,
) -> list[Campaign]:
    """The campaigns that can give `client` a candidate in `plan_client`'s window. The answer
    depends only on the client's zone, country and language: after-purchase and yearly
    campaigns are kept if they apply to the country, the others if one of their occurrences
    is due in the window. `plan_client` with these (and `capped` naming every campaign)
    returns what it returns with all of them."""
    zone = occasions.zone(client.timezone)
    ahead = until + arbitration_reach(politeness)
    earliest = min(since.values(), default=until)
    first, last = _local_span(earliest, ahead, client.timezone)
    kept = []
    for campaign in campaigns:
        if not campaign.enabled or not campaign.applies_to(client.country):
            continue
        if campaign.kind in PER_CLIENT_KINDS:
            kept.append(campaign)
            continue
        start = since.get(campaign.name, earliest)
        if any(
            start <= nominal_due(campaign, occurrence, zone) <= ahead
            for occurrence in occurrences(campaign, client, first, last)
        ):
            kept.append(campaign)
    return kept


def plan_client(
    campaigns: Iterable[Campaign],
    client: ClientFacts,
    ledger: Iterable[LedgerTouch],
    *,
    since: datetime | dict[str, datetime],
    until: datetime,
    now: datetime,
    politeness: Politeness,
    capped: dict[str, bool] | None = None,
    consent: ConsentRule = DEFAULT_RULE,
) -> list[NewTouch]:
    """The touches to add for one client: occasions due in [since, until] (`since` may differ
    by campaign), arbitrated against the ledger and each other. A marketing occasion the
    client has not consented to (`consent`, at its due time) is skipped "no marketing
    consent", as an exclusion is.

    Occasions due up to `politeness.per` after `until` on the client's wall clock take part in
    the arbitration (so a higher-priority touch just past the horizon is not overtaken), but
    are only returned once a later call's horizon reaches them. A key already in the ledger
    is never returned.
    """
    zone = occasions.zone(client.timezone)
    campaigns = list(campaigns)
    ahead = until + arbitration_reach(politeness)
    starts = since if isinstance(since, dict) else {c.name: since for c in campaigns}
    earliest = min(starts.values(), default=until)
    first, last = _local_span(earliest, ahead, client.timezone)

    ledger = list(ledger)
    known: set[tuple[str, date]] = set()
    known_purchases: set[tuple[str, int]] = set()
    taken: list[tuple[datetime, str]] = []
    if ledger:
        is_capped = {c.name: c.capped for c in campaigns}
        if capped:
            is_capped.update(capped)
        known = {(t.campaign, t.occurrence) for t in ledger}
        known_purchases = {(t.campaign, t.purchase_id) for t in ledger if t.purchase_id is not None}
        taken = sorted(
            (t.at, t.campaign)
            for t in ledger
            if t.status in COUNTING and is_capped.get(t.campaign, True)
        )

    candidates: list[_Candidate] = []
    for campaign in campaigns:
        start = starts.get(campaign.name, earliest)
        found = occurrences(campaign, client, first, last)
        if not found:
            continue
        wanted, excluded = screen(campaign, client)
        if not wanted:
            continue
        for occurrence in found:
            if (campaign.name, occurrence.occurrence) in known:
                continue
            if (
                occurrence.purchase_id is not None
                and (campaign.name, occurrence.purchase_id) in known_purchases
            ):
                continue
            nominal = nominal_due(campaign, occurrence, zone)
            if start <= nominal <= ahead:
                why = excluded or _no_consent(campaign, client, consent, max(nominal, now))
                candidates.append(_Candidate(campaign, occurrence, nominal, why))
    candidates.sort(key=lambda c: (-c.campaign.priority, c.nominal, c.campaign.name))

    result: list[NewTouch] = []
    for candidate in candidates:
        touch = _place(candidate, client, zone, taken, now, politeness)
        if touch.status is TouchStatus.PLANNED and candidate.campaign.capped:
            insort(taken, (touch.due_at, candidate.campaign.name))
        visible = touch.due_at if touch.status is TouchStatus.PLANNED else candidate.nominal
        if visible <= until:
            result.append(touch)
    result.sort(key=lambda t: (t.due_at, t.campaign))
    return result


def _place(
    candidate: _Candidate,
    client: ClientFacts,
    zone: ZoneInfo,
    taken: list[tuple[datetime, str]],
    now: datetime,
    politeness: Politeness,
) -> NewTouch:
    campaign, occurrence, nominal = candidate.campaign, candidate.occurrence, candidate.nominal
    not_after = nominal + campaign.lateness

    def touch(due: datetime, status: TouchStatus, reason: str | None) -> NewTouch:
        return NewTouch(
            client_id=client.client_id,
            campaign=campaign.name,
            occurrence=occurrence.occurrence,
            due_at=due,
            not_after=not_after,
            template=campaign.template,
            purchase_id=occurrence.purchase_id,
            status=status,
            reason=reason,
            occasion=occurrence.name,
            nominal_at=nominal,
        )

    if candidate.excluded is not None:
        return touch(nominal, TouchStatus.SKIPPED, candidate.excluded)
    if not_after < now:
        return touch(nominal, TouchStatus.SKIPPED, TOO_LATE)
    at = next_allowed(campaign, max(nominal, now), zone, politeness.quiet, not_after)
    if at is None:
        return touch(nominal, TouchStatus.SKIPPED, f"{TOO_LATE}: no allowed send time")
    if not campaign.capped:
        return touch(at, TouchStatus.PLANNED, None)
    first_block: tuple[datetime, str] | None = None
    day = local_date(at, zone)
    while True:
        near = _near(taken, at, politeness, zone)
        if _cap_allows(near, politeness):
            break
        if first_block is None:
            # The nearest on the wall clock names the reason if the touch ends up skipped.
            _, when, name = min((abs(offset), t, name) for offset, t, name in near)
            first_block = (when, name)
        start = local_instant(day, campaign.send_time, zone)
        if start <= at:
            # Today's send time is behind us (a catch-up, or a window past midnight): try
            # the next day's; otherwise today's send time comes first.
            day += timedelta(days=1)
            start = local_instant(day, campaign.send_time, zone)
        slot = next_allowed(campaign, start, zone, politeness.quiet, not_after)
        if slot is None:
            assert first_block is not None
            when, name = first_block
            return touch(
                nominal,
                TouchStatus.SKIPPED,
                f"capped: {name} on {local_date(when, zone).isoformat()}",
            )
        at, day = slot, local_date(slot, zone)
    if first_block is not None:
        when, name = first_block
        reason = (
            f"deferred from {local_date(nominal, zone).isoformat()}: "
            f"{name} on {local_date(when, zone).isoformat()}"
        )
        return touch(at, TouchStatus.PLANNED, reason)
    return touch(at, TouchStatus.PLANNED, None)


def purchase_window(
    longest_delay: timedelta, since: datetime, until: datetime
) -> tuple[datetime, datetime]:
    """The purchase instants that can yield an after-purchase touch due in [since, until]:
    margins for the local date (UTC-12 .. UTC+14), the send time, and clock changes between
    purchase and due (up to a whole skipped day, as in Samoa at the end of 2011)."""
    return since - longest_delay - timedelta(days=2), until + timedelta(days=2)
