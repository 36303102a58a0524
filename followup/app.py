"""The core API: plan, dispatch, dry-run. The CLI and the daemon are thin layers over these.

Data flows one way: purchases -> planner (pure) -> ledger (insert-if-absent) -> dispatcher
(claim with a lease, compose, send, record). The clock is always passed in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time as monotonic_time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Connection, Engine, Row, func, select

from followup import compose, planner, store
from followup.config import CampaignSettings, Settings
from followup.errors import DatabaseNotReady, RenderError
from followup.mailer import CaptureSink, Delivery, Outcome, SmtpMailer, SmtpSetupError
from followup.models import ClientStatus, TouchStatus
from followup.render import Templates

log = logging.getLogger("followup")


@dataclass
class Runtime:
    """Settings, database and templates of one followup installation."""

    settings: Settings
    engine: Engine
    templates: Templates

    @classmethod
    def open(cls, settings: Settings, *, create: bool = False) -> Runtime:
        url = settings.database_url
        if not create:
            path = store.sqlite_path(url)
            if path is not None and not path.exists():
                raise DatabaseNotReady(
                    f"no database at {path}; run `followup db upgrade` (or `followup demo`)"
                )
        engine = store.open_engine(url, create_dir=create)
        templates = Templates(settings.path(settings.templates_dir), settings.sender.default_locale)
        return cls(settings, engine, templates)

    def campaigns(self) -> list[planner.AfterPurchase]:
        return [after_purchase(name, c) for name, c in self.settings.campaigns.items() if c.enabled]


def after_purchase(name: str, settings: CampaignSettings) -> planner.AfterPurchase:
    return planner.AfterPurchase(
        name=name,
        template=settings.template,
        delay_days=settings.delay_days,
        send_time=settings.send_time,
        lateness=timedelta(hours=settings.lateness_hours),
    )


def log_event(event: str, **fields: object) -> None:
    """One event name per line plus fields; never a client's address or name."""
    log.info(event, extra={"event": event, "fields": fields})


# ----------------------------------------------------------------------------- planning


def _purchase_facts(
    conn: Connection, start: datetime, end: datetime, chunk: int = 2000
) -> Iterator[planner.PurchaseFact]:
    p, c = store.purchases, store.clients
    query = (
        select(p.c.id, p.c.client_id, p.c.purchased_at, p.c.status, c.c.timezone)
        .join(c, c.c.id == p.c.client_id)
        .where(p.c.purchased_at >= start, p.c.purchased_at <= end, p.c.status == "paid")
        .order_by(p.c.purchased_at, p.c.id)
        .execution_options(yield_per=chunk)
    )
    for row in conn.execute(query):
        yield planner.PurchaseFact(
            row.id, row.client_id, row.purchased_at, row.timezone, row.status
        )


@dataclass
class PlanReport:
    planned: int = 0
    skipped: int = 0
    by_campaign: dict[str, int] = field(default_factory=dict)


def plan(rt: Runtime, now: datetime, until: datetime | None = None) -> PlanReport:
    """Insert every touch due up to `until` (default: the configured horizon). Idempotent.

    Occurrences missed while followup was down and past their lateness are recorded as
    skipped "too late", from the campaign's watermark on; the first plan starts at the
    lateness limit, so importing years of history does not flood the ledger with skips.
    """
    store.check_ready(rt.engine)
    started = monotonic_time.monotonic()
    until = until or now + timedelta(days=rt.settings.schedule.plan_horizon_days)
    report = PlanReport()
    for campaign in rt.campaigns():
        with rt.engine.begin() as conn:
            watermark = store.get_watermark(conn, campaign.name)
        since = now - campaign.lateness
        if watermark is not None:
            since = min(since, watermark)
        start, end = planner.purchase_window(campaign, since, until)
        with store.reader(rt.engine) as conn_r:
            facts = _purchase_facts(conn_r, start, end)
            touches = planner.plan_after_purchase(
                campaign, facts, since=since, until=until, now=now
            )
            created: dict[str, int] = {}
            for batch in store.chunks(touches, store.CHUNK):
                with rt.engine.begin() as conn:
                    store.insert_touches(conn, batch, now, created)
            report.planned += created.get(TouchStatus.PLANNED.value, 0)
            report.skipped += created.get(TouchStatus.SKIPPED.value, 0)
            report.by_campaign[campaign.name] = sum(created.values())
        with rt.engine.begin() as conn:
            if watermark is None or until > watermark:
                store.set_watermark(conn, campaign.name, until)
    log_event("plan.done", planned=report.planned, skipped=report.skipped)
    record_run(rt, "plan", now, started, f"planned={report.planned} skipped={report.skipped}")
    return report


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
    message_ids: list[str] = field(default_factory=list)
    capture_dir: Path | None = None


