"""What happened to one SMTP transaction, and what the ledger records for it: sent, a retry
later (with backoff), failed, or uncertain (the server may have taken the message)."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from followup.domain.statuses import TouchStatus


class Outcome(enum.StrEnum):
    SENT = "sent"
    #: 4xx, timeouts, dropped connections: try again later.
    RETRY = "retry"
    #: 5xx refusing the recipient: fail the touch and suppress the address.
    BOUNCED = "bounced"
    #: any other permanent refusal.
    FAILED = "failed"
    #: the message data was sent but no reply came: the server may have accepted it.
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    code: int | None
    reply: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """[delivery] max_attempts and retry_base_seconds."""

    max_attempts: int
    base_seconds: float


def retry_delay(attempt: int, base: float, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter: base * 2^(attempt-1), times 0.75..1.25, capped at 6 h."""
    seconds = min(base * 2 ** (attempt - 1), 6 * 3600.0) * rng.uniform(0.75, 1.25)
    return timedelta(seconds=seconds)


def ledger_outcome(
    delivery: Delivery,
    reply: str,
    attempt: int,
    not_after: datetime,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
) -> tuple[TouchStatus, str | None, datetime | None]:
    """The ledger's next state for an SMTP outcome: status, reason, and the next attempt of a
    retry (None otherwise). A retry that would come after the touch's lateness, or past the
    last attempt, fails instead."""
    if delivery.outcome is Outcome.SENT:
        return TouchStatus.SENT, None, None
    if delivery.outcome is Outcome.RETRY:
        next_at = now + retry_delay(attempt, policy.base_seconds, rng)
        if attempt >= policy.max_attempts or next_at > not_after:
            return TouchStatus.FAILED, f"gave up after {attempt} attempt(s): {reply}", None
        return TouchStatus.RETRY, reply, next_at
    if delivery.outcome is Outcome.BOUNCED:
        return TouchStatus.FAILED, f"bounced: {reply}", None
    if delivery.outcome is Outcome.UNCERTAIN:
        return TouchStatus.UNCERTAIN, f"uncertain: {reply}; the server may have accepted it", None
    return TouchStatus.FAILED, f"refused: {reply}", None
