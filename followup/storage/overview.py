"""The operator's reads: the ledger's counts and queue (`followup status`, /metrics), one
client's touches and history (`followup history`), and lookups by key (a survey link's
touch, a client for a preview)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Select, func, select

from followup.domain.clients import Recipient
from followup.domain.statuses import WAITING, TouchStatus
from followup.storage.engine import chunks
from followup.storage.privacy import suppression_keys
from followup.storage.queries import recipient_query
from followup.storage.tables import (
    client_events,
    clients,
    purchases,
    reps,
    runs,
    suppressions,
    survey_answers,
    touch_events,
    touches,
)


def suppressed(conn: Connection, email: str) -> str | None:
    """Why an address must not be mailed (unsubscribed, bounced, erased, ...), or None. An
    erased client's address is found by its hash."""
    found = {
        str(row.email): str(row.reason)
        for row in conn.execute(
            select(suppressions.c.email, suppressions.c.reason).where(
                suppressions.c.email.in_(list(suppression_keys(conn, [email])))
            )
        )
    }
    return found.get(email.strip().lower()) or next(iter(found.values()), None)


def touch_counts(conn: Connection) -> dict[str, int]:
    result = conn.execute(select(touches.c.status, func.count()).group_by(touches.c.status))
    return {str(status): int(count) for status, count in result}


def touch_counts_by_campaign(conn: Connection) -> dict[tuple[str, str], int]:
    """(status, campaign) -> touches: one GROUP BY over the ledger."""
    result = conn.execute(
        select(touches.c.status, touches.c.campaign, func.count()).group_by(
            touches.c.status, touches.c.campaign
        )
    )
    return {(str(status), str(campaign)): int(count) for status, campaign, count in result}


def queue_depth(conn: Connection, now: datetime) -> tuple[int, int]:
    """(touches waiting to be sent, of which due now)."""
    waiting = touches.c.status.in_(WAITING)
    total = conn.execute(select(func.count()).where(waiting)).scalar_one()
    due = conn.execute(
        select(func.count()).where(waiting, touches.c.next_attempt_at <= now)
    ).scalar_one()
    return int(total), int(due)


def held_count(conn: Connection) -> int:
    """Touches held on a template error (counted in ix_touches_due)."""
    held = touches.c.status == TouchStatus.HELD.value
    return int(conn.execute(select(func.count()).where(held)).scalar_one())


def last_runs(conn: Connection) -> dict[str, dict[str, Any]]:
    """kind -> the last run's columns."""
    return {str(row.kind): dict(row._mapping) for row in conn.execute(select(runs))}


def _touch_lines() -> Select[Any]:
    """A touch as the operator's listings show it: id, client's external id, campaign,
    occurrence, status, updated_at, reason."""
    t, c = touches, clients
    return select(
        t.c.id,
        c.c.external_id,
        t.c.campaign,
        t.c.occurrence,
        t.c.status,
        t.c.updated_at,
        t.c.reason,
    ).join(c, c.c.id == t.c.client_id)


def latest_touches(conn: Connection, status: TouchStatus, limit: int) -> list[Any]:
    """The latest touches in `status`: id, client's external id, campaign, occurrence,
    status, updated_at, reason."""
    t = touches
    return list(
        conn.execute(
            _touch_lines()
            .where(t.c.status == status.value)
            .order_by(t.c.updated_at.desc(), t.c.id.desc())
            .limit(limit)
        )
    )


def failed_touches(
    conn: Connection,
    campaign: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Any]:
    """The failed touches of `campaign` whose reason holds `reason` (any case) and that failed
    at or after `since` and before `until`, oldest first; the columns of `latest_touches`."""
    t = touches
    query = (
        _touch_lines()
        .where(t.c.status == TouchStatus.FAILED.value)
        .order_by(t.c.updated_at, t.c.id)
    )
    if campaign is not None:
        query = query.where(t.c.campaign == campaign)
    if reason is not None:
        query = query.where(func.lower(t.c.reason).contains(reason.lower(), autoescape=True))
    if since is not None:
        query = query.where(t.c.updated_at >= since)
    if until is not None:
        query = query.where(t.c.updated_at < until)
    return list(conn.execute(query))


