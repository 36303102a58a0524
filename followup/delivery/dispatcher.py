"""The dispatcher: claims due touches with a lease and works through each batch with one
worker per pooled SMTP connection (followup.delivery.batch), until nothing is due."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time as monotonic_time
from collections.abc import Callable
from datetime import datetime, timedelta

from followup.config.settings import Settings
from followup.delivery.batch import Batch
from followup.delivery.breaker import Breaker, BreakerState, Change
from followup.delivery.capture import CaptureSink
from followup.delivery.recorder import Recorder, record_size
from followup.delivery.report import DispatchReport, DispatchStopped, Hooks
from followup.delivery.smtp import SmtpMailer
from followup.domain.outcomes import Delivery
from followup.logs import log_event
from followup.messages import compose
from followup.processes import Interrupt, freeze_startup_heap, process_pool
from followup.runtime import Clock, Runtime, owner_id, record_run
from followup.storage.engine import keeping_writer, reader, writing
from followup.storage.queries import send_facts
from followup.storage.schema import check_ready

log = logging.getLogger("followup")


def dispatch_in_processes(
    rt: Runtime,
    clock: Clock,
    processes: int,
    *,
    resend_uncertain: bool = False,
    interrupt: Interrupt | None = None,
    breaker: Breaker | None = None,
) -> DispatchReport:
    """`dispatch` in `processes` processes at once, each with its own database connection and
    `[smtp] pool_size` connections: rendering is CPU work that one Python process does on one
    core. The processes share the queue through the ledger's leases, as several daemons do.

    With an entered `interrupt`, SIGTERM and SIGINT stop the run as they stop the daemon
    (`dispatch_until_stopped`); the worker processes get SIGTERM from this one. `breaker`,
    kept by a caller that dispatches again and again (`followup send`), holds its backoff
    across runs in one process; worker processes each start with their own, closed."""
    freeze_startup_heap()
    settings, processes = process_settings(rt.settings, processes)
    if processes <= 1:
        if interrupt is None:
            return asyncio.run(
                dispatch(rt, clock, resend_uncertain=resend_uncertain, breaker=breaker)
            )
        return asyncio.run(
            dispatch_until_stopped(
                rt, clock, interrupt, resend_uncertain=resend_uncertain, breaker=breaker
            )
        )
    report = DispatchReport()
    stoppable = interrupt is not None
    with process_pool(
        rt.engine, processes, ignore_interrupt=stoppable, interrupt=interrupt
    ) as pool:
        futures = [
            pool.submit(_dispatch_worker, settings, clock, resend_uncertain and n == 0, stoppable)
            for n in range(processes)
        ]
        for future in futures:
            try:
                report.add(future.result())
            except DispatchStopped as stop:
                # The other processes stop too (the same server refuses them): their counts.
                report.add(stop.report)
    if report.stopped is not None:
        raise DispatchStopped(report)
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


def _dispatch_worker(
    settings: Settings, clock: Clock, resend_uncertain: bool, stoppable: bool
) -> DispatchReport:
    rt = Runtime.open(settings)
    freeze_startup_heap()  # a spawned worker (a forked one has it from its parent)
    try:
        if not stoppable:
            return asyncio.run(dispatch(rt, clock, resend_uncertain=resend_uncertain))
        # SIGINT is ignored here (a Ctrl-C reaches the whole process group): the parent
        # passes its stop on.
        with Interrupt.of_worker() as interrupt:
            return asyncio.run(
                dispatch_until_stopped(rt, clock, interrupt, resend_uncertain=resend_uncertain)
            )
    finally:
        rt.engine.dispose()


async def dispatch_until_stopped(
    rt: Runtime,
    clock: Clock,
    interrupt: Interrupt,
    *,
    resend_uncertain: bool = False,
    breaker: Breaker | None = None,
) -> DispatchReport:
    """`dispatch`, stopped by a signal as the daemon is: no more touches are claimed, the
    sends in flight finish up to [schedule] shutdown_grace_seconds (a second signal skips the
    wait), then the run is cancelled; what this run still holds is settled at once (released
    if never handed to the server, else uncertain) instead of waiting for its lease."""
    owner = owner_id()
    report = DispatchReport()
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    grace = rt.settings.schedule.shutdown_grace_seconds

    def stopping() -> bool:
        if interrupt.requested:
            report.signal = interrupt.name  # in the run's record too
        return interrupt.requested

    with interrupt.waking(signalled):
        task = asyncio.create_task(
            dispatch(
                rt,
                clock,
                owner=owner,
                resend_uncertain=resend_uncertain,
                should_stop=stopping,
                report=report,
                breaker=breaker,
            )
        )
        deadline: float | None = None
        while not task.done():
            if interrupt.requested and deadline is None:
                log_event("dispatch.stopping", signal=interrupt.name)
                deadline = loop.time() + grace
            if deadline is not None and (interrupt.hurried or loop.time() >= deadline):
                log_event("dispatch.cancelling", grace_seconds=grace)
                task.cancel()
                break
            signalled.clear()
            waiter = asyncio.ensure_future(signalled.wait())
            timeout = None if deadline is None else max(deadline - loop.time(), 0)
            await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            # Cancelled after the grace period: `dispatch` settled and recorded what it held.
            await task
    stopping()
    return report


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
    on_report: Callable[[DispatchReport], None] | None = None,
    breaker: Breaker | None = None,
    report: DispatchReport | None = None,
) -> DispatchReport:
    """Send everything due now, once: claim, compose, send, record, until nothing is due.

    With `resend_uncertain`, touches whose fate was unknown after a crash are sent again
    first: the operator's decision, never the default. When `should_stop` answers True, no
    more touches are claimed nor handed to the mailer: the sends in flight finish, the rest
    of the batch goes back to the queue; cancelled then, the run settles what it holds at once
    (released, or uncertain if handed to the server) and records itself before it ends.
    `on_delivery` sees each SMTP outcome and how many seconds the transaction took (metrics);
    `on_report` the run's report (metrics), also when it stopped.
    `breaker` is the SMTP server's circuit breaker (a caller that runs often keeps its own,
    so that its backoff holds across runs; default: a new one, closed); while it is open no
    touch is claimed, and the run ends with `report.breaker_until`. The counts go to
    `report` (default: a new one) as they are written.

    When the SMTP server refuses this client's setup (relay, login, TLS, sender, policy:
    followup.delivery.replies), the sends in flight finish, the touches not sent go back to
    the queue (released: no attempt spent, nobody bounced), and DispatchStopped is raised
    with the report, once the run's log event and record are written."""
    check_ready(rt.engine)
    # A template saved since the last run is rendered from this run on (the daemon).
    rt.reload_templates()
    started = monotonic_time.monotonic()
    started_at = clock()
    settings = rt.settings
    key = compose.signing_key(settings, sending=True)
    owner = owner or owner_id()
    rng = rng or random.Random()
    report = report if report is not None else DispatchReport()
    lease = timedelta(seconds=settings.database.lease_seconds)
    _before_claims(rt, clock, owner, report, resend_uncertain)
    capture = settings.delivery.mode == "capture"
    if breaker is None:
        breaker = Breaker.for_delivery(settings)
    stop = should_stop or (lambda: False)
    hooks = Hooks(
        lambda: stop() or breaker.state(clock()) is BreakerState.OPEN,
        _watching(breaker, clock, on_delivery),
    )
    loop = _Loop(rt, clock, owner, lease, key, report, limit, rng, hooks, breaker)
    try:
        if capture:
            directory = settings.path(settings.delivery.capture_dir)
            report.capture_dir = directory
            async with CaptureSink(directory) as sink:
                smtp = settings.smtp.model_copy(update={"security": "none", "username": ""})
                await loop.run(SmtpMailer.pool(smtp, host="127.0.0.1", port=sink.port))
        else:
            await loop.run(SmtpMailer.pool(settings.smtp, settings.smtp_password))
    except asyncio.CancelledError:
        if not stop():
            raise
        # Cancelled after a stop's grace period: settle now what the lease would later.
        _settle(rt, clock, owner, report)
        _finish(rt, report, started_at, started, owner)
        if on_report is not None:
            on_report(report)
        raise
    _finish(rt, report, started_at, started, owner)
    if on_report is not None:
        on_report(report)
    if report.stopped is not None:
        raise DispatchStopped(report)
    return report


