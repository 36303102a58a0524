"""Data protection in the database: the keyed hash the suppression list keeps of an erased
client's address, an erased client's touches reduced to what the counts need, and the bytes
of deleted rows wiped (SQLite's secure_delete, VACUUM and a truncated WAL; PostgreSQL's
VACUUM (FULL)).

The keyed hash is HMAC-SHA256, under this installation's own key (the `installation` table,
made by migration 0008), of the SHA-256 of the lower-cased address. The SHA-256 inside is
what followup stored before 0008, so the migration could re-key those rows without knowing
the addresses. Without the key (a copy of the suppressions alone), a list of candidate
addresses cannot be checked against the hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update

from followup.domain.statuses import WAITING, TouchStatus
from followup.errors import DatabaseNotReady
from followup.storage.tables import installation, runs, touch_events, touches

#: The prefix of a keyed hash in suppressions.email (an address has no colon before its @).
KEYED = "hmac-sha256:"

#: The tables an erasure writes to: the ones whose dead rows VACUUM (FULL) rewrites away.
ERASED_TABLES = (
    "clients",
    "purchases",
    "touches",
    "touch_events",
    "suppressions",
    "survey_answers",
    "client_events",
    "runs",
)


def address_digest(email: str) -> str:
    """SHA-256 of the lower-cased address, hexadecimal: the input of the keyed hash."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def keyed_hash(key: bytes, email: str) -> str:
    """What the suppression list keeps of an erased client's address."""
    return KEYED + hmac.new(key, address_digest(email).encode(), hashlib.sha256).hexdigest()


def address_key(conn: Connection) -> bytes:
    """This installation's key for the suppression list's hashes."""
    value = conn.execute(select(installation.c.address_key).where(installation.c.id == 1)).scalar()
    if value is None:
        raise DatabaseNotReady("the database has no installation key; run `followup db upgrade`")
    return bytes.fromhex(str(value))


def suppression_keys(conn: Connection, emails: Iterable[str]) -> dict[str, str]:
    """The suppression list's keys of these addresses -> the lower-cased address: each
    address itself and its keyed hash (an erased client's)."""
    key = address_key(conn)
    found: dict[str, str] = {}
    for email in emails:
        lowered = email.strip().lower()
        found[lowered] = lowered
        found[keyed_hash(key, lowered)] = lowered
    return found


# ----------------------------------------------------------------------------- touches


