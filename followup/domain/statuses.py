"""The states of clients, purchases and touches, and what each state means to the rules."""

from __future__ import annotations

import enum


class ClientStatus(enum.StrEnum):
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    DO_NOT_CONTACT = "do-not-contact"
    #: Personal data removed on request (`followup client erase`).
    ERASED = "erased"


class Consent(enum.StrEnum):
    """A client's marketing consent (clients.marketing_consent): what a marketing occasion
    needs, as `[consent]` reads it (docs/consent.md)."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


class PurchaseStatus(enum.StrEnum):
    PAID = "paid"
    UNPAID = "unpaid"
    REFUNDED = "refunded"
    DISPUTED = "disputed"


class TouchStatus(enum.StrEnum):
    PLANNED = "planned"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNCERTAIN = "uncertain"
    #: Its template did not render (a typo, an error raised while rendering): it waits in the
    #: queue, tried again after `[delivery] hold_seconds`, and goes out once the template is
    #: fixed (within its lateness).
    HELD = "held"


#: A touch in one of these states waits for its next attempt (the queue).
WAITING = (TouchStatus.PLANNED.value, TouchStatus.RETRY.value, TouchStatus.HELD.value)

#: Touches whose design the client has (or may have) seen: the next one must look different.
SEEN = (TouchStatus.SENT.value, TouchStatus.SENDING.value, TouchStatus.UNCERTAIN.value)

#: Ledger statuses that count toward the frequency cap (the message went or may go out).
COUNTING = frozenset(
    {
        TouchStatus.PLANNED.value,
        TouchStatus.SENDING.value,
        TouchStatus.SENT.value,
        TouchStatus.RETRY.value,
        TouchStatus.UNCERTAIN.value,
        TouchStatus.HELD.value,
    }
)
