"""The database boundary, on SQLite and on PostgreSQL: migrations, insert-if-absent, leases."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, MetaData, bindparam, event, func, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, StatementError
from sqlmodel import SQLModel

from followup.domain.clients import ClientStats
from followup.domain.statuses import TouchStatus
from followup.errors import DatabaseNotReady
from followup.runtime import Runtime
from followup.storage import engine as engine_module
from followup.storage import tables
from followup.storage.dialects import ledger_for
from followup.storage.engine import QUICK_WAIT, keeping_writer, open_engine, reader, writing
from followup.storage.ledger import Change, HandOff
from followup.storage.overview import suppressed
from followup.storage.queries import (
    _raw,
    _send_queries,
    _sent_query,
    _stats_query,
    _suppressions_query,
    _utc,
    client_stats,
)
from followup.storage.schema import (
    check_ready,
    current_revision,
    head_revision,
    table_names,
    upgrade,
)
from followup.storage.sqlite import _compiled, stamp
from followup.storage.tables import SENT_PREDICATE
from tests.support.ledger import NOW, add_client, client_row, new_touch


#: SQLite's reflection skips an index on an expression (ix_clients_email_lower, migration 0010)
#: with this warning, and so does compare_metadata: the index is compared by
#: _schema_beside_the_models (sqlite_master) and its use by tests/perf/test_query_plans.py.
def _expression_index(test: Any) -> Any:
    for message in (
        "ignore:Skipped unsupported reflection of expression-based index",
        "ignore:autogenerate skipping metadata-specified expression-based index",
    ):
        test = pytest.mark.filterwarnings(message)(test)
    return test


@_expression_index
def test_migrated_schema_matches_the_models(runtime: Runtime) -> None:
    with runtime.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diff == []
    assert current_revision(runtime.engine) == head_revision()
    assert set(table_names(runtime.engine)) >= {
        "reps",
        "clients",
        "purchases",
        "touches",
        "touch_events",
        "suppressions",
    }


def _contents(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the database holds (alembic_version and the tables the
    triggers fill included), in an order of their own."""
    tables_there = MetaData()
    tables_there.reflect(bind=engine)
    with engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for name, table in sorted(tables_there.tables.items())
        }