def _new_year(value: datetime | None) -> datetime | None:
    return None if value is None else datetime(value.year, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Kept:
    id: int
    campaign: str
    occurrence: date


def _occurrences(kept: list[_Kept]) -> dict[int, date]:
    """Each kept touch's new occurrence: 1 January of its year, the 2nd for a second touch
    of the same campaign that year, and so on; the touch key (client, campaign, occurrence)
    stays unique, and the day says nothing about the person."""
    used: set[tuple[str, date]] = set()
    result: dict[int, date] = {}
    for touch in sorted(kept, key=lambda k: (k.campaign, k.occurrence, k.id)):
        day = date(touch.occurrence.year, 1, 1)
        while (touch.campaign, day) in used:
            day += timedelta(days=1)
        used.add((touch.campaign, day))
        result[touch.id] = day
    return result


def _skip_waiting(conn: Connection, client_id: int, now: datetime) -> None:
    """The client's touches still waiting will never go out: skipped, with their history row."""
    t, e = touches, touch_events
    waiting = conn.execute(
        select(t.c.id, t.c.status).where(t.c.client_id == client_id, t.c.status.in_(WAITING))
    ).all()
    if waiting:
        skipped = TouchStatus.SKIPPED.value
        conn.execute(
            update(t)
            .where(t.c.id.in_([w.id for w in waiting]))
            .values(status=skipped, updated_at=now)
        )
        conn.execute(
            e.insert(),
            [
                {"touch_id": w.id, "at": now, "from_status": w.status, "to_status": skipped}
                for w in waiting
            ],
        )


def anonymise_touches(conn: Connection, client_id: int, now: datetime) -> int:
    """Reduces the client's touches to what the counts need: campaign, status, design, rep,
    attempts and the year. Occurrences and every instant become 1 January of their year;
    the locale, Message-ID (derived from the occurrence), replies and reasons go. Touches
    still waiting are skipped ("erased"): they will never go out. Returns the touches kept."""
    _skip_waiting(conn, client_id, now)
    t, e = touches, touch_events
    rows = conn.execute(
        select(
            t.c.id,
            t.c.campaign,
            t.c.occurrence,
            t.c.due_at,
            t.c.not_after,
            t.c.next_attempt_at,
            t.c.created_at,
            t.c.updated_at,
            t.c.status,
        ).where(t.c.client_id == client_id)
    ).all()
    if not rows:
        return 0
    new = _occurrences([_Kept(r.id, r.campaign, r.occurrence) for r in rows])
    # Two steps: first out of the way (year 1, where no real occurrence lies), then to the
    # new days, so that no intermediate state repeats a touch key.
    step: Any = update(t).where(t.c.id == bindparam("tid"))
    conn.execute(
        step.values(occurrence=bindparam("day")),
        [{"tid": r.id, "day": date(1, 1, 1) + timedelta(days=i)} for i, r in enumerate(rows)],
    )
    conn.execute(
        step.values(
            occurrence=bindparam("day"),
            due_at=bindparam("due"),
            not_after=bindparam("last"),
            next_attempt_at=bindparam("next"),
            created_at=bindparam("created"),
            updated_at=bindparam("updated"),
            reason=bindparam("why"),
            locale=None,
            message_id=None,
            smtp_reply=None,
            purchase_id=None,
            lease_owner=None,
            lease_expires_at=None,
        ),
        [
            {
                "tid": r.id,
                "day": new[r.id],
                "due": _new_year(r.due_at),
                "last": _new_year(r.not_after),
                "next": _new_year(r.next_attempt_at),
                "created": _new_year(r.created_at),
                "updated": _new_year(r.updated_at),
                "why": "erased" if r.status == TouchStatus.SKIPPED.value else None,
            }
            for r in rows
        ],
    )
    ids = [r.id for r in rows]
    events = conn.execute(select(e.c.id, e.c.at).where(e.c.touch_id.in_(ids))).all()
    if events:
        conn.execute(
            update(e).where(e.c.id == bindparam("eid")).values(at=bindparam("when"), detail=None),
            [{"eid": ev.id, "when": _new_year(ev.at)} for ev in events],
        )
    return len(rows)


def scrub_runs(conn: Connection, needles: Iterable[str]) -> None:
    """Removes these strings (an address, a name), in any case, from the runs' details: a
    stopped run's error may quote a server's reply naming a recipient."""
    patterns = [re.compile(re.escape(n), re.IGNORECASE) for n in needles if n.strip()]
    for row in conn.execute(select(runs.c.kind, runs.c.detail)).all():
        if row.detail is None:
            continue
        detail = str(row.detail)
        for pattern in patterns:
            detail = pattern.sub("[erased]", detail)
        if detail != row.detail:
            conn.execute(update(runs).where(runs.c.kind == row.kind).values(detail=detail))


# ----------------------------------------------------------------------------- bytes


def secure_delete(conn: Connection, on: bool) -> None:
    """SQLite: overwrite deleted and replaced content with zeros from now on, on this
    connection (PRAGMA secure_delete), instead of leaving it in free space. PostgreSQL has no
    such setting (see `vacuum`)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(f"PRAGMA secure_delete = {'ON' if on else 'OFF'}")


def vacuum(engine: Engine, *, full: bool = True) -> str:
    """Rewrites the database so that no deleted bytes remain in it; returns what was done.
    SQLite: VACUUM (a new file without free pages; with `full` only), then the WAL truncated
    to nothing (it still holds the pages of earlier transactions). A reader that stays open
    (a running daemon) can keep the WAL from being truncated: then says so. PostgreSQL:
    VACUUM (FULL) of the tables an erasure writes to (with `full` only), which rewrites them
    into new files; the old files are unlinked, but their blocks, the WAL segments and
    backups are beyond the database's reach."""
    raw = engine.raw_connection()
    try:
        driver: Any = raw.driver_connection
        if engine.dialect.name == "sqlite":
            if full:
                driver.execute("VACUUM")
            busy, _log, _done = driver.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            done = "vacuumed" if full else "not vacuumed (secure_delete only)"
            if busy:
                return f"{done}; the WAL is in use by another process, not truncated"
            return f"{done}; WAL truncated"
        if not full:
            return "not vacuumed"
        driver.autocommit = True
        try:
            driver.execute(f"VACUUM (FULL) {', '.join(ERASED_TABLES)}")
        finally:
            driver.autocommit = False
        return f"vacuumed (FULL): {', '.join(ERASED_TABLES)}"
    finally:
        raw.close()