def _touch_row(conn: Connection, touch_id: int) -> Any:
    t = store.touches
    row = conn.execute(
        select(
            t.c.id,
            t.c.client_id,
            t.c.campaign,
            t.c.occurrence,
            t.c.template,
            t.c.due_at,
            t.c.purchase_id,
            t.c.attempts,
            t.c.not_after,
        ).where(t.c.id == touch_id)
    ).one()
    return row


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
    t = store.touches
    with store.reader(rt.engine) as conn:
        for window, limit in limits:
            if limit <= 0:
                continue
            sent = conn.execute(
                select(func.count()).where(
                    t.c.status == TouchStatus.SENT.value, t.c.updated_at >= now - window
                )
            ).scalar_one()
            left = max(limit - int(sent), 0)
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
            with rt.engine.begin() as conn:
                claimed = store.claim_due(conn, owner, clock(), lease, size)
            if not claimed:
                return
            pending = deque(claimed)
            handed: set[int] = set()

            async def worker(
                mailer: SmtpMailer, pending: deque[int] = pending, handed: set[int] = handed
            ) -> None:
                while pending and not hooks.should_stop():
                    touch_id = pending.popleft()
                    try:
                        await _deliver_one(
                            rt,
                            touch_id,
                            clock,
                            owner,
                            lease,
                            key,
                            mailer,
                            report,
                            rng,
                            handed,
                            hooks,
                        )
                    except SmtpSetupError:
                        # Raised before any message data was sent: safe to give back.
                        pending.appendleft(touch_id)
                        raise
                    except BaseException:
                        if touch_id not in handed:
                            pending.appendleft(touch_id)
                        raise

            try:
                try:
                    async with asyncio.TaskGroup() as group:
                        for mailer in mailers:
                            group.create_task(worker(mailer))
                except BaseExceptionGroup as group_error:
                    # One cause is enough for the operator (e.g. an untrusted certificate).
                    raise group_error.exceptions[0] from None
                done += len(claimed)
            finally:
                if pending:
                    # Stopped early (an error, an interrupt): the touches never handed to the
                    # mailer go back to the queue now instead of turning uncertain later.
                    with rt.engine.begin() as conn:
                        store.release(conn, list(pending), owner, clock())
    finally:
        for mailer in mailers:
            await mailer.close()


async def _deliver_one(
    rt: Runtime,
    touch_id: int,
    clock: Callable[[], datetime],
    owner: str,
    lease: timedelta,
    key: str,
    mailer: SmtpMailer,
    report: DispatchReport,
    rng: random.Random,
    handed: set[int],
    hooks: _Hooks,
) -> None:
    """Prepare, hand off, send and record one claimed touch. Adds the touch to `handed` once
    it belongs to the mailer: before that, an exception leaves it safe to release."""
    prepared = _prepare(rt, touch_id, clock, key, report)
    if prepared is None:
        return
    touch, message = prepared
    with rt.engine.begin() as conn:
        held = store.hand_off(conn, touch.id, owner, clock(), lease, message.message_id)
    if not held:
        # Our lease ran out and another worker has settled this touch.
        log_event("touch.lease_lost", touch=touch.id, campaign=touch.campaign)
        return
    handed.add(touch.id)
    began = monotonic_time.monotonic()
    delivery = await mailer.send(rt.settings.sender.envelope_from, message.to, message.mime)
    if hooks.on_delivery is not None:
        hooks.on_delivery(delivery, monotonic_time.monotonic() - began)
    # From here on the touch is the mailer's: never released, only recorded (or, after a
    # crash, found uncertain when its lease expires).
    _record(rt, touch, message, delivery, clock(), report, rng)


def _prepare(
    rt: Runtime,
    touch_id: int,
    clock: Callable[[], datetime],
    key: str,
    report: DispatchReport,
) -> tuple[Any, compose.Composed] | None:
    """Checks and renders one claimed touch. Returns what to send, or None when the touch was
    settled here (skipped, or failed on its template) and nothing is to be sent."""
    settings = rt.settings
    sending = TouchStatus.SENDING
    cleared = {"lease_owner": None, "lease_expires_at": None}
    with rt.engine.begin() as conn:
        touch = _touch_row(conn, touch_id)
        facts = compose.load_facts(conn, touch.client_id, touch.purchase_id)
        try:
            if facts is None:
                raise compose.Skip("client no longer exists")
            compose.check_audience(conn, facts)
        except compose.Skip as skip:
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