def _before_claims(
    rt: Runtime,
    clock: Callable[[], datetime],
    owner: str,
    report: DispatchReport,
    resend_uncertain: bool,
) -> None:
    """Expired leases settled, uncertain touches requeued when asked, the too late skipped."""
    with rt.engine.begin() as conn:
        report.uncertain += rt.ledger.expire_leases(conn, clock())
        if resend_uncertain:
            report.requeued = rt.ledger.requeue_uncertain(conn, clock(), owner)
        report.too_late = rt.ledger.skip_too_late(conn, clock())


def _settle(rt: Runtime, clock: Callable[[], datetime], owner: str, report: DispatchReport) -> None:
    """What a cancelled run still holds: back to the queue if never handed to the mailer,
    else uncertain (as its lease would settle it later)."""
    with rt.engine.begin() as conn:
        released, uncertain = rt.ledger.settle_owner(conn, owner, clock())
    report.released += released
    report.uncertain += uncertain
    log_event("dispatch.settled", released=released, uncertain=uncertain)


def _watching(
    breaker: Breaker,
    clock: Callable[[], datetime],
    on_delivery: Callable[[Delivery, float], None] | None,
) -> Callable[[Delivery, float], None]:
    """`on_delivery`, with each outcome shown to the breaker first."""

    def seen(delivery: Delivery, seconds: float) -> None:
        change = breaker.record(delivery, clock())
        if change is not None:
            log_breaker(breaker, change)
        if on_delivery is not None:
            on_delivery(delivery, seconds)

    return seen


