"""The read queries: what planning, the dispatcher's prefetch, the dry-run and the reports read.
Each function reads in the caller's transaction (`reader(engine)` for a consistent snapshot)
and returns domain values or plain rows, never a half-read result.

Datetime columns that are read by the million (the planner's purchases and touches, the
purchase facts) are read as the driver returns them and converted here (`_raw`, `_utc`):
SQLAlchemy's own processing was most of a chunk's read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    String,
    bindparam,
    case,
    false,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.sql.elements import ColumnElement

from followup.domain.clients import ClientStats, PurchaseFact, Recipient
from followup.domain.statuses import SEEN, WAITING, TouchStatus
from followup.domain.touches import DueTouch, LedgerTouch
from followup.storage.dialects import ledger_for
from followup.storage.engine import chunks
from followup.storage.privacy import suppression_keys
from followup.storage.tables import (
    clients,
    planned_clients,
    purchase_versions,
    purchases,
    reps,
    suppressions,
    touches,
    watermarks,
)


def _raw(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A datetime column read as the driver returns it (SQLite: text), for `_utc`."""
    return type_coerce(column, String)


def _utc(value: str | datetime) -> datetime:
    """What UTCDateTime returns for a value read with `_raw`: SQLite's text parsed as
    SQLAlchemy parses it, a naive instant taken as UTC, an aware one (PostgreSQL) in UTC.
    About twice as fast as SQLAlchemy's processing, which reading a chunk spent most on."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.utcoffset() is None else value.astimezone(UTC)


# ----------------------------------------------------------------------------- planning


def client_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(clients)).scalar_one())


def client_id_range(conn: Connection) -> tuple[int, int] | None:
    """The lowest and highest client id, None without clients."""
    low, high = conn.execute(select(func.min(clients.c.id), func.max(clients.c.id))).one()
    return None if low is None else (int(low), int(high))


def watermark(conn: Connection, campaign: str) -> datetime | None:
    """Up to when `campaign` has been planned for every client."""
    row = conn.execute(
        select(watermarks.c.planned_until).where(watermarks.c.campaign == campaign)
    ).first()
    return None if row is None else row.planned_until


def plan_version() -> ColumnElement[int]:
    """A client's plan version: its own counter plus its purchases' (read with
    `_with_plan_versions`). Both only rise, so a plan that read a version and records it leaves
    a client changed since with a higher one."""
    return clients.c.plan_version + func.coalesce(purchase_versions.c.version, 0)


def _with_plan_versions(joined: Any) -> Any:
    """`joined` (the clients, maybe joined already) with their purchases' counters."""
    return joined.outerjoin(purchase_versions, purchase_versions.c.client_id == clients.c.id)


def clients_to_replan(conn: Connection) -> list[int]:
    """The ids of the clients whose plan version has moved since a plan last read it (or that
    no plan has read yet), in id order. A read of the clients, their purchases' counters and
    planned_clients (no index on the versions: each change would have to update it)."""
    c, pc = clients, planned_clients
    stale = (
        select(c.c.id)
        .select_from(_with_plan_versions(c.outerjoin(pc, pc.c.client_id == c.c.id)))
        .where((pc.c.plan_version.is_(None)) | (pc.c.plan_version != plan_version()))
        .order_by(c.c.id)
    )
    return [row[0] for row in conn.execute(stale)]


@dataclass(frozen=True, slots=True)
class PlanningScope:
    """What a planning pass reads besides its clients: their paid purchases made in
    `purchases` (None: no campaign follows a purchase), and their ledger touches of an
    occurrence from `occurrence_from` on or due from `ledger_from` on, as they stand at
    `now`."""

    purchases: tuple[datetime, datetime] | None
    occurrence_from: date
    ledger_from: datetime
    #: The plan's `now`: a touch waiting past its lateness then is as good as skipped.
    now: datetime


