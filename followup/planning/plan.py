"""`followup plan` and the daemon's plan job: every client's touches up to a horizon, in this
process or in worker processes, idempotent (the ledger's unique keys refuse duplicates)."""

from __future__ import annotations

import time as monotonic_time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from followup.config.settings import Settings
from followup.domain.statuses import TouchStatus
from followup.logs import log_event
from followup.planning.chunks import PlanWindow, planned_touches
from followup.processes import STOP_POLL_SECONDS, process_pool, terminate
from followup.runtime import Runtime, record_run
from followup.storage import queries
from followup.storage.engine import reader
from followup.storage.schema import check_ready


@dataclass
class PlanReport:
    planned: int = 0
    skipped: int = 0
    clients: int = 0
    by_campaign: dict[str, int] = field(default_factory=dict)


class PlanStopped(Exception):
    """A plan in worker processes was stopped (see `plan`'s should_stop)."""


def client_count(rt: Runtime) -> int:
    with reader(rt.engine) as conn:
        return queries.client_count(conn)


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
    Each client's plan_version read is recorded with its touches (the ledger's mark_planned).

    With `only` (sorted client ids, as `clients_to_replan` gives them), only those clients
    are planned, in this process, and the watermarks stay where they are: they say up to when
    every client has been planned.
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
    check_ready(rt.engine)
    started = monotonic_time.monotonic()
    until = until or now + timedelta(days=rt.settings.schedule.plan_horizon_days)
    report = PlanReport()
    marks = watermarks(rt)
    window = PlanWindow(starts(rt, now, marks), until, now)
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
                    rt.ledger.set_watermark(conn, name, until)
    fields = {"planned": report.planned, "skipped": report.skipped}
    if only is not None:  # a plan of the changed clients says how many
        fields["changed"] = len(only)
    log_event("plan.done", **fields)
    record_run(rt, "plan", now, started, " ".join(f"{k}={v}" for k, v in fields.items()))
    return report


def watermarks(rt: Runtime) -> dict[str, datetime | None]:
    """Up to when each campaign has been planned for every client (None: never)."""
    with reader(rt.engine) as conn:
        return {c.name: queries.watermark(conn, c.name) for c in rt.calendar.campaigns}


def starts(rt: Runtime, now: datetime, marks: dict[str, datetime | None]) -> dict[str, datetime]:
    """Where a plan at `now` starts for each enabled campaign: its watermark after downtime
    (what was missed is recorded "too late"), else its lateness limit (a first plan does not
    record years of history as skipped)."""
    since: dict[str, datetime] = {}
    for campaign in rt.calendar.enabled:
        start = now - campaign.lateness
        mark = marks.get(campaign.name)
        since[campaign.name] = min(start, mark) if mark is not None else start
    return since


#: From this many clients, the daemon plans in worker processes (see plans_in_workers).
LARGE_SHOP_CLIENTS = 50_000


def clients_to_replan(rt: Runtime) -> list[int]:
    """The clients to plan again: those whose data (a column the planner reads, a purchase)
    changed since a plan last read them, or that no plan has read yet, in id order. The
    database's triggers keep each client's plan_version (migration 0007)."""
    with reader(rt.engine) as conn:
        return queries.clients_to_replan(conn)


def plans_in_workers(rt: Runtime) -> bool:
    """Whether the daemon should plan outside its own process: a re-plan reads every client,
    and in the daemon's thread it holds the interpreter
    that sends. From LARGE_SHOP_CLIENTS on, a worker process costs less than it saves; below,
    its start (most of a second) costs more than the plan itself. Counted, not guessed from
    the ids: on PostgreSQL every upsert of a known client uses up a sequence value, so
    nightly imports leave the ids far apart."""
    with reader(rt.engine) as conn:
        return queries.client_count(conn) >= LARGE_SHOP_CLIENTS


def _plan_range(
    rt: Runtime,
    window: PlanWindow,
    ids: tuple[int, int] | None,
    report: PlanReport,
    progress: Callable[[int], None] | None = None,
    only: Sequence[int] | None = None,
) -> None:
    """Plans the clients with ids in (ids[0], ids[1]] (all when None), or those listed in
    `only`, into `report`."""
    created: dict[str, int] = {}
    for read, touches in planned_touches(rt, window, ids, only):
        if touches or read.versions:
            # The versions read go in with the touches planned from them: a client changed
            # since this chunk was read keeps a newer version, and is planned again.
            with rt.engine.begin() as conn:
                rt.ledger.insert_touches(conn, touches, window.now, created, report.by_campaign)
                rt.ledger.mark_planned(conn, read.versions)
        report.clients += len(read.clients)
        if progress is not None:
            progress(len(read.clients))
    report.planned += created.get(TouchStatus.PLANNED.value, 0)
    report.skipped += created.get(TouchStatus.SKIPPED.value, 0)


def _plan_worker(settings: Settings, window: PlanWindow, ids: tuple[int, int]) -> PlanReport:
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
    window: PlanWindow,
    processes: int,
    report: PlanReport,
    progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    with reader(rt.engine) as conn:
        span = queries.client_id_range(conn)
    if span is None:
        return
    low, high = span
    step = max(1, (high - low + 1) // processes + 1)
    ranges = [(start - 1, min(start - 1 + step, high)) for start in range(low, high + 1, step)]
    with process_pool(rt.engine, len(ranges), ignore_interrupt=should_stop is not None) as pool:
        futures = [pool.submit(_plan_worker, rt.settings, window, ids) for ids in ranges]
        pending: set[Future[PlanReport]] = set(futures)
        while should_stop is not None and pending:
            _, pending = wait(pending, timeout=STOP_POLL_SECONDS)
            if pending and should_stop():
                terminate(pool)
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
