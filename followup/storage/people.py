"""Operations on clients and reps that an operator asks for: reassigning a leaving rep's
clients, suppressions, satisfaction answers, and data protection (export and erase).

Each operation is one transaction: it happens whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, update

from followup.domain.clients import Recipient
from followup.domain.statuses import ClientStatus, Consent
from followup.errors import FollowupError
from followup.storage import privacy
from followup.storage.dialects import ledger_for
from followup.storage.engine import chunks, reader
from followup.storage.overview import latest_purchase_recipient, suppressed
from followup.storage.schema import check_ready
from followup.storage.tables import (
    client_events,
    clients,
    purchases,
    reps,
    suppressions,
    survey_answers,
    touch_events,
    touches,
)


class NotFound(FollowupError):
    """A client or rep that the database does not hold."""


# ----------------------------------------------------------------------------- reps


def _rep_id(conn: Connection, external_id: str) -> tuple[int, bool]:
    r = reps
    row = conn.execute(select(r.c.id, r.c.active).where(r.c.external_id == external_id)).first()
    if row is None:
        raise NotFound(f"no rep with id {external_id!r}")
    return int(row.id), bool(row.active)


@dataclass
class Reassignment:
    moved: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def reassign(
    engine: Engine,
    from_rep: str,
    to_rep: str | None,
    now: datetime,
    *,
    retire: bool = False,
) -> Reassignment:
    """Moves every client of `from_rep` to `to_rep`, or, with `to_rep` None, spreads them over
    the other active reps in turn (by client id, so the result is reproducible). Later
    messages are signed by the new rep; sent touches keep the rep who signed them. With
    `retire`, `from_rep` is marked inactive."""
    check_ready(engine)
    c, r = clients, reps
    result = Reassignment()
    with engine.begin() as conn:
        source, _ = _rep_id(conn, from_rep)
        if to_rep is not None:
            target, active = _rep_id(conn, to_rep)
            if target == source:
                raise FollowupError("--from and --to are the same rep")
            if not active:
                raise FollowupError(f"rep {to_rep!r} is not active")
            targets = [(target, to_rep)]
        else:
            targets = [
                (int(row.id), str(row.external_id))
                for row in conn.execute(
                    select(r.c.id, r.c.external_id)
                    .where(r.c.active.is_(True), r.c.id != source)
                    .order_by(r.c.external_id)
                )
            ]
            if not targets:
                raise FollowupError("no other active rep to spread the clients over")
        moving = [
            int(row.id)
            for row in conn.execute(select(c.c.id).where(c.c.rep_id == source).order_by(c.c.id))
        ]
        for index, (target_id, target_name) in enumerate(targets):
            share = moving[index :: len(targets)]
            for batch in chunks(share, 500):
                conn.execute(
                    update(c).where(c.c.id.in_(batch)).values(rep_id=target_id, updated_at=now)
                )
            result.moved[target_name] = len(share)
        if retire:
            conn.execute(update(r).where(r.c.id == source).values(active=False, updated_at=now))
    return result


# ----------------------------------------------------------------------------- suppressions


def suppress(engine: Engine, emails: list[str], reason: str, now: datetime) -> int:
    """Adds addresses to the suppression list; returns how many were new."""
    check_ready(engine)
    with engine.begin() as conn:
        before = _suppression_count(conn)
        for email in emails:
            ledger_for(conn).suppress(conn, email, reason, now)
        return _suppression_count(conn) - before


@dataclass
class Unsuppression:
    #: Whether the address was on the suppression list.
    removed: bool
    #: The bounced clients with this address put back to active.
    reactivated: int


def unsuppress(engine: Engine, email: str, now: datetime, reason: str) -> Unsuppression:
    """Removes an address from the suppression list (not the hash of an erased client) and
    puts the clients with this address that it had bounced back to active (a relay's refusal
    taken for a bounce, a mailbox that works again), each with a `client_events` row saying
    why. Unsubscribed clients stay so: only they can opt in again."""
    check_ready(engine)
    s, c = suppressions, clients
    address = email.strip().lower()
    with engine.begin() as conn:
        removed = conn.execute(delete(s).where(s.c.email == address)).rowcount
        bounced = [
            int(row.id)
            for row in conn.execute(
                select(c.c.id).where(
                    func.lower(c.c.email) == address, c.c.status == ClientStatus.BOUNCED.value
                )
            )
        ]
        if bounced:
            conn.execute(
                update(c)
                .where(c.c.id.in_(bounced))
                .values(status=ClientStatus.ACTIVE.value, updated_at=now)
            )
            conn.execute(
                client_events.insert(),
                [
                    {"client_id": i, "at": now, "kind": "unsuppressed", "detail": reason}
                    for i in bounced
                ],
            )
    return Unsuppression(bool(removed), len(bounced))


def _suppression_count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(suppressions)).scalar_one())


# ----------------------------------------------------------------------------- consent


@dataclass
class ConsentChange:
    """A client's marketing consent set by the operator (`followup consent`)."""

    client: str
    before: str
    consent: str
    source: str
    at: datetime