def touch_by_key(conn: Connection, client_id: int, campaign: str, occurrence: date) -> int | None:
    """The id of the touch with this key, if there is one."""
    t = touches
    found = conn.execute(
        select(t.c.id).where(
            t.c.client_id == client_id, t.c.campaign == campaign, t.c.occurrence == occurrence
        )
    ).scalar()
    return None if found is None else int(found)


def recipient(conn: Connection, client_id: int, purchase_id: int | None) -> Recipient | None:
    """One client as a message addresses them, with one of their purchases (or none)."""
    p = purchases
    query = recipient_query().outerjoin(p, p.c.id == purchase_id).where(clients.c.id == client_id)
    row = conn.execute(query).first()
    return None if row is None else Recipient(**row._mapping)


def latest_purchase_recipient(conn: Connection, external_id: str) -> Recipient | None:
    """A client by external id, with their latest paid purchase (if any): for previews."""
    c, p = clients, purchases
    client_id = conn.execute(select(c.c.id).where(c.c.external_id == external_id)).scalar()
    if client_id is None:
        return None
    purchase_id = conn.execute(
        select(p.c.id)
        .where(p.c.client_id == client_id, p.c.status == "paid")
        .order_by(p.c.purchased_at.desc(), p.c.id.desc())
        .limit(1)
    ).scalar()
    return recipient(conn, int(client_id), purchase_id)


def client_by_id_or_email(conn: Connection, key: str) -> Any:
    """The client (id, external_id, email, status, timezone, locale, country, inferred, tier,
    marketing_consent, consent_source, consent_at) whose external id is `key`, else the first
    whose address is `key`; None if none."""
    c = clients
    columns = (
        c.c.id,
        c.c.external_id,
        c.c.email,
        c.c.status,
        c.c.timezone,
        c.c.locale,
        c.c.country,
        c.c.inferred,
        c.c.tier,
        c.c.marketing_consent,
        c.c.consent_source,
        c.c.consent_at,
    )
    found = conn.execute(select(*columns).where(c.c.external_id == key)).first()
    if found is None:
        found = conn.execute(
            select(*columns).where(func.lower(c.c.email) == key.strip().lower()).order_by(c.c.id)
        ).first()
    return found


def touches_of_client(conn: Connection, client_id: int) -> list[Any]:
    """Every touch of the client with all its columns and the external id of the rep who
    signed it (`rep_external_id`), by due time."""
    t, r = touches, reps
    return list(
        conn.execute(
            select(t, r.c.external_id.label("rep_external_id"))
            .outerjoin(r, r.c.id == t.c.rep_id)
            .where(t.c.client_id == client_id)
            .order_by(t.c.due_at, t.c.id)
        )
    )


def history_of(conn: Connection, touch_ids: Sequence[int]) -> dict[int, list[Any]]:
    """Each touch's changes of status (at, from_status, to_status, detail), in order."""
    e = touch_events
    found: dict[int, list[Any]] = {touch_id: [] for touch_id in touch_ids}
    for batch in chunks(list(touch_ids), 500):
        for row in conn.execute(
            select(e.c.touch_id, e.c.at, e.c.from_status, e.c.to_status, e.c.detail)
            .where(e.c.touch_id.in_(batch))
            .order_by(e.c.at, e.c.id)
        ):
            found[row.touch_id].append(row[1:])
    return found


def client_events_of(conn: Connection, client_id: int) -> list[Any]:
    """The client's own events (at, kind, detail): an operator's actions, in order."""
    e = client_events
    query = select(e.c.at, e.c.kind, e.c.detail).where(e.c.client_id == client_id)
    return [tuple(row) for row in conn.execute(query.order_by(e.c.at, e.c.id))]


def survey_scores(conn: Connection, client_id: int) -> dict[int, int]:
    """touch id -> the satisfaction score the client gave through it."""
    a = survey_answers
    query = select(a.c.touch_id, a.c.score).where(a.c.client_id == client_id)
    return {row.touch_id: int(row.score) for row in conn.execute(query)}