def _schema_beside_the_models(engine: Engine) -> list[tuple[Any, ...]]:
    """What the schema holds that compare_metadata does not compare: SQLite's definitions of
    everything (triggers included); PostgreSQL's indexes, triggers and functions."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            query = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            return [tuple(row) for row in conn.exec_driver_sql(query)]
        queries = [
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            " ORDER BY indexname",
            "SELECT trigger_name, event_manipulation, event_object_table, action_statement"
            " FROM information_schema.triggers WHERE trigger_schema = current_schema()"
            " ORDER BY 1, 2, 3",
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = current_schema() ORDER BY 1, 2",
        ]
        return [tuple(row) for query in queries for row in conn.exec_driver_sql(query)]


@_expression_index
def test_upgrade_is_idempotent(runtime: Runtime) -> None:
    """A second upgrade at head changes nothing: the revision, the schema (the models', and
    the triggers and indexes beside them), the data already there."""
    ann = add_client(runtime)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(conn, [new_touch(ann)], NOW)
        ledger_for(conn).suppress(conn, "bob@example.com", "bounced", NOW)
    data, schema = _contents(runtime.engine), _schema_beside_the_models(runtime.engine)
    assert data["clients"] and data["touches"] and data["suppressions"]
    assert current_revision(runtime.engine) == head_revision()

    upgrade(runtime.engine)
    check_ready(runtime.engine)

    assert current_revision(runtime.engine) == head_revision()
    with runtime.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diff == []
    assert _schema_beside_the_models(runtime.engine) == schema
    assert _contents(runtime.engine) == data


def test_an_empty_database_is_refused_with_the_fix(database_url: str) -> None:
    engine = open_engine(database_url)
    with pytest.raises(DatabaseNotReady, match="followup db upgrade"):
        check_ready(engine)
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
    due = tables.touches.c.due_at.type.dialect_impl(dialect).bind_processor(dialect)
    day = tables.touches.c.occurrence.type.dialect_impl(dialect).bind_processor(dialect)
    assert due is not None and day is not None
    assert stamp(instant) == due(instant)
    assert day(instant.date()) == day(instant.date())


def test_the_planner_reads_purchase_facts_and_instants_as_sqlalchemy_does(
    runtime: Runtime,
) -> None:
    ann, bob = add_client(runtime, "C1"), add_client(runtime, "C2", "b@example.com")
    cay = add_client(runtime, "C3", "c@example.com")
    paris = ZoneInfo("Europe/Paris")
    bought = [
        (ann, datetime(2026, 3, 29, 4, 30, 0, 123456, tzinfo=paris), "paid"),
        (ann, datetime(2026, 12, 31, 23, 59, tzinfo=UTC), "paid"),
        (ann, datetime(2025, 1, 1, tzinfo=UTC), "unpaid"),
        (bob, datetime(2026, 6, 1, 12, tzinfo=paris), "disputed"),
    ]
    with runtime.engine.begin() as conn:
        ledger_for(conn).upsert(
            conn,
            tables.purchases,
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
        ledger_for(conn).insert_touches(
            conn, [new_touch(cay, due=datetime(2027, 1, 8, 10, 0, 1, 5, paris))], NOW
        )
    with runtime.engine.connect() as conn:
        stats = client_stats(conn, ann, cay)
        assert stats[ann] == ClientStats(
            purchases=2,
            spent=(("EUR", 100),),
            first_purchase=bought[0][1],
            last_purchase=bought[1][1],
            has_unpaid=True,
            has_disputed=False,
        )
        assert stats[ann].first_purchase is not None
        assert stats[ann].first_purchase.tzinfo is UTC
        assert stats[bob] == ClientStats(has_disputed=True)
        assert client_stats(conn, 0, 0, ids=[bob]) == {bob: stats[bob]}
        t = tables.touches.c
        for column in (t.due_at, t.not_after, t.created_at):
            raw = conn.execute(select(_raw(column))).scalar_one()
            assert _utc(raw) == conn.execute(select(column)).scalar_one()
            assert _utc(raw).tzinfo is UTC


def test_rows_reads_what_sqlalchemy_reads(runtime: Runtime) -> None:
    """The SQLite ledger's `rows` runs the dispatcher's prefetch queries through SQLite's
    driver: the same values (dates, UTC instants, booleans, NULLs), by name and by position,
    as conn.execute(...).all()."""
    ann, bob = add_client(runtime, "C1"), add_client(runtime, "C2", "b@example.com")
    paris = ZoneInfo("Europe/Paris")
    with runtime.engine.begin() as conn:
        ledger_for(conn).upsert(
            conn,
            tables.reps,
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
        rep = ledger_for(conn).id_map(conn, tables.reps, ["R1"])["R1"]
        conn.execute(tables.clients.update().where(tables.clients.c.id == ann).values(rep_id=rep))
        ledger_for(conn).upsert(
            conn,
            tables.purchases,
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
        purchase = ledger_for(conn).id_map(conn, tables.purchases, ["P1"])["P1"]
        ledger_for(conn).insert_touches(
            conn,
            [
                dataclasses.replace(new_touch(ann), purchase_id=purchase),
                new_touch(bob, date(2027, 2, 14), datetime(2027, 2, 14, 9, 0, 0, 7, paris)),
            ],
            NOW,
        )
        ledger_for(conn).suppress(conn, "b@example.com", "bounced", NOW)
        ids = [row.id for row in conn.execute(select(tables.touches.c.id))]
        conn.execute(
            tables.touches.update().where(tables.touches.c.client_id == ann).values(variant="sage")
        )
    queries = [(query, {"ids": ids}) for query in (*_send_queries(), _sent_query())] + [
        (_suppressions_query(), {"emails": ["b@example.com", "nobody@example.com"]}),
        (_stats_query(True), {"ids": [ann, bob]}),
        (_stats_query(False), {"lo": ann, "hi": bob}),
        (select(tables.reps.c.active, tables.reps.c.updated_at), {}),
    ]
    with reader(runtime.engine) as conn:
        for query, values in queries:
            expected = conn.execute(query, values).all()
            found = ledger_for(conn).rows(conn, query, **values)
            assert expected, query
            assert [tuple(row) for row in found] == [tuple(row) for row in expected]
            for row, wanted in zip(found, expected, strict=True):
                for key, value in wanted._mapping.items():
                    if isinstance(key, str):
                        assert getattr(row, key) == value
        touches = ledger_for(conn).rows(conn, _send_queries()[0], ids=ids)
    assert {type(row.occurrence) for row in touches} == {date}
    assert {row.due_at.tzinfo for row in touches} == {UTC}


def test_rows_refuses_what_it_cannot_read_as_sqlalchemy_does(tmp_path: Path) -> None:
    # A parameter that needs SQLAlchemy's processing, one without a value (SQLAlchemy raises
    # too), a column name that a row cannot have as an attribute.
    query = select(tables.touches.c.id).where(tables.touches.c.due_at < bindparam("now"))
    with pytest.raises(ValueError, match="'now' needs SQLAlchemy's processing"):
        _compiled(query)
    engine = open_engine(f"sqlite:///{tmp_path / 'rows.db'}")
    upgrade(engine)
    with reader(engine) as conn:
        with pytest.raises(ValueError, match=re.escape("no value for the parameter(s) hi")):
            ledger_for(conn).rows(conn, _stats_query(False), lo=1)
        labelled = select(tables.touches.c.id.label("class"))
        with pytest.raises(ValueError, match="column names"):
            ledger_for(conn).rows(conn, labelled)
    engine.dispose()


def test_insert_touches_is_insert_if_absent(runtime: Runtime) -> None:
    client_id = add_client(runtime)
    with runtime.engine.begin() as conn:
        assert ledger_for(conn).insert_touches(conn, [new_touch(client_id)], NOW) == 1
    with runtime.engine.begin() as conn:
        assert (
            ledger_for(conn).insert_touches(conn, [new_touch(client_id), new_touch(client_id)], NOW)
            == 0
        )
        assert (
            ledger_for(conn).insert_touches(conn, [new_touch(client_id, date(2027, 1, 9))], NOW)
            == 1
        )
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.touches)).scalar_one() == 2
        events = conn.execute(select(tables.touch_events.c.to_status)).scalars().all()
    assert events == ["planned", "planned"]


def test_the_database_itself_refuses_a_second_touch_with_the_same_key(
    runtime: Runtime,
) -> None:
    client_id = add_client(runtime)
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
        conn.execute(tables.touches.insert().values(**row))
    with pytest.raises(IntegrityError), runtime.engine.begin() as conn:
        conn.execute(tables.touches.insert().values(**row))


def test_claim_takes_a_lease_once_and_history_is_kept(runtime: Runtime) -> None:
    client_id = add_client(runtime)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(
            conn, [new_touch(client_id, date(2027, 1, d)) for d in range(1, 6)], NOW
        )
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        first = ledger_for(conn).claim_due(conn, "a", NOW, lease, 3)
    with runtime.engine.begin() as conn:
        second = ledger_for(conn).claim_due(conn, "b", NOW, lease, 10)
    assert len(first) == 3 and len(second) == 2
    assert not set(first) & set(second)
    with runtime.engine.begin() as conn:
        assert ledger_for(conn).claim_due(conn, "c", NOW, lease, 10) == []
        statuses = conn.execute(select(tables.touches.c.status, tables.touches.c.attempts)).all()
    assert {tuple(r) for r in statuses} == {("sending", 1)}


def _hand_off(conn: Any, touch_id: int, owner: str, now: datetime, lease: timedelta) -> bool:
    """One touch handed to the mailer by `owner`: whether it was still theirs to send."""
    return ledger_for(conn).hand_off_many(
        conn, [HandOff(touch_id, "<m@x>", {})], owner, now, lease
    )[0]


def _lease_runs_out(conn: Any, touch_id: int, lease: timedelta) -> None:
    """More than `lease` passes on the lease clock (`Ledger.database_time`: the machine's or
    the database server's, not the test's `later`): the lease is moved back instead."""
    t = tables.touches
    conn.execute(
        update(t)
        .where(t.c.id == touch_id)
        .values(lease_expires_at=t.c.lease_expires_at - lease - timedelta(minutes=1))
    )


def test_an_expired_lease_makes_the_touch_uncertain_not_resent(runtime: Runtime) -> None:
    client_id = add_client(runtime)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(conn, [new_touch(client_id)], NOW)
        (touch_id,) = ledger_for(conn).claim_due(conn, "crashed", NOW, timedelta(minutes=5), 10)
        assert _hand_off(conn, touch_id, "crashed", NOW, timedelta(minutes=5))
        _lease_runs_out(conn, touch_id, timedelta(minutes=5))
    later = NOW + timedelta(minutes=6)
    with runtime.engine.begin() as conn:
        assert ledger_for(conn).expire_leases(conn, later) == 1
        assert ledger_for(conn).claim_due(conn, "next", later, timedelta(minutes=5), 10) == []
        row = conn.execute(select(tables.touches).where(tables.touches.c.id == touch_id)).one()
        history = conn.execute(
            select(tables.touch_events.c.from_status, tables.touch_events.c.to_status)
            .where(tables.touch_events.c.touch_id == touch_id)
            .order_by(tables.touch_events.c.id)
        ).all()
    assert row.status == TouchStatus.UNCERTAIN.value
    assert [tuple(h) for h in history] == [
        (None, "planned"),
        ("planned", "sending"),
        ("sending", "uncertain"),
    ]


def test_a_touch_past_its_lateness_is_skipped_too_late(runtime: Runtime) -> None:
    client_id = add_client(runtime)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(conn, [new_touch(client_id)], NOW)
    with runtime.engine.begin() as conn:
        assert ledger_for(conn).skip_too_late(conn, NOW + timedelta(days=4)) == 1
        row = conn.execute(select(tables.touches.c.status, tables.touches.c.reason)).one()
    assert tuple(row) == ("skipped", "too late")


def test_transition_is_guarded_by_the_current_status(runtime: Runtime) -> None:
    client_id = add_client(runtime)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(conn, [new_touch(client_id)], NOW)
        touch_id = conn.execute(select(tables.touches.c.id)).scalar_one()
        assert not ledger_for(conn).transition(
            conn, touch_id, TouchStatus.SENDING, TouchStatus.SENT, NOW
        )
        assert ledger_for(conn).transition(
            conn, touch_id, TouchStatus.PLANNED, TouchStatus.SKIPPED, NOW
        )


def test_transition_many_moves_only_the_touches_still_in_the_state(
    runtime: Runtime,
) -> None:
    client_id = add_client(runtime)
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(
            conn, [new_touch(client_id, date(2027, 1, d)) for d in (1, 2, 3)], NOW
        )
        a, b, c = sorted(ledger_for(conn).claim_due(conn, "me", NOW, lease, 10))
        # Someone else settled b in the meantime (an expired lease, say).
        assert ledger_for(conn).transition(conn, b, TouchStatus.SENDING, TouchStatus.UNCERTAIN, NOW)
    later = NOW + timedelta(seconds=3)
    changes = [
        Change(a, TouchStatus.SENT, later, "250 ok", {"message_id": "<a@x>"}),
        Change(b, TouchStatus.SENT, later, "250 ok", {"message_id": "<b@x>"}),
        Change(c, TouchStatus.RETRY, later, "451 later", {"next_attempt_at": later}),
    ]
    with runtime.engine.begin() as conn:
        assert ledger_for(conn).transition_many(conn, TouchStatus.SENDING, changes) == [
            True,
            False,
            True,
        ]
        t, e = tables.touches, tables.touch_events
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


def test_a_claim_records_where_each_touch_came_from(runtime: Runtime) -> None:
    client_id = add_client(runtime)
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(
            conn, [new_touch(client_id, date(2027, 1, d)) for d in (1, 2)], NOW
        )
        first, second = sorted(ledger_for(conn).claim_due(conn, "me", NOW, lease, 10))
        ledger_for(conn).transition(conn, second, TouchStatus.SENDING, TouchStatus.RETRY, NOW)
        ledger_for(conn).transition(conn, first, TouchStatus.SENDING, TouchStatus.PLANNED, NOW)
    with runtime.engine.begin() as conn:
        assert sorted(ledger_for(conn).claim_due(conn, "again", NOW, lease, 10)) == [first, second]
        e = tables.touch_events
        claims = conn.execute(
            select(e.c.touch_id, e.c.from_status, e.c.detail)
            .where(e.c.to_status == "sending", e.c.detail == "claimed by again")
            .order_by(e.c.touch_id)
        ).all()
        attempts = conn.execute(select(tables.touches.c.attempts)).scalars().all()
    assert [tuple(r) for r in claims] == [
        (first, "planned", "claimed by again"),
        (second, "retry", "claimed by again"),
    ]
    assert sorted(attempts) == [2, 2]


def test_the_sending_limits_count_the_touches_sent_in_their_window(runtime: Runtime) -> None:
    # Twelve touches sent an hour apart, the latest at NOW, and one of each other status at
    # NOW: a window counts the sent ones changed at or after its start, nothing else.
    others = [status for status in TouchStatus if status is not TouchStatus.SENT]
    clients = [add_client(runtime, f"C{n}", f"c{n}@example.com") for n in range(12 + len(others))]
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(conn, [new_touch(c) for c in clients], NOW)
        ids = list(
            conn.execute(select(tables.touches.c.id).order_by(tables.touches.c.id)).scalars()
        )
        changes = [(i, TouchStatus.SENT, NOW - timedelta(hours=n)) for n, i in enumerate(ids[:12])]
        changes += [(i, status, NOW) for i, status in zip(ids[12:], others, strict=True)]
        for touch_id, status, at in changes:
            conn.execute(
                tables.touches.update()
                .where(tables.touches.c.id == touch_id)
                .values(status=status.value, updated_at=at)
            )
    with reader(runtime.engine) as conn:
        # The index holds the sent touches only (Alembic's comparison ignores the condition).
        if conn.dialect.name == "postgresql":
            definition = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_touches_sent'"
            ).scalar_one()
            assert definition.endswith("(status, updated_at) WHERE ((status)::text = 'sent'::text)")
        else:
            definition = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_touches_sent'"
            ).scalar_one()
            assert definition.endswith(f"(status, updated_at) WHERE {SENT_PREDICATE}")
        assert ledger_for(conn).sent_since(conn, NOW + timedelta(seconds=1)) == 0
        assert ledger_for(conn).sent_since(conn, NOW) == 1
        assert ledger_for(conn).sent_since(conn, NOW - timedelta(hours=1)) == 2
        assert ledger_for(conn).sent_since(conn, NOW - timedelta(hours=5, minutes=30)) == 6
        assert ledger_for(conn).sent_since(conn, NOW - timedelta(days=1)) == 12
        # In another zone, the same instant.
        paris = (NOW - timedelta(hours=1)).astimezone(ZoneInfo("Europe/Paris"))
        assert ledger_for(conn).sent_since(conn, paris) == 2
    if runtime.engine.dialect.name == "postgresql":
        # The query's own status term matches the partial index's (a bound value would not):
        # PostgreSQL can answer from it (told to here, the table being tiny).
        sent: list[tuple[str, Any]] = []

        def record(*args: Any) -> None:
            sent.append((args[2], args[3]))

        event.listen(runtime.engine, "before_cursor_execute", record)
        with reader(runtime.engine) as conn:
            assert ledger_for(conn).sent_since(conn, NOW) == 1
        event.remove(runtime.engine, "before_cursor_execute", record)
        ((statement, parameters),) = [(q, p) for q, p in sent if "count(" in q]
        values = []
        for number, (name, value) in enumerate(parameters.items(), 1):
            statement = statement.replace(f"%({name})s", f"${number}")
            values.append(f"'{value.isoformat() if isinstance(value, datetime) else value}'")
        with reader(runtime.engine) as conn:
            # As a long-running daemon runs it: prepared (psycopg prepares a statement run
            # five times), with a generic plan, which knows no parameter's value.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql("PREPARE sent_since AS " + statement)
            explained = conn.exec_driver_sql(f"EXPLAIN EXECUTE sent_since({', '.join(values)})")
            plan = " ".join(row[0] for row in explained)
        assert "ix_touches_sent" in plan, plan


def test_suppression_is_case_insensitive_and_idempotent(runtime: Runtime) -> None:
    with runtime.engine.begin() as conn:
        ledger_for(conn).suppress(conn, "Ann@Example.com", "unsubscribed", NOW)
        ledger_for(conn).suppress(conn, "ann@example.com", "bounced", NOW)
        assert suppressed(conn, "ANN@example.COM") == "unsubscribed"
        assert suppressed(conn, "bob@example.com") is None


def test_sqlite_runs_in_wal_mode_and_the_file_is_private(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "private.db"
    engine = open_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert path.stat().st_mode & 0o077 == 0
    engine.dispose()


def test_an_expired_lease_on_a_touch_never_handed_over_returns_it_to_the_queue(
    runtime: Runtime,
) -> None:
    client_id = add_client(runtime)
    lease = timedelta(minutes=5)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(conn, [new_touch(client_id)], NOW)
        (touch_id,) = ledger_for(conn).claim_due(conn, "crashed", NOW, lease, 10)
        _lease_runs_out(conn, touch_id, lease)
    later = NOW + timedelta(minutes=6)
    with runtime.engine.begin() as conn:
        assert ledger_for(conn).expire_leases(conn, later) == 0
        assert ledger_for(conn).claim_due(conn, "next", later, lease, 10) == [touch_id]
        # The first worker's lease is gone: it may no longer hand the touch to its mailer.
        assert not _hand_off(conn, touch_id, "crashed", later, lease)
        assert _hand_off(conn, touch_id, "next", later, lease)
        attempts = conn.execute(select(tables.touches.c.attempts)).scalar_one()
    assert attempts == 1


def test_hand_off_and_transition_many_store_what_they_are_given(runtime: Runtime) -> None:
    # On SQLite both write through the driver in SQLite's text form: every value reads back
    # through the columns' types as it was given, and the text is SQLAlchemy's own.
    client_id = add_client(runtime)
    lease = timedelta(minutes=5)
    paris = ZoneInfo("Europe/Paris")
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(
            conn, [new_touch(client_id, date(2027, 1, d)) for d in (1, 2)], NOW
        )
        a, b = sorted(ledger_for(conn).claim_due(conn, "me", NOW, lease, 10))
    handed = NOW + timedelta(seconds=1, microseconds=250)
    with runtime.engine.begin() as conn:
        before = ledger_for(conn).database_time(conn)
        assert ledger_for(conn).hand_off_many(
            conn,
            [HandOff(a, "<a@x>", {"variant": "gold"}), HandOff(b, "<b@x>", {})],
            "me",
            handed,
            lease,
        ) == [True, True]
    t = tables.touches
    with reader(runtime.engine) as conn:
        row = conn.execute(
            select(t.c.lease_expires_at, t.c.message_id, t.c.updated_at, t.c.variant).where(
                t.c.id == a
            )
        ).one()
        after = ledger_for(conn).database_time(conn)
    # The lease runs from the lease clock: the machine's or the server's time, not `handed`.
    assert before + lease <= row[0].replace(tzinfo=UTC) <= after + lease
    assert [v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for v in row[1:]] == [
        "<a@x>",
        handed,
        "gold",
    ]
    dialect = sqlite.dialect()
    stamp = t.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert stamp is not None
    if runtime.engine.dialect.name != "postgresql":
        with reader(runtime.engine) as conn:
            raw = conn.exec_driver_sql(
                "SELECT lease_expires_at, updated_at FROM touches WHERE id = ?", (a,)
            ).one()
        # Compared as text by expire_leases and the guards: the text must be SQLAlchemy's.
        assert tuple(raw) == (stamp(row[0].replace(tzinfo=UTC)), stamp(handed))
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
        assert ledger_for(conn).transition_many(
            conn, TouchStatus.SENDING, [Change(a, TouchStatus.RETRY, done, "451", values)]
        ) == [True]
    with reader(runtime.engine) as conn:
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
            select(tables.touch_events.c.at).where(
                tables.touch_events.c.touch_id == a, tables.touch_events.c.to_status == "retry"
            )
        ).scalar_one()
        if conn.dialect.name != "postgresql":
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


@pytest.mark.parametrize("held", [0.05, QUICK_WAIT + 0.3])
def test_a_writer_waits_for_the_write_lock_held_by_another(
    tmp_path: object, held: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short waits are retried in small steps, longer ones by SQLite's own busy handler:
    # either way the second writer gets the lock once the first one commits.
    import threading
    import time
    from pathlib import Path

    url = f"sqlite:///{Path(str(tmp_path)) / 'lock.db'}"
    first, second = open_engine(url), open_engine(url)
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

    monkeypatch.setattr(engine_module.time, "sleep", counted)
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
    assert timeout == engine_module.BUSY_TIMEOUT_MS
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


def _refusals(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once a writer on the event loop (the main thread's) is refused SQLite's write lock,
    which another thread holds: from then on it waits for the lock, and the coroutines after
    it wait for it (they start in the order they were created)."""
    import threading

    refused = asyncio.Event()
    try_write_lock = engine_module._try_write_lock

    def watched(dbapi: Any) -> bool:
        taken = try_write_lock(dbapi)
        if not taken and threading.current_thread() is threading.main_thread():
            refused.set()
        return taken

    monkeypatch.setattr(engine_module, "_try_write_lock", watched)
    return refused


