"""The ledger: every state change of a touch, the claims and leases that make delivery at most
once, and the bulk writes of imports and plans.

The rules are written once, in `Ledger`; each database has one implementation of the
statements that differ (storage.sqlite, storage.postgres), readable top to bottom for that
database; `storage.dialects.ledger_for(engine or connection)` gives the one to use.

Every method runs in the caller's transaction (`engine.begin()`, or `writing(engine)` in a
coroutine) and commits nothing: a crash at any line leaves the transaction undone, never half
written. Each state change is guarded by the status it expects, with its `touch_events` row.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Insert, Select, Table, bindparam, or_, select, update

from followup.domain.statuses import WAITING, ClientStatus, Consent, TouchStatus
from followup.domain.touches import DueTouch, NewTouch
from followup.logs import log_event
from followup.owners import gone
from followup.storage.engine import CHUNK, chunks
from followup.storage.tables import clients, runs, suppressions, touches, watermarks

#: One row of a touch's history: (touch id, at, from status, to status, detail).
Event = tuple[int, datetime, str | None, str, str | None]
#: What inserting touches returns for each row this call created: (id, status, reason,
#: campaign).
Created = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """One touch's state change for `Ledger.transition_many`."""

    touch_id: int
    to_status: TouchStatus
    at: datetime
    detail: str | None
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HandOff:
    """One touch handed to the mailer: its Message-ID and the other columns set with it."""

    touch_id: int
    message_id: str
    values: dict[str, Any]