@dataclass
class PlanningRows:
    """One chunk of clients as the planner reads them."""

    #: id, external_id, timezone, country, locale, status, tier, tags, birthday_month,
    #: birthday_day, birthday_year, marketing_consent, plan_version, planned_version (that a
    #: plan last read).
    clients: list[Any]
    purchases: dict[int, list[PurchaseFact]] = field(default_factory=dict)
    stats: dict[int, ClientStats] = field(default_factory=dict)
    ledger: dict[int, list[LedgerTouch]] = field(default_factory=dict)


def planning_rows(
    conn: Connection,
    scope: PlanningScope,
    *,
    after: int = 0,
    up_to: int | None = None,
    ids: Sequence[int] | None = None,
    limit: int = 2000,
) -> PlanningRows:
    """Up to `limit` clients in id order, those listed in `ids` or else those with an id in
    (after, up_to], with what the planner reads about them."""
    c, pc = clients, planned_clients
    which: list[ColumnElement[bool]]
    if ids is not None:
        which = [c.c.id.in_(list(ids))]
    else:
        which = [c.c.id > after, *([] if up_to is None else [c.c.id <= up_to])]
    rows = conn.execute(
        select(
            c.c.id,
            c.c.external_id,
            c.c.timezone,
            c.c.country,
            c.c.locale,
            c.c.status,
            c.c.tier,
            c.c.tags,
            c.c.birthday_month,
            c.c.birthday_day,
            c.c.birthday_year,
            c.c.marketing_consent,
            plan_version().label("plan_version"),
            pc.c.plan_version.label("planned_version"),
        )
        .select_from(_with_plan_versions(c.outerjoin(pc, pc.c.client_id == c.c.id)))
        .where(*which)
        .order_by(c.c.id)
        .limit(limit)
    ).all()
    found = PlanningRows(list(rows))
    if not rows:
        return found
    lo, hi = rows[0].id, rows[-1].id
    # Listed clients may lie far apart: theirs are read by id, not by range.
    chosen = [row.id for row in rows] if ids is not None else None
    if scope.purchases is not None:
        found.purchases = _paid_purchases(conn, lo, hi, chosen, scope.purchases)
    found.stats = client_stats(conn, lo, hi, chosen)
    found.ledger = _ledger_around(conn, lo, hi, chosen, scope)
    return found


def _paid_purchases(
    conn: Connection,
    lo: int,
    hi: int,
    chosen: list[int] | None,
    between: tuple[datetime, datetime],
) -> dict[int, list[PurchaseFact]]:
    p = purchases
    which = p.c.client_id.in_(chosen) if chosen else p.c.client_id.between(lo, hi)
    bought: dict[int, list[PurchaseFact]] = {}
    for purchase_id, client_id, purchased_at, status, product in conn.execute(
        select(p.c.id, p.c.client_id, _raw(p.c.purchased_at), p.c.status, p.c.product)
        .where(which, p.c.purchased_at.between(*between), p.c.status == "paid")
        # The same purchase wins a shared day in every planner.
        .order_by(p.c.client_id, p.c.purchased_at, p.c.id)
    ):
        bought.setdefault(client_id, []).append(
            PurchaseFact(purchase_id, _utc(purchased_at), status, product)
        )
    return bought


def _ledger_around(
    conn: Connection, lo: int, hi: int, chosen: list[int] | None, scope: PlanningScope
) -> dict[int, list[LedgerTouch]]:
    """The clients' touches the planner arbitrates against. A touch still waiting past its
    lateness at the plan's `now` is read as skipped: the next dispatch records it so ("too
    late"), and it must not hold the frequency cap against an occasion that can still go out."""
    t = touches
    which = t.c.client_id.in_(chosen) if chosen else t.c.client_id.between(lo, hi)
    dead = t.c.status.in_(WAITING) & (t.c.not_after < scope.now)
    status = case((dead, literal(TouchStatus.SKIPPED.value)), else_=t.c.status)
    ledger: dict[int, list[LedgerTouch]] = {}
    for client_id, campaign, occurrence, due_at, status_now, purchase_id in conn.execute(
        select(
            t.c.client_id, t.c.campaign, t.c.occurrence, _raw(t.c.due_at), status, t.c.purchase_id
        ).where(
            which, (t.c.occurrence >= scope.occurrence_from) | (t.c.due_at >= scope.ledger_from)
        )
    ):
        ledger.setdefault(client_id, []).append(
            LedgerTouch(campaign, occurrence, _utc(due_at), status_now, purchase_id)
        )
    return ledger


