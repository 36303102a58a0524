"""`followup run --dry-run`: everything that would go out on a day, decided as the dispatcher
decides and composed as it composes. Reads the database, writes nothing to it, sends nothing.

The dispatcher is simulated from `now` (or from early enough for a touch that waits to reach
the day) to the end of the day: each touch of the queue is decided (followup.domain.decision)
at the instant the dispatcher takes it up, in its claim order; a touch sent back to wait is
taken up again when its window opens; each message moves its client's latest design on. What
happens on the day is listed, each touch in one list: `messages` (it goes out, at `send_at`),
`waiting` (it goes out on a later day: outside its send window, or deferred by the frequency
cap; `until` says when) or `skipped` (it does not go out: `status` and `reason` are what the
ledger will hold, or holds already for a touch settled before).

Not simulated: the hourly and daily sending limits, a crash's expired leases, and what an SMTP
server answers (every message is taken as accepted).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from followup.delivery.batch import NO_STATS, compose_error_status, failure_reason
from followup.domain.clients import Recipient
from followup.domain.decision import Send, Skip, Wait, decide
from followup.domain.statuses import TouchStatus
from followup.domain.touches import touch_key
from followup.dryrun.candidates import Candidate, Day, candidates
from followup.messages import compose
from followup.runtime import Runtime
from followup.storage.engine import reader
from followup.storage.queries import SendFacts, recipient_facts
from followup.storage.schema import check_ready

#: Times a touch may be sent back to wait before it is listed as waiting: more is a loop.
MAX_WAITS = 16
#: The dispatcher's clock moves on between two messages.
_TICK = timedelta(microseconds=1)


@dataclass
class DryRunEntry:
    client: str
    to: str
    campaign: str
    occasion: str
    occurrence: date
    template: str
    #: When it goes out (a message), is decided (skipped, waiting), or was due (settled).
    send_at: datetime
    timezone: str
    locale: str | None = None
    variant: str | None = None
    tier: str | None = None
    subject: str | None = None
    file: str | None = None
    reason: str | None = None
    #: What the ledger holds for the touch after that day: sent, skipped, held, failed (or, for a
    #: touch settled before, its status), planned or retry while it waits.
    status: str = TouchStatus.SENT.value
    #: A waiting touch: when it goes out.
    until: datetime | None = None
    message: compose.Composed | None = None
    #: The client's columns inferred from the country rather than given (timezone, locale).
    inferred: list[str] = field(default_factory=list)


@dataclass
class DryRun:
    on: date
    messages: list[DryRunEntry] = field(default_factory=list)
    waiting: list[DryRunEntry] = field(default_factory=list)
    skipped: list[DryRunEntry] = field(default_factory=list)


def dry_run(rt: Runtime, on: date, now: datetime | None = None) -> DryRun:
    """Everything that would go out on `on` (each client's local date), decided and composed
    with the same code as a real run, as of `now` (the ledger as it is then)."""
    check_ready(rt.engine)
    day = Day.of(rt, on, now)
    found = candidates(rt, day)
    with reader(rt.engine) as conn:
        facts = recipient_facts(conn, [(c.touch.client_id, c.touch.purchase_id) for c in found])
    result = DryRun(on=on)
    dispatcher = _Dispatcher(rt, day, facts, result)
    queue: list[tuple[datetime, tuple[datetime, int], int]] = []
    for number, candidate in enumerate(found):
        recipient = facts.recipients.get(number)
        if recipient is None:
            continue  # a client no longer in the database: nobody to show
        if candidate.waiting:
            queue.append((candidate.at, candidate.order, number))
        else:
            result_list(result, candidate, recipient)
    heapq.heapify(queue)
    waits: dict[int, int] = {}
    while queue:
        at, order, number = heapq.heappop(queue)
        until = dispatcher.take_up(found[number], facts.recipients[number], at)
        if until is not None and waits.get(number, 0) < MAX_WAITS:
            waits[number] = waits.get(number, 0) + 1
            heapq.heappush(queue, (until, (until, order[1]), number))
    for entries in (result.messages, result.waiting, result.skipped):
        entries.sort(key=lambda e: (e.send_at, e.client, e.campaign))
    return result


def result_list(result: DryRun, candidate: Candidate, recipient: Recipient) -> None:
    """A touch settled before the day or by the planner: listed as it is."""
    entry = _entry(candidate, recipient, candidate.at)
    entry.status, entry.reason = candidate.status, candidate.reason
    if candidate.deferred_to is not None:
        entry.status, entry.until = TouchStatus.PLANNED.value, candidate.deferred_to
        result.waiting.append(entry)
    else:
        result.skipped.append(entry)


def _entry(candidate: Candidate, recipient: Recipient, at: datetime) -> DryRunEntry:
    touch = candidate.touch
    return DryRunEntry(
        client=recipient.client_external_id,
        to=recipient.email,
        campaign=touch.campaign,
        occasion=touch.occasion or touch.campaign,
        occurrence=touch.occurrence,
        template=touch.template,
        send_at=at,
        timezone=recipient.timezone,
        inferred=[column for column in recipient.inferred.split(",") if column],
    )


class _Dispatcher:
    """The dispatcher as the dry-run plays it: decisions at the instants it would make them,
    each client's latest design moving on with each message."""

    def __init__(self, rt: Runtime, day: Day, facts: SendFacts, result: DryRun) -> None:
        self.rt, self.day, self.facts, self.result = rt, day, facts, result
        self.key = compose.signing_key(rt.settings, sending=False)
        #: The instant of the latest message: each message's comes after it, as the
        #: dispatcher's clock does (the latest design is the one of the latest message).
        self.clock: datetime | None = None

    def take_up(self, candidate: Candidate, recipient: Recipient, at: datetime) -> datetime | None:
        """Decide on the touch at `at`, and list it if that happens on the day. Returns when
        it is taken up again (it waits until then, on or before the day), else None."""
        touch = candidate.touch
        decision = decide(
            touch,
            recipient,
            suppression=self.facts.suppression(recipient.email),
            stats=self.facts.stats.get(touch.client_id, NO_STATS),
            sent=self.facts.sent.get(touch.client_id, ()),
            designs=compose.designs(self.rt.templates, touch.template, touch.variant),
            rules=self.rt.rules,
            now=at,
        )
        on_day = self.day.local(at, recipient.timezone) == self.day.on
        if isinstance(decision, Wait):
            if self.day.local(decision.until, recipient.timezone) <= self.day.on:
                return decision.until
            if on_day:
                entry = _entry(candidate, recipient, at)
                entry.until, entry.reason = decision.until, decision.reason
                # The claim counts an attempt; the wait gives it back: planned if none before.
                entry.status = (
                    TouchStatus.PLANNED if touch.attempts == 0 else TouchStatus.RETRY
                ).value
                self.result.waiting.append(entry)
            return None
        if isinstance(decision, Skip):
            if on_day:
                entry = _entry(candidate, recipient, at)
                entry.status, entry.reason = TouchStatus.SKIPPED.value, decision.reason
                self.result.skipped.append(entry)
            return None
        if on_day:
            self._message(candidate, recipient, decision, at)
        elif self.day.local(at, recipient.timezone) < self.day.on:
            self._sent_before(candidate, decision, at)
        return None

    def _message(
        self, candidate: Candidate, recipient: Recipient, decision: Send, at: datetime
    ) -> None:
        touch = candidate.touch
        entry = _entry(candidate, recipient, at)
        try:
            message = compose.compose(
                self.rt.settings,
                self.rt.templates,
                recipient,
                campaign=touch.campaign,
                template=touch.template,
                occurrence=touch.occurrence,
                send_at=max(touch.due_at, at),
                key=self.key,
                occasion=decision.occasion,
                variant=decision.variant,
                previous_variant=decision.previous_variant,
                client=decision.client,
            )
        except Exception as exc:
            # As in a real run: this touch is held (a template error) or fails, with the
            # reason; the others still go out.
            entry.status, entry.reason = compose_error_status(exc).value, failure_reason(exc)
            self.result.skipped.append(entry)
            return
        self._seen(touch.client_id, touch.id, message.variant, at)
        entry.reason = candidate.reason
        entry.tier = str(decision.client["tier"])
        entry.locale, entry.variant = message.locale, message.variant
        entry.subject, entry.message = message.subject, message
        self.result.messages.append(entry)

    def _sent_before(self, candidate: Candidate, decision: Send, at: datetime) -> None:
        """A message before the day: not composed, but its design is the client's latest."""
        touch = candidate.touch
        variant = decision.variant
        if variant is None:
            tier = str(decision.client["tier"])
            key = touch_key(touch.client_id, touch.campaign, touch.occurrence)
            try:
                variant = compose.design(
                    self.rt.templates, touch.template, tier, key, decision.previous_variant
                )
            except Exception:
                return  # it fails on its template: nothing goes out
        self._seen(touch.client_id, touch.id, variant, at)

    def _seen(self, client_id: int, touch_id: int, variant: str, at: datetime) -> None:
        self.clock = at if self.clock is None else max(at, self.clock + _TICK)
        self.facts.sent.setdefault(client_id, []).append((self.clock, touch_id, variant))
