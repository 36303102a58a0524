"""The database boundary, on SQLite and on PostgreSQL: migrations, insert-if-absent, leases."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import bindparam, event, func, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError
from sqlmodel import SQLModel

from followup import app, care, store
from followup.config import Settings
from followup.errors import DatabaseNotReady
from followup.models import SENT_PREDICATE, TouchStatus
from followup.planner import NewTouch
from tests.conftest import SmtpServer, make_settings

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


def _client(rt: app.Runtime, external_id: str = "C1", email: str = "ann@example.com") -> int:
    with rt.engine.begin() as conn:
        store.upsert(
            conn,
            store.clients,
            [
                {
                    "external_id": external_id,
                    "email": email,
                    "first_name": "Ann",
                    "last_name": "Lee",
                    "locale": "en-US",
                    "timezone": "America/New_York",
                    "country": "US",
                    "status": "active",
                    "tier": "",
                    "tags": "",
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
            key="external_id",
        )
        return store.id_map(conn, store.clients, [external_id])[external_id]


def _touch(client_id: int, occurrence: date = date(2027, 1, 8), due: datetime = NOW) -> NewTouch:
    return NewTouch(
        client_id=client_id,
        campaign="thank_you",
        occurrence=occurrence,
        due_at=due,
        not_after=due + timedelta(days=3),
        template="thank_you",
    )


def test_migrated_schema_matches_the_models(runtime: app.Runtime) -> None:
    with runtime.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diff == []
    assert store.current_revision(runtime.engine) == store.head_revision()
    assert set(store.table_names(runtime.engine)) >= {
        "reps",
        "clients",
        "purchases",
        "touches",
        "touch_events",
        "suppressions",
    }


def test_upgrade_is_idempotent(runtime: app.Runtime) -> None:
    store.upgrade(runtime.engine)
    store.check_ready(runtime.engine)


def test_an_empty_database_is_refused_with_the_fix(database_url: str) -> None:
    engine = store.open_engine(database_url)
    with pytest.raises(DatabaseNotReady, match="followup db upgrade"):
        store.check_ready(engine)
    engine.dispose()


@given(
    instant=st.datetimes(
        min_value=datetime(1900, 1, 2),
        max_value=datetime(2200, 12, 30),
        timezones=st.sampled_from([UTC, ZoneInfo("Europe/Paris"), ZoneInfo("Pacific/Apia")]),
    )
)
def test_touches_go_into_sqlite_as_sqlalchemy_would_write_them(instant: datetime) -> None:
    # insert_touches writes SQLite's text itself: the same text as the columns' types.
    dialect = sqlite.dialect()
    due = store.touches.c.due_at.type.dialect_impl(dialect).bind_processor(dialect)
    day = store.touches.c.occurrence.type.dialect_impl(dialect).bind_processor(dialect)
    assert due is not None and day is not None
    assert store._sqlite_stamp(instant) == due(instant)
    assert store._sqlite_day(instant.date()) == day(instant.date())


def test_the_planner_reads_purchase_facts_and_instants_as_sqlalchemy_does(
    runtime: app.Runtime,
) -> None:
    ann, bob = _client(runtime, "C1"), _client(runtime, "C2", "b@example.com")
    cay = _client(runtime, "C3", "c@example.com")
    paris = ZoneInfo("Europe/Paris")
    bought = [
        (ann, datetime(2026, 3, 29, 4, 30, 0, 123456, tzinfo=paris), "paid"),
        (ann, datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "paid"),
        (ann, datetime(2025, 1, 1, tzinfo=UTC), "unpaid"),
        (bob, datetime(2026, 6, 1, 12, tzinfo=paris), "disputed"),
    ]
    with runtime.engine.begin() as conn:
        store.upsert(
            conn,
            store.purchases,
            [
                {
                    "external_id": f"P{n}",
                    "client_id": client_id,
                    "purchased_at": at,
                    "product": "Roadster",
                    "amount_minor": 100 * n,
                    "currency": "EUR",
                    "status": status,
                    "updated_at": NOW,
                }
                for n, (client_id, at, status) in enumerate(bought)
            ],
            key="external_id",
        )
        store.insert_touches(conn, [_touch(cay, due=datetime(2027, 1, 8, 10, 0, 1, 5, paris))], NOW)
    with runtime.engine.connect() as conn:
        stats = app.client_stats(conn, ann, cay)
        assert stats[ann] == care.ClientStats(
            purchases=2,
            total_spent_minor=100,
            first_purchase=bought[0][1],
            last_purchase=bought[1][1],
            has_unpaid=True,
            has_disputed=False,
        )
        assert stats[ann].first_purchase is not None
        assert stats[ann].first_purchase.tzinfo is UTC
        assert stats[bob] == care.ClientStats(has_disputed=True)
        assert app.client_stats(conn, 0, 0, ids=[bob]) == {bob: stats[bob]}
        t = store.touches.c
        for column in (t.due_at, t.not_after, t.created_at):
            raw = conn.execute(select(app._raw(column))).scalar_one()
            assert app._utc(raw) == conn.execute(select(column)).scalar_one()
            assert app._utc(raw).tzinfo is UTC


def test_rows_reads_what_sqlalchemy_reads(runtime: app.Runtime) -> None:
    """store.rows runs the dispatcher's prefetch queries through SQLite's driver: the same
    values (dates, UTC instants, booleans, NULLs), by name and by position, as
    conn.execute(...).all()."""
    ann, bob = _client(runtime, "C1"), _client(runtime, "C2", "b@example.com")
    paris = ZoneInfo("Europe/Paris")
    with runtime.engine.begin() as conn:
        store.upsert(
            conn,
            store.reps,
            [
                {
                    "external_id": "R1",
                    "name": "Rosa",
                    "email": "rosa@example.com",
                    "signature": "",
                    "active": True,
                    "updated_at": NOW,
                }
            ],
            key="external_id",
        )
        rep = store.id_map(conn, store.reps, ["R1"])["R1"]
        conn.execute(store.clients.update().where(store.clients.c.id == ann).values(rep_id=rep))
        store.upsert(
            conn,
            store.purchases,
            [
                {
                    "external_id": "P1",
                    "client_id": ann,
                    "purchased_at": datetime(2026, 3, 29, 4, 30, 0, 123456, tzinfo=paris),
                    "product": "Roadster",
                    "amount_minor": 4_200_000,
                    "currency": "EUR",
                    "status": "paid",
                    "updated_at": NOW,
                }
            ],
            key="external_id",
        )
        purchase = store.id_map(conn, store.purchases, ["P1"])["P1"]
        store.insert_touches(
            conn,
            [
                dataclasses.replace(_touch(ann), purchase_id=purchase),
                _touch(bob, date(2027, 2, 14), datetime(2027, 2, 14, 9, 0, 0, 7, paris)),
            ],
            NOW,
        )
        store.suppress(conn, "b@example.com", "bounced", NOW)
        ids = [row.id for row in conn.execute(select(store.touches.c.id))]
        conn.execute(
            store.touches.update().where(store.touches.c.client_id == ann).values(variant="sage")
        )
    queries = [
        (query, {"ids": ids}) for query in app._prefetch_queries() if "ids" in str(query)
    ] + [
        (app._prefetch_queries()[2], {"emails": ["b@example.com", "nobody@example.com"]}),
        (app._stats_query(True), {"ids": [ann, bob]}),
        (app._stats_query(False), {"lo": ann, "hi": bob}),
        (select(store.reps.c.active, store.reps.c.updated_at), {}),
    ]
    with store.reader(runtime.engine) as conn:
        for query, values in queries:
            expected = conn.execute(query, values).all()
            found = store.rows(conn, query, **values)
            assert expected, query
            assert [tuple(row) for row in found] == [tuple(row) for row in expected]
            for row, wanted in zip(found, expected, strict=True):
                for key, value in wanted._mapping.items():
                    if isinstance(key, str):
                        assert getattr(row, key) == value
        touches = store.rows(conn, app._prefetch_queries()[0], ids=ids)
    assert {type(row.occurrence) for row in touches} == {date}
    assert {row.due_at.tzinfo for row in touches} == {UTC}


def test_rows_refuses_what_it_cannot_read_as_sqlalchemy_does(tmp_path: Path) -> None:
    # A parameter that needs SQLAlchemy's processing, one without a value (SQLAlchemy raises
    # too), a column name that a row cannot have as an attribute.
    query = select(store.touches.c.id).where(store.touches.c.due_at < bindparam("now"))
    with pytest.raises(ValueError, match="'now' needs SQLAlchemy's processing"):
        store._sqlite_select(query)
    engine = store.open_engine(f"sqlite:///{tmp_path / 'rows.db'}")
    store.upgrade(engine)
    with store.reader(engine) as conn:
        with pytest.raises(ValueError, match=re.escape("no value for the parameter(s) hi")):
            store.rows(conn, app._stats_query(False), lo=1)
        labelled = select(store.touches.c.id.label("class"))
        with pytest.raises(ValueError, match="column names"):
            store.rows(conn, labelled)
    engine.dispose()


def test_insert_touches_is_insert_if_absent(runtime: app.Runtime) -> None:
    client_id = _client(runtime)
    with runtime.engine.begin() as conn:
        assert store.insert_touches(conn, [_touch(client_id)], NOW) == 1
    with runtime.engine.begin() as conn:
        assert store.insert_touches(conn, [_touch(client_id), _touch(client_id)], NOW) == 0
        assert store.insert_touches(conn, [_touch(client_id, date(2027, 1, 9))], NOW) == 1
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(store.touches)).scalar_one() == 2
        events = conn.execute(select(store.touch_events.c.to_status)).scalars().all()
    assert events == ["planned", "planned"]


def test_the_database_itself_refuses_a_second_touch_with_the_same_key(
    runtime: app.Runtime,
) -> None:
    client_id = _client(runtime)
    row = {
        "client_id": client_id,
        "campaign": "thank_you",
        "occurrence": date(2027, 1, 8),
        "status": "planned",
        "due_at": NOW,
        "not_after": NOW,
        "next_attempt_at": NOW,
        "template": "thank_you",
        "attempts": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }
    with runtime.engine.begin() as conn:
        conn.execute(store.touches.insert().values(**row))
    with pytest.raises(IntegrityError), runtime.engine.begin() as conn:
        conn.execute(store.touches.insert().values(**row))


def test_claim_takes_a_lease_once_and_history_is_kept(runtime: app.Runtime) -> None:
    client_id = _client(runtime)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id, date(2027, 1, d)) for d in range(1, 6)], NOW)
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        first = store.claim_due(conn, "a", NOW, lease, 3)
    with runtime.engine.begin() as conn:
        second = store.claim_due(conn, "b", NOW, lease, 10)
    assert len(first) == 3 and len(second) == 2
    assert not set(first) & set(second)
    with runtime.engine.begin() as conn:
        assert store.claim_due(conn, "c", NOW, lease, 10) == []
        statuses = conn.execute(select(store.touches.c.status, store.touches.c.attempts)).all()
    assert {tuple(r) for r in statuses} == {("sending", 1)}


def test_an_expired_lease_makes_the_touch_uncertain_not_resent(runtime: app.Runtime) -> None:
    client_id = _client(runtime)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id)], NOW)
        (touch_id,) = store.claim_due(conn, "crashed", NOW, timedelta(minutes=5), 10)
        assert store.hand_off(conn, touch_id, "crashed", NOW, timedelta(minutes=5), "<m@x>")
    later = NOW + timedelta(minutes=6)
    with runtime.engine.begin() as conn:
        assert store.expire_leases(conn, later) == 1
        assert store.claim_due(conn, "next", later, timedelta(minutes=5), 10) == []
        row = conn.execute(select(store.touches).where(store.touches.c.id == touch_id)).one()
        history = conn.execute(
            select(store.touch_events.c.from_status, store.touch_events.c.to_status)
            .where(store.touch_events.c.touch_id == touch_id)
            .order_by(store.touch_events.c.id)
        ).all()
    assert row.status == TouchStatus.UNCERTAIN.value
    assert [tuple(h) for h in history] == [
        (None, "planned"),
        ("planned", "sending"),
        ("sending", "uncertain"),
    ]


def test_a_touch_past_its_lateness_is_skipped_too_late(runtime: app.Runtime) -> None:
    client_id = _client(runtime)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id)], NOW)
    with runtime.engine.begin() as conn:
        assert store.skip_too_late(conn, NOW + timedelta(days=4)) == 1
        row = conn.execute(select(store.touches.c.status, store.touches.c.reason)).one()
    assert tuple(row) == ("skipped", "too late")


def test_the_late_touches_are_found_among_the_due_ones_not_the_whole_queue(
    tmp_path: Path, open_runtime: Callable[[Settings], app.Runtime]
) -> None:
    # A touch planned a month ahead is left alone and, on SQLite, not even read: the search
    # is bounded by the next attempt (the queue planned ahead can hold a million touches, and
    # each dispatch run begins with this search).
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    client_id = _client(rt)
    ahead = NOW + timedelta(days=30)
    with rt.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id), _touch(client_id, ahead.date(), ahead)], NOW)
    statements: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if statement.startswith("SELECT") and "touches" in statement:
            statements.append((statement, parameters))

    event.listen(rt.engine, "before_cursor_execute", record)
    with rt.engine.begin() as conn:
        assert store.skip_too_late(conn, NOW + timedelta(days=4)) == 1
    event.remove(rt.engine, "before_cursor_execute", record)
    with rt.engine.connect() as conn:
        rows = conn.execute(select(store.touches.c.due_at, store.touches.c.status)).all()
        raw = conn.connection.dbapi_connection
        assert raw is not None
        ((statement, parameters),) = statements
        plan = " | ".join(
            row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        )
    assert sorted((due.replace(tzinfo=UTC), status) for due, status in rows) == [
        (NOW, "skipped"),
        (ahead, "planned"),
    ]
    assert "ix_touches_due (status=? AND next_attempt_at<?)" in plan, plan


def test_transition_is_guarded_by_the_current_status(runtime: app.Runtime) -> None:
    client_id = _client(runtime)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id)], NOW)
        touch_id = conn.execute(select(store.touches.c.id)).scalar_one()
        assert not store.transition(conn, touch_id, TouchStatus.SENDING, TouchStatus.SENT, NOW)
        assert store.transition(conn, touch_id, TouchStatus.PLANNED, TouchStatus.SKIPPED, NOW)


def test_transition_many_moves_only_the_touches_still_in_the_state(
    runtime: app.Runtime,
) -> None:
    client_id = _client(runtime)
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id, date(2027, 1, d)) for d in (1, 2, 3)], NOW)
        a, b, c = sorted(store.claim_due(conn, "me", NOW, lease, 10))
        # Someone else settled b in the meantime (an expired lease, say).
        assert store.transition(conn, b, TouchStatus.SENDING, TouchStatus.UNCERTAIN, NOW)
    later = NOW + timedelta(seconds=3)
    changes = [
        store.Change(a, TouchStatus.SENT, later, "250 ok", {"message_id": "<a@x>"}),
        store.Change(b, TouchStatus.SENT, later, "250 ok", {"message_id": "<b@x>"}),
        store.Change(c, TouchStatus.RETRY, later, "451 later", {"next_attempt_at": later}),
    ]
    with runtime.engine.begin() as conn:
        assert store.transition_many(conn, TouchStatus.SENDING, changes) == [True, False, True]
        t, e = store.touches, store.touch_events
        rows = {
            r.id: (r.status, r.message_id, r.updated_at.replace(tzinfo=UTC))
            for r in conn.execute(select(t.c.id, t.c.status, t.c.message_id, t.c.updated_at))
        }
        events = conn.execute(
            select(e.c.touch_id, e.c.from_status, e.c.to_status, e.c.detail).where(
                e.c.from_status == "sending"
            )
        ).all()
    assert rows[a] == ("sent", "<a@x>", later)
    assert rows[b] == ("uncertain", None, NOW)
    assert rows[c] == ("retry", None, later)
    assert sorted(tuple(r) for r in events) == sorted(
        [
            (a, "sending", "sent", "250 ok"),
            (b, "sending", "uncertain", None),
            (c, "sending", "retry", "451 later"),
        ]
    )


def test_a_claim_records_where_each_touch_came_from(runtime: app.Runtime) -> None:
    client_id = _client(runtime)
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id, date(2027, 1, d)) for d in (1, 2)], NOW)
        first, second = sorted(store.claim_due(conn, "me", NOW, lease, 10))
        store.transition(conn, second, TouchStatus.SENDING, TouchStatus.RETRY, NOW)
        store.transition(conn, first, TouchStatus.SENDING, TouchStatus.PLANNED, NOW)
    with runtime.engine.begin() as conn:
        assert sorted(store.claim_due(conn, "again", NOW, lease, 10)) == [first, second]
        e = store.touch_events
        claims = conn.execute(
            select(e.c.touch_id, e.c.from_status, e.c.detail)
            .where(e.c.to_status == "sending", e.c.detail == "claimed by again")
            .order_by(e.c.touch_id)
        ).all()
        attempts = conn.execute(select(store.touches.c.attempts)).scalars().all()
    assert [tuple(r) for r in claims] == [
        (first, "planned", "claimed by again"),
        (second, "retry", "claimed by again"),
    ]
    assert sorted(attempts) == [2, 2]


def test_a_claim_and_its_prefetch_search_by_ids_and_clients_not_by_status(
    tmp_path: Path, open_runtime: Callable[[Settings], app.Runtime]
) -> None:
    """SQLite keeps no statistics: a `status IN (...)` term beside 10 or more ids or clients
    made it search ix_touches_due by status, so that each batch read the whole queue (the
    claim's UPDATE) or every touch ever sent (the prefetch's previous variants), and sending
    slowed down as the ledger grew. Each statement of a claim and of its prefetch is checked
    with EXPLAIN QUERY PLAN; the claim's own SELECT searches the queue by status and time."""
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    clients = [_client(rt, f"C{n}", f"c{n}@example.com") for n in range(20)]
    lease = timedelta(minutes=5)
    earlier = NOW - timedelta(days=1)
    with rt.engine.begin() as conn:
        store.insert_touches(conn, [_touch(c, date(2027, 1, 1), earlier) for c in clients], NOW)
        first = store.claim_due(conn, "me", NOW, lease, 20)
        assert len(first) == 20
        sent = [
            store.Change(touch_id, TouchStatus.SENT, NOW, "250 ok", {"variant": "sage"})
            for touch_id in first
        ]
        store.transition_many(conn, TouchStatus.SENDING, sent)
        store.insert_touches(conn, [_touch(c) for c in clients], NOW)
    # Every statement SQLite runs, with its values (some go through SQLAlchemy, some straight
    # to the driver): those of the claim and the prefetch that read touches by a list.
    statements: list[str] = []

    def record(statement: str) -> None:
        if "touches" in statement and " IN (" in statement and "INSERT" not in statement:
            statements.append(statement)

    def trace(dbapi: Any, _record: Any, _proxy: Any) -> None:
        dbapi.set_trace_callback(record)

    event.listen(rt.engine.pool, "checkout", trace)
    with rt.engine.begin() as conn:
        claimed = store.claim_due(conn, "me", NOW, lease, 20)
    with store.reader(rt.engine) as conn:
        prefetched = app._prefetch(conn, claimed)
    event.remove(rt.engine.pool, "checkout", trace)

    assert len(claimed) == 20 and not set(claimed) & set(first)
    assert {entries[0][2] for entries in prefetched.seen.values()} == {"sage"}
    assert sorted(prefetched.seen) == sorted(clients)
    plans = []
    with rt.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.set_trace_callback(None)
        for statement in statements:
            plan = " | ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + statement))
            plans.append(plan)
    # The claim's SELECT and UPDATE; the prefetch's touches, facts and previous variants.
    assert len(plans) >= 5, plans
    assert not [plan for plan in plans if "ix_touches_due (status=?)" in plan], plans
    assert any("ix_touches_due (status=? AND next_attempt_at<?)" in plan for plan in plans)


