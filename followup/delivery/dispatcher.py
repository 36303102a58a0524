"""The dispatcher: claims due touches with a lease and works through each batch with one
worker per pooled SMTP connection (followup.delivery.batch), until nothing is due."""

from __future__ import annotations

import asyncio
import logging
import random
import time as monotonic_time
from collections.abc import Callable
from datetime import datetime, timedelta

from followup.config.settings import Settings
from followup.delivery.batch import Batch
from followup.delivery.capture import CaptureSink
from followup.delivery.recorder import Recorder, record_size
from followup.delivery.report import DispatchReport, Hooks
from followup.delivery.smtp import SmtpMailer
from followup.domain.outcomes import Delivery
from followup.logs import log_event
from followup.messages import compose
from followup.processes import freeze_startup_heap, process_pool
from followup.runtime import Clock, Runtime, owner_id, record_run
from followup.storage.engine import keeping_writer, reader, writing
from followup.storage.queries import send_facts
from followup.storage.schema import check_ready

log = logging.getLogger("followup")


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
    with process_pool(rt.engine, processes) as pool:
        futures = [
            pool.submit(_dispatch_worker, settings, clock, resend_uncertain and n == 0)
            for n in range(processes)
        ]
        for future in futures:
            report.add(future.result())
    return report


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
    check_ready(rt.engine)
    # A template saved since the last run is rendered from this run on (the daemon).
    rt.reload_templates()
    started = monotonic_time.monotonic()
    started_at = clock()
    hooks = Hooks(should_stop or (lambda: False), on_delivery)
    settings = rt.settings
    key = compose.signing_key(settings, sending=True)
    owner = owner or owner_id()
    rng = rng or random.Random()
    report = DispatchReport()
    lease = timedelta(seconds=settings.database.lease_seconds)
    with rt.engine.begin() as conn:
        report.uncertain = rt.ledger.expire_leases(conn, clock())
        if resend_uncertain:
            report.requeued = rt.ledger.requeue_uncertain(conn, clock(), owner)
        report.too_late = rt.ledger.skip_too_late(conn, clock())
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
        "held": report.held,
    }
    if any(counts.values()) or report.too_late:
        log_event("dispatch.done", **counts)
    else:
        # The daemon dispatches every few seconds: an idle run is not news at INFO.
        log.debug("dispatch.done", extra={"event": "dispatch.done", "fields": counts})
    detail = f"sent={report.sent} retry={report.retry} failed={report.failed}"
    record_run(rt, "dispatch", started_at, started, detail, owner=owner)
    return report


def _allowance(rt: Runtime, now: datetime) -> int | None:
    """How many more messages the hourly and daily limits allow now (None: no limit).
    Counted from the ledger, so the limits hold across restarts and several processes."""
    smtp = rt.settings.smtp
    limits = [(timedelta(hours=1), smtp.rate_per_hour), (timedelta(days=1), smtp.rate_per_day)]
    allowed: int | None = None
    with reader(rt.engine) as conn:
        for window, limit in limits:
            if limit <= 0:
                continue
            left = max(limit - rt.ledger.sent_since(conn, now - window), 0)
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
    hooks: Hooks,
) -> None:
    """Claim batches and work through each with one worker per pooled connection."""
    settings = rt.settings
    done = 0
    try:
        async with keeping_writer(rt.engine):
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
                async with writing(rt.engine) as conn:
                    claimed = rt.ledger.claim_due(conn, owner, clock(), lease, size)
                if not claimed:
                    return
                with reader(rt.engine) as conn:
                    facts = send_facts(conn, claimed)
                recorder = Recorder(
                    rt, report, rng, size=record_size(settings.delivery.group_size, mailers)
                )
                batch = Batch(
                    rt, claimed, mailers, clock, owner, lease, key, report, hooks, facts, recorder
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
                        async with writing(rt.engine) as conn:
                            rt.ledger.release(conn, unsent, owner, clock())
    finally:
        for mailer in mailers:
            await mailer.close()
