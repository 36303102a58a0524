"""The recorder: SMTP outcomes written to the ledger in groups, with the next hand-off."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection

from followup.delivery.report import DispatchReport
from followup.delivery.smtp import SmtpMailer
from followup.domain.outcomes import Delivery, Outcome, ledger_outcome
from followup.domain.statuses import TouchStatus
from followup.domain.touches import DueTouch
from followup.logs import log_event
from followup.messages import compose
from followup.runtime import Runtime
from followup.storage.engine import writing
from followup.storage.ledger import Change

T = TypeVar("T")
#: A touch, its message, the SMTP outcome and when it came.
Sent = tuple[DueTouch, compose.Composed, Delivery, datetime]


#: The most outcomes the recorder holds (sent but not yet recorded: uncertain after a crash).
RECORD_MAX = 256


def record_size(group_size: int, mailers: Sequence[SmtpMailer]) -> int:
    """Outcomes the recorder holds before writing them in a transaction of their own: enough
    that they are written with the next hand-off of every connection's group instead."""
    return min(max(32, (group_size + 1) * len(mailers)), RECORD_MAX)


class Recorder:
    """Writes SMTP outcomes in groups instead of one transaction each: in the transaction of
    the next hand-off, or in one of their own once `size` are waiting and at the end of a
    batch. A touch sent but not yet recorded when the process dies is found "sending" with
    its Message-ID set, and becomes uncertain (never resent on its own): batching widens
    nothing that the ledger does not already account for."""

    def __init__(
        self, rt: Runtime, report: DispatchReport, rng: random.Random, size: int = 32
    ) -> None:
        self.rt, self.report, self.rng, self.size = rt, report, rng, size
        self.pending: list[Sent] = []

    async def add(
        self, touch: DueTouch, message: compose.Composed, delivery: Delivery, now: datetime
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
            async with writing(self.rt.engine) as conn:
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

    def _write(self, conn: Connection, batch: list[Sent]) -> tuple[list[Change], list[bool]]:
        changes = [
            _change(self.rt, touch, message, delivery, now, self.rng)
            for touch, message, delivery, now in batch
        ]
        if not changes:
            return changes, []
        applied = self.rt.ledger.transition_many(conn, TouchStatus.SENDING, changes)
        for (touch, message, delivery, now), change in zip(batch, changes, strict=True):
            if delivery.outcome is Outcome.BOUNCED:
                self.rt.ledger.bounce(conn, touch.client_id, message.to, now, str(change.detail))
        return changes, applied


def _change(
    rt: Runtime,
    touch: DueTouch,
    message: compose.Composed,
    delivery: Delivery,
    now: datetime,
    rng: random.Random,
) -> Change:
    """The ledger's state change for one SMTP outcome."""
    reply = f"{delivery.code} {delivery.reply}".strip() if delivery.code else delivery.reply
    status, reason, next_attempt_at = ledger_outcome(
        delivery, reply, touch.attempts, touch.not_after, now, rt.retry_policy, rng
    )
    values: dict[str, Any] = {
        "reason": reason,
        "lease_owner": None,
        "lease_expires_at": None,
        "smtp_reply": reply[:2000],
        "locale": message.locale,
        "variant": message.variant,
        "rep_id": message.rep_id,
        "message_id": message.message_id,
    }
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    return Change(touch.id, status, now, reply, values)


#: The report's count of each status an SMTP outcome leads to.
_COUNTERS = {
    TouchStatus.SENT: "sent",
    TouchStatus.RETRY: "retry",
    TouchStatus.FAILED: "failed",
    TouchStatus.UNCERTAIN: "uncertain",
}


def _count(
    report: DispatchReport,
    touch: DueTouch,
    message: compose.Composed,
    delivery: Delivery,
    status: TouchStatus,
) -> None:
    # Counted by the status the ledger recorded (a retry past the last attempt is failed);
    # a bounce is a failed touch, counted again among the bounced.
    bounced = delivery.outcome is Outcome.BOUNCED and status is TouchStatus.FAILED
    counter = _COUNTERS.get(status, "failed")
    setattr(report, counter, getattr(report, counter) + 1)
    report.bounced += bounced
    event = "touch.bounced" if bounced else f"touch.{status.value}"
    log_event(event, touch=touch.id, campaign=touch.campaign, code=delivery.code)
