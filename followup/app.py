"""The core API: plan, dispatch, dry-run. The CLI and the daemon are thin layers over these.

Data flows one way: purchases -> planner (pure) -> ledger (insert-if-absent) -> dispatcher
(claim with a lease, compose, send, record). The clock is always passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import multiprocessing
import os
import random
import signal
import socket
import sys
import threading
import time as monotonic_time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    String,
    bindparam,
    func,
    select,
    type_coerce,
)

from followup import calendars, care, compose, logs, planner, store
from followup.config import Settings
from followup.errors import ConfigError, DatabaseNotReady, RenderError
from followup.mailer import CaptureSink, Delivery, Outcome, SmtpMailer
from followup.models import ClientStatus, TouchStatus
from followup.render import Templates

log = logging.getLogger("followup")
T = TypeVar("T")


@dataclass
class Runtime:
    """Settings, database, templates and calendar of one followup installation."""

    settings: Settings
    engine: Engine
    templates: Templates
    calendar: calendars.Calendar

    @classmethod
    def open(cls, settings: Settings, *, create: bool = False) -> Runtime:
        calendar = load_calendar(settings)
        url = settings.database_url
        if not create:
            path = store.sqlite_path(url)
            if path is not None and not path.exists():
                raise DatabaseNotReady(
                    f"no database at {path}; run `followup db upgrade` (or `followup demo`)"
                )
        engine = store.open_engine(url, create_dir=create)
        templates = Templates(settings.path(settings.templates_dir), settings.sender.default_locale)
        return cls(settings, engine, templates, calendar)

    @functools.cached_property
    def tier_rules(self) -> care.TierRules:
        t = self.settings.tiers
        return care.TierRules(
            vip_min_total_minor=t.vip_min_total * 100,
            vip_min_purchases=t.vip_min_purchases,
            new_within=timedelta(days=t.new_within_days),
            lapsed_after=timedelta(days=t.lapsed_after_days),
        )

    @functools.cached_property
    def politeness(self) -> planner.Politeness:
        """Built once (the settings are frozen): the dispatcher asks for every touch."""
        p = self.settings.politeness
        return planner.Politeness(p.max_touches, timedelta(days=p.per_days), p.quiet)


def load_calendar(settings: Settings) -> calendars.Calendar:
    """calendars/*.toml with the config's [campaigns.NAME] overrides applied."""
    overrides = {name: c.overrides() for name, c in settings.campaigns.items()}
    calendar = calendars.load_calendar(
        settings.path(settings.calendars_dir), datetime.now(UTC).date(), overrides
    )
    quiet = settings.politeness.quiet
    for campaign in calendar.enabled:
        if quiet is not None and quiet.contains(campaign.send_time):
            raise ConfigError(
                f"{campaign.source}: [occasions.{campaign.name}] send_time "
                f"{campaign.send_time:%H:%M} is inside [politeness] quiet_hours {quiet}: "
                "nothing would ever go out"
            )
    return calendar


def log_event(event: str, **fields: object) -> None:
    """One event name per line plus fields; never a client's address or name."""
    log.info(event, extra={"event": event, "fields": fields})


# ----------------------------------------------------------------------------- planning


@dataclass
class PlanReport:
    planned: int = 0
    skipped: int = 0
    clients: int = 0
    by_campaign: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Window:
    """What one planning pass looks at: occurrences due in [since (per campaign), until]."""

    since: dict[str, datetime]
    until: datetime
    now: datetime


@dataclass
class _Chunk:
    """A chunk of clients read for the planner, in one read transaction."""

    clients: list[calendars.ClientFacts]
    ledger: dict[int, list[planner.LedgerTouch]]
    #: (client id, plan_version) of the chunk's clients whose version no plan has read yet.
    versions: list[tuple[int, int]]


def _client_chunks(
    rt: Runtime,
    window: _Window,
    chunk: int = 2000,
    ids: tuple[int, int] | None = None,
    only: Sequence[int] | None = None,
) -> Iterator[_Chunk]:
    """The clients in id order, `chunk` at a time, each chunk read in its own short read
    transaction with the purchases and ledger touches the planner needs: memory stays flat
    with the number of clients. `ids` limits them to an id range, `only` to a sorted list."""
    campaigns = rt.calendar.enabled
    politeness = rt.politeness
    earliest = min(window.since.values(), default=window.until)
    ahead = window.until + planner.arbitration_reach(politeness)
    needs_purchases = any(c.kind == "after_purchase" for c in campaigns)
    needs_context = any(c.audience for c in campaigns)
    no_stats = care.ClientStats()
    bought_from, bought_until = planner.purchase_window(rt.calendar.max_delay, earliest, ahead)
    ledger_from = earliest - politeness.per - timedelta(days=1)
    occurrence_from = (bought_from - timedelta(days=1)).date()
    c, p, t, pc = store.clients, store.purchases, store.touches, store.planned_clients
    last_id, highest = ids if ids is not None else (0, None)
    zone = calendars.zone
    listed = iter(store.chunks(only, chunk)) if only is not None else None
    which: list[ColumnElement[bool]]
    while True:
        if listed is not None:
            chosen = next(listed, None)
            if chosen is None:
                return
            which = [c.c.id.in_(chosen)]
        else:
            which = [c.c.id > last_id, *([] if highest is None else [c.c.id <= highest])]
        with store.reader(rt.engine) as conn:
            rows = conn.execute(
                select(
                    c.c.id,
                    c.c.external_id,
                    c.c.timezone,
                    c.c.country,
                    c.c.locale,
                    c.c.status,
                    c.c.tier,
                    c.c.tags,
                    c.c.birthday_month,
                    c.c.birthday_day,
                    c.c.birthday_year,
                    store.plan_version().label("plan_version"),
                    pc.c.plan_version.label("planned_version"),
                )
                .select_from(store.with_plan_versions(c.outerjoin(pc, pc.c.client_id == c.c.id)))
                .where(*which)
                .order_by(c.c.id)
                .limit(chunk)
            ).all()
            if not rows:
                if listed is not None:
                    continue  # all of this part of the list gone (never, today: none deleted)
                return
            lo, hi = rows[0].id, rows[-1].id
            last_id = hi
            # A listed chunk's clients may lie far apart: read theirs by id, not by range.
            chosen_ids = [row.id for row in rows] if listed is not None else None
            of_purchase = (
                p.c.client_id.in_(chosen_ids) if chosen_ids else p.c.client_id.between(lo, hi)
            )
            of_touch = (
                t.c.client_id.in_(chosen_ids) if chosen_ids else t.c.client_id.between(lo, hi)
            )
            bought: dict[int, list[calendars.PurchaseFact]] = {}
            if needs_purchases:
                for purchase_id, client_id, purchased_at, status, product in conn.execute(
                    select(
                        p.c.id,
                        p.c.client_id,
                        _raw(p.c.purchased_at),
                        p.c.status,
                        p.c.product,
                    )
                    .where(
                        of_purchase,
                        p.c.purchased_at.between(bought_from, bought_until),
                        p.c.status == "paid",
                    )
                    # The same purchase wins a shared day in every planner.
                    .order_by(p.c.client_id, p.c.purchased_at, p.c.id)
                ):
                    bought.setdefault(client_id, []).append(
                        calendars.PurchaseFact(purchase_id, _utc(purchased_at), status, product)
                    )
            stats = client_stats(conn, lo, hi, chosen_ids)
            ledger: dict[int, list[planner.LedgerTouch]] = {}
            for client_id, campaign, occurrence, due_at, status, purchase_id in conn.execute(
                select(
                    t.c.client_id,
                    t.c.campaign,
                    t.c.occurrence,
                    _raw(t.c.due_at),
                    t.c.status,
                    t.c.purchase_id,
                ).where(
                    of_touch,
                    (t.c.occurrence >= occurrence_from) | (t.c.due_at >= ledger_from),
                )
            ):
                ledger.setdefault(client_id, []).append(
                    planner.LedgerTouch(campaign, occurrence, _utc(due_at), status, purchase_id)
                )
        facts = []
        for (
            client_id,
            external_id,
            timezone,
            country,
            locale,
            status,
            tier,
            tags,
            birthday_month,
            birthday_day,
            birthday_year,
            _version,
            _planned_version,
        ) in rows:
            birthday = None
            if birthday_month and birthday_day:
                birthday = (birthday_month, birthday_day, birthday_year)
            client_stats_ = stats.get(client_id, no_stats)
            first_day = None
            if client_stats_.first_purchase is not None:
                first_day = client_stats_.first_purchase.astimezone(zone(timezone)).date()
            context: dict[str, Any] = {}
            if needs_context:
                # Only audience rules read these facts: built only when a campaign has one.
                tier = care.tier(client_stats_, window.now, rt.tier_rules, tier)
                context = {
                    "id": external_id,
                    "locale": locale,
                    "country": country,
                    "timezone": timezone,
                    "status": status,
                    "tags": care.tag_list(tags),
                    **care.client_context(client_stats_, tier, _local_date(zone(timezone))),
                }
            facts.append(
                calendars.ClientFacts(
                    client_id=client_id,
                    timezone=timezone,
                    country=country,
                    locale=locale,
                    birthday=birthday,
                    first_purchase=first_day,
                    purchases=tuple(bought.get(client_id, ())),
                    status=status,
                    stats=client_stats_,
                    context=context,
                )
            )
        versions = [
            (row.id, row.plan_version) for row in rows if row.planned_version != row.plan_version
        ]
        yield _Chunk(facts, ledger, versions)


def _raw(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A datetime column read as the driver returns it (SQLite: text), for `_utc`."""
    return type_coerce(column, String)


def _utc(value: str | datetime) -> datetime:
    """What UTCDateTime returns for a value read with `_raw`: SQLite's text parsed as
    SQLAlchemy parses it, a naive instant taken as UTC, an aware one (PostgreSQL) in UTC.
    About twice as fast as SQLAlchemy's processing, which reading a chunk spent most on."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


def _went_out_at(touch: Any) -> datetime:
    """When a ledger touch reached (or will reach) the client, for the frequency cap: the
    next attempt of a waiting one (moved by a retry or a send window), the last change of a
    sent or uncertain one (its delivery), else its due time."""
    if touch.status in (TouchStatus.PLANNED.value, TouchStatus.RETRY.value):
        return cast(datetime, touch.next_attempt_at)
    if touch.status in (TouchStatus.SENT.value, TouchStatus.UNCERTAIN.value):
        return cast(datetime, touch.updated_at)
    return cast(datetime, touch.due_at)


def _local_date(zone: ZoneInfo) -> Callable[[datetime], date]:
    return lambda instant: instant.astimezone(zone).date()


def client_stats(
    conn: Connection, lo: int, hi: int, ids: list[int] | None = None
) -> dict[int, care.ClientStats]:
    """Purchase facts of the clients with ids in [lo, hi] (or in `ids`), in one GROUP BY; the
    instants read with `_raw` and `_utc` (the planner reads a million of them)."""
    if ids is not None:
        found = store.rows(conn, _stats_query(True), ids=ids)
    else:
        found = store.rows(conn, _stats_query(False), lo=lo, hi=hi)
    return {
        client_id: care.ClientStats(
            purchases=int(count),
            total_spent_minor=int(total),
            first_purchase=None if first is None else _utc(first),
            last_purchase=None if last is None else _utc(last),
            has_unpaid=unpaid > 0,
            has_disputed=disputed > 0,
        )
        for client_id, count, total, first, last, unpaid, disputed in found
    }


@functools.cache
def _stats_query(by_ids: bool) -> Select[Any]:
    """client_stats' query, for a list of clients (`ids`) or a range (`lo`, `hi`); built once
    (store.rows keeps its compiled form by the statement)."""
    p = store.purchases
    paid = p.c.status == "paid"
    if by_ids:
        which = p.c.client_id.in_(bindparam("ids", expanding=True))
    else:
        which = p.c.client_id.between(bindparam("lo"), bindparam("hi"))
    return (
        select(
            p.c.client_id,
            func.count().filter(paid),
            func.coalesce(func.sum(p.c.amount_minor).filter(paid), 0),
            _raw(func.min(p.c.purchased_at).filter(paid)),
            _raw(func.max(p.c.purchased_at).filter(paid)),
            func.count().filter(p.c.status == "unpaid"),
            func.count().filter(p.c.status == "disputed"),
        )
        .where(which)
        .group_by(p.c.client_id)
    )


def _planned(
    rt: Runtime,
    window: _Window,
    ids: tuple[int, int] | None = None,
    only: Sequence[int] | None = None,
) -> Iterator[tuple[_Chunk, list[planner.NewTouch]]]:
    """The planner's touches, one list per chunk of clients (with the chunk), for every
    client, those with ids in (ids[0], ids[1]], or those listed in `only` (sorted)."""
    campaigns = rt.calendar.enabled
    politeness = rt.politeness
    capped = {c.name: c.capped for c in rt.calendar.campaigns}
    # The campaigns that can fire, by zone, country and language (a handful of groups).
    relevant: dict[tuple[str, str, str], list[calendars.Campaign]] = {}
    for read in _client_chunks(rt, window, ids=ids, only=only):
        touches: list[planner.NewTouch] = []
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
                )
            )
        yield read, touches


def client_count(rt: Runtime) -> int:
    with store.reader(rt.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(store.clients)).scalar_one())


def plan(
    rt: Runtime,
    now: datetime,
    until: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    processes: int | None = None,
    *,
    in_workers: bool = False,
    should_stop: Callable[[], bool] | None = None,
    only: Sequence[int] | None = None,
) -> PlanReport:
    """Insert every touch due up to `until` (default: the configured horizon). Idempotent, and
    safe to run from several processes at once: the ledger's unique keys refuse duplicates.
    Each client's plan_version read is recorded with its touches (store.mark_planned).

    With `only` (sorted client ids, as `changed` gives them), only those clients are planned,
    in this process, and the watermarks stay where they are: they say up to when every client
    has been planned.
    With `processes` (default `[schedule] plan_processes`) above 1, the clients are split by
    id range over that many worker processes (the planner is CPU-bound Python); with
    `in_workers`, a single one also plans in a worker process, not in this one. Workers
    started with `should_stop` ignore SIGINT (the caller handles it) and are terminated, and
    PlanStopped raised, once it returns True; the touches already inserted stay (a plan is
    idempotent), and the next plan does the rest.

    Occurrences missed while followup was down and past their lateness are recorded as
    skipped "too late", from each campaign's watermark on; the first plan starts at the
    lateness limit, so importing years of history does not flood the ledger with skips. A
    disabled campaign's watermark moves on with each plan: enabled again, it starts afresh.
    """
    store.check_ready(rt.engine)
    started = monotonic_time.monotonic()
    until = until or now + timedelta(days=rt.settings.schedule.plan_horizon_days)
    report = PlanReport()
    campaigns = rt.calendar.enabled
    with store.reader(rt.engine) as conn:
        marks = {c.name: store.get_watermark(conn, c.name) for c in rt.calendar.campaigns}
    since: dict[str, datetime] = {}
    for campaign in campaigns:
        start = now - campaign.lateness
        mark = marks[campaign.name]
        since[campaign.name] = min(start, mark) if mark is not None else start
    window = _Window(since, until, now)
    processes = processes or rt.settings.schedule.plan_processes
    if only is not None:
        _plan_range(rt, window, None, report, progress, only)
    elif processes > 1 or in_workers:
        _plan_in_processes(rt, window, processes, report, progress, should_stop)
    else:
        _plan_range(rt, window, None, report, progress)
    if only is None:
        with rt.engine.begin() as conn:
            # Disabled campaigns too: what falls due while one is off is not missed, and
            # enabled again it starts afresh instead of recording months of "too late".
            for name, mark in marks.items():
                if mark is None or until > mark:
                    store.set_watermark(conn, name, until)
    fields = {"planned": report.planned, "skipped": report.skipped}
    if only is not None:  # a plan of the changed clients says how many
        fields["changed"] = len(only)
    log_event("plan.done", **fields)
    record_run(rt, "plan", now, started, " ".join(f"{k}={v}" for k, v in fields.items()))
    return report


#: From this many clients, the daemon plans in worker processes (see plans_in_workers).
LARGE_SHOP_CLIENTS = 50_000


def changed(rt: Runtime) -> list[int]:
    """The clients to plan again: those whose data (a column the planner reads, a purchase)
    changed since a plan last read them, or that no plan has read yet, in id order. The
    database's triggers keep each client's plan_version (migration 0007)."""
    with store.reader(rt.engine) as conn:
        return store.changed_clients(conn)


def plans_in_workers(rt: Runtime) -> bool:
    """Whether the daemon should plan outside its own process: a re-plan reads every client
    (45 us each on the bench machine), and in the daemon's thread it holds the interpreter
    that sends. From LARGE_SHOP_CLIENTS on, a worker process costs less than it saves; below,
    its start (most of a second) costs more than the plan itself. Counted, not guessed from
    the ids: on PostgreSQL every upsert of a known client uses up a sequence value, so
    nightly imports leave the ids far apart."""
    with store.reader(rt.engine) as conn:
        count = conn.execute(select(func.count()).select_from(store.clients)).scalar_one()
    return int(count) >= LARGE_SHOP_CLIENTS


def _plan_range(
    rt: Runtime,
    window: _Window,
    ids: tuple[int, int] | None,
    report: PlanReport,
    progress: Callable[[int], None] | None = None,
    only: Sequence[int] | None = None,
) -> None:
    """Plans the clients with ids in (ids[0], ids[1]] (all when None), or those listed in
    `only`, into `report`."""
    created: dict[str, int] = {}
    for read, touches in _planned(rt, window, ids, only):
        if touches or read.versions:
            # The versions read go in with the touches planned from them: a client changed
            # since this chunk was read keeps a newer version, and is planned again.
            with rt.engine.begin() as conn:
                store.insert_touches(conn, touches, window.now, created, report.by_campaign)
                store.mark_planned(conn, read.versions)
        report.clients += len(read.clients)
        if progress is not None:
            progress(len(read.clients))
    report.planned += created.get(TouchStatus.PLANNED.value, 0)
    report.skipped += created.get(TouchStatus.SKIPPED.value, 0)


def _plan_worker(settings: Settings, window: _Window, ids: tuple[int, int]) -> PlanReport:
    """One worker process of a parallel plan: its own engine, calendar and templates."""
    rt = Runtime.open(settings)
    try:
        report = PlanReport()
        _plan_range(rt, window, ids, report)
        return report
    finally:
        rt.engine.dispose()


def _plan_in_processes(
    rt: Runtime,
    window: _Window,
    processes: int,
    report: PlanReport,
    progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    c = store.clients
    with store.reader(rt.engine) as conn:
        low, high = conn.execute(select(func.min(c.c.id), func.max(c.c.id))).one()
    if low is None:
        return
    step = max(1, (high - low + 1) // processes + 1)
    ranges = [(start - 1, min(start - 1 + step, high)) for start in range(low, high + 1, step)]
    with process_pool(rt, len(ranges), ignore_interrupt=should_stop is not None) as pool:
        futures = [pool.submit(_plan_worker, rt.settings, window, ids) for ids in ranges]
        pending: set[Future[PlanReport]] = set(futures)
        while should_stop is not None and pending:
            _, pending = wait(pending, timeout=STOP_POLL_SECONDS)
            if pending and should_stop():
                _terminate(pool)
                raise PlanStopped(f"stopped with {len(pending)} of {len(futures)} ranges unplanned")
        for future in futures:
            part = future.result()
            report.clients += part.clients
            report.planned += part.planned
            report.skipped += part.skipped
            for name, count in part.by_campaign.items():
                report.by_campaign[name] = report.by_campaign.get(name, 0) + count
            if progress is not None:
                progress(part.clients)


def record_run(
    rt: Runtime,
    kind: str,
    now: datetime,
    started: float,
    detail: str,
    *,
    owner: str | None = None,
    outcome: str = "ok",
) -> None:
    """Keep the last run of `kind` for `followup status` and /healthz; `started` is a
    time.monotonic() reading taken when the run began, `now` the clock's time then."""
    finished = now + timedelta(seconds=monotonic_time.monotonic() - started)
    with rt.engine.begin() as conn:
        store.record_run(conn, kind, owner or process_id(), now, finished, outcome, detail)


# ----------------------------------------------------------------------------- dispatching


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_id() -> str:
    return f"{process_id()}:{random.randrange(16**6):06x}"


def retry_delay(attempt: int, base: float, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempt-1), times 0.75..1.25, capped at 6 h."""
    seconds = min(base * 2 ** (attempt - 1), 6 * 3600.0) * rng.uniform(0.75, 1.25)
    return timedelta(seconds=seconds)


@dataclass
class DispatchReport:
    sent: int = 0
    retry: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0
    too_late: int = 0
    requeued: int = 0
    rate_limited: bool = False
    capture_dir: Path | None = None

    def add(self, other: DispatchReport) -> None:
        """Adds the counts of another process's run."""
        for name in ("sent", "retry", "failed", "skipped", "uncertain", "too_late", "requeued"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rate_limited = self.rate_limited or other.rate_limited
        self.capture_dir = self.capture_dir or other.capture_dir


@dataclass(frozen=True, slots=True)
class Clock:
    """Real time shifted by `offset` (FOLLOWUP_NOW): a clock that can go to another process."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @classmethod
    def starting_at(cls, start: datetime | None) -> Clock:
        return cls() if start is None else cls(start - datetime.now(UTC))


_heap_frozen = False
#: Allocations between collections of the youngest generation (Python's default: 700). Each
#: collection walks the young objects still alive (a batch's rows, messages in flight):
#: collecting every 20,000 allocations instead of 700 takes 0.7% fewer instructions a
#: dispatched message (callgrind). Cyclic garbage waits a little longer to be freed.
YOUNG_COLLECTION_THRESHOLD = 20_000


def freeze_startup_heap() -> None:
    """Once per process, before a long run: what is alive now (modules, compiled templates,
    settings: about 100,000 objects) leaves the cyclic garbage collector's generations, whose
    full collections walked it all again and again (60 ms each, 2-4% of a dispatch run;
    gc.freeze). Garbage is collected first, so none is kept; objects made later are
    collected as before, the youngest every YOUNG_COLLECTION_THRESHOLD allocations. In a
    parent, before fork, it also keeps the children from copying the pages those objects
    are on."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def dispatch_in_processes(
    rt: Runtime, clock: Clock, processes: int, *, resend_uncertain: bool = False
) -> DispatchReport:
    """`dispatch` in `processes` processes at once, each with its own database connection and
    `[smtp] pool_size` connections: rendering is CPU work that one Python process does on one
    core. The processes share the queue through the ledger's leases, as several daemons do."""
    freeze_startup_heap()
    settings, processes = process_settings(rt.settings, processes)
    if processes <= 1:
        return asyncio.run(dispatch(rt, clock, resend_uncertain=resend_uncertain))
    report = DispatchReport()
    with process_pool(rt, processes) as pool:
        futures = [
            pool.submit(_dispatch_worker, settings, clock, resend_uncertain and n == 0)
            for n in range(processes)
        ]
        for future in futures:
            report.add(future.result())
    return report


@contextlib.contextmanager
def process_pool(
    rt: Runtime, processes: int, *, ignore_interrupt: bool = False
) -> Iterator[ProcessPoolExecutor]:
    """`processes` worker processes (planning, dispatch), started by `start_method`. With
    `ignore_interrupt`, they ignore SIGINT: a Ctrl-C at a terminal goes to the whole process
    group, and the daemon, which handles it as a request to stop, stops its workers itself."""
    method = start_method(rt.engine)
    if method == "fork":
        # A forked process must not share the parent's pooled database connections.
        rt.engine.dispose()
    log_event("processes.start", processes=processes, method=method)
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=context,
        initializer=_worker_start,
        initargs=(logs.current(), ignore_interrupt),
    ) as pool:
        yield pool


def _worker_start(configured: tuple[int, bool] | None, ignore_interrupt: bool) -> None:
    """A worker logs as the command that started it (spawned ones start unconfigured)."""
    if ignore_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if configured is not None:
        logs.configure(*configured)


#: How often a plan in worker processes checks whether it should stop, and how long a
#: terminated worker may take to exit before it is killed.
STOP_POLL_SECONDS = 0.5
TERMINATE_WAIT_SECONDS = 5.0


class PlanStopped(Exception):
    """A plan in worker processes was stopped (see `plan`'s should_stop)."""


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the pool's worker processes (SIGTERM): a
    worker in the middle of a range stops at once, its last chunk's transaction rolled back."""
    # The executor keeps no public list of its processes, and forgets them at shutdown.
    processes = list((pool._processes or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(TERMINATE_WAIT_SECONDS)
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def start_method(engine: Engine) -> str:
    """How worker processes start: forked on Linux when this process runs no other thread and
    holds no database connection (they start at once, with followup already imported, instead
    of importing it again for most of a second each), else spawned afresh (other systems, a
    thread that a fork would leave half-way such as a progress bar's, or a connection in use
    that a child must not inherit)."""
    in_use: int = engine.pool.checkedout()  # type: ignore[attr-defined]
    if sys.platform == "linux" and threading.active_count() == 1 and in_use == 0:
        return "fork"
    return "spawn"


def process_settings(settings: Settings, processes: int) -> tuple[Settings, int]:
    """The settings of each of `processes` dispatch processes, and how many to run. The
    per-second rate is shared out (each process paces its own connections). The hourly and
    daily limits are counted in the ledger when a batch is claimed, and processes claiming at
    once could each take the whole allowance: with either limit set, one process sends."""
    smtp = settings.smtp
    if processes <= 1:
        return settings, 1
    if smtp.rate_per_hour > 0 or smtp.rate_per_day > 0:
        log.warning(
            "[smtp] rate_per_hour or rate_per_day is set: sending from one process",
            extra={"event": "dispatch.one_process", "fields": {"asked": processes}},
        )
        return settings, 1
    if smtp.rate_per_second > 0:
        shared = smtp.model_copy(update={"rate_per_second": smtp.rate_per_second / processes})
        settings = settings.model_copy(update={"smtp": shared})
    return settings, processes


def _dispatch_worker(settings: Settings, clock: Clock, resend_uncertain: bool) -> DispatchReport:
    rt = Runtime.open(settings)
    freeze_startup_heap()  # a spawned worker (a forked one has it from its parent)
    try:
        return asyncio.run(dispatch(rt, clock, resend_uncertain=resend_uncertain))
    finally:
        rt.engine.dispose()


async def dispatch(
    rt: Runtime,
    clock: Callable[[], datetime],
    *,
    owner: str | None = None,
    limit: int | None = None,
    rng: random.Random | None = None,
    resend_uncertain: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_delivery: Callable[[Delivery, float], None] | None = None,
) -> DispatchReport:
    """Send everything due now, once: claim, compose, send, record, until nothing is due.

    With `resend_uncertain`, touches whose fate was unknown after a crash are sent again
    first: the operator's decision, never the default. When `should_stop` answers True, no
    more touches are claimed nor handed to the mailer: the sends in flight finish, the rest
    of the batch goes back to the queue. `on_delivery` sees each SMTP outcome and how many
    seconds the transaction took (metrics)."""
    store.check_ready(rt.engine)
    started = monotonic_time.monotonic()
    started_at = clock()
    hooks = _Hooks(should_stop or (lambda: False), on_delivery)
    settings = rt.settings
    key = compose.signing_key(settings, sending=True)
    owner = owner or owner_id()
    rng = rng or random.Random()
    report = DispatchReport()
    lease = timedelta(seconds=settings.database.lease_seconds)
    with rt.engine.begin() as conn:
        report.uncertain = store.expire_leases(conn, clock())
        if resend_uncertain:
            report.requeued = store.requeue_uncertain(conn, clock(), owner)
        report.too_late = store.skip_too_late(conn, clock())
    if settings.delivery.mode == "capture":
        directory = settings.path(settings.delivery.capture_dir)
        report.capture_dir = directory
        async with CaptureSink(directory) as sink:
            smtp = settings.smtp.model_copy(update={"security": "none", "username": ""})
            mailers = SmtpMailer.pool(smtp, host="127.0.0.1", port=sink.port)
            await _dispatch_loop(rt, clock, owner, lease, key, mailers, report, limit, rng, hooks)
    else:
        mailers = SmtpMailer.pool(settings.smtp, settings.smtp_password)
        await _dispatch_loop(rt, clock, owner, lease, key, mailers, report, limit, rng, hooks)
    counts = {
        "sent": report.sent,
        "retry": report.retry,
        "failed": report.failed,
        "skipped": report.skipped,
        "uncertain": report.uncertain,
    }
    if any(counts.values()) or report.too_late:
        log_event("dispatch.done", **counts)
    else:
        # The daemon dispatches every few seconds: an idle run is not news at INFO.
        log.debug("dispatch.done", extra={"event": "dispatch.done", "fields": counts})
    detail = f"sent={report.sent} retry={report.retry} failed={report.failed}"
    record_run(rt, "dispatch", started_at, started, detail, owner=owner)
    return report


@dataclass(frozen=True, slots=True)
class _Hooks:
    should_stop: Callable[[], bool]
    on_delivery: Callable[[Delivery, float], None] | None


def _allowance(rt: Runtime, now: datetime) -> int | None:
    """How many more messages the hourly and daily limits allow now (None: no limit).
    Counted from the ledger, so the limits hold across restarts and several processes."""
    smtp = rt.settings.smtp
    limits = [(timedelta(hours=1), smtp.rate_per_hour), (timedelta(days=1), smtp.rate_per_day)]
    allowed: int | None = None
    with store.reader(rt.engine) as conn:
        for window, limit in limits:
            if limit <= 0:
                continue
            left = max(limit - store.sent_since(conn, now - window), 0)
            allowed = left if allowed is None else min(allowed, left)
    return allowed


async def _dispatch_loop(
    rt: Runtime,
    clock: Callable[[], datetime],
    owner: str,
    lease: timedelta,
    key: str,
    mailers: list[SmtpMailer],
    report: DispatchReport,
    limit: int | None,
    rng: random.Random,
    hooks: _Hooks,
) -> None:
    """Claim batches and work through each with one worker per pooled connection."""
    settings = rt.settings
    done = 0
    try:
        async with store.keeping_writer(rt.engine):
            while (limit is None or done < limit) and not hooks.should_stop():
                size = settings.delivery.batch_size
                if limit is not None:
                    size = min(size, limit - done)
                allowed = _allowance(rt, clock())
                if allowed is not None:
                    if allowed <= 0:
                        report.rate_limited = True
                        log_event("dispatch.rate_limited")
                        return
                    size = min(size, allowed)
                async with store.writing(rt.engine) as conn:
                    claimed = store.claim_due(conn, owner, clock(), lease, size)
                if not claimed:
                    return
                with store.reader(rt.engine) as conn:
                    pre = _prefetch(conn, claimed)
                recorder = _Recorder(
                    rt, report, rng, size=_record_size(settings.delivery.group_size, mailers)
                )
                batch = _Batch(
                    rt, claimed, mailers, clock, owner, lease, key, report, hooks, pre, recorder
                )
                try:
                    try:
                        async with asyncio.TaskGroup() as group:
                            for index in range(len(mailers)):
                                group.create_task(batch.worker(index))
                    except BaseExceptionGroup as group_error:
                        # One cause is enough for the operator (e.g. an untrusted certificate).
                        raise group_error.exceptions[0] from None
                    done += len(claimed)
                finally:
                    try:
                        await recorder.flush()
                    except Exception:
                        # Left "sending" with their Message-IDs: uncertain when the lease ends,
                        # never resent on their own.
                        log.exception("recording failed", extra={"event": "dispatch.record_error"})
                    unsent = batch.unsent()
                    if unsent:
                        # Stopped early (an error, an interrupt): the touches never given to the
                        # mailer go back to the queue now instead of turning uncertain later.
                        async with store.writing(rt.engine) as conn:
                            store.release(conn, unsent, owner, clock())
    finally:
        for mailer in mailers:
            await mailer.close()


#: The most outcomes the recorder holds (sent but not yet recorded: uncertain after a crash).
RECORD_MAX = 256


def _record_size(group_size: int, mailers: Sequence[SmtpMailer]) -> int:
    """Outcomes the recorder holds before writing them in a transaction of their own: enough
    that they are written with the next hand-off of every connection's group instead."""
    return min(max(32, (group_size + 1) * len(mailers)), RECORD_MAX)


class _Batch:
    """A claimed batch, sent by one worker per pooled connection.

    Each connection sends from its own queue of touches handed to the mailer. When a queue
    runs dry, the next messages of every connection are composed and handed off together, in
    one transaction that also writes the outcomes waiting in the recorder: the dry queue gets
    up to `[delivery] group_size`, the others are topped up to it. Queues topped up together
    run dry together, so there is about one write transaction per group_size x connections
    messages (one per group_size when each connection handed off its own).

    A touch handed off is "sending" with its Message-ID: if the process dies before the
    mailer gets it, it turns uncertain (never resent on its own). A connection never holds
    more than group_size of them, so a crash can leave up to `[delivery] group_size` touches
    per connection uncertain that were not sent. Touches that never reached the mailer
    (`unsent`) are given back to the queue when the run stops early."""

    def __init__(
        self,
        rt: Runtime,
        claimed: list[int],
        mailers: list[SmtpMailer],
        clock: Callable[[], datetime],
        owner: str,
        lease: timedelta,
        key: str,
        report: DispatchReport,
        hooks: _Hooks,
        pre: _Prefetched,
        recorder: _Recorder,
    ) -> None:
        self.rt, self.mailers, self.clock = rt, mailers, clock
        self.owner, self.lease, self.key = owner, lease, key
        self.report, self.hooks, self.pre, self.recorder = report, hooks, pre, recorder
        self.pending = deque(claimed)
        self.queues: list[deque[tuple[Any, compose.Composed]]] = [deque() for _ in mailers]
        #: When each queue's leases are renewed (half the lease after its oldest hand-off).
        self.renew_at: list[datetime | None] = [None for _ in mailers]
        self.working = set(range(len(mailers)))
        self.refilling = asyncio.Lock()

    def unsent(self) -> list[int]:
        """The touches never given to the mailer: not composed yet, or handed off and queued."""
        queued = [touch.id for queue in self.queues for touch, _ in queue]
        return [*self.pending, *queued]

    async def worker(self, index: int) -> None:
        """Send from connection `index`'s queue, refilling it (and the others) when dry."""
        queue, mailer = self.queues[index], self.mailers[index]
        sender = self.rt.settings.sender.envelope_from
        try:
            while not self.hooks.should_stop():
                if not queue:
                    # A refill under way may be composing for this queue too: wait for it.
                    if not self.pending and not self.refilling.locked():
                        return
                    await self._refill(index)
                    continue
                renew_at = self.renew_at[index]
                if renew_at is not None and self.clock() >= renew_at:
                    await self._renew(index)
                    continue
                touch, message = queue.popleft()
                # The next message's envelope goes out behind this one's data (one round trip
                # each).
                then = (sender, queue[0][1].to) if queue else None
                began = monotonic_time.monotonic()
                try:
                    delivery = await mailer.send(sender, message.to, message.mime, then=then)
                except BaseException:
                    # A setup error (always before the message data), or this task cancelled
                    # because another connection failed or the run stops: if none of the
                    # message data was written, the server cannot have it, and it goes back.
                    if not mailer.data_written:
                        queue.appendleft((touch, message))
                    raise
                if self.hooks.on_delivery is not None:
                    self.hooks.on_delivery(delivery, monotonic_time.monotonic() - began)
                # From here on the touch is the mailer's: never given back, only recorded (or,
                # after a crash, found uncertain when its lease expires).
                await self.recorder.add(touch, message, delivery, self.clock())
                if not queue:
                    self.renew_at[index] = None
        finally:
            self.working.discard(index)

    async def _renew(self, index: int) -> None:
        """A slow server: renew the leases of what connection `index` still holds. Refills
        wait meanwhile (one lock), so none tops the queue up while it is renewed."""
        queue = self.queues[index]
        async with self.refilling:
            now = self.clock()
            kept = {touch.id for touch, _ in await self._hand_off(list(queue), now)}
            # Those whose lease ran out were settled by another worker: not sent from here.
            remaining = [item for item in queue if item[0].id in kept]
            queue.clear()
            queue.extend(remaining)
            self.renew_at[index] = now + self.lease / 2 if queue else None

    async def _refill(self, index: int) -> None:
        """Compose and hand off the next messages of the dry queue `index` and of every other
        connection still working, in one transaction."""
        async with self.refilling:
            if self.queues[index] or not self.pending or self.hooks.should_stop():
                return  # filled by another worker's refill meanwhile, or nothing left to do
            size = self.rt.settings.delivery.group_size
            # With groups of 1 (the most cautious setting) each touch is handed off just
            # before it is sent: no other connection is topped up while it sends.
            others = sorted(self.working - {index}) if size > 1 else []
            # A fair share when little is left: every connection gets some.
            share = -(-len(self.pending) // (len(others) + 1))
            wanted = [(i, min(size - len(self.queues[i]), share)) for i in (index, *others)]
            prepared: list[tuple[int, tuple[Any, compose.Composed]]] = []
            try:
                for i, room in wanted:
                    for _ in range(room):
                        if not self.pending:
                            break
                        found = self._prepare(self.pending[0])
                        self.pending.popleft()
                        if found is not None:
                            prepared.append((i, found))
                now = self.clock()
                held = await self._hand_off([item for _, item in prepared], now)
            except BaseException:
                # Not handed off: safe to give back.
                self.pending.extendleft(reversed([touch.id for _, (touch, _) in prepared]))
                raise
            ours = {touch.id for touch, _ in held}
            # Half the lease the hand-off gave (not from now: the write lock may have been
            # waited for).
            renew_at = now + self.lease / 2
            for i, item in prepared:
                if item[0].id in ours:
                    if not self.queues[i]:
                        self.renew_at[i] = renew_at
                    self.queues[i].append(item)

    def _prepare(self, touch_id: int) -> tuple[Any, compose.Composed] | None:
        found = _prepare(self.rt, touch_id, self.clock, self.key, self.report, self.pre)
        if found is not None:
            touch, message = found
            # The client's next touch in this batch must look different from this one.
            self.pre.seen.setdefault(touch.client_id, []).append(
                (self.clock(), touch.id, message.variant)
            )
        return found

    async def _hand_off(
        self, prepared: list[tuple[Any, compose.Composed]], now: datetime
    ) -> list[tuple[Any, compose.Composed]]:
        return await _hand_off(prepared, self.owner, now, self.lease, self.recorder)


async def _hand_off(
    prepared: list[tuple[Any, compose.Composed]],
    owner: str,
    now: datetime,
    lease: timedelta,
    recorder: _Recorder,
) -> list[tuple[Any, compose.Composed]]:
    """Mark the touches as handed to the mailer, in one transaction with the outcomes the
    recorder holds; returns those still ours (a touch whose lease ran out has been settled by
    another worker)."""
    if not prepared:
        return []
    hand_offs = [
        store.HandOff(touch.id, message.message_id, {"variant": message.variant})
        for touch, message in prepared
    ]
    held = await recorder.write_with(
        lambda conn: store.hand_off_many(conn, hand_offs, owner, now, lease)
    )
    for (touch, _), ours in zip(prepared, held, strict=True):
        if not ours:
            log_event("touch.lease_lost", touch=touch.id, campaign=touch.campaign)
    return [item for item, ours in zip(prepared, held, strict=True) if ours]


def _outside_window(rt: Runtime, touch: Any, timezone: str, now: datetime) -> datetime | None:
    """When `now` is outside the campaign's local send window (hours, weekdays, quiet hours):
    the next allowed instant, or raises Skip when none is left within the touch's lateness.
    None when it may go out now."""
    campaign = rt.calendar.get(touch.campaign)
    if campaign is None:
        return None
    zone = calendars.zone(timezone)
    quiet = rt.politeness.quiet
    if planner.allowed(campaign, now, zone, quiet):
        return None
    later = planner.next_allowed(campaign, now, zone, quiet, touch.not_after)
    if later is None:
        raise compose.Skip(f"{planner.TOO_LATE}: no allowed send time before its lateness ends")
    return later


def client_for(
    rt: Runtime, campaign_name: str, facts: compose.Facts, stats: care.ClientStats, now: datetime
) -> dict[str, Any]:
    """Send-time exclusions (unpaid or disputed purchases, unless the campaign says otherwise)
    and the client's facts for the template (tier, purchases, total_spent, ...). Raises Skip
    with the reason when the client must not get this campaign now."""
    campaign = rt.calendar.get(campaign_name)
    exclude = campaign.exclude if campaign is not None else care.EXCLUSIONS
    reason = care.exclusion(facts.status, stats, exclude)
    if reason is not None:
        raise compose.Skip(reason)
    tier = care.tier(stats, now, rt.tier_rules, facts.tier)
    return care.client_context(stats, tier, _local_date(calendars.zone(facts.timezone)))


def occasion_for(
    rt: Runtime,
    campaign_name: str,
    occurrence: date,
    name: str | None,
    facts: compose.Facts,
    stats: care.ClientStats,
) -> dict[str, Any]:
    """The template's `occasion`: campaign, kind, name in the client's language (as planned),
    date, and for yearly occasions the years (age, or years since the first purchase, both
    counted in the client's zone)."""
    campaign = rt.calendar.get(campaign_name)
    context: dict[str, Any] = {"campaign": campaign_name, "date": occurrence, "years": None}
    if campaign is None:
        context.update(kind="after_purchase", name=name or campaign_name)
        return context
    context.update(kind=campaign.kind, name=name or campaign.title)
    if campaign.kind != "yearly":
        return context
    year: int | None = None
    if campaign.client_date == "birthday":
        year = facts.birthday_year
    elif stats.first_purchase is not None:
        year = stats.first_purchase.astimezone(calendars.zone(facts.timezone)).year
    if year is not None and occurrence.year > year:
        context["years"] = occurrence.year - year
    return context


@dataclass
class _Prefetched:
    """What composing a claimed batch needs, read in a few set-based queries instead of
    several per touch."""

    touches: dict[int, Any] = field(default_factory=dict)
    facts: dict[int, compose.Facts] = field(default_factory=dict)
    suppressed: dict[str, str] = field(default_factory=dict)
    stats: dict[int, care.ClientStats] = field(default_factory=dict)
    #: Per client: (updated_at, touch id, variant) of touches that went or may have gone out.
    seen: dict[int, list[tuple[datetime, int, str]]] = field(default_factory=dict)

    def suppression(self, email: str) -> str | None:
        return self.suppressed.get(email.lower()) or self.suppressed.get(store.address_hash(email))

    def previous_variant(self, client_id: int, touch_id: int) -> str | None:
        others = [entry for entry in self.seen.get(client_id, ()) if entry[1] != touch_id]
        return max(others)[2] if others else None


def _prefetch(conn: Connection, ids: list[int]) -> _Prefetched:
    found = _Prefetched()
    touches_query, facts_query, suppressions_query, seen_query = _prefetch_queries()
    for batch in store.chunks(ids, 500):
        for row in store.rows(conn, touches_query, ids=batch):
            found.touches[row.id] = row
        for row in store.rows(conn, facts_query, ids=batch):
            # facts_query's columns are Facts' fields in order, then the touch's id.
            found.facts[row[-1]] = compose.Facts(*row[:-1])
    clients = sorted({f.client_id for f in found.facts.values()})
    emails = {f.email.lower() for f in found.facts.values()}
    keys = sorted(emails | {store.address_hash(e) for e in emails})
    for addresses in store.chunks(keys, 500):
        for row in store.rows(conn, suppressions_query, emails=addresses):
            found.suppressed[row.email] = row.reason
    for group in store.chunks(clients, 500):
        found.stats.update(client_stats(conn, 0, 0, ids=group))
        for row in store.rows(conn, seen_query, ids=group):
            if row.status in compose.SEEN:
                found.seen.setdefault(row.client_id, []).append(
                    (row.updated_at, row.id, row.variant)
                )
    return found


@functools.cache
def _prefetch_queries() -> tuple[Select[Any], Select[Any], Select[Any], Select[Any]]:
    """The prefetch's queries, each for a list of `ids` (touches, touches, addresses and
    address hashes as `emails`, clients); built once (store.rows keeps their compiled form)."""
    t, c, p, s = store.touches, store.clients, store.purchases, store.suppressions
    ids: Any = bindparam("ids", expanding=True)
    touches_query = select(
        t.c.id,
        t.c.client_id,
        t.c.campaign,
        t.c.occurrence,
        t.c.template,
        t.c.occasion,
        t.c.due_at,
        t.c.purchase_id,
        t.c.attempts,
        t.c.not_after,
        t.c.variant,
    ).where(t.c.id.in_(ids))
    facts_query = (
        compose.facts_query()
        .add_columns(t.c.id.label("touch_id"))
        .join(t, t.c.client_id == c.c.id)
        .outerjoin(p, p.c.id == t.c.purchase_id)
        .where(t.c.id.in_(ids))
    )
    emails: Any = bindparam("emails", expanding=True)
    suppressions_query = select(s.c.email, s.c.reason).where(s.c.email.in_(emails))
    # The status is checked in Python, not in SQL: with `status IN (...)` in the query,
    # SQLite (no statistics) searched ix_touches_due by status instead of the clients' key,
    # reading every touch that ever went out for each batch (0.3 s a batch with 900,000
    # sent). A client has few touches; the few others with a variant (a retry, a failure)
    # are read and dropped.
    seen_query = select(t.c.client_id, t.c.status, t.c.updated_at, t.c.id, t.c.variant).where(
        t.c.client_id.in_(ids), t.c.variant.is_not(None)
    )
    return touches_query, facts_query, suppressions_query, seen_query


def _prepare(
    rt: Runtime,
    touch_id: int,
    clock: Callable[[], datetime],
    key: str,
    report: DispatchReport,
    pre: _Prefetched,
) -> tuple[Any, compose.Composed] | None:
    """Checks and renders one claimed touch. Returns what to send, or None when the touch was
    settled here (skipped, or failed on its template) and nothing is to be sent."""
    settings = rt.settings
    sending = TouchStatus.SENDING
    cleared = {"lease_owner": None, "lease_expires_at": None}
    touch = pre.touches[touch_id]
    facts = pre.facts.get(touch_id)
    try:
        if facts is None:
            raise compose.Skip("client no longer exists")
        compose.check_audience_with(facts, pre.suppression(facts.email))
        stats = pre.stats.get(facts.client_id, care.ClientStats())
        client = client_for(rt, touch.campaign, facts, stats, clock())
        occasion = occasion_for(rt, touch.campaign, touch.occurrence, touch.occasion, facts, stats)
        later = _outside_window(rt, touch, facts.timezone, clock())
    except compose.Skip as skip:
        with rt.engine.begin() as conn:
            store.transition(
                conn,
                touch_id,
                sending,
                TouchStatus.SKIPPED,
                clock(),
                str(skip),
                reason=str(skip),
                **cleared,
            )
        report.skipped += 1
        log_event("touch.skipped", touch=touch_id, campaign=touch.campaign, reason=str(skip))
        return None
    if later is not None:
        # Caught up after downtime at an hour the client should not get mail: wait for the
        # campaign's next send time (still within the touch's lateness).
        with rt.engine.begin() as conn:
            store.transition(
                conn,
                touch_id,
                sending,
                TouchStatus.PLANNED if touch.attempts <= 1 else TouchStatus.RETRY,
                clock(),
                f"outside the send window; next at {later.isoformat()}",
                next_attempt_at=later,
                attempts=max(touch.attempts - 1, 0),
                **cleared,
            )
        log_event("touch.waiting", touch=touch_id, campaign=touch.campaign)
        return None
    previous = pre.previous_variant(touch.client_id, touch_id)
    assert facts is not None
    try:
        message = compose.compose(
            settings,
            rt.templates,
            facts,
            campaign=touch.campaign,
            template=touch.template,
            occurrence=touch.occurrence,
            send_at=max(touch.due_at, clock()),
            key=key,
            occasion=occasion,
            # A retry or a resent uncertain touch keeps its design (and its Message-ID).
            variant=_known_variant(rt, touch.template, touch.variant),
            previous_variant=previous,
            client=client,
        )
    except Exception as exc:
        # A broken template (RenderError names its file and line) or a bug while composing:
        # this touch fails with the reason, the rest of the run goes on.
        if isinstance(exc, RenderError):
            reason = f"template error: {exc}"
        else:
            log.exception("compose failed", extra={"event": "touch.compose_error"})
            reason = f"internal error while composing: {type(exc).__name__}: {exc}"
        with rt.engine.begin() as conn:
            store.transition(
                conn,
                touch_id,
                sending,
                TouchStatus.FAILED,
                clock(),
                reason,
                reason=reason,
                **cleared,
            )
        report.failed += 1
        log_event("touch.failed", touch=touch_id, campaign=touch.campaign, reason="compose")
        return None
    return touch, message


def _known_variant(rt: Runtime, template: str, variant: str | None) -> str | None:
    """`variant` if the message still has it (a retry keeps its design), else None."""
    if variant is None:
        return None
    try:
        names = {v.name for v in rt.templates.variants(template)}
    except RenderError:
        return None
    return variant if variant in names else None


def _outcome(
    delivery: Delivery,
    reply: str,
    attempt: int,
    not_after: datetime,
    now: datetime,
    settings: Settings,
    rng: random.Random,
) -> tuple[TouchStatus, str | None, dict[str, Any]]:
    """Pure: the ledger's next state for an SMTP outcome (status, reason, extra columns)."""
    if delivery.outcome is Outcome.SENT:
        return TouchStatus.SENT, None, {}
    if delivery.outcome is Outcome.RETRY:
        next_at = now + retry_delay(attempt, settings.delivery.retry_base_seconds, rng)
        if attempt >= settings.delivery.max_attempts or next_at > not_after:
            return TouchStatus.FAILED, f"gave up after {attempt} attempt(s): {reply}", {}
        return TouchStatus.RETRY, reply, {"next_attempt_at": next_at}
    if delivery.outcome is Outcome.BOUNCED:
        return TouchStatus.FAILED, f"bounced: {reply}", {}
    if delivery.outcome is Outcome.UNCERTAIN:
        return TouchStatus.UNCERTAIN, f"uncertain: {reply}; the server may have accepted it", {}
    return TouchStatus.FAILED, f"refused: {reply}", {}


class _Recorder:
    """Writes SMTP outcomes in groups instead of one transaction each: in the transaction of
    the next hand-off, or in one of their own once `size` are waiting and at the end of a
    batch. A touch sent but not yet recorded when the process dies is found "sending" with
    its Message-ID set, and becomes uncertain (never resent on its own): batching widens
    nothing that the ledger does not already account for."""

    def __init__(
        self, rt: Runtime, report: DispatchReport, rng: random.Random, size: int = 32
    ) -> None:
        self.rt, self.report, self.rng, self.size = rt, report, rng, size
        self.pending: list[tuple[Any, compose.Composed, Delivery, datetime]] = []

    async def add(
        self, touch: Any, message: compose.Composed, delivery: Delivery, now: datetime
    ) -> None:
        self.pending.append((touch, message, delivery, now))
        if len(self.pending) >= self.size:
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending in a transaction of its own."""
        if not self.pending:
            return
        await self.write_with(lambda _conn: None)

    async def write_with(self, then: Callable[[Connection], T]) -> T:
        """Write what is pending, then run `then`, in one transaction (the dispatcher hands
        off its next messages in the same one: one write transaction instead of two). If it
        fails, what was pending stays pending. Outcomes are counted and logged once written,
        those of touches no longer "sending" (settled meanwhile by another worker whose view
        of the lease differed) are not: the ledger keeps the other worker's state."""
        batch, self.pending = self.pending, []
        try:
            async with store.writing(self.rt.engine) as conn:
                changes, applied = self._write(conn, batch)
                result = then(conn)
        except BaseException:
            self.pending[:0] = batch
            raise
        for (touch, message, delivery, _), change, ours in zip(
            batch, changes, applied, strict=True
        ):
            if ours:
                _count(self.report, touch, message, delivery, change.to_status)
            else:
                log_event("touch.lease_lost", touch=touch.id, campaign=touch.campaign)
        return result

    def _write(
        self, conn: Connection, batch: list[tuple[Any, compose.Composed, Delivery, datetime]]
    ) -> tuple[list[store.Change], list[bool]]:
        changes = [
            _change(self.rt, touch, message, delivery, now, self.rng)
            for touch, message, delivery, now in batch
        ]
        if not changes:
            return changes, []
        applied = store.transition_many(conn, TouchStatus.SENDING, changes)
        for (touch, message, delivery, now), change in zip(batch, changes, strict=True):
            if delivery.outcome is Outcome.BOUNCED:
                store.suppress(conn, message.to, "bounced", now, detail=change.detail)
                conn.execute(
                    store.clients.update()
                    .where(store.clients.c.id == touch.client_id)
                    .values(status=ClientStatus.BOUNCED.value, updated_at=now)
                )
        return changes, applied


def _change(
    rt: Runtime,
    touch: Any,
    message: compose.Composed,
    delivery: Delivery,
    now: datetime,
    rng: random.Random,
) -> store.Change:
    """The ledger's state change for one SMTP outcome."""
    reply = f"{delivery.code} {delivery.reply}".strip() if delivery.code else delivery.reply
    status, reason, extra = _outcome(
        delivery, reply, touch.attempts, touch.not_after, now, rt.settings, rng
    )
    values = {
        "reason": reason,
        "lease_owner": None,
        "lease_expires_at": None,
        "smtp_reply": reply[:2000],
        "locale": message.locale,
        "variant": message.variant,
        "rep_id": message.rep_id,
        "message_id": message.message_id,
        **extra,
    }
    return store.Change(touch.id, status, now, reply, values)


def _count(
    report: DispatchReport,
    touch: Any,
    message: compose.Composed,
    delivery: Delivery,
    status: TouchStatus,
) -> None:
    counter = {TouchStatus.SENT: "sent", TouchStatus.RETRY: "retry"}.get(status, "failed")
    setattr(report, counter, getattr(report, counter) + 1)
    event = "touch.bounced" if delivery.outcome is Outcome.BOUNCED else f"touch.{status.value}"
    log_event(event, touch=touch.id, campaign=touch.campaign, code=delivery.code)


# ----------------------------------------------------------------------------- dry-run


@dataclass
class DryRunEntry:
    client: str
    to: str
    campaign: str
    occasion: str
    occurrence: date
    template: str
    send_at: datetime
    timezone: str
    locale: str | None = None
    variant: str | None = None
    tier: str | None = None
    subject: str | None = None
    file: str | None = None
    reason: str | None = None
    message: compose.Composed | None = None


@dataclass
class DryRun:
    on: date
    messages: list[DryRunEntry] = field(default_factory=list)
    skipped: list[DryRunEntry] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A touch the dry-run considers: from the ledger, or one the planner would add."""

    client_id: int
    campaign: str
    occurrence: date
    template: str
    purchase_id: int | None
    send_at: datetime
    status: str
    occasion: str | None = None
    reason: str | None = None
    in_ledger: bool = True


def _dry_run_candidates(
    rt: Runtime, conn: Connection, on: date, now: datetime | None
) -> list[_Candidate]:
    """The ledger's touches for `on` (with their planned times, and on the current day those
    overdue but still within their lateness), then those the planner would add: the same
    planner as a real run, over the days before `on` that can still reach it."""
    # Every zone's day `on` lies within [on 00:00 at UTC+14, on+1 00:00 at UTC-12].
    since = datetime.combine(on, time(), UTC) - timedelta(hours=14)
    until = datetime.combine(on + timedelta(days=1), time(), UTC) + timedelta(hours=12)
    t, c = store.touches, store.clients
    found: dict[tuple[int, str, date], _Candidate] = {}
    catch_up = now is not None and now.date() == on
    window: ColumnElement[bool] = t.c.next_attempt_at.between(since, until)
    if catch_up:
        assert now is not None
        window = window | (
            (t.c.next_attempt_at < now)
            & (t.c.not_after >= now)
            & t.c.status.in_([TouchStatus.PLANNED.value, TouchStatus.RETRY.value])
        )
    rows = conn.execute(
        select(
            t.c.client_id,
            t.c.campaign,
            t.c.occurrence,
            t.c.template,
            t.c.occasion,
            t.c.purchase_id,
            t.c.next_attempt_at,
            t.c.status,
            t.c.reason,
            c.c.timezone,
        )
        .join(c, c.c.id == t.c.client_id)
        .where(window)
    )
    for row in rows:
        send_at = row.next_attempt_at
        waiting = row.status in (TouchStatus.PLANNED.value, TouchStatus.RETRY.value)
        if catch_up and waiting and now is not None and send_at < now:
            send_at = now
        if send_at.astimezone(ZoneInfo(row.timezone)).date() != on:
            continue
        found[(row.client_id, row.campaign, row.occurrence)] = _Candidate(
            row.client_id,
            row.campaign,
            row.occurrence,
            row.template,
            row.purchase_id,
            send_at,
            row.status,
            row.occasion,
            row.reason,
        )
    # The planner starts early enough for a deferred or late occasion to land on `on`.
    start = since - rt.calendar.max_lateness - rt.politeness.per - timedelta(days=1)
    plan_now = max(now, start) if now is not None else start
    campaigns = rt.calendar.enabled
    plan_window = _Window({c.name: start for c in campaigns}, until, plan_now)
    for read, touches in _planned(rt, plan_window):
        zones = {client.client_id: ZoneInfo(client.timezone) for client in read.clients}
        for new in touches:
            if new.key in found:
                continue
            zone = zones[new.client_id]
            nominal = new.nominal_at or new.due_at
            planned = new.status is TouchStatus.PLANNED
            if planned and new.due_at.astimezone(zone).date() == on:
                status, reason, send_at = TouchStatus.PLANNED.value, new.reason, new.due_at
            elif nominal.astimezone(zone).date() == on:
                send_at = nominal
                status = TouchStatus.SKIPPED.value
                reason = new.reason
                if planned:
                    local = new.due_at.astimezone(zone)
                    reason = f"deferred to {local.isoformat(timespec='minutes')} ({new.reason})"
            else:
                continue
            found[new.key] = _Candidate(
                new.client_id,
                new.campaign,
                new.occurrence,
                new.template,
                new.purchase_id,
                send_at,
                status,
                new.occasion,
                reason,
                in_ledger=False,
            )
    return list(found.values())


def dry_run(rt: Runtime, on: date, now: datetime | None = None) -> DryRun:
    """Everything that would go out on `on` (each client's local date), composed with the same
    rules as a real run. Reads the database, writes nothing to it."""
    store.check_ready(rt.engine)
    key = compose.signing_key(rt.settings, sending=False)
    result = DryRun(on=on)
    waiting = (TouchStatus.PLANNED.value, TouchStatus.RETRY.value)
    # The variant each client would see last: the ledger's, then this day's earlier messages.
    last_variant: dict[int, str | None] = {}
    with store.reader(rt.engine) as conn:
        candidates = _dry_run_candidates(rt, conn, on, now)
        candidates.sort(key=lambda c: (c.send_at, c.client_id, c.campaign))
        for candidate in candidates:
            facts = compose.load_facts(conn, candidate.client_id, candidate.purchase_id)
            if facts is None:
                continue
            entry = DryRunEntry(
                client=facts.client_external_id,
                to=facts.email,
                campaign=candidate.campaign,
                occasion=candidate.occasion or candidate.campaign,
                occurrence=candidate.occurrence,
                template=candidate.template,
                send_at=candidate.send_at,
                timezone=facts.timezone,
            )
            try:
                if candidate.status not in waiting:
                    if not candidate.in_ledger:
                        raise compose.Skip(candidate.reason or candidate.status)
                    detail = f": {candidate.reason}" if candidate.reason else ""
                    raise compose.Skip(f"already {candidate.status}{detail}")
                compose.check_audience(conn, facts)
                stats = client_stats(conn, facts.client_id, facts.client_id).get(
                    facts.client_id, care.ClientStats()
                )
                client = client_for(rt, candidate.campaign, facts, stats, now or candidate.send_at)
                occasion = occasion_for(
                    rt, candidate.campaign, candidate.occurrence, candidate.occasion, facts, stats
                )
                if candidate.client_id not in last_variant:
                    last_variant[candidate.client_id] = compose.previous_variant(
                        conn, candidate.client_id
                    )
                message = compose.compose(
                    rt.settings,
                    rt.templates,
                    facts,
                    campaign=candidate.campaign,
                    template=candidate.template,
                    occurrence=candidate.occurrence,
                    send_at=candidate.send_at,
                    key=key,
                    occasion=occasion,
                    previous_variant=last_variant[candidate.client_id],
                    client=client,
                )
            except compose.Skip as skip:
                entry.reason = str(skip)
                result.skipped.append(entry)
                continue
            except Exception as exc:
                # As in a real run: this touch would fail, the others still go out.
                if isinstance(exc, RenderError):
                    entry.reason = f"template error: {exc}"
                else:
                    entry.reason = f"would fail: {type(exc).__name__}: {exc}"
                result.skipped.append(entry)
                continue
            entry.reason = candidate.reason
            entry.tier = str(client["tier"])
            last_variant[candidate.client_id] = message.variant
            entry.locale, entry.variant = message.locale, message.variant
            entry.subject, entry.message = message.subject, message
            result.messages.append(entry)
    result.messages.sort(key=lambda e: (e.send_at, e.client, e.campaign))
    result.skipped.sort(key=lambda e: (e.send_at, e.client, e.campaign))
    return result


def status_counts(rt: Runtime, now: datetime) -> dict[str, int]:
    store.check_ready(rt.engine)
    t = store.touches
    with store.reader(rt.engine) as conn:
        counts = store.touch_counts(conn)
        due = conn.execute(
            select(func.count()).where(
                t.c.status.in_([TouchStatus.PLANNED.value, TouchStatus.RETRY.value]),
                t.c.next_attempt_at <= now,
            )
        ).scalar_one()
    counts["due now"] = int(due)
    return counts