def log_breaker(breaker: Breaker, change: Change) -> None:
    """smtp.breaker_open (a warning, with when it reopens and why) or smtp.breaker_closed."""
    if change.state is BreakerState.CLOSED:
        log_event("smtp.breaker_closed", server=breaker.server)
        return
    assert change.until is not None
    log.warning(
        "smtp.breaker_open",
        extra={
            "event": "smtp.breaker_open",
            "fields": {
                "server": breaker.server,
                "until": change.until.isoformat(),
                "trips": breaker.trips,
                "reason": change.reason,
            },
        },
    )


def _finish(
    rt: Runtime, report: DispatchReport, started_at: datetime, started: float, owner: str
) -> None:
    """The run's counts in its log event and its run record (the same as the CLI's)."""
    counts = report.counts()
    why: dict[str, str] = {}
    if report.breaker_until is not None:
        why["breaker_until"] = report.breaker_until.isoformat()
    if report.signal is not None:
        why["signal"] = report.signal
    if report.stopped is not None:
        # At info: the error itself reaches the operator as DispatchStopped (the command's
        # error line, the daemon's dispatch.error).
        log_event(
            "dispatch.stopped", **counts, **why, released=report.released, reason=report.stopped
        )
    elif any(counts.values()) or why:
        log_event("dispatch.done", **counts, **why)
    else:
        # The daemon dispatches every few seconds: an idle run is not news at INFO.
        log.debug("dispatch.done", extra={"event": "dispatch.done", "fields": counts})
    detail = report.detail() + "".join(f" {name}={value}" for name, value in why.items())
    if report.stopped is not None:
        outcome = "stopped"
    elif report.breaker_until is not None:
        outcome = "breaker_open"
    else:
        outcome = "ok"
    record_run(rt, "dispatch", started_at, started, detail, owner=owner, outcome=outcome)


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


class _Loop:
    """Claim batches and work through each with one worker per pooled connection, until
    nothing is due, the limit is reached, the run must stop or the breaker is open. While the
    breaker is half-open, the batch is one touch on one connection: the probe."""

    def __init__(
        self,
        rt: Runtime,
        clock: Callable[[], datetime],
        owner: str,
        lease: timedelta,
        key: str,
        report: DispatchReport,
        limit: int | None,
        rng: random.Random,
        hooks: Hooks,
        breaker: Breaker,
    ) -> None:
        self.rt, self.clock, self.owner, self.lease, self.key = rt, clock, owner, lease, key
        self.report, self.limit, self.rng, self.hooks = report, limit, rng, hooks
        self.breaker = breaker
        self.done = 0

    async def run(self, mailers: list[SmtpMailer]) -> None:
        try:
            async with keeping_writer(self.rt.engine):
                while not self.hooks.should_stop():
                    size = self._size()
                    if size is None or size <= 0:
                        return
                    probe = self.breaker.state(self.clock()) is BreakerState.HALF_OPEN
                    if not await self._batch(
                        mailers[:1] if probe else mailers, 1 if probe else size
                    ):
                        return
        finally:
            if self.breaker.state(self.clock()) is BreakerState.OPEN:
                self.report.breaker_until = self.breaker.until
            for mailer in mailers:
                await mailer.close()

    def _size(self) -> int | None:
        """How many touches the next batch may claim: None when the hourly or daily limit is
        reached."""
        size = self.rt.settings.delivery.batch_size
        if self.limit is not None:
            size = min(size, self.limit - self.done)
        allowed = _allowance(self.rt, self.clock())
        if allowed is not None:
            if allowed <= 0:
                self.report.rate_limited = True
                log_event("dispatch.rate_limited")
                return None
            size = min(size, allowed)
        return size

    async def _batch(self, mailers: list[SmtpMailer], size: int) -> bool:
        """Claim one batch and send it: False when nothing was due."""
        rt, clock, owner, report = self.rt, self.clock, self.owner, self.report
        async with writing(rt.engine) as conn:
            claimed = rt.ledger.claim_due(conn, owner, clock(), self.lease, size)
        if not claimed:
            return False
        with reader(rt.engine) as conn:
            facts = send_facts(conn, claimed)
        recorder = Recorder(
            rt, report, self.rng, size=record_size(rt.settings.delivery.group_size, mailers)
        )
        batch = Batch(
            rt,
            claimed,
            mailers,
            clock,
            owner,
            self.lease,
            self.key,
            report,
            self.hooks,
            facts,
            recorder,
        )
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for index in range(len(mailers)):
                        group.create_task(batch.worker(index))
            except BaseExceptionGroup as group_error:
                # One cause is enough for the operator (e.g. an untrusted certificate).
                raise group_error.exceptions[0] from None
            self.done += len(claimed)
            if batch.stopped is not None:
                report.stopped = str(batch.stopped)
                return False
        finally:
            try:
                await recorder.flush()
            except Exception:
                # Left "sending" with their Message-IDs: uncertain when the lease ends,
                # never resent on their own.
                log.exception("recording failed", extra={"event": "dispatch.record_error"})
            unsent = batch.unsent()
            if unsent:
                # Stopped early (an error, an interrupt, the breaker): the touches never given
                # to the mailer go back to the queue now instead of turning uncertain later.
                async with writing(rt.engine) as conn:
                    report.released += rt.ledger.release(conn, unsent, owner, clock())
        return True