def client_stats(
    conn: Connection, lo: int, hi: int, ids: Sequence[int] | None = None
) -> dict[int, ClientStats]:
    """Purchase facts of the clients with ids in [lo, hi] (or in `ids`), in one GROUP BY of
    client and currency (amounts of two currencies are never added); the instants read with
    `_raw` and `_utc` (the planner reads a million of them)."""
    rows = ledger_for(conn).rows
    if ids is not None:
        found = rows(conn, _stats_query(True), ids=list(ids))
    else:
        found = rows(conn, _stats_query(False), lo=lo, hi=hi)
    stats: dict[int, ClientStats] = {}
    for client_id, currency, count, total, first, last, unpaid, disputed in found:
        fact = ClientStats(
            purchases=int(count),
            spent=((currency, int(total)),) if count else (),
            first_purchase=None if first is None else _utc(first),
            last_purchase=None if last is None else _utc(last),
            has_unpaid=unpaid > 0,
            has_disputed=disputed > 0,
        )
        before = stats.get(client_id)
        # One row per client and currency: a client's second currency joins its first.
        stats[client_id] = fact if before is None else _joined(before, fact)
    return stats


def _joined(a: ClientStats, b: ClientStats) -> ClientStats:
    """One client's facts of two currencies as one."""
    firsts = [i for i in (a.first_purchase, b.first_purchase) if i is not None]
    lasts = [i for i in (a.last_purchase, b.last_purchase) if i is not None]
    return ClientStats(
        purchases=a.purchases + b.purchases,
        spent=tuple(sorted(a.spent + b.spent)),
        first_purchase=min(firsts, default=None),
        last_purchase=max(lasts, default=None),
        has_unpaid=a.has_unpaid or b.has_unpaid,
        has_disputed=a.has_disputed or b.has_disputed,
    )


@functools.cache
def _stats_query(by_ids: bool) -> Select[Any]:
    """client_stats' query, for a list of clients (`ids`) or a range (`lo`, `hi`); built once
    (the ledger's `rows` keeps its compiled form by the statement)."""
    p = purchases
    paid = p.c.status == "paid"
    if by_ids:
        which = p.c.client_id.in_(bindparam("ids", expanding=True))
    else:
        which = p.c.client_id.between(bindparam("lo"), bindparam("hi"))
    return (
        select(
            p.c.client_id,
            p.c.currency,
            func.count().filter(paid),
            func.coalesce(func.sum(p.c.amount_minor).filter(paid), 0),
            _raw(func.min(p.c.purchased_at).filter(paid)),
            _raw(func.max(p.c.purchased_at).filter(paid)),
            func.count().filter(p.c.status == "unpaid"),
            func.count().filter(p.c.status == "disputed"),
        )
        .where(which)
        .group_by(p.c.client_id, p.c.currency)
    )


# ----------------------------------------------------------------------------- sending


#: One touch that went (or may have gone) out: (when its status last changed, its id, its
#: design). The client's next message must look different from the latest.
Sent = tuple[datetime, int, str]


@dataclass
class SendFacts:
    """What deciding and composing a set of touches needs, read in a few set-based queries
    instead of several per touch: the touches, their recipients, the suppressions of their
    addresses, their clients' purchase facts and recent sends."""

    touches: dict[int, DueTouch] = field(default_factory=dict)
    #: By touch id (the dry-run's: by candidate); a touch whose client is gone has none.
    recipients: dict[int, Recipient] = field(default_factory=dict)
    #: By lower-cased address (found as such or by its keyed hash, an erased client's).
    suppressed: dict[str, str] = field(default_factory=dict)
    stats: dict[int, ClientStats] = field(default_factory=dict)
    #: By client.
    sent: dict[int, list[Sent]] = field(default_factory=dict)

    def suppression(self, email: str) -> str | None:
        """Why the address must not be mailed, or None."""
        return self.suppressed.get(email.strip().lower())