class Ledger(ABC):
    """The ledger's rules on one database."""

    # ------------------------------------------------------------------ the database's own

    @abstractmethod
    def insert(self, table: Table) -> Insert:
        """An INSERT with this database's ON CONFLICT clauses."""

    @abstractmethod
    def insert_new_touches(
        self, conn: Connection, batch: list[NewTouch], now: datetime
    ) -> list[Created]:
        """Insert-if-absent on the touch key; the rows this call created (several planners may
        insert at once: only the database can say which rows are this call's)."""

    @abstractmethod
    def insert_events(self, conn: Connection, rows: Sequence[Event]) -> None:
        """History rows, in one statement."""

    @abstractmethod
    def claim(
        self, conn: Connection, owner: str, now: datetime, lease: timedelta, limit: int
    ) -> list[tuple[int, str]]:
        """Take a lease on up to `limit` due touches, oldest first, in one statement after
        their selection (which, on a database with row locks, skips those another claimer
        holds); returns (id, status before) of each. The lease runs `lease` from
        `database_time`."""

    def database_time(self, conn: Connection) -> datetime:
        """The clock leases are written and judged by: the database's own where it has one,
        so that processes whose clocks disagree agree on whose lease ran out (PostgreSQL);
        else this machine's (SQLite: one machine, one clock). Never the run's `now`, which
        FOLLOWUP_NOW moves for rehearsals: a rehearsal must not take a daemon's leases."""
        return datetime.now(UTC)

    @abstractmethod
    def still_in(self, conn: Connection, ids: list[int], status: TouchStatus) -> set[int]:
        """Those of `ids` in `status`, held unchanged until the end of the transaction."""

    @abstractmethod
    def apply_changes(
        self,
        conn: Connection,
        from_status: TouchStatus,
        columns: tuple[str, ...],
        group: list[Change],
    ) -> None:
        """The UPDATE of `group` (changes of the same `columns`), guarded by `from_status`."""

    @abstractmethod
    def hand_off_group(
        self,
        conn: Connection,
        columns: tuple[str, ...],
        group: list[HandOff],
        owner: str,
        now: datetime,
        lease: timedelta,
    ) -> int:
        """Set the Message-ID (and `columns`) of touches still leased by `owner` whose lease
        has not run out, renewing it for `lease` (both on `database_time`); returns how many
        rows changed."""

    @abstractmethod
    def sent_since(self, conn: Connection, since: datetime) -> int:
        """How many touches were sent at or after `since` (their last change: being sent), for
        the hourly and daily limits; counted in ix_touches_sent, which holds only sent touches."""

    @abstractmethod
    def mark_planned(self, conn: Connection, versions: Sequence[tuple[int, int]]) -> None:
        """Record (client id, plan_version) for clients a plan has just read at that version,
        in the transaction that inserts their touches. A version only rises: a slower planner
        that read an older one leaves the newer one, and the client is read again if it is
        still stale."""

    @abstractmethod
    def upsert(
        self,
        conn: Connection,
        table: Table,
        rows: Sequence[dict[str, Any]],
        key: str,
        keep: Sequence[str] = (),
    ) -> None:
        """Insert rows (each with the same columns); rows whose `key` exists are updated,
        except the columns in `keep`."""

    def by_external_id(
        self, conn: Connection, table: Table, external_ids: Iterable[str], *columns: str
    ) -> Iterator[Any]:
        """The external_id, id and `columns` of `table`'s rows with these external ids."""
        selected = (table.c.external_id, table.c.id, *(table.c[name] for name in columns))
        return self.by_key(conn, table.c.external_id, external_ids, selected, most=1)

    @abstractmethod
    def by_key(
        self, conn: Connection, key: Any, values: Iterable[str], selected: Any, most: int
    ) -> Iterator[Any]:
        """`selected` of the rows whose `key` (column or indexed expression) is in `values`."""

    @abstractmethod
    def rows(self, conn: Connection, statement: Select[Any], **values: Any) -> list[Any]:
        """`conn.execute(statement, values).all()`, the rows read by name or by position. The
        statement is built once by the caller (it may be kept by it)."""

    # ------------------------------------------------------------------ the rules, once

    def insert_touches(
        self,
        conn: Connection,
        new: Iterable[NewTouch],
        now: datetime,
        created_by_status: dict[str, int] | None = None,
        created_by_campaign: dict[str, int] | None = None,
    ) -> int:
        """Insert-if-absent on (client, campaign, occurrence); returns how many were new, and
        counts them by status and by campaign in the dicts given.

        The database refuses duplicates; the code just tries. Two planners running at once
        therefore never create the same touch twice."""
        inserted = 0
        for batch in chunks(new):
            created = self.insert_new_touches(conn, batch, now)
            self.insert_events(conn, [(row[0], now, None, row[1], row[2]) for row in created])
            inserted += len(created)
            for counts, at in ((created_by_status, 1), (created_by_campaign, 3)):
                if counts is not None:
                    for row in created:
                        counts[row[at]] = counts.get(row[at], 0) + 1
        return inserted

    def claim_due(
        self, conn: Connection, owner: str, now: datetime, lease: timedelta, limit: int
    ) -> list[int]:
        """Take a lease on up to `limit` due touches; returns their ids.

        One statement, so that a crash leaves each touch either unclaimed or claimed with a
        lease. Several daemons (PostgreSQL) claim disjoint sets without waiting."""
        found = self.claim(conn, owner, now, lease, limit)
        detail = f"claimed by {owner}"
        sending = TouchStatus.SENDING.value
        self.insert_events(conn, [(touch_id, now, was, sending, detail) for touch_id, was in found])
        return [touch_id for touch_id, _ in found]

    def transition(
        self,
        conn: Connection,
        touch_id: int,
        from_status: TouchStatus,
        to_status: TouchStatus,
        now: datetime,
        detail: str | None = None,
        **values: Any,
    ) -> bool:
        """Move one touch between states, guarded by its current status; keeps the history
        row. Returns False (and changes nothing) when the touch was no longer in
        `from_status`."""
        result = conn.execute(
            transition_statement(tuple(sorted(values))),
            {
                "_id": touch_id,
                "_from": from_status.value,
                "status": to_status.value,
                "updated_at": now,
                **values,
            },
        )
        if result.rowcount != 1:
            return False
        self.insert_events(conn, [(touch_id, now, from_status.value, to_status.value, detail)])
        return True

    def transition_many(
        self, conn: Connection, from_status: TouchStatus, changes: Sequence[Change]
    ) -> list[bool]:
        """`transition` for many touches: touches that change the same columns share one
        statement. Returns, per change, whether the touch was still in `from_status` (if not,
        it is left as it is, without a history row)."""
        ids = [change.touch_id for change in changes]
        still: set[int] = set()
        for chunk in chunks(ids, CHUNK):
            still |= self.still_in(conn, chunk, from_status)
        groups: dict[tuple[str, ...], list[Change]] = {}
        for change in changes:
            if change.touch_id in still:
                groups.setdefault(tuple(sorted(change.values)), []).append(change)
        for columns, group in groups.items():
            self.apply_changes(conn, from_status, columns, group)
        self.insert_events(
            conn,
            [
                (c.touch_id, c.at, from_status.value, c.to_status.value, c.detail)
                for c in changes
                if c.touch_id in still
            ],
        )
        return [change.touch_id in still for change in changes]

    def hand_off_many(
        self,
        conn: Connection,
        hand_offs: Sequence[HandOff],
        owner: str,
        now: datetime,
        lease: timedelta,
    ) -> list[bool]:
        """Just before the SMTP transactions: renew our leases and mark the touches as handed
        to the mailer (the Message-ID set, with their other `values`, e.g. the variant).
        Returns, per touch, whether it is ours to send: False when its lease was lost, and
        then nothing may be sent."""
        groups: dict[tuple[str, ...], list[HandOff]] = {}
        for item in hand_offs:
            groups.setdefault(tuple(sorted(item.values)), []).append(item)
        changed = sum(
            self.hand_off_group(conn, columns, group, owner, now, lease)
            for columns, group in groups.items()
        )
        if changed == len(hand_offs):
            return [True] * len(hand_offs)
        # Some lease was lost: ours are the rows that now carry our lease and Message-ID.
        ours = {
            (row.id, row.message_id)
            for row in conn.execute(
                select(touches.c.id, touches.c.message_id).where(
                    touches.c.id.in_([item.touch_id for item in hand_offs]),
                    touches.c.status == TouchStatus.SENDING.value,
                    touches.c.lease_owner == owner,
                    touches.c.updated_at == now,
                )
            )
        }
        return [(item.touch_id, item.message_id) in ours for item in hand_offs]

    def release(self, conn: Connection, touch_ids: Sequence[int], owner: str, now: datetime) -> int:
        """Give back claimed touches that were never handed to the mailer: they return to the
        queue (planned, or retry if tried before) with the attempt taken back."""
        rows = conn.execute(
            select(touches.c.id, touches.c.attempts).where(
                touches.c.id.in_(list(touch_ids)),
                touches.c.status == TouchStatus.SENDING.value,
                touches.c.lease_owner == owner,
            )
        ).all()
        for row in rows:
            back = TouchStatus.PLANNED if row.attempts <= 1 else TouchStatus.RETRY
            self.transition(
                conn,
                row.id,
                TouchStatus.SENDING,
                back,
                now,
                detail=f"released unsent by {owner}",
                lease_owner=None,
                lease_expires_at=None,
                message_id=None,
                attempts=max(row.attempts - 1, 0),
            )
        return len(rows)

    def wait(
        self, conn: Connection, touch_id: int, attempts: int, until: datetime, now: datetime
    ) -> bool:
        """A claimed touch that may not go out now (outside its send window) goes back to the
        queue until `until`, the claim's attempt taken back."""
        return self.transition(
            conn,
            touch_id,
            TouchStatus.SENDING,
            TouchStatus.PLANNED if attempts <= 1 else TouchStatus.RETRY,
            now,
            f"outside the send window; next at {until.isoformat()}",
            next_attempt_at=until,
            attempts=max(attempts - 1, 0),
            lease_owner=None,
            lease_expires_at=None,
        )

    def settle(
        self, conn: Connection, touch_id: int, to_status: TouchStatus, reason: str, now: datetime
    ) -> bool:
        """A claimed touch ends here without being sent: skipped or failed, with the reason."""
        return self.transition(
            conn,
            touch_id,
            TouchStatus.SENDING,
            to_status,
            now,
            reason,
            reason=reason,
            lease_owner=None,
            lease_expires_at=None,
        )

    def hold(
        self,
        conn: Connection,
        touch: DueTouch,
        reason: str,
        now: datetime,
        delay: timedelta,
    ) -> bool:
        """A claimed touch whose template did not render waits, held with the error as its
        reason, the claim's attempt taken back. It is tried again after `delay` (never later
        than its lateness limit): it goes out once the template is fixed, or is skipped too
        late."""
        return self.transition(
            conn,
            touch.id,
            TouchStatus.SENDING,
            TouchStatus.HELD,
            now,
            reason,
            reason=reason,
            next_attempt_at=min(now + delay, touch.not_after),
            attempts=max(touch.attempts - 1, 0),
            lease_owner=None,
            lease_expires_at=None,
        )

    def retry_failed(self, conn: Connection, touch_ids: Sequence[int], now: datetime) -> int:
        """The operator decided (`followup retry`): failed touches go back to the queue, due
        now, with a day to go out and their attempts counted afresh. Only failed touches move
        (guarded): a sent or uncertain one, which the server may hold, never does. Returns how
        many moved."""
        moved = 0
        for touch_id in touch_ids:
            moved += self.transition(
                conn,
                touch_id,
                TouchStatus.FAILED,
                TouchStatus.PLANNED,
                now,
                detail="retry requested by the operator",
                reason=None,
                next_attempt_at=now,
                not_after=now + timedelta(days=1),
                attempts=0,
            )
        return moved

    def expire_leases(
        self,
        conn: Connection,
        now: datetime,
        owners_gone: Callable[[Collection[str]], Collection[str]] = gone,
    ) -> int:
        """Touches left in "sending" past their lease (on `database_time`), or whose owner is
        gone (`owners_gone`: a process of this host that no longer runs). Those never handed
        to the mailer go back to the queue; those handed over may have been accepted by the
        server: they become uncertain and are reported, never resent on their own. Returns
        how many are uncertain."""
        sending = touches.c.status == TouchStatus.SENDING.value
        owners = conn.execute(select(touches.c.lease_owner).where(sending).distinct()).scalars()
        dead = set(owners_gone([owner for owner in owners if owner is not None]))
        for owner in sorted(dead):
            log_event("owner.gone", owner=owner)
        expired = touches.c.lease_expires_at < self.database_time(conn)
        stale = conn.execute(
            select(touches.c.id, touches.c.lease_owner, touches.c.message_id).where(
                sending, expired | touches.c.lease_owner.in_(sorted(dead))
            )
        ).all()
        for row in stale:
            if row.message_id is None:
                self.release(conn, [row.id], str(row.lease_owner), now)
        handed = [row for row in stale if row.message_id is not None]
        for row in handed:
            owner = row.lease_owner
            what = f"{owner} is gone" if owner in dead else f"lease of {owner} expired"
            self._uncertain(conn, row.id, now, f"{what} while sending")
        return len(handed)

    def settle_owner(self, conn: Connection, owner: str, now: datetime) -> tuple[int, int]:
        """A stopping worker gives up its leases now instead of letting them expire: the same
        rule as `expire_leases`, for the touches of one owner. Returns (released, uncertain)."""
        rows = conn.execute(
            select(touches.c.id, touches.c.message_id).where(
                touches.c.status == TouchStatus.SENDING.value, touches.c.lease_owner == owner
            )
        ).all()
        unsent = [row.id for row in rows if row.message_id is None]
        released = self.release(conn, unsent, owner, now)
        uncertain = sum(
            self._uncertain(conn, row.id, now, f"{owner} stopped while sending")
            for row in rows
            if row.message_id is not None
        )
        return released, uncertain

    def _uncertain(self, conn: Connection, touch_id: int, now: datetime, what: str) -> bool:
        """A touch handed to the mailer whose sender is gone: the server may have taken it."""
        return self.transition(
            conn,
            touch_id,
            TouchStatus.SENDING,
            TouchStatus.UNCERTAIN,
            now,
            detail=f"{what}; the server may have accepted the message",
            reason="uncertain: the sender stopped while sending",
            lease_owner=None,
            lease_expires_at=None,
        )

    def requeue_uncertain(self, conn: Connection, now: datetime, operator: str) -> int:
        """The operator decided: uncertain touches are sent again (their Message-ID is
        unchanged, so a receiving system that saw the first copy can recognise the second)."""
        rows = conn.execute(
            select(touches.c.id).where(touches.c.status == TouchStatus.UNCERTAIN.value)
        ).all()
        for row in rows:
            self.transition(
                conn,
                row.id,
                TouchStatus.UNCERTAIN,
                TouchStatus.RETRY,
                now,
                detail=f"resend requested by {operator}",
                reason=None,
                next_attempt_at=now,
                not_after=now + timedelta(days=1),
            )
        return len(rows)

    def skip_too_late(self, conn: Connection, now: datetime) -> int:
        """Due touches past their lateness limit are recorded as skipped, never sent late."""
        late = conn.execute(
            select(touches.c.id, touches.c.status).where(
                touches.c.status.in_(WAITING),
                touches.c.not_after < now,
                # Implied (a waiting touch's next attempt is never after its lateness limit),
                # and the index's: only the due touches are read, not the whole queue planned
                # ahead, at the start of each dispatch run (bench/RESULTS.md).
                touches.c.next_attempt_at <= now,
            )
        ).all()
        for row in late:
            self.transition(
                conn,
                row.id,
                TouchStatus(row.status),
                TouchStatus.SKIPPED,
                now,
                detail="too late",
                reason="too late",
            )
        return len(late)

    def suppress(
        self, conn: Connection, email: str, reason: str, now: datetime, detail: str | None = None
    ) -> None:
        """Never mail this address again for marketing (kept lower-cased); idempotent."""
        statement = (
            self.insert(suppressions)
            .values(email=email.lower(), reason=reason, detail=detail, created_at=now)
            .on_conflict_do_nothing(index_elements=["email"])  # type: ignore[attr-defined]
        )
        conn.execute(statement)

    def bounce(
        self, conn: Connection, client_id: int, email: str, now: datetime, detail: str
    ) -> None:
        """A recipient's own permanent failure: the address is suppressed, the client bounced."""
        self.suppress(conn, email, "bounced", now, detail=detail)
        conn.execute(
            update(clients)
            .where(clients.c.id == client_id)
            .values(status=ClientStatus.BOUNCED.value, updated_at=now)
        )

    def unsubscribe(self, conn: Connection, client_id: int, now: datetime) -> bool:
        """One-click unsubscribe: suppress the client's address, mark an active client
        unsubscribed (a bounced or do-not-contact client keeps that stronger status), and set
        the client's marketing consent to no, its source "unsubscribe", at `now`.
        Idempotent (a second unsubscribe keeps the first one's date); False when no such
        client exists."""
        c = clients
        row = conn.execute(select(c.c.email).where(c.c.id == client_id)).first()
        if row is None:
            return False
        status = ClientStatus.UNSUBSCRIBED.value
        self.suppress(conn, str(row.email), status, now, detail="one-click")
        conn.execute(
            update(c)
            .where(c.c.id == client_id, c.c.status == ClientStatus.ACTIVE.value)
            .values(status=status, updated_at=now)
        )
        no, source = Consent.NO.value, UNSUBSCRIBE_SOURCE
        conn.execute(
            update(c)
            .where(
                c.c.id == client_id,
                or_(c.c.marketing_consent != no, c.c.consent_source.is_distinct_from(source)),
            )
            .values(marketing_consent=no, consent_source=source, consent_at=now, updated_at=now)
        )
        return True

    def id_map(self, conn: Connection, table: Table, external_ids: Iterable[str]) -> dict[str, int]:
        """external id -> internal id for the given ids."""
        return {row.external_id: row.id for row in self.by_external_id(conn, table, external_ids)}

    def set_watermark(self, conn: Connection, campaign: str, until: datetime) -> None:
        self.upsert(conn, watermarks, [{"campaign": campaign, "planned_until": until}], "campaign")

    def record_run(
        self,
        conn: Connection,
        kind: str,
        owner: str,
        started_at: datetime,
        finished_at: datetime,
        outcome: str,
        detail: str | None = None,
    ) -> None:
        """Keep the last run of a periodic job (by any instance)."""
        row = {
            "kind": kind,
            "owner": owner[:128],
            "started_at": started_at,
            "finished_at": finished_at,
            "outcome": outcome,
            "detail": detail,
        }
        self.upsert(conn, runs, [row], key="kind")


#: The consent source an unsubscribe records.
UNSUBSCRIBE_SOURCE = "unsubscribe"


@functools.cache
def transition_statement(columns: tuple[str, ...]) -> Any:
    """One statement per set of columns, built once: the dispatcher runs it for every touch."""
    return (
        update(touches)
        .where(touches.c.id == bindparam("_id"), touches.c.status == bindparam("_from"))
        .values(
            status=bindparam("status"),
            updated_at=bindparam("updated_at"),
            **{column: bindparam(column) for column in columns},
        )
    )