def set_consent(
    engine: Engine, key: str, consent: Consent, source: str, at: datetime, now: datetime
) -> ConsentChange:
    """Set the marketing consent of the client with this id (or, failing that, this only
    address), who said so (`source`) and when (`at`), with a `client_events` row "consent"
    for its history. The next plan reads it (the plan version rises), and touches already
    planned are decided with it when they are due."""
    check_ready(engine)
    c = clients
    with engine.begin() as conn:
        found = _client(conn, key)
        conn.execute(
            update(c)
            .where(c.c.id == found.id)
            .values(
                marketing_consent=consent.value,
                consent_source=source,
                consent_at=at,
                updated_at=now,
            )
        )
        detail = (
            f"{found.marketing_consent} -> {consent.value} (source: {source}; at {at.isoformat()})"
        )
        conn.execute(
            client_events.insert().values(client_id=found.id, at=now, kind="consent", detail=detail)
        )
    return ConsentChange(
        str(found.external_id), str(found.marketing_consent), consent.value, source, at
    )


# ----------------------------------------------------------------------------- surveys


def record_survey(engine: Engine, touch_id: int, score: int, now: datetime) -> bool:
    """Records a satisfaction score (1-5) for a survey touch; a second answer replaces the
    first. Returns False when the touch does not exist."""
    if not 1 <= score <= 5:
        raise ValueError("a score is 1 to 5")
    t, a = touches, survey_answers
    with engine.begin() as conn:
        client = conn.execute(select(t.c.client_id).where(t.c.id == touch_id)).scalar()
        if client is None:
            return False
        ledger_for(conn).upsert(
            conn,
            a,
            [{"touch_id": touch_id, "client_id": client, "score": score, "answered_at": now}],
            key="touch_id",
        )
    return True


# ----------------------------------------------------------------------------- data protection


def _client(conn: Connection, key: str) -> Any:
    """The client with this external id, else the only client with this e-mail address."""
    c = clients
    row = conn.execute(select(c).where(c.c.external_id == key)).first()
    if row is not None:
        return row
    rows = conn.execute(select(c).where(func.lower(c.c.email) == key.strip().lower())).all()
    if not rows:
        raise NotFound(f"no client with id or e-mail {key!r}")
    if len(rows) > 1:
        ids = ", ".join(sorted(str(r.external_id) for r in rows))
        raise FollowupError(f"{len(rows)} clients have the address {key!r} ({ids}): give the id")
    return rows[0]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def export_client(engine: Engine, key: str) -> dict[str, Any]:
    """Everything followup holds about one client (by external id or e-mail), as JSON-ready
    data: the client, their rep, purchases, touches with their history, survey answers, and
    whether their address is suppressed."""
    check_ready(engine)
    r, p, t, e = (
        reps,
        purchases,
        touches,
        touch_events,
    )
    with reader(engine) as conn:
        client = _client(conn, key)
        data: dict[str, Any] = {
            "client": {k: _plain(v) for k, v in client._mapping.items() if k != "id"},
        }
        if client.rep_id is not None:
            rep = conn.execute(
                select(r.c.external_id, r.c.name, r.c.email).where(r.c.id == client.rep_id)
            ).first()
            data["client"]["rep"] = None if rep is None else dict(rep._mapping)
        data["client"].pop("rep_id", None)
        data["purchases"] = [
            {k: _plain(v) for k, v in row._mapping.items() if k not in ("id", "client_id")}
            for row in conn.execute(
                select(p).where(p.c.client_id == client.id).order_by(p.c.purchased_at)
            )
        ]
        kept = []
        signers = {row.id: row.external_id for row in conn.execute(select(r.c.id, r.c.external_id))}
        for row in conn.execute(
            select(t).where(t.c.client_id == client.id).order_by(t.c.due_at, t.c.id)
        ):
            touch = {
                k: _plain(v)
                for k, v in row._mapping.items()
                if k not in ("client_id", "lease_owner", "lease_expires_at", "rep_id")
            }
            touch["rep"] = signers.get(row.rep_id)
            touch["history"] = [
                {k: _plain(v) for k, v in ev._mapping.items() if k not in ("id", "touch_id")}
                for ev in conn.execute(
                    select(e).where(e.c.touch_id == row.id).order_by(e.c.at, e.c.id)
                )
            ]
            kept.append(touch)
        data["touches"] = kept
        a = survey_answers
        data["survey_answers"] = [
            {"touch_id": row.touch_id, "score": row.score, "answered_at": _plain(row.answered_at)}
            for row in conn.execute(select(a).where(a.c.client_id == client.id))
        ]
        data["suppressed"] = suppressed(conn, client.email)
    return data