def test_a_dispatch_reads_and_writes_touches_by_id_never_by_status(
    tmp_path: Path, smtp_server: SmtpServer, open_runtime: Callable[[Settings], app.Runtime]
) -> None:
    """A claimed batch is "sending" until its outcomes are written: a statement that finds
    touches by a status term beside their ids, which SQLite (no statistics) answers by
    searching ix_touches_due by status, read the whole batch again for every group of
    outcomes recorded (a claim of 10,000 read 10,000 index entries per 8 messages). Every
    statement of a real dispatch (claim, prefetch, hand-off, record) that reads or changes
    touches is checked with EXPLAIN QUERY PLAN."""
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'followup.db'}",
        delivery={"mode": "smtp", "group_size": 4, "batch_size": 30},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
        politeness={"quiet_hours": ""},
        campaigns={"new_year_window": "00:00-00:00"},
    )
    rt = open_runtime(settings)
    clients = [_client(rt, f"C{n}", f"c{n}@example.com") for n in range(24)]
    with rt.engine.begin() as conn:
        due = NOW - timedelta(hours=1)
        greetings = [
            dataclasses.replace(
                _touch(c, date(2027, 1, 1), due), campaign="new_year", template="new_year"
            )
            for c in clients
        ]
        store.insert_touches(conn, greetings, NOW)
    # Those that find touches by their ids (the lease sweep searches by status and time).
    statements: list[str] = []
    by_ids = re.compile(r"\btouches\b.*\bid\b (?:IN \(|= )", re.DOTALL)

    def record(statement: str) -> None:
        if by_ids.search(statement) and not statement.lstrip().startswith("INSERT"):
            statements.append(statement)

    def trace(dbapi: Any, _record: Any, _proxy: Any) -> None:
        dbapi.set_trace_callback(record)

    event.listen(rt.engine.pool, "checkout", trace)
    try:
        report = asyncio.run(app.dispatch(rt, lambda: NOW, rng=random.Random(1)))
    finally:
        event.remove(rt.engine.pool, "checkout", trace)
    assert report.sent == 24
    assert len(smtp_server.handler.received) == 24
    plans: dict[str, str] = {}
    with rt.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.set_trace_callback(None)
        for statement in statements:
            rows = raw.execute("EXPLAIN QUERY PLAN " + statement)
            plans[statement] = " | ".join(row[3] for row in rows)
    # The record of the outcomes is among them: the touches were found "sending" and set "sent".
    assert any(statement.startswith("UPDATE touches SET status = 'sent'") for statement in plans), (
        list(plans)
    )
    by_status = {s: plan for s, plan in plans.items() if "ix_touches_due (status=?)" in plan}
    assert by_status == {}
    scans = {s: plan for s, plan in plans.items() if re.search(r"\bSCAN touches\b", plan)}
    assert scans == {}