def recipient_query() -> Select[Any]:
    """The columns of Recipient, in its order (so that a row's first values make one), from
    the clients joined with their active rep. A rep who left (inactive) signs nothing: the
    business signs until the clients are reassigned (`followup reassign`). The caller joins
    the purchase."""
    c, r, p = clients, reps, purchases
    return (
        select(
            c.c.id.label("client_id"),
            c.c.external_id.label("client_external_id"),
            c.c.email,
            c.c.first_name,
            c.c.last_name,
            c.c.locale,
            c.c.timezone,
            c.c.country,
            c.c.tier,
            c.c.tags,
            c.c.status,
            r.c.id.label("rep_id"),
            r.c.name.label("rep_name"),
            r.c.email.label("rep_email"),
            r.c.signature.label("rep_signature"),
            p.c.external_id.label("purchase_external_id"),
            p.c.status.label("purchase_status"),
            p.c.product,
            p.c.amount_minor,
            p.c.currency,
            p.c.purchased_at,
            c.c.birthday_year,
            c.c.inferred,
            c.c.marketing_consent,
        )
        .select_from(c)
        .outerjoin(r, (r.c.id == c.c.rep_id) & r.c.active.is_(True))
    )


def send_facts(conn: Connection, ids: list[int]) -> SendFacts:
    """Everything the decision and the composer read about the touches `ids`."""
    found = SendFacts()
    touches_query, recipients_query = _send_queries()
    rows = ledger_for(conn).rows
    for batch in chunks(ids, 500):
        for row in rows(conn, touches_query, ids=batch):
            found.touches[row.id] = DueTouch._make(row)
        for row in rows(conn, recipients_query, ids=batch):
            # recipients_query's columns are Recipient's fields in order, then the touch's id.
            found.recipients[row[-1]] = Recipient(*row[:-1])
    _add_client_facts(conn, found)
    return found


def _add_client_facts(conn: Connection, found: SendFacts) -> None:
    """The suppressions, purchase facts and recent sends of the recipients in `found`."""
    rows = ledger_for(conn).rows
    keys = suppression_keys(conn, {f.email for f in found.recipients.values()})
    for addresses in chunks(sorted(keys), 500):
        for row in rows(conn, _suppressions_query(), emails=addresses):
            # The address's own row (unsubscribed, bounced) before an erased client's hash.
            address = keys[row.email]
            if address not in found.suppressed or row.email == address:
                found.suppressed[address] = row.reason
    clients_ = sorted({f.client_id for f in found.recipients.values()})
    for group in chunks(clients_, 500):
        found.stats.update(client_stats(conn, 0, 0, ids=group))
        for row in rows(conn, _sent_query(), ids=group):
            if row.status in SEEN:
                found.sent.setdefault(row.client_id, []).append(
                    (row.updated_at, row.id, row.variant)
                )


@functools.cache
def _due_touch_columns() -> list[ColumnElement[Any]]:
    """The touches' columns of a DueTouch, in its fields' order (both the dispatcher's and the
    dry-run's reads make DueTouch from the first columns of a row)."""
    return [touches.c[name] for name in DueTouch._fields]


def _send_queries() -> tuple[Select[Any], Select[Any]]:
    """send_facts' queries for a list of touch `ids`, built once (the ledger's `rows` keeps
    their compiled form). The touches' columns are DueTouch's fields in order."""
    t, p = touches, purchases
    ids: Any = bindparam("ids", expanding=True)
    touches_query = select(*_due_touch_columns()).where(t.c.id.in_(ids))
    recipients_query = (
        recipient_query()
        .add_columns(t.c.id.label("touch_id"))
        .join(t, t.c.client_id == clients.c.id)
        .outerjoin(p, p.c.id == t.c.purchase_id)
        .where(t.c.id.in_(ids))
    )
    return touches_query, recipients_query