@dataclass
class ErasureTarget:
    """What an erasure must find outside the database before it erases: the address, the
    name and the Message-IDs of the client's messages (copies in the capture maildir)."""

    client_id: int
    external_id: str
    email: str
    names: tuple[str, ...]
    message_ids: list[str]


def erasure_target(engine: Engine, key: str) -> ErasureTarget:
    """The client with this external id or e-mail, as `ErasureTarget`."""
    check_ready(engine)
    t = touches
    with reader(engine) as conn:
        client = _client(conn, key)
        ids = conn.execute(
            select(t.c.message_id).where(t.c.client_id == client.id, t.c.message_id.is_not(None))
        ).scalars()
        names = (str(client.first_name), str(client.last_name))
        return ErasureTarget(
            client_id=int(client.id),
            external_id=str(client.external_id),
            email=str(client.email),
            names=tuple(n for n in (*names, " ".join(names).strip()) if n.strip()),
            message_ids=[str(m) for m in ids],
        )


@dataclass
class Erasure:
    client_id: int
    touches_kept: int
    purchases_removed: int


def erase_client(engine: Engine, key: str, now: datetime) -> Erasure:
    """Removes everything that identifies or describes a client: name, address, birthday,
    locale, zone, country, tier, tags, purchases, survey answers, the client's events, and
    from the touches their dates (the year stays), Message-IDs and replies; the address and
    name from the runs' details. Keeps the touches (campaign, status, year: for counts) and
    the keyed hash of the address on the suppression list, so that importing the same
    address again never brings mailing back. On SQLite, what is deleted or replaced is
    overwritten with zeros (secure_delete); `privacy.vacuum` then leaves no free page."""
    check_ready(engine)
    c, p, s = clients, purchases, suppressions
    with engine.begin() as conn:
        privacy.secure_delete(conn, True)
        client = _client(conn, key)
        client_id = int(client.id)
        email = str(client.email)
        kept = privacy.anonymise_touches(conn, client_id, now)
        removed = conn.execute(delete(p).where(p.c.client_id == client_id)).rowcount
        conn.execute(delete(survey_answers).where(survey_answers.c.client_id == client_id))
        conn.execute(delete(client_events).where(client_events.c.client_id == client_id))
        conn.execute(
            client_events.insert().values(client_id=client_id, at=now, kind="erased", detail=None)
        )
        conn.execute(delete(s).where(s.c.email == email.strip().lower()))
        digest = privacy.keyed_hash(privacy.address_key(conn), email)
        ledger_for(conn).suppress(conn, digest, "erased", now)
        privacy.scrub_runs(conn, [email, f"{client.first_name} {client.last_name}"])
        conn.execute(
            update(c)
            .where(c.c.id == client_id)
            .values(
                external_id=f"erased-{client_id}",
                email=f"erased-{client_id}@erased.invalid",
                first_name="",
                last_name="",
                locale="",
                timezone="UTC",
                country="",
                birthday_month=None,
                birthday_day=None,
                birthday_year=None,
                tier="",
                tags="",
                status=ClientStatus.ERASED.value,
                # Who said so may name the client ("Ann Lee at the counter"), and when dates
                # them; no marketing after an erasure.
                marketing_consent=Consent.NO.value,
                consent_source=None,
                consent_at=None,
                updated_at=now,
            )
        )
        privacy.secure_delete(conn, False)
    return Erasure(client_id, kept, int(removed or 0))


def preview_client(engine: Engine, external_id: str) -> Recipient:
    """A client from the database, with their latest paid purchase (if any), for previews."""
    check_ready(engine)
    with reader(engine) as conn:
        found = latest_purchase_recipient(conn, external_id)
    if found is None:
        raise NotFound(f"no client with id {external_id!r} in the database")
    return found