def test_the_sending_limits_count_the_touches_sent_in_their_window(runtime: app.Runtime) -> None:
    # Twelve touches sent an hour apart, the latest at NOW, and one of each other status at
    # NOW: a window counts the sent ones changed at or after its start, nothing else.
    clients = [_client(runtime, f"C{n}", f"c{n}@example.com") for n in range(18)]
    others = [status for status in TouchStatus if status is not TouchStatus.SENT]
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(c) for c in clients], NOW)
        ids = list(conn.execute(select(store.touches.c.id).order_by(store.touches.c.id)).scalars())
        changes = [(i, TouchStatus.SENT, NOW - timedelta(hours=n)) for n, i in enumerate(ids[:12])]
        changes += [(i, status, NOW) for i, status in zip(ids[12:], others, strict=True)]
        for touch_id, status, at in changes:
            conn.execute(
                store.touches.update()
                .where(store.touches.c.id == touch_id)
                .values(status=status.value, updated_at=at)
            )
    with store.reader(runtime.engine) as conn:
        # The index holds the sent touches only (Alembic's comparison ignores the condition).
        if store.is_postgres(conn):
            definition = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_touches_sent'"
            ).scalar_one()
            assert definition.endswith("(status, updated_at) WHERE ((status)::text = 'sent'::text)")
        else:
            definition = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_touches_sent'"
            ).scalar_one()
            assert definition.endswith(f"(status, updated_at) WHERE {SENT_PREDICATE}")
        assert store.sent_since(conn, NOW + timedelta(seconds=1)) == 0
        assert store.sent_since(conn, NOW) == 1
        assert store.sent_since(conn, NOW - timedelta(hours=1)) == 2
        assert store.sent_since(conn, NOW - timedelta(hours=5, minutes=30)) == 6
        assert store.sent_since(conn, NOW - timedelta(days=1)) == 12
        # In another zone, the same instant.
        paris = (NOW - timedelta(hours=1)).astimezone(ZoneInfo("Europe/Paris"))
        assert store.sent_since(conn, paris) == 2
    if store.is_postgres(runtime.engine):
        # The query's own status term matches the partial index's (a bound value would not):
        # PostgreSQL can answer from it (told to here, the table being tiny).
        sent: list[tuple[str, Any]] = []

        def record(*args: Any) -> None:
            sent.append((args[2], args[3]))

        event.listen(runtime.engine, "before_cursor_execute", record)
        with store.reader(runtime.engine) as conn:
            assert store.sent_since(conn, NOW) == 1
        event.remove(runtime.engine, "before_cursor_execute", record)
        ((statement, parameters),) = [(q, p) for q, p in sent if "count(" in q]
        values = []
        for number, (name, value) in enumerate(parameters.items(), 1):
            statement = statement.replace(f"%({name})s", f"${number}")
            values.append(f"'{value.isoformat() if isinstance(value, datetime) else value}'")
        with store.reader(runtime.engine) as conn:
            # As a long-running daemon runs it: prepared (psycopg prepares a statement run
            # five times), with a generic plan, which knows no parameter's value.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql("PREPARE sent_since AS " + statement)
            explained = conn.exec_driver_sql(f"EXPLAIN EXECUTE sent_since({', '.join(values)})")
            plan = " ".join(row[0] for row in explained)
        assert "ix_touches_sent" in plan, plan