def _record(
    rt: Runtime,
    touch: Row[Any],
    message: compose.Composed,
    delivery: Delivery,
    now: datetime,
    report: DispatchReport,
    rng: random.Random,
) -> None:
    """Write the outcome of one SMTP transaction, with its history row, in one transaction."""
    reply = f"{delivery.code} {delivery.reply}".strip() if delivery.code else delivery.reply
    status, reason, extra = _outcome(
        delivery, reply, touch.attempts, touch.not_after, now, rt.settings, rng
    )
    with rt.engine.begin() as conn:
        store.transition(
            conn,
            touch.id,
            TouchStatus.SENDING,
            status,
            now,
            reply,
            reason=reason,
            lease_owner=None,
            lease_expires_at=None,
            smtp_reply=reply[:2000],
            locale=message.locale,
            variant=message.variant,
            rep_id=message.rep_id,
            message_id=message.message_id,
            **extra,
        )
        if delivery.outcome is Outcome.BOUNCED:
            store.suppress(conn, message.to, "bounced", now, detail=reply)
            conn.execute(
                store.clients.update()
                .where(store.clients.c.id == touch.client_id)
                .values(status=ClientStatus.BOUNCED.value, updated_at=now)
            )
    counter = {TouchStatus.SENT: "sent", TouchStatus.RETRY: "retry"}.get(status, "failed")
    setattr(report, counter, getattr(report, counter) + 1)
    if status is TouchStatus.SENT:
        report.message_ids.append(message.message_id)
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


def _dry_run_candidates(
    rt: Runtime, conn: Connection, on: date, now: datetime | None
) -> list[_Candidate]:
    """The ledger's touches for `on` (with their planned times, and on the current day those
    overdue but still within their lateness), then those the planner would add."""
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
            t.c.purchase_id,
            t.c.next_attempt_at,
            t.c.status,
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
        key = (row.client_id, row.campaign, row.occurrence)
        found[key] = _Candidate(
            row.client_id,
            row.campaign,
            row.occurrence,
            row.template,
            row.purchase_id,
            send_at,
            row.status,
        )
    for campaign in rt.campaigns():
        start, end = planner.purchase_window(campaign, since, until)
        facts = list(_purchase_facts(conn, start, end))
        zones = {f.client_id: f.timezone for f in facts}
        planned = planner.plan_after_purchase(campaign, facts, since=since, until=until, now=since)
        for new in planned:
            if new.due_at.astimezone(ZoneInfo(zones[new.client_id])).date() != on:
                continue
            key = (new.client_id, new.campaign, new.occurrence)
            if key in found:
                continue
            if (
                new.purchase_id is not None
                and conn.execute(
                    select(t.c.status).where(
                        t.c.campaign == new.campaign, t.c.purchase_id == new.purchase_id
                    )
                ).first()
            ):
                continue  # this purchase already has its touch (planned on another day)
            found[key] = _Candidate(
                new.client_id,
                new.campaign,
                new.occurrence,
                new.template,
                new.purchase_id,
                new.due_at,
                TouchStatus.PLANNED.value,
            )
    return list(found.values())


def dry_run(rt: Runtime, on: date, now: datetime | None = None) -> DryRun:
    """Everything that would go out on `on` (each client's local date), composed with the same
    rules as a real run. Reads the database, writes nothing to it."""
    store.check_ready(rt.engine)
    key = compose.signing_key(rt.settings, sending=False)
    result = DryRun(on=on)
    waiting = (TouchStatus.PLANNED.value, TouchStatus.RETRY.value)
    with store.reader(rt.engine) as conn:
        for candidate in _dry_run_candidates(rt, conn, on, now):
            facts = compose.load_facts(conn, candidate.client_id, candidate.purchase_id)
            if facts is None:
                continue
            entry = DryRunEntry(
                client=facts.client_external_id,
                to=facts.email,
                campaign=candidate.campaign,
                occasion=candidate.campaign,
                occurrence=candidate.occurrence,
                template=candidate.template,
                send_at=candidate.send_at,
                timezone=facts.timezone,
            )
            try:
                if candidate.status not in waiting:
                    raise compose.Skip(f"already {candidate.status}")
                compose.check_audience(conn, facts)
                message = compose.compose(
                    rt.settings,
                    rt.templates,
                    facts,
                    campaign=candidate.campaign,
                    template=candidate.template,
                    occurrence=candidate.occurrence,
                    send_at=candidate.send_at,
                    key=key,
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