def _counter_engines(tmp_path: object) -> tuple[Any, Any]:
    from pathlib import Path

    url = f"sqlite:///{Path(str(tmp_path)) / 'lock.db'}"
    first, second = open_engine(url), open_engine(url)
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
        async with writing(second) as conn:
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
    assert timeout == engine_module.BUSY_TIMEOUT_MS
    with first.connect() as conn:
        assert conn.exec_driver_sql("SELECT n FROM counter").scalar_one() == 2
    first.dispose()
    second.dispose()


def test_many_coroutines_waiting_for_the_write_lock_hold_one_pooled_connection(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 writers (an [smtp] pool_size of 40) wait while another process holds the lock: they
    # wait one at a time, so the engine's pool (5 + 10 overflow) is never exhausted, and each
    # writes once the lock is free.

    first, second = _counter_engines(tmp_path)
    refused = _refusals(monkeypatch)
    holder, release = _hold_write_lock(first)
    checked_out: list[int] = []

    async def write() -> None:
        async with writing(second) as conn:
            checked_out.append(second.pool.checkedout())  # type: ignore[attr-defined]
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")

    async def main() -> None:
        writers = asyncio.gather(*(write() for _ in range(40)))
        await asyncio.wait_for(refused.wait(), 10)  # all 40 wait for the lock
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


def test_keeping_writer_writes_on_one_connection_and_gives_it_back(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within keeping_writer, every transaction of `writing` (one failed among them) is on the
    # same pooled connection, committed or rolled back one by one, and waits for the lock
    # another process holds; afterwards the connection is back in the pool.

    first, second = _counter_engines(tmp_path)
    refused = _refusals(monkeypatch)
    used: list[object] = []

    async def write(fail: bool = False) -> None:
        async with writing(second) as conn:
            used.append(conn.connection.dbapi_connection)
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")
            if fail:
                raise RuntimeError("boom")

    async def main() -> None:
        async with keeping_writer(second):
            await write()
            with pytest.raises(RuntimeError):
                await write(fail=True)
            holder, release = _hold_write_lock(first)
            try:
                waiting = asyncio.gather(write(), write())
                await asyncio.wait_for(refused.wait(), 10)  # both wait for the lock
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
        async with keeping_writer(second):
            with pytest.raises(IntegrityError):
                async with writing(second) as conn:
                    conn.exec_driver_sql("INSERT INTO child VALUES (1, 99)")
            async with writing(second) as conn:
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
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keeping_writer ends (awaiting nothing) while a transaction waits for the lock on the
    # kept connection: that transaction finishes on it, then gives it back to the pool.

    first, second = _counter_engines(tmp_path)
    refused = _refusals(monkeypatch)
    holder, release = _hold_write_lock(first)

    async def write() -> None:
        async with writing(second) as conn:
            conn.exec_driver_sql("UPDATE counter SET n = n + 1")

    async def main() -> None:
        async with keeping_writer(second):
            waiting = asyncio.create_task(write())
            await asyncio.wait_for(refused.wait(), 10)  # it waits for the lock
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
    import sqlite3
    from pathlib import Path

    first, second = _counter_engines(tmp_path)

    async def fail() -> None:
        async with writing(second) as conn:
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

    first, second = _counter_engines(tmp_path)
    monkeypatch.setattr(engine_module, "BUSY_TIMEOUT_MS", 200)

    async def write() -> None:
        async with writing(second) as conn:
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
    runtime: Runtime,
) -> None:
    # On a connection with no transaction yet, the ledger's statements are one transaction
    # (a rollback undoes them), as with SQLAlchemy's own autobegin; and an error is
    # SQLAlchemy's, whatever the database.
    client_id = add_client(runtime)
    with runtime.engine.begin() as conn:
        ledger_for(conn).insert_touches(conn, [new_touch(client_id)], NOW)
        touch_id = conn.execute(select(tables.touches.c.id)).scalar_one()
    change = Change(touch_id, TouchStatus.SKIPPED, NOW, "test", {"reason": "test"})
    with runtime.engine.connect() as conn:
        assert ledger_for(conn).transition_many(conn, TouchStatus.PLANNED, [change]) == [True]
        assert conn.in_transaction()
        conn.rollback()
    with reader(runtime.engine) as conn:
        assert conn.execute(select(tables.touches.c.status)).scalar_one() == "planned"
    with runtime.engine.connect() as conn, pytest.raises(IntegrityError):
        # No such touch: the history row breaks its foreign key.
        ledger_for(conn).insert_events(conn, [(touch_id + 1000, NOW, None, "planned", None)])


def test_a_repeated_local_hour_is_stored_as_its_own_utc_instant() -> None:
    # 01:30 happens twice in New York on 7 November 2027; both compare equal as datetimes.
    dialect = sqlite.dialect()
    bind = tables.touches.c.due_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert bind is not None
    first = datetime(2027, 11, 7, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    second = first.replace(fold=1)
    assert stamp(first) == bind(first) == "2027-11-07 05:30:00.000000"
    assert stamp(second) == bind(second) == "2027-11-07 06:30:00.000000"


def test_an_upsert_fills_the_columns_defaults_and_updates_only_the_columns_given(
    runtime: Runtime,
) -> None:
    c = tables.clients
    with runtime.engine.begin() as conn:
        ledger_for(conn).upsert(conn, c, [client_row(1), client_row(2)], key="external_id")
        conn.execute(c.update().where(c.c.external_id == "c1").values(tier="vip"))
        later = NOW + timedelta(days=1)
        again = [{**client_row(n), "first_name": "Z", "created_at": later} for n in (1, 3)]
        ledger_for(conn).upsert(conn, c, again, key="external_id", keep=("created_at",))
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


def test_an_upsert_refuses_a_naive_datetime_and_on_postgresql_a_value_too_long(
    runtime: Runtime,
) -> None:
    c = tables.clients
    naive = {**client_row(1), "updated_at": datetime(2027, 1, 8, 12)}
    with (
        pytest.raises((ValueError, StatementError), match="naive"),
        runtime.engine.begin() as conn,
    ):
        ledger_for(conn).upsert(conn, c, [naive], key="external_id")
    if runtime.engine.dialect.name == "postgresql":
        # A cast of the batch's array to the column's VARCHAR(2) would cut it silently.
        with pytest.raises(DBAPIError, match="too long"), runtime.engine.begin() as conn:
            ledger_for(conn).upsert(
                conn, c, [{**client_row(2), "country": "GBR"}], key="external_id"
            )
    with runtime.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(c)).scalar() == 0