def test_the_sending_limits_count_through_the_index_of_sent_touches(
    tmp_path: Path, open_runtime: Callable[[Settings], app.Runtime]
) -> None:
    """Without statistics, SQLite searched ix_touches_due by status: each count read every
    touch ever sent (1 s with 900,000 sent, before each batch). The partial index holds only
    the sent touches, by time."""
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    statements: list[str] = []

    def trace(dbapi: Any, _record: Any, _proxy: Any) -> None:
        dbapi.set_trace_callback(statements.append)

    event.listen(rt.engine.pool, "checkout", trace)
    with store.reader(rt.engine) as conn:
        assert store.sent_since(conn, NOW) == 0
    event.remove(rt.engine.pool, "checkout", trace)
    (statement,) = [s for s in statements if "count(" in s]
    with rt.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.set_trace_callback(None)
        plan = " | ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + statement))
        indexes = {row[1]: row[4] for row in raw.execute("PRAGMA index_list(touches)")}
    assert (
        plan == "SEARCH touches USING COVERING INDEX ix_touches_sent (status=? AND updated_at>?)"
    ), plan
    assert indexes["ix_touches_sent"] == 1, "partial"


def test_suppression_is_case_insensitive_and_idempotent(runtime: app.Runtime) -> None:
    with runtime.engine.begin() as conn:
        store.suppress(conn, "Ann@Example.com", "unsubscribed", NOW)
        store.suppress(conn, "ann@example.com", "bounced", NOW)
        assert store.suppressed(conn, "ANN@example.COM") == "unsubscribed"
        assert store.suppressed(conn, "bob@example.com") is None


