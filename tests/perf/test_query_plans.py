"""The query plans of the ledger's hot statements, as SQLite (which keeps no statistics) and
PostgreSQL (a table without statistics, a generic prepared plan) choose them: each test runs the
real statements, records them, and asks EXPLAIN how they search. A plan that reads the whole
queue, or every touch ever sent, passes every functional test and slows sending down as the
ledger grows."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import Callable
from datetime import UTC, date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from followup.config import Settings
from followup.delivery.dispatcher import dispatch
from followup.domain.statuses import TouchStatus
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.dialects import ledger_for
from followup.storage.engine import chunks, reader
from followup.storage.ledger import Change
from followup.storage.queries import clients_by_email, send_facts
from tests.support.ledger import NOW, add_client, client_row, new_touch
from tests.support.settings import make_settings
from tests.support.smtp import SmtpServer


def test_the_late_touches_are_found_among_the_due_ones_not_the_whole_queue(
    tmp_path: Path, open_runtime: Callable[[Settings], Runtime]
) -> None:
    # A touch planned a month ahead is left alone and, on SQLite, not even read: the search
    # is bounded by the next attempt (the queue planned ahead can hold a million touches, and
    # each dispatch run begins with this search).
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    client_id = add_client(rt)
    ahead = NOW + timedelta(days=30)
    with rt.engine.begin() as conn:
        ledger_for(conn).insert_touches(
            conn, [new_touch(client_id), new_touch(client_id, ahead.date(), ahead)], NOW
        )
    statements: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if statement.startswith("SELECT") and "touches" in statement:
            statements.append((statement, parameters))

    event.listen(rt.engine, "before_cursor_execute", record)
    with rt.engine.begin() as conn:
        assert ledger_for(conn).skip_too_late(conn, NOW + timedelta(days=4)) == 1
    event.remove(rt.engine, "before_cursor_execute", record)
    with rt.engine.connect() as conn:
        rows = conn.execute(select(tables.touches.c.due_at, tables.touches.c.status)).all()
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


def test_a_claim_and_its_prefetch_search_by_ids_and_clients_not_by_status(
    tmp_path: Path, open_runtime: Callable[[Settings], Runtime]
) -> None:
    """SQLite keeps no statistics: a `status IN (...)` term beside 10 or more ids or clients
    made it search ix_touches_due by status, so that each batch read the whole queue (the
    claim's UPDATE) or every touch ever sent (the prefetch's previous variants), and sending
    slowed down as the ledger grew. Each statement of a claim and of its prefetch is checked
    with EXPLAIN QUERY PLAN; the claim's own SELECT searches the queue by status and time."""
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    clients = [add_client(rt, f"C{n}", f"c{n}@example.com") for n in range(20)]
    lease = timedelta(minutes=5)
    earlier = NOW - timedelta(days=1)
    with rt.engine.begin() as conn:
        ledger_for(conn).insert_touches(
            conn, [new_touch(c, date(2027, 1, 1), earlier) for c in clients], NOW
        )
        first = ledger_for(conn).claim_due(conn, "me", NOW, lease, 20)
        assert len(first) == 20
        sent = [
            Change(touch_id, TouchStatus.SENT, NOW, "250 ok", {"variant": "sage"})
            for touch_id in first
        ]
        ledger_for(conn).transition_many(conn, TouchStatus.SENDING, sent)
        ledger_for(conn).insert_touches(conn, [new_touch(c) for c in clients], NOW)
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
        claimed = ledger_for(conn).claim_due(conn, "me", NOW, lease, 20)
    with reader(rt.engine) as conn:
        prefetched = send_facts(conn, claimed)
    event.remove(rt.engine.pool, "checkout", trace)

    assert len(claimed) == 20 and not set(claimed) & set(first)
    assert {entries[0][2] for entries in prefetched.sent.values()} == {"sage"}
    assert sorted(prefetched.sent) == sorted(clients)
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
    tmp_path: Path, smtp_server: SmtpServer, open_runtime: Callable[[Settings], Runtime]
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
    clients = [add_client(rt, f"C{n}", f"c{n}@example.com") for n in range(24)]
    with rt.engine.begin() as conn:
        due = NOW - timedelta(hours=1)
        greetings = [
            dataclasses.replace(
                new_touch(c, date(2027, 1, 1), due), campaign="new_year", template="new_year"
            )
            for c in clients
        ]
        ledger_for(conn).insert_touches(conn, greetings, NOW)
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
        report = asyncio.run(dispatch(rt, lambda: NOW, rng=random.Random(1)))
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


