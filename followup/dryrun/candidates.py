"""The touches a dry-run of one day considers. From the ledger: those settled on that day (as
they are), and those waiting whose time comes between the start of the simulation and the end
of the day (on the current day, those whose time has passed go out at once). From the planner:
those a plan at `now` would add, with the same planner from the same starts (the campaigns'
watermarks); the touches it defers past the day, or skips, are listed as they are."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from followup.domain import occasions
from followup.domain.statuses import WAITING, TouchStatus
from followup.domain.touches import DueTouch, NewTouch
from followup.planning.chunks import PlanWindow, planned_touches
from followup.planning.plan import starts, watermarks
from followup.runtime import Runtime
from followup.storage import queries
from followup.storage.engine import reader

#: After the ledger's ids, in the planner's order: what the dispatcher would claim last.
NEW = 2**62


@dataclass(frozen=True, slots=True)
class Candidate:
    """One touch the dry-run lists or decides."""

    touch: DueTouch
    #: When the dispatcher takes it up first: its next attempt, or at once if overdue.
    at: datetime
    #: The ledger's status (the planner's for a touch not planned yet).
    status: str
    #: The ledger's reason (the planner's for a touch not planned yet).
    reason: str | None
    #: The dispatcher's order among touches taken up at the same instant: by next attempt,
    #: then id (a new touch after the ledger's, in the planner's order).
    order: tuple[datetime, int]
    #: A new touch the planner defers past the day: when it would go out.
    deferred_to: datetime | None = None

    @property
    def waiting(self) -> bool:
        """Whether it is in the queue (for the send-time decision), not settled already."""
        return self.status in WAITING and self.deferred_to is None


@dataclass(frozen=True, slots=True)
class Day:
    """The instants a dry-run of day `on` looks at: every zone's day lies within `since` and
    `until` (UTC+14 to UTC-12); the dispatcher is simulated from `start`."""

    on: date
    since: datetime
    until: datetime
    start: datetime
    now: datetime | None

    @classmethod
    def of(cls, rt: Runtime, on: date, now: datetime | None) -> Day:
        since = datetime.combine(on, time(), UTC) - timedelta(hours=14)
        until = datetime.combine(on + timedelta(days=1), time(), UTC) + timedelta(hours=12)
        # What the dispatcher does before the day counts for it: a touch that waits overnight
        # into the day, the designs the days before give. From early enough for a touch that
        # waited to reach the day, and not before `now`.
        reach = since - rt.calendar.max_lateness - rt.politeness.per - timedelta(days=1)
        if now is not None and now <= until:
            return cls(on, since, until, max(now, reach), now)
        return cls(on, since, until, reach, now)

    def local(self, instant: datetime, timezone: str) -> date:
        return instant.astimezone(occasions.zone(timezone)).date()


def candidates(rt: Runtime, day: Day) -> list[Candidate]:
    """The touches the dry-run of `day` lists or decides, in the dispatcher's claim order."""
    found = dict(_from_ledger(rt, day))
    numbers = itertools.count(1)
    for key, candidate in _from_planner(rt, day, numbers):
        found.setdefault(key, candidate)
    return sorted(found.values(), key=lambda c: (c.at, c.order))


def _from_ledger(rt: Runtime, day: Day) -> Iterator[tuple[tuple[int, str, date], Candidate]]:
    # Whose time has passed at `now` is taken up at `now`, on a past day's touches too: no
    # dispatcher took them up at their time, the next one does.
    overdue = day.now
    with reader(rt.engine) as conn:
        rows = list(queries.touches_of_day(conn, min(day.start, day.since), day.until, overdue))
    for row in rows:
        touch = DueTouch(*row[:11])
        key = (touch.client_id, touch.campaign, touch.occurrence)
        order = (row.next_attempt_at, touch.id)
        if row.status not in WAITING:
            # Settled already: listed on the day it was (or will be) taken up, as it is.
            if day.local(row.next_attempt_at, row.timezone) == day.on:
                yield key, Candidate(touch, row.next_attempt_at, row.status, row.reason, order)
            continue
        at = row.next_attempt_at
        if overdue is not None and at < overdue:
            at = overdue
        yield key, Candidate(touch, at, row.status, row.reason, order)


def _from_planner(
    rt: Runtime, day: Day, numbers: Iterator[int]
) -> Iterator[tuple[tuple[int, str, date], Candidate]]:
    """The touches a plan at `now` would add up to the end of the day (without `now`: from
    early enough for a deferred or late occasion to land on the day), with negative ids: no
    touch of the ledger has one."""
    if day.now is not None:
        window = PlanWindow(starts(rt, day.now, watermarks(rt)), day.until, day.now)
    else:
        start = day.since - rt.calendar.max_lateness - rt.politeness.per - timedelta(days=1)
        window = PlanWindow({c.name: start for c in rt.calendar.enabled}, day.until, start)
    for read, touches in planned_touches(rt, window):
        zones = {client.client_id: client.timezone for client in read.clients}
        for new in touches:
            timezone = zones[new.client_id]
            nominal = new.nominal_at or new.due_at
            on_day = day.local(nominal, timezone) == day.on
            number = next(numbers)
            touch = _due(new, -number)
            order = (new.due_at, NEW + number)
            if new.status is not TouchStatus.PLANNED:
                if on_day:
                    yield new.key, Candidate(touch, nominal, new.status.value, new.reason, order)
            elif day.local(new.due_at, timezone) > day.on:
                if on_day:
                    deferred = Candidate(
                        touch, nominal, new.status.value, new.reason, order, new.due_at
                    )
                    yield new.key, deferred
            else:
                yield new.key, Candidate(touch, new.due_at, new.status.value, new.reason, order)


def _due(new: NewTouch, touch_id: int) -> DueTouch:
    return DueTouch(
        id=touch_id,
        client_id=new.client_id,
        campaign=new.campaign,
        occurrence=new.occurrence,
        template=new.template,
        occasion=new.occasion,
        due_at=new.due_at,
        purchase_id=new.purchase_id,
        attempts=0,
        not_after=new.not_after,
        variant=None,
    )