def test_sqlite_runs_in_wal_mode_and_the_file_is_private(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "private.db"
    engine = store.open_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert path.stat().st_mode & 0o077 == 0
    engine.dispose()


def test_an_expired_lease_on_a_touch_never_handed_over_returns_it_to_the_queue(
    runtime: app.Runtime,
) -> None:
    client_id = _client(runtime)
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id)], NOW)
        (touch_id,) = store.claim_due(conn, "crashed", NOW, lease, 10)
    later = NOW + timedelta(minutes=6)
    with runtime.engine.begin() as conn:
        assert store.expire_leases(conn, later) == 0
        assert store.claim_due(conn, "next", later, lease, 10) == [touch_id]
        # The first worker's lease is gone: it may no longer hand the touch to its mailer.
        assert not store.hand_off(conn, touch_id, "crashed", later, lease, "<m@x>")
        assert store.hand_off(conn, touch_id, "next", later, lease, "<m@x>")
        attempts = conn.execute(select(store.touches.c.attempts)).scalar_one()
    assert attempts == 1


def test_hand_off_and_transition_many_store_what_they_are_given(runtime: app.Runtime) -> None:
    # On SQLite both write through the driver in SQLite's text form: every value reads back
    # through the columns' types as it was given, and the text is SQLAlchemy's own.
    client_id = _client(runtime)
    lease = timedelta(minutes=5)
    paris = ZoneInfo("Europe/Paris")
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id, date(2027, 1, d)) for d in (1, 2)], NOW)
        a, b = sorted(store.claim_due(conn, "me", NOW, lease, 10))
    handed = NOW + timedelta(seconds=1, microseconds=250)
    with runtime.engine.begin() as conn:
        assert store.hand_off_many(
            conn,
            [store.HandOff(a, "<a@x>", {"variant": "gold"}), store.HandOff(b, "<b@x>", {})],
            "me",
            handed,
            lease,
        ) == [True, True]
    t = store.touches
    with store.reader(runtime.engine) as conn:
        row = conn.execute(
            select(t.c.lease_expires_at, t.c.message_id, t.c.updated_at, t.c.variant).where(
                t.c.id == a
            )
        ).one()
    assert [v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for v in row] == [
        handed + lease,
        "<a@x>",
        handed,
        "gold",
    ]
    dialect = sqlite.dialect()
    stamp = t.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert stamp is not None
    if not store.is_postgres(runtime.engine):
        with store.reader(runtime.engine) as conn:
            raw = conn.exec_driver_sql(
                "SELECT lease_expires_at, updated_at FROM touches WHERE id = ?", (a,)
            ).one()
        # Compared as text by expire_leases and the guards: the text must be SQLAlchemy's.
        assert tuple(raw) == (stamp(handed + lease), stamp(handed))
    retry_at = datetime(2027, 1, 10, 14, 30, 5, 123456, tzinfo=paris)
    done = NOW + timedelta(seconds=2)
    values = {
        "next_attempt_at": retry_at,
        "lease_owner": None,
        "lease_expires_at": None,
        "smtp_reply": "451 é later",
        "attempts": 7,
    }
    with runtime.engine.begin() as conn:
        assert store.transition_many(
            conn, TouchStatus.SENDING, [store.Change(a, TouchStatus.RETRY, done, "451", values)]
        ) == [True]
    with store.reader(runtime.engine) as conn:
        row = conn.execute(
            select(
                t.c.status,
                t.c.updated_at,
                t.c.next_attempt_at,
                t.c.lease_owner,
                t.c.lease_expires_at,
                t.c.smtp_reply,
                t.c.attempts,
            ).where(t.c.id == a)
        ).one()
        event = conn.execute(
            select(store.touch_events.c.at).where(
                store.touch_events.c.touch_id == a, store.touch_events.c.to_status == "retry"
            )
        ).scalar_one()
        if not store.is_postgres(conn):
            raw = conn.exec_driver_sql(
                "SELECT next_attempt_at, updated_at FROM touches WHERE id = ?", (a,)
            ).one()
            assert tuple(raw) == (stamp(retry_at), stamp(done))
            ats = conn.exec_driver_sql(
                "SELECT at FROM touch_events WHERE touch_id = ? ORDER BY id", (a,)
            ).scalars()
            # The claim's history row (at NOW), then the retry's (at done).
            assert list(ats)[-2:] == [stamp(NOW), stamp(done)]
    assert [v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for v in row] == [
        "retry",
        done,
        retry_at,
        None,
        None,
        "451 é later",
        7,
    ]
    assert event.replace(tzinfo=UTC) == done