@functools.cache
def _suppressions_query() -> Select[Any]:
    """Suppressions of a list of addresses and address hashes (`emails`)."""
    emails: Any = bindparam("emails", expanding=True)
    return select(suppressions.c.email, suppressions.c.reason).where(
        suppressions.c.email.in_(emails)
    )


@functools.cache
def _sent_query() -> Select[Any]:
    """The touches with a design of a list of clients (`ids`). The status is checked in
    Python, not in SQL: with `status IN (...)` in the query, SQLite (no statistics) searched
    ix_touches_due by status instead of the clients' key, reading every touch that ever went
    out for each batch (bench/RESULTS.md). A client has few touches; the few
    others with a variant (a retry, a failure) are read and dropped."""
    t = touches
    ids: Any = bindparam("ids", expanding=True)
    return select(t.c.client_id, t.c.status, t.c.updated_at, t.c.id, t.c.variant).where(
        t.c.client_id.in_(ids), t.c.variant.is_not(None)
    )


# ----------------------------------------------------------------------------- dry-run


def touches_of_day(
    conn: Connection, since: datetime, until: datetime, overdue_at: datetime | None
) -> Iterator[Any]:
    """The ledger's touches whose next attempt falls in [since, until], and with `overdue_at`
    every touch waiting whose time has passed by then (it goes out at once, or is skipped too
    late), with their client's zone."""
    t, c = touches, clients
    window: ColumnElement[bool] = t.c.next_attempt_at.between(since, until)
    if overdue_at is not None:
        window = window | ((t.c.next_attempt_at < overdue_at) & t.c.status.in_(WAITING))
    yield from conn.execute(
        select(
            *_due_touch_columns(),
            t.c.next_attempt_at,
            t.c.status,
            t.c.reason,
            c.c.timezone,
        )
        .join(c, c.c.id == t.c.client_id)
        .where(window)
    )


def recipient_facts(conn: Connection, wanted: Sequence[tuple[int, int | None]]) -> SendFacts:
    """send_facts for touches that need not be in the ledger (the dry-run's), given as (client
    id, purchase id): `recipients` holds each one's under its index in `wanted`, the client
    with the purchase of that id (wherever it belongs now, as for a touch of the ledger), or
    without one if it is gone."""
    found = SendFacts()
    p = purchases
    plain: dict[int, Recipient] = {}
    for batch in chunks(sorted({client_id for client_id, _ in wanted}), 500):
        query = recipient_query().outerjoin(p, false()).where(clients.c.id.in_(batch))
        for row in conn.execute(query):
            plain[row.client_id] = Recipient(*row)
    bought: dict[int, dict[str, Any]] = {}
    for batch in chunks(sorted({pid for _, pid in wanted if pid is not None}), 500):
        query = select(
            p.c.id,
            p.c.external_id.label("purchase_external_id"),
            p.c.status.label("purchase_status"),
            p.c.product,
            p.c.amount_minor,
            p.c.currency,
            p.c.purchased_at,
        ).where(p.c.id.in_(batch))
        for row in conn.execute(query):
            bought[row.id] = {k: v for k, v in row._mapping.items() if k != "id"}
    for n, (client_id, purchase_id) in enumerate(wanted):
        client = plain.get(client_id)
        if client is None:
            continue
        purchase = bought.get(purchase_id) if purchase_id is not None else None
        found.recipients[n] = client if purchase is None else client._replace(**purchase)
    _add_client_facts(conn, found)
    return found


def clients_by_email(conn: Connection, emails: Iterable[str]) -> dict[str, list[Any]]:
    """Lower-cased address -> the clients with it (external_id, id, timezone), for purchases
    that name their client by e-mail: searched in ix_clients_email_lower (migration 0010), up
    to 100 clients an address (two are already an error the importer reports)."""
    found: dict[str, list[Any]] = {}
    c = clients
    address = func.lower(c.c.email)
    selected = (address.label("address"), c.c.external_id, c.c.id, c.c.timezone)
    wanted = {e.strip().lower() for e in emails if e.strip()}
    for row in ledger_for(conn).by_key(conn, address, wanted, selected, most=100):
        found.setdefault(row.address, []).append(row)
    return found
