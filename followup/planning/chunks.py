"""The clients the planner reads, a chunk at a time, with their purchases, purchase facts
and ledger touches around the window (followup.storage.queries), as the pure planner takes
them: memory stays flat with the number of clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from followup.domain import care, occasions, planner
from followup.domain.clients import ClientFacts, ClientStats
from followup.domain.occasions import Campaign
from followup.domain.touches import LedgerTouch, NewTouch
from followup.runtime import Runtime
from followup.storage import queries
from followup.storage.engine import chunks, reader

NO_STATS = ClientStats()


@dataclass(frozen=True, slots=True)
class PlanWindow:
    """What one planning pass looks at: occurrences due in [since (per campaign), until]."""

    since: dict[str, datetime]
    until: datetime
    now: datetime


@dataclass
class Chunk:
    """A chunk of clients read for the planner, in one read transaction."""

    clients: list[ClientFacts]
    ledger: dict[int, list[LedgerTouch]]
    #: (client id, plan_version) of the chunk's clients whose version no plan has read yet.
    versions: list[tuple[int, int]]


def planning_scope(rt: Runtime, window: PlanWindow) -> queries.PlanningScope:
    """What the planner must read besides the clients for `window`: purchases that can give
    an after-purchase touch in it, ledger touches that can collide with its candidates."""
    earliest = min(window.since.values(), default=window.until)
    ahead = window.until + planner.arbitration_reach(rt.politeness)
    bought = planner.purchase_window(rt.calendar.max_delay, earliest, ahead)
    return queries.PlanningScope(
        purchases=bought if any(c.kind == "after_purchase" for c in rt.calendar.enabled) else None,
        occurrence_from=(bought[0] - timedelta(days=1)).date(),
        ledger_from=earliest - rt.politeness.per - timedelta(days=1),
        now=window.now,
    )


def client_chunks(
    rt: Runtime,
    window: PlanWindow,
    chunk: int = 2000,
    ids: tuple[int, int] | None = None,
    only: Sequence[int] | None = None,
) -> Iterator[Chunk]:
    """The clients in id order, `chunk` at a time, each chunk read in its own short read
    transaction with the purchases and ledger touches the planner needs. `ids` limits them
    to an id range (lowest excluded), `only` to a sorted list."""
    scope = planning_scope(rt, window)
    needs_context = any(c.audience for c in rt.calendar.enabled)
    after, up_to = ids if ids is not None else (0, None)
    listed = iter(chunks(only, chunk)) if only is not None else None
    while True:
        chosen = next(listed, None) if listed is not None else None
        if listed is not None and chosen is None:
            return
        with reader(rt.engine) as conn:
            read = queries.planning_rows(
                conn, scope, after=after, up_to=up_to, ids=chosen, limit=chunk
            )
        if not read.clients:
            if listed is not None:
                continue  # all of this part of the list gone (never, today: none deleted)
            return
        after = read.clients[-1].id
        facts = [_client(rt, row, read, window.now, needs_context) for row in read.clients]
        versions = [
            (row.id, row.plan_version)
            for row in read.clients
            if row.planned_version != row.plan_version
        ]
        yield Chunk(facts, read.ledger, versions)


def _client(
    rt: Runtime, row: Any, read: queries.PlanningRows, now: datetime, needs_context: bool
) -> ClientFacts:
    """One client's facts for the planner, from its row and the chunk's reads."""
    # Unpacked once (a million clients): the row's columns in planning_rows' order.
    (client_id, external_id, timezone, country, locale, status, tier, tags) = row[:8]
    birthday_month, birthday_day, birthday_year, consent = row[8:12]
    zone = occasions.zone(timezone)
    birthday = None
    if birthday_month and birthday_day:
        birthday = (birthday_month, birthday_day, birthday_year)
    stats = read.stats.get(client_id, NO_STATS)
    first_day = None
    if stats.first_purchase is not None:
        first_day = stats.first_purchase.astimezone(zone).date()
    context: dict[str, Any] = {}
    if needs_context:
        # Only audience rules read these facts: built only when a campaign has one.
        context = {
            "id": external_id,
            "locale": locale,
            "country": country,
            "timezone": timezone,
            "status": status,
            "tags": care.tag_list(tags),
            **care.client_context(
                stats,
                care.tier(stats, now, rt.tier_rules, tier),
                _local_date(zone),
                rt.tier_rules,
            ),
        }
    return ClientFacts(
        client_id=client_id,
        timezone=timezone,
        country=country,
        locale=locale,
        birthday=birthday,
        first_purchase=first_day,
        purchases=tuple(read.purchases.get(client_id, ())),
        status=status,
        stats=stats,
        context=context,
        consent=consent,
    )


def _local_date(zone: ZoneInfo) -> Callable[[datetime], date]:
    return lambda instant: instant.astimezone(zone).date()


def planned_touches(
    rt: Runtime,
    window: PlanWindow,
    ids: tuple[int, int] | None = None,
    only: Sequence[int] | None = None,
) -> Iterator[tuple[Chunk, list[NewTouch]]]:
    """The planner's touches, one list per chunk of clients (with the chunk), for every
    client, those with ids in (ids[0], ids[1]], or those listed in `only` (sorted)."""
    campaigns = rt.calendar.enabled
    politeness = rt.politeness
    consent = rt.consent_rule
    capped = {c.name: c.capped for c in rt.calendar.campaigns}
    # The campaigns that can fire, by zone, country and language (a handful of groups).
    relevant: dict[tuple[str, str, str], list[Campaign]] = {}
    for read in client_chunks(rt, window, ids=ids, only=only):
        touches: list[NewTouch] = []
        ledger = read.ledger
        for client in read.clients:
            group = (client.timezone, client.country, client.locale)
            some = relevant.get(group)
            if some is None:
                some = relevant[group] = planner.campaigns_for(
                    campaigns,
                    client,
                    since=window.since,
                    until=window.until,
                    politeness=politeness,
                )
            if not some:
                continue
            touches.extend(
                planner.plan_client(
                    some,
                    client,
                    ledger.get(client.client_id, ()),
                    since=window.since,
                    until=window.until,
                    now=window.now,
                    politeness=politeness,
                    capped=capped,
                    consent=consent,
                )
            )
        yield read, touches