def test_the_sending_limits_count_through_the_index_of_sent_touches(
    tmp_path: Path, open_runtime: Callable[[Settings], Runtime]
) -> None:
    """Without statistics, SQLite searched ix_touches_due by status: each count read every
    touch ever sent (1 s with 900,000 sent, before each batch). The partial index holds only
    the sent touches, by time."""
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    statements: list[str] = []

    def trace(dbapi: Any, _record: Any, _proxy: Any) -> None:
        dbapi.set_trace_callback(statements.append)

    event.listen(rt.engine.pool, "checkout", trace)
    with reader(rt.engine) as conn:
        assert ledger_for(conn).sent_since(conn, NOW) == 0
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


@pytest.mark.postgres
def test_lookups_by_external_id_use_the_index_on_a_table_without_statistics(
    tmp_path: Path, postgres_url: str, open_runtime: Callable[[Settings], Runtime]
) -> None:
    """An import looks up each batch's 500 external ids. Without statistics (a table just
    imported, or autovacuum off), PostgreSQL expected an IN list of 500 to match every row and
    read the whole table for each batch: an import of 100,000 purchases took hours."""
    rt = open_runtime(make_settings(tmp_path, postgres_url))
    c = tables.clients
    statements: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        statements.append((args[2], args[3]))

    wanted = [f"c{n}" for n in range(0, 20_000, 40)]
    with rt.engine.begin() as conn:
        for part in chunks(range(20_000), 2_000):
            ledger_for(conn).upsert(conn, c, [client_row(n) for n in part], key="external_id")
        event.listen(rt.engine, "before_cursor_execute", record)
        found = ledger_for(conn).id_map(conn, c, wanted)
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


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_purchases_by_e_mail_search_the_index_of_addresses(
    database: str, tmp_path: Path, request: pytest.FixtureRequest,
    open_runtime: Callable[[Settings], Runtime],
) -> None:  # fmt: skip
    """An orders export names each purchase's client by e-mail: each batch's addresses are
    looked up in ix_clients_email_lower, not by reading every client (migration 0010), on
    PostgreSQL also for a table without statistics."""
    if database == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'followup.db'}"
    rt = open_runtime(make_settings(tmp_path, url))
    statements: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        statements.append((args[2], args[3]))

    with rt.engine.begin() as conn:
        for part in chunks(range(20_000), 2_000):
            rows = [client_row(n) for n in part]
            ledger_for(conn).upsert(conn, tables.clients, rows, key="external_id")
        # As an export writes them: any case; looked up lower-cased.
        wanted = [f"C{n}@Example.com" for n in range(0, 20_000, 40)]
        event.listen(rt.engine, "before_cursor_execute", record)
        found = clients_by_email(conn, wanted)
        event.remove(rt.engine, "before_cursor_execute", record)
        ((statement, parameters),) = statements
        if database == "sqlite":
            raw = conn.connection.dbapi_connection
            assert raw is not None
            plan = " | ".join(
                str(row[3]) for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            )
            assert "USING INDEX ix_clients_email_lower" in plan, plan
        else:
            plan = " | ".join(
                row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters)
            )
            assert "Seq Scan on clients" not in plan and "ix_clients_email_lower" in plan, plan
    assert len(found) == len(wanted)
    assert [row.external_id for row in found["c40@example.com"]] == ["c40"]