@pytest.mark.parametrize("held", [0.05, store.QUICK_WAIT + 0.3])
def test_a_writer_waits_for_the_write_lock_held_by_another(
    tmp_path: object, held: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short waits are retried in small steps, longer ones by SQLite's own busy handler:
    # either way the second writer gets the lock once the first one commits.
    import threading
    import time
    from pathlib import Path

    url = f"sqlite:///{Path(str(tmp_path)) / 'lock.db'}"
    first, second = store.open_engine(url), store.open_engine(url)
    with first.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counter (n INTEGER)")
        conn.exec_driver_sql("INSERT INTO counter VALUES (0)")
    locked = threading.Event()
    real_sleep = time.sleep
    # The waiting writer's pauses, counted (the lock holder's own sleep is not).
    pauses: list[float] = []

    def counted(seconds: float) -> None:
        if threading.current_thread() is threading.main_thread():
            pauses.append(seconds)
        real_sleep(seconds)

    def hold() -> None:
        with first.begin() as conn:
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")
            locked.set()
            real_sleep(held)

    monkeypatch.setattr(store.time, "sleep", counted)
    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    with second.begin() as conn:
        # The first writer has committed by now: its update is seen, and added to.
        conn.exec_driver_sql("UPDATE counter SET n = n + 1")
        seen = conn.exec_driver_sql("SELECT n FROM counter").scalar_one()
        timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
    holder.join()
    assert seen == 2
    # The wait began with the short steps (50 us, doubling up to 1 ms), and SQLite's own
    # handler is back for everything else.
    assert pauses[:3] == [0.00005, 0.0001, 0.0002] and max(pauses) <= 0.001
    assert timeout == store.BUSY_TIMEOUT_MS
    first.dispose()
    second.dispose()


def _hold_write_lock(engine: Any) -> tuple[Any, Any]:
    """A thread holding SQLite's write lock on `engine` (an uncommitted increment) until the
    returned event is set; returns (thread, event), the lock taken."""
    import threading

    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    return holder, release


def _counter_engines(tmp_path: object) -> tuple[Any, Any]:
    from pathlib import Path

    url = f"sqlite:///{Path(str(tmp_path)) / 'lock.db'}"
    first, second = store.open_engine(url), store.open_engine(url)
    with first.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE counter (n INTEGER)")
        conn.exec_driver_sql("INSERT INTO counter VALUES (0)")
    return first, second


def test_a_coroutine_waiting_for_the_write_lock_lets_the_event_loop_run(
    tmp_path: object,
) -> None:
    # While another process holds SQLite's write lock, `writing` waits without blocking the
    # event loop (the dispatcher's other connections compose and send meanwhile), then gets
    # the lock, sees the other writer's commit, and commits its own write.
    import asyncio
    import time

    first, second = _counter_engines(tmp_path)

    async def main() -> tuple[int, int, int]:
        ticks = 0

        async def other_work() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 50:
                    release.set()  # the other writer commits only once the loop has run
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(other_work())
        async with store.writing(second) as conn:
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")
            seen = conn.exec_driver_sql("SELECT n FROM counter").scalar_one()
            timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
        ticker.cancel()
        return ticks, seen, timeout

    holder, release = _hold_write_lock(first)
    began = time.monotonic()
    ticks, seen, timeout = asyncio.run(main())
    holder.join()
    assert ticks >= 50 and time.monotonic() - began < 10
    assert seen == 2
    assert timeout == store.BUSY_TIMEOUT_MS
    with first.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 2
    first.dispose()
    second.dispose()


def test_many_coroutines_waiting_for_the_write_lock_hold_one_pooled_connection(
    tmp_path: object,
) -> None:
    # 40 writers (an [smtp] pool_size of 40) wait while another process holds the lock: they
    # wait one at a time, so the engine's pool (5 + 10 overflow) is never exhausted, and each
    # writes once the lock is free.
    import asyncio

    first, second = _counter_engines(tmp_path)
    holder, release = _hold_write_lock(first)
    checked_out: list[int] = []

    async def write() -> None:
        async with store.writing(second) as conn:
            checked_out.append(second.pool.checkedout())  # type: ignore[attr-defined]
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")

    async def main() -> None:
        writers = asyncio.gather(*(write() for _ in range(40)))
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.wait_for(writers, 10)

    try:
        asyncio.run(main())
    finally:
        release.set()
        holder.join()
    assert len(checked_out) == 40 and max(checked_out) == 1
    with second.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 41
    first.dispose()
    second.dispose()


def test_keeping_writer_writes_on_one_connection_and_gives_it_back(tmp_path: object) -> None:
    # Within keeping_writer, every transaction of `writing` (one failed among them) is on the
    # same pooled connection, committed or rolled back one by one, and waits for the lock
    # another process holds; afterwards the connection is back in the pool.
    import asyncio

    first, second = _counter_engines(tmp_path)
    used: list[object] = []

    async def write(fail: bool = False) -> None:
        async with store.writing(second) as conn:
            used.append(conn.connection.dbapi_connection)
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")
            if fail:
                raise RuntimeError("boom")

    async def main() -> None:
        async with store.keeping_writer(second):
            await write()
            with pytest.raises(RuntimeError):
                await write(fail=True)
            holder, release = _hold_write_lock(first)
            try:
                waiting = asyncio.gather(write(), write())
                await asyncio.sleep(0.2)
                assert not waiting.done()
                release.set()
                await asyncio.wait_for(waiting, 10)
            finally:
                release.set()
                holder.join()
            assert second.pool.checkedout() == 1  # type: ignore[attr-defined]
            with second.connect() as conn:
                assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 4

    asyncio.run(main())
    assert len(used) == 4 and len({id(dbapi) for dbapi in used}) == 1
    assert second.pool.checkedout() == 0  # type: ignore[attr-defined]
    first.dispose()
    second.dispose()


def test_a_kept_connection_is_dropped_after_a_commit_that_failed(tmp_path: object) -> None:
    # A COMMIT refused by a deferred foreign key leaves SQLite's transaction, and its write
    # lock, open where SQLAlchemy sees none: that connection is not kept, the next transaction
    # writes, and another writer gets the lock at once.
    import asyncio
    import sqlite3
    from pathlib import Path

    first, second = _counter_engines(tmp_path)
    with first.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER "
            "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )

    async def main() -> None:
        async with store.keeping_writer(second):
            with pytest.raises(IntegrityError):
                async with store.writing(second) as conn:
                    conn.exec_driver_sql("INSERT INTO child VALUES (1, 99)")
            async with store.writing(second) as conn:
                conn.exec_driver_sql("UPDATE counter SET n = n + 1")
            other = sqlite3.connect(str(Path(str(tmp_path)) / "lock.db"), timeout=0)
            other.execute("BEGIN IMMEDIATE")  # not "database is locked"
            other.rollback()
            other.close()

    asyncio.run(main())
    with second.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 1
        assert conn.exec_driver_sql("SELECT count(*) FROM child").scalar_one() == 0
    assert second.pool.checkedout() == 0  # type: ignore[attr-defined]
    first.dispose()
    second.dispose()


def test_a_kept_connection_in_use_when_keeping_ends_goes_back_after_its_transaction(
    tmp_path: object,
) -> None:
    # keeping_writer ends (awaiting nothing) while a transaction waits for the lock on the
    # kept connection: that transaction finishes on it, then gives it back to the pool.
    import asyncio

    first, second = _counter_engines(tmp_path)
    holder, release = _hold_write_lock(first)

    async def write() -> None:
        async with store.writing(second) as conn:
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")

    async def main() -> None:
        async with store.keeping_writer(second):
            waiting = asyncio.create_task(write())
            await asyncio.sleep(0.1)
        assert not waiting.done()
        assert second.pool.checkedout() == 1  # type: ignore[attr-defined]
        release.set()
        await asyncio.wait_for(waiting, 10)
        assert second.pool.checkedout() == 0  # type: ignore[attr-defined]

    try:
        asyncio.run(main())
    finally:
        release.set()
        holder.join()
    with second.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 2
    first.dispose()
    second.dispose()


def test_writing_rolls_back_on_error_and_leaves_the_connection_as_it_found_it(
    tmp_path: object,
) -> None:
    # A failed body is rolled back; the pooled connection then begins its next transactions
    # the usual way (BEGIN IMMEDIATE by the begin event: the lock is really taken).
    import asyncio
    import sqlite3
    from pathlib import Path

    first, second = _counter_engines(tmp_path)

    async def fail() -> None:
        async with store.writing(second) as conn:
            conn.exec_driver_sql("UPDATE counter SET n = 41")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        asyncio.run(fail())
    with second.begin() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 0
        # This transaction holds the write lock: another writer cannot get it at once.
        other = sqlite3.connect(str(Path(str(tmp_path)) / "lock.db"), timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
    first.dispose()
    second.dispose()


def test_writing_gives_up_with_sqlalchemys_error_when_the_lock_never_comes(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    first, second = _counter_engines(tmp_path)
    monkeypatch.setattr(store, "BUSY_TIMEOUT_MS", 200)

    async def write() -> None:
        async with store.writing(second) as conn:
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")

    holder, release = _hold_write_lock(first)
    try:
        with pytest.raises(OperationalError, match="locked"):
            asyncio.run(write())
    finally:
        release.set()
        holder.join()
    with second.begin() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 1
    first.dispose()
    second.dispose()


def test_the_driver_statements_begin_a_transaction_and_raise_sqlalchemy_errors(
    runtime: app.Runtime,
) -> None:
    # On a connection with no transaction yet, the ledger's statements are one transaction
    # (a rollback undoes them), as with SQLAlchemy's own autobegin; and an error is
    # SQLAlchemy's, whatever the database.
    client_id = _client(runtime)
    with runtime.engine.begin() as conn:
        store.insert_touches(conn, [_touch(client_id)], NOW)
        touch_id = conn.execute(select(store.touches.c.id)).scalar_one()
    change = store.Change(touch_id, TouchStatus.SKIPPED, NOW, "test", {"reason": "test"})
    with runtime.engine.connect() as conn:
        assert store.transition_many(conn, TouchStatus.PLANNED, [change]) == [True]
        assert conn.in_transaction()
        conn.rollback()
    with store.reader(runtime.engine) as conn:
        assert conn.execute(select(store.touches.c.status)).scalar_one() == "planned"
    with runtime.engine.connect() as conn, pytest.raises(IntegrityError):
        # No such touch: the history row breaks its foreign key.
        store._insert_events(conn, [(touch_id + 1000, NOW, None, "planned", None)])


def test_a_repeated_local_hour_is_stored_as_its_own_utc_instant() -> None:
    # 01:30 happens twice in New York on 7 November 2027; both compare equal as datetimes.
    dialect = sqlite.dialect()
    bind = store.touches.c.due_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    first = datetime(2027, 11, 7, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    second = first.replace(fold=1)
    assert store._sqlite_stamp(first) == bind(first) == "2027-11-07 05:30:00.000000"
    assert store._sqlite_stamp(second) == bind(second) == "2027-11-07 06:30:00.000000"


def _client_row(n: int) -> dict[str, Any]:
    return {
        "external_id": f"c{n}",
        "email": f"c{n}@example.com",
        "first_name": "A",
        "last_name": "B",
        "locale": "en",
        "timezone": "Europe/London",
        "country": "GB",
        "created_at": NOW,
        "updated_at": NOW,
    }


def test_an_upsert_fills_the_columns_defaults_and_updates_only_the_columns_given(
    runtime: app.Runtime,
) -> None:
    c = store.clients
    with runtime.engine.begin() as conn:
        store.upsert(conn, c, [_client_row(1), _client_row(2)], key="external_id")
        conn.execute(c.update().where(c.c.external_id == "c1").values(tier="vip"))
        later = NOW + timedelta(days=1)
        again = [{**_client_row(n), "first_name": "Z", "created_at": later} for n in (1, 3)]
        store.upsert(conn, c, again, key="external_id", keep=("created_at",))
        found = conn.execute(
            select(c.c.external_id, c.c.first_name, c.c.tier, c.c.status, c.c.created_at).order_by(
                c.c.external_id
            )
        ).all()
    assert [tuple(row) for row in found] == [
        # Updated: the name given; the tier (not given) and created_at (kept) stay.
        ("c1", "Z", "vip", "active", NOW),
        ("c2", "A", "", "active", NOW),
        # Inserted: the model's defaults for the tier and the status.
        ("c3", "Z", "", "active", later),
    ]


@pytest.mark.postgres
def test_lookups_by_external_id_use_the_index_on_a_table_without_statistics(
    tmp_path: Path, postgres_url: str, open_runtime: Callable[[Settings], app.Runtime]
) -> None:
    """An import looks up each batch's 500 external ids. Without statistics (a table just
    imported, or autovacuum off), PostgreSQL expected an IN list of 500 to match every row and
    read the whole table for each batch: an import of 100,000 purchases took hours."""
    rt = open_runtime(make_settings(tmp_path, postgres_url))
    c = store.clients
    statements: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        statements.append((args[2], args[3]))

    wanted = [f"c{n}" for n in range(0, 20_000, 40)]
    with rt.engine.begin() as conn:
        for part in store.chunks(range(20_000), 2_000):
            store.upsert(conn, c, [_client_row(n) for n in part], key="external_id")
        event.listen(rt.engine, "before_cursor_execute", record)
        found = store.id_map(conn, c, wanted)
        event.remove(rt.engine, "before_cursor_execute", record)
        ((statement, parameters),) = statements

        def plan(sql: str, values: Any) -> str:
            return " | ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql, values))

        # The table has no statistics: an IN list of the same ids is planned as a full read.
        listed = ", ".join(f"'{external_id}'" for external_id in wanted)
        in_list = plan(f"SELECT id FROM clients WHERE external_id IN ({listed})", {})
        assert "Seq Scan on clients" in in_list, in_list
        used = plan(statement, parameters)
    assert "Seq Scan on clients" not in used and "clients_external_id_key" in used, used
    assert len(found) == len(wanted) and found["c40"] != found["c80"]


def test_an_upsert_refuses_a_naive_datetime_and_on_postgresql_a_value_too_long(
    runtime: app.Runtime,
) -> None:
    c = store.clients
    naive = {**_client_row(1), "updated_at": datetime(2027, 1, 8, 12)}
    with (
        pytest.raises((ValueError, StatementError), match="naive"),
        runtime.engine.begin() as conn,
    ):
        store.upsert(conn, c, [naive], key="external_id")
    if store.is_postgres(runtime.engine):
        # A cast of the batch's array to the column's VARCHAR(2) would cut it silently.
        with pytest.raises(DBAPIError, match="too long"), runtime.engine.begin() as conn:
            store.upsert(conn, c, [{**_client_row(2), "country": "GBR"}], key="external_id")
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(c)).scalar() == 0
