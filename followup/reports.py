"""What the ledger says, for people and scripts: `followup status` (the queue, the last runs,
what failed or is uncertain) and `followup history CLIENT` (every touch of one client with
its history). Reads only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select

from followup import app, store
from followup.models import TouchStatus

#: How many failed and uncertain touches `status` lists (the counts are always complete).
LISTED = 20


@dataclass
class TouchLine:
    touch: int
    client: str
    campaign: str
    occurrence: date
    status: str
    updated_at: datetime
    reason: str | None


@dataclass
class Status:
    now: datetime
    counts: dict[str, int]
    waiting: int
    due_now: int
    runs: dict[str, dict[str, Any]]
    failed: list[TouchLine] = field(default_factory=list)
    uncertain: list[TouchLine] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _touch_lines(conn: Any, status: TouchStatus) -> list[TouchLine]:
    t, c = store.touches, store.clients
    rows = conn.execute(
        select(
            t.c.id,
            c.c.external_id,
            t.c.campaign,
            t.c.occurrence,
            t.c.status,
            t.c.updated_at,
            t.c.reason,
        )
        .join(c, c.c.id == t.c.client_id)
        .where(t.c.status == status.value)
        .order_by(t.c.updated_at.desc(), t.c.id.desc())
        .limit(LISTED)
    )
    return [TouchLine(*row) for row in rows]


def status(rt: app.Runtime, now: datetime) -> Status:
    store.check_ready(rt.engine)
    with store.reader(rt.engine) as conn:
        counts = store.touch_counts(conn)
        waiting, due = store.queue_depth(conn, now)
        runs = store.last_runs(conn)
        return Status(
            now=now,
            counts=counts,
            waiting=waiting,
            due_now=due,
            runs=runs,
            failed=_touch_lines(conn, TouchStatus.FAILED),
            uncertain=_touch_lines(conn, TouchStatus.UNCERTAIN),
        )


@dataclass
class Event:
    at: datetime
    from_status: str | None
    to_status: str
    detail: str | None


@dataclass
class TouchHistory:
    touch: int
    campaign: str
    occurrence: date
    status: str
    due_at: datetime
    template: str
    locale: str | None
    variant: str | None
    rep: str | None
    message_id: str | None
    smtp_reply: str | None
    reason: str | None
    attempts: int
    events: list[Event]
    #: The satisfaction score (1-5) the client gave through this touch's survey link.
    survey_score: int | None = None


@dataclass
class ClientHistory:
    client: str
    email: str
    status: str
    suppressed: str | None
    touches: list[TouchHistory]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


def history(rt: app.Runtime, client: str) -> ClientHistory | None:
    """Every touch of the client whose external id (or, failing that, e-mail) is `client`."""
    store.check_ready(rt.engine)
    c, t, r, e = store.clients, store.touches, store.reps, store.touch_events
    with store.reader(rt.engine) as conn:
        found = conn.execute(
            select(c.c.id, c.c.external_id, c.c.email, c.c.status).where(c.c.external_id == client)
        ).first()
        if found is None:
            found = conn.execute(
                select(c.c.id, c.c.external_id, c.c.email, c.c.status)
                .where(func.lower(c.c.email) == client.strip().lower())
                .order_by(c.c.id)
            ).first()
        if found is None:
            return None
        rows = conn.execute(
            select(t, r.c.external_id.label("rep_external_id"))
            .outerjoin(r, r.c.id == t.c.rep_id)
            .where(t.c.client_id == found.id)
            .order_by(t.c.due_at, t.c.id)
        ).all()
        events: dict[int, list[Event]] = {row.id: [] for row in rows}
        if events:
            for event in conn.execute(
                select(e.c.touch_id, e.c.at, e.c.from_status, e.c.to_status, e.c.detail)
                .where(e.c.touch_id.in_(list(events)))
                .order_by(e.c.at, e.c.id)
            ):
                events[event.touch_id].append(Event(*event[1:]))
        a = store.survey_answers
        scores = {
            row.touch_id: int(row.score)
            for row in conn.execute(
                select(a.c.touch_id, a.c.score).where(a.c.client_id == found.id)
            )
        }
        touches = [
            TouchHistory(
                touch=row.id,
                campaign=row.campaign,
                occurrence=row.occurrence,
                status=row.status,
                due_at=row.due_at,
                template=row.template,
                locale=row.locale,
                variant=row.variant,
                rep=row.rep_external_id,
                message_id=row.message_id,
                smtp_reply=row.smtp_reply,
                reason=row.reason,
                attempts=row.attempts,
                events=events[row.id],
                survey_score=scores.get(row.id),
            )
            for row in rows
        ]
        return ClientHistory(
            client=found.external_id,
            email=found.email,
            status=found.status,
            suppressed=store.suppressed(conn, found.email),
            touches=touches,
        )
