"""Touches as the rules see them: the planner's new touches, the ledger's touches around a
plan, the claimed touch the dispatcher decides on, and the touch key with what derives from it
(the Message-ID, the design chosen)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple

from followup.domain.statuses import TouchStatus


@dataclass(frozen=True, slots=True)
class NewTouch:
    """A touch the planner wants in the ledger (inserted only if its key is absent)."""

    client_id: int
    campaign: str
    occurrence: date
    due_at: datetime
    not_after: datetime
    template: str
    purchase_id: int | None = None
    status: TouchStatus = TouchStatus.PLANNED
    reason: str | None = None
    occasion: str | None = None
    #: The time the occasion asked for, before any deferral.
    nominal_at: datetime | None = None

    @property
    def key(self) -> tuple[int, str, date]:
        return (self.client_id, self.campaign, self.occurrence)


@dataclass(frozen=True, slots=True)
class LedgerTouch:
    """A touch already in the ledger, as the planner sees it."""

    campaign: str
    occurrence: date
    at: datetime
    status: str
    purchase_id: int | None = None


class DueTouch(NamedTuple):
    """A touch in the queue, as the send-time decision reads it (claimed by the dispatcher, or
    considered by the dry-run). A named tuple: the dispatcher makes one from each row it
    claims, and a tuple is made in a fraction of a frozen dataclass's time."""

    id: int
    client_id: int
    campaign: str
    occurrence: date
    template: str
    #: The occasion's name as planned, in the client's language.
    occasion: str | None
    due_at: datetime
    purchase_id: int | None
    #: Attempts so far, the claim that brought it here included.
    attempts: int
    not_after: datetime
    #: The design of an earlier attempt (a retry keeps it), or None.
    variant: str | None


def touch_key(client_id: int, campaign: str, occurrence: date) -> str:
    return f"{client_id}/{campaign}/{occurrence.isoformat()}"


def message_id(client_id: int, campaign: str, occurrence: date, domain: str) -> str:
    """A Message-ID derived from the touch key: the same touch always has the same one."""
    digest = hashlib.sha256(f"{client_id}/{campaign}/{occurrence.isoformat()}".encode()).hexdigest()
    return f"<{digest[:32]}@{domain}>"
