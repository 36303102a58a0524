"""One claimed batch, sent by one worker per pooled connection: each connection sends from
its own queue of touches handed to the mailer; queues are refilled together. Before a touch is
handed off, the send-time decision (followup.domain.decision) says whether it goes out now,
waits or is skipped, and the composer writes its message."""

from __future__ import annotations

import asyncio
import logging
import threading
import time as monotonic_time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from followup.delivery.recorder import Recorder
from followup.delivery.report import DispatchReport, Hooks
from followup.delivery.smtp import SmtpMailer, SmtpSetupError
from followup.domain.clients import ClientStats
from followup.domain.decision import Skip, Wait, decide
from followup.domain.statuses import TouchStatus
from followup.domain.touches import DueTouch
from followup.errors import RenderError
from followup.logs import log_event
from followup.messages import compose
from followup.runtime import Runtime
from followup.storage.ledger import HandOff, Ledger
from followup.storage.queries import SendFacts

log = logging.getLogger("followup")

#: A touch and its message, ready for the mailer.
Prepared = tuple[DueTouch, compose.Composed]
NO_STATS = ClientStats()


class Batch:
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
        hooks: Hooks,
        facts: SendFacts,
        recorder: Recorder,
    ) -> None:
        self.rt, self.mailers, self.clock = rt, mailers, clock
        self.owner, self.lease, self.key = owner, lease, key
        self.report, self.hooks, self.facts, self.recorder = report, hooks, facts, recorder
        self.pending = deque(claimed)
        self.queues: list[deque[Prepared]] = [deque() for _ in mailers]
        #: When each queue's leases are renewed (half the lease after its oldest hand-off).
        self.renew_at: list[datetime | None] = [None for _ in mailers]
        self.working = set(range(len(mailers)))
        self.refilling = asyncio.Lock()
        #: Why the batch stopped: the server refuses this client's setup (a relay, login,
        #: sender or policy refusal). The other connections finish the message they are
        #: sending, and what was not sent goes back to the queue (`unsent`).
        self.stopped: SmtpSetupError | None = None

    def unsent(self) -> list[int]:
        """The touches never given to the mailer: not composed yet, or handed off and queued."""
        queued = [touch.id for queue in self.queues for touch, _ in queue]
        return [*self.pending, *queued]

    async def worker(self, index: int) -> None:
        """Send from connection `index`'s queue, refilling it (and the others) when dry."""
        queue, mailer = self.queues[index], self.mailers[index]
        sender = self.rt.settings.sender.envelope_from
        try:
            while not self.hooks.should_stop() and self.stopped is None:
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
                except SmtpSetupError as exc:
                    # Always before the message data: this touch goes back, and the batch
                    # stops (every message would be refused the same way).
                    if not mailer.data_written:
                        queue.appendleft((touch, message))
                    self.stopped = self.stopped or exc
                    return
                except BaseException:
                    # A bug, or this task cancelled because another connection failed or
                    # the run stops: if none of the message data was written, the server
                    # cannot have it, and it goes back.
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
            if (
                self.queues[index]
                or not self.pending
                or self.hooks.should_stop()
                or self.stopped is not None
            ):
                return  # filled by another worker's refill meanwhile, or nothing left to do
            size = self.rt.settings.delivery.group_size
            # With groups of 1 (the most cautious setting) each touch is handed off just
            # before it is sent: no other connection is topped up while it sends.
            others = sorted(self.working - {index}) if size > 1 else []
            # A fair share when little is left: every connection gets some.
            share = -(-len(self.pending) // (len(others) + 1))
            wanted = [(i, min(size - len(self.queues[i]), share)) for i in (index, *others)]
            prepared = await self._compose(wanted)
            try:
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

    async def _compose(self, wanted: list[tuple[int, int]]) -> list[tuple[int, Prepared]]:
        """Decide on and compose the next touches of each (connection, room) in `wanted`, in
        order, in a worker thread: rendering is CPU work, and the event loop must stay free
        for /healthz, unsubscribes and signals. Returns (connection, what to send) for each
        touch not settled there. The touches are taken from `pending`; if composing fails, is
        cancelled or the run stops, the thread stops after the touch at hand, and those not
        settled go back to `pending` (and from there to the queue)."""
        order: list[tuple[int, int]] = []
        for i, room in wanted:
            for _ in range(min(room, len(self.pending))):
                order.append((i, self.pending.popleft()))
        stop = threading.Event()
        done: dict[int, Prepared | None] = {}
        # Counted here, added on the loop: the recorder counts on the loop meanwhile.
        counts = DispatchReport()

        def work() -> None:
            for _, touch_id in order:
                # A stop asked (SIGTERM) or this task cancelled: not one more message.
                if stop.is_set() or self.hooks.should_stop():
                    return
                done[touch_id] = self._prepare(touch_id, counts)

        future = asyncio.ensure_future(asyncio.to_thread(work))
        try:
            await asyncio.shield(future)
        except BaseException:
            stop.set()
            try:
                await asyncio.wait([future])
            finally:
                settled = {touch_id for touch_id, found in done.items() if found is None}
                back = [touch_id for _, touch_id in order if touch_id not in settled]
                self.pending.extendleft(reversed(back))
                self.report.add(counts)
            raise
        self.report.add(counts)
        # Those left when a stop was asked go back with the rest (released at the end).
        self.pending.extendleft(reversed([t for _, t in order if t not in done]))
        return [(i, found) for i, t in order if t in done and (found := done[t]) is not None]

    def _prepare(self, touch_id: int, counts: DispatchReport) -> Prepared | None:
        found = prepare(self.rt, touch_id, self.clock(), self.key, counts, self.facts)
        if found is not None:
            touch, message = found
            # The client's next touch in this batch must look different from this one.
            self.facts.sent.setdefault(touch.client_id, []).append(
                (self.clock(), touch.id, message.variant)
            )
        return found

    async def _hand_off(self, prepared: list[Prepared], now: datetime) -> list[Prepared]:
        return await _hand_off(prepared, self.owner, now, self.lease, self.recorder, self.rt.ledger)


async def _hand_off(
    prepared: list[Prepared],
    owner: str,
    now: datetime,
    lease: timedelta,
    recorder: Recorder,
    ledger: Ledger,
) -> list[Prepared]:
    """Mark the touches as handed to the mailer, in one transaction with the outcomes the
    recorder holds; returns those still ours (a touch whose lease ran out has been settled by
    another worker)."""
    if not prepared:
        return []
    hand_offs = [
        HandOff(touch.id, message.message_id, {"variant": message.variant})
        for touch, message in prepared
    ]
    held = await recorder.write_with(
        lambda conn: ledger.hand_off_many(conn, hand_offs, owner, now, lease)
    )
    for (touch, _), ours in zip(prepared, held, strict=True):
        if not ours:
            log_event("touch.lease_lost", touch=touch.id, campaign=touch.campaign)
    return [item for item, ours in zip(prepared, held, strict=True) if ours]


def prepare(
    rt: Runtime, touch_id: int, now: datetime, key: str, report: DispatchReport, facts: SendFacts
) -> Prepared | None:
    """Decide on one claimed touch, then compose it. Returns what to send, or None when the
    touch was settled here (skipped, sent back to wait for its send window, held on its
    template, or failed) and nothing is to be sent. Runs in a worker thread (its
    transactions are the plain `engine.begin()`)."""
    touch = facts.touches[touch_id]
    recipient = facts.recipients.get(touch_id)
    decision = decide(
        touch,
        recipient,
        suppression=None if recipient is None else facts.suppression(recipient.email),
        stats=facts.stats.get(touch.client_id, NO_STATS),
        sent=facts.sent.get(touch.client_id, ()),
        designs=compose.designs(rt.templates, touch.template, touch.variant),
        rules=rt.rules,
        now=now,
    )
    if isinstance(decision, Skip):
        with rt.engine.begin() as conn:
            rt.ledger.settle(conn, touch_id, TouchStatus.SKIPPED, decision.reason, now)
        report.skipped += 1
        log_event("touch.skipped", touch=touch_id, campaign=touch.campaign, reason=decision.reason)
        return None
    if isinstance(decision, Wait):
        # Caught up after downtime at an hour the client should not get mail: the campaign's
        # next send time (still within the touch's lateness).
        with rt.engine.begin() as conn:
            rt.ledger.wait(conn, touch_id, touch.attempts, decision.until, now)
        log_event("touch.waiting", touch=touch_id, campaign=touch.campaign)
        return None
    assert recipient is not None
    try:
        message = compose.compose(
            rt.settings,
            rt.templates,
            recipient,
            campaign=touch.campaign,
            template=touch.template,
            occurrence=touch.occurrence,
            send_at=max(touch.due_at, now),
            key=key,
            occasion=decision.occasion,
            # A retry or a resent uncertain touch keeps its design (and its Message-ID).
            variant=decision.variant,
            previous_variant=decision.previous_variant,
            client=decision.client,
        )
    except Exception as exc:
        reason = failure_reason(exc)
        if isinstance(exc, RenderError):
            # A template error (RenderError names its file and line) holds the touch: it
            # waits, and goes out once the template is fixed (within its lateness).
            delay = timedelta(seconds=rt.settings.delivery.hold_seconds)
            with rt.engine.begin() as conn:
                rt.ledger.hold(conn, touch, reason, now, delay)
            report.held += 1
            log_event(
                "touch.held",
                touch=touch_id,
                campaign=touch.campaign,
                template=touch.template,
                file=exc.file,
                line=exc.line,
            )
            return None
        # A bug while composing: this touch fails with the reason, the rest of the run goes
        # on.
        log.exception("compose failed", extra={"event": "touch.compose_error"})
        with rt.engine.begin() as conn:
            rt.ledger.settle(conn, touch_id, TouchStatus.FAILED, reason, now)
        report.failed += 1
        log_event("touch.failed", touch=touch_id, campaign=touch.campaign, reason="compose")
        return None
    return touch, message


def compose_error_status(exc: Exception) -> TouchStatus:
    """A template error holds the touch until the file is fixed; a bug fails it."""
    return TouchStatus.HELD if isinstance(exc, RenderError) else TouchStatus.FAILED


def failure_reason(exc: Exception) -> str:
    """What the ledger records for a message that could not be composed."""
    if isinstance(exc, RenderError):
        return f"template error: {exc}"
    return f"internal error while composing: {type(exc).__name__}: {exc}"
