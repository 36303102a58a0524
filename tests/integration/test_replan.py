"""What the daemon re-plans between its plans of every client: the clients whose data changed,
as the database's own triggers record them (migration 0007), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text, update

from followup.config import Settings
from followup.importing import importer
from followup.logs import log
from followup.planning.chunks import PlanWindow, client_chunks
from followup.planning.plan import clients_to_replan, plan
from followup.runtime import Runtime
from followup.service import daemon
from followup.storage import people, tables
from followup.storage.dialects import ledger_for
from followup.storage.schema import _alembic_config, table_names, upgrade
from tests.support.settings import make_settings
from tests.support.shop import CLIENTS, NOW, PURCHASES, seed

OpenRuntime = Callable[[Settings], Runtime]


def ids(rt: Runtime) -> dict[str, int]:
    with rt.engine.connect() as conn:
        return dict(conn.execute(select(tables.clients.c.external_id, tables.clients.c.id)).all())


def changed(rt: Runtime) -> set[str]:
    """The external ids of the clients a changed-only plan would read."""
    by_id = {v: k for k, v in ids(rt).items()}
    return {by_id[i] for i in clients_to_replan(rt)}


def load(rt: Runtime, tmp_path: Path, kind: str, content: str) -> None:
    path = tmp_path / f"again-{kind}.csv"
    path.write_text(content, encoding="utf-8")
    report = importer.import_csv(rt.engine, importer.Kind(kind), path, now=NOW, strict=True)
    assert report.errors == []


def run_sql(rt: Runtime, sql: str, **values: object) -> None:
    with rt.engine.begin() as conn:
        conn.execute(text(sql), values)


def test_the_clients_whose_planned_data_changed_and_only_they_are_to_plan_again(
    tmp_path: Path, runtime: Runtime
) -> None:
    seed(runtime, tmp_path)
    assert changed(runtime) == {"c1", "c2", "c3", "c4"}, "no plan has read them yet"
    plan(runtime, NOW)
    assert changed(runtime) == set()

    # The nightly import of the same files, and a change the planner does not read (a name).
    load(runtime, tmp_path, "clients", CLIENTS)
    load(runtime, tmp_path, "purchases", PURCHASES)
    load(runtime, tmp_path, "clients", CLIENTS.replace("Ann,Lee", "Anne,Lee"))
    assert changed(runtime) == set()

    # A column the planner reads (the zone), a new purchase, a refund.
    load(runtime, tmp_path, "clients", CLIENTS.replace("Europe/Paris", "Europe/Brussels"))
    assert changed(runtime) == {"c2"}
    load(runtime, tmp_path, "purchases", PURCHASES + "p6,c3,2027-01-07T10:00:00,Mats,90,GBP,paid\n")
    assert changed(runtime) == {"c2", "c3"}
    plan(runtime, NOW)
    assert changed(runtime) == set()
    load(runtime, tmp_path, "purchases", PURCHASES.replace("USD,unpaid", "USD,refunded"))
    assert changed(runtime) == {"c4"}
    plan(runtime, NOW)

    # The business's own SQL: a purchase moved to another client counts for both; a deleted
    # purchase, a birthday, a status (a bounce) each count.
    known = ids(runtime)
    run_sql(
        runtime,
        "UPDATE purchases SET client_id = :to WHERE external_id = 'p5'",
        to=known["c2"],
    )
    assert changed(runtime) == {"c1", "c2"}
    # (A purchase that no touch refers to: a touch's purchase cannot be deleted.)
    load(runtime, tmp_path, "purchases", PURCHASES + "p7,c3,2020-01-07T10:00:00,Mats,9,GBP,paid\n")
    plan(runtime, NOW)
    run_sql(runtime, "DELETE FROM purchases WHERE external_id = 'p7'")
    assert changed(runtime) == {"c3"}
    plan(runtime, NOW)
    run_sql(runtime, "UPDATE clients SET birthday_month = 3 WHERE id = :i", i=known["c1"])
    assert changed(runtime) == {"c1"}
    plan(runtime, NOW)
    with runtime.engine.begin() as conn:
        conn.execute(
            update(tables.clients)
            .where(tables.clients.c.id == known["c4"])
            .values(status="bounced")
        )
    assert changed(runtime) == {"c4"}
    plan(runtime, NOW)
    assert changed(runtime) == set()

    # An erasure removes the purchases and the birthday: the planner must see it.
    people.erase_client(runtime.engine, "c3", NOW)
    assert clients_to_replan(runtime) == [known["c3"]]


def test_a_changed_only_plan_plans_those_clients_and_leaves_the_watermarks(
    tmp_path: Path, runtime: Runtime
) -> None:
    seed(runtime, tmp_path)
    first = plan(runtime, NOW)
    assert first.clients == 4
    with runtime.engine.connect() as conn:
        marks = conn.execute(select(tables.watermarks)).all()

    # A purchase of today for c3: its thank-you comes from a plan of c3 alone.
    load(runtime, tmp_path, "purchases", PURCHASES + "p6,c3,2027-01-08T09:30:00,Mats,90,GBP,paid\n")
    later = NOW + timedelta(minutes=5)
    report = plan(runtime, later, only=clients_to_replan(runtime))
    assert (report.clients, report.planned) == (1, 1)
    with runtime.engine.connect() as conn:
        new = conn.execute(
            select(tables.touches.c.campaign, tables.purchases.c.external_id).join(
                tables.purchases, tables.purchases.c.id == tables.touches.c.purchase_id
            )
        ).all()
        assert ("thank_you", "p6") in new
        assert conn.execute(select(tables.watermarks)).all() == marks, "every client's horizon"
        (run,) = conn.execute(select(tables.runs.c.detail).where(tables.runs.c.kind == "plan"))
    assert run.detail == "planned=1 skipped=0 changed=1"
    assert clients_to_replan(runtime) == []
    assert plan(runtime, later, only=[]).clients == 0


def test_a_client_changed_while_a_plan_reads_it_is_planned_again(
    tmp_path: Path, runtime: Runtime
) -> None:
    seed(runtime, tmp_path)
    now = NOW
    window = PlanWindow({c.name: now for c in runtime.calendar.enabled}, now, now)
    (read,) = list(client_chunks(runtime, window))
    assert len(read.versions) == 4
    # The import of a new zone lands after the plan read c2 and before it records what it read.
    load(runtime, tmp_path, "clients", CLIENTS.replace("Paris", "Rome"))
    with runtime.engine.begin() as conn:
        ledger_for(conn).mark_planned(conn, read.versions)
    assert changed(runtime) == {"c2"}
    # A slower planner that read an older version does not take the newer one back.
    plan(runtime, now)
    assert changed(runtime) == set()
    with runtime.engine.begin() as conn:
        ledger_for(conn).mark_planned(conn, read.versions)
    assert changed(runtime) == set()


def test_the_daemon_plans_every_client_at_start_hourly_and_before_its_horizon_else_the_changed(
    tmp_path: Path,
    database_url: str,
    open_runtime: Callable[[Settings], Runtime],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = open_runtime(make_settings(tmp_path, database_url))
    seed(rt, tmp_path)
    clock = [NOW]

    def plan_at(worker: daemon.Daemon, minutes: int) -> dict[str, object]:
        """The daemon's plan job at NOW + minutes: the fields of its plan.done."""
        clock[0] = NOW + timedelta(minutes=minutes)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=log.name):
            asyncio.run(worker.plan())
        (done,) = [r for r in caplog.records if getattr(r, "event", None) == "plan.done"]
        fields: dict[str, object] = done.fields  # type: ignore[attr-defined]
        return fields

    worker = daemon.Daemon(rt, lambda: clock[0])
    assert "changed" not in plan_at(worker, 0)
    assert plan_at(worker, 5) == {"planned": 0, "skipped": 0, "changed": 0}
    load(rt, tmp_path, "purchases", PURCHASES + "p6,c3,2027-01-08T09:30:00,Mats,90,GBP,paid\n")
    assert plan_at(worker, 10) == {"planned": 1, "skipped": 0, "changed": 1}
    assert "changed" not in plan_at(worker, 60), "an hour after the last plan of every client"
    assert plan_at(worker, 65)["changed"] == 0

    # A horizon shorter than the plan interval: every plan reads every client.
    settings = make_settings(tmp_path, database_url, schedule={"plan_horizon_days": 0})
    short = daemon.Daemon(open_runtime(settings), lambda: clock[0])
    assert "changed" not in plan_at(short, 70)
    assert "changed" not in plan_at(short, 75)


def test_full_plan_due_follows_the_interval_and_the_horizon(
    tmp_path: Path, open_runtime: Callable[[Settings], Runtime]
) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    rt = open_runtime(make_settings(tmp_path, url, schedule={"full_plan_interval_seconds": 1800}))
    worker = daemon.Daemon(rt, lambda: NOW)
    assert worker.full_plan_due(NOW)
    worker._full_plan = (NOW, NOW + timedelta(days=2))
    assert not worker.full_plan_due(NOW + timedelta(minutes=29))
    assert worker.full_plan_due(NOW - timedelta(seconds=1)), "the clock was set back"
    assert worker.full_plan_due(NOW + timedelta(minutes=30))
    # The horizon would be passed before the next plan (5 minutes on): every client now.
    worker._full_plan = (NOW, NOW + timedelta(minutes=8))
    assert not worker.full_plan_due(NOW + timedelta(minutes=2))
    assert worker.full_plan_due(NOW + timedelta(minutes=4))


def _columns_the_planner_reads(tmp_path: Path, open_runtime: OpenRuntime) -> set[tuple[str, str]]:
    """(table, column) of the clients and purchases that a plan's SQL names, traced on SQLite
    at the driver (the planner's hot reads bypass SQLAlchemy's events there)."""
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'traced.db'}"))
    seed(rt, tmp_path)
    statements: list[str] = []

    def trace(dbapi: Any, _record: Any, _proxy: Any) -> None:
        dbapi.set_trace_callback(statements.append)

    event.listen(rt.engine.pool, "checkout", trace)
    try:
        plan(rt, NOW)
    finally:
        event.remove(rt.engine.pool, "checkout", trace)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    named = {m for s in reads for m in re.findall(r"\b(clients|purchases)\.(\w+)", s)}
    assert ("clients", "timezone") in named and ("purchases", "amount_minor") in named, named
    return named - {("clients", "id"), ("purchases", "id"), ("clients", "plan_version")}


def _other(value: object) -> object:
    """A value of the same kind, different from `value`."""
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int):
        return value + 1
    if isinstance(value, datetime):
        return value - timedelta(hours=1)
    text = str(value)
    return text[:-1] + ("y" if text.endswith("x") else "x")  # as long: within the column


def test_every_column_the_planner_reads_makes_its_client_one_to_plan_again(
    tmp_path: Path, runtime: Runtime, open_runtime: OpenRuntime
) -> None:
    read = _columns_the_planner_reads(tmp_path / "trace", open_runtime)
    seed(runtime, tmp_path)
    plan(runtime, NOW)
    known = ids(runtime)
    by_name = {"clients": tables.clients, "purchases": tables.purchases}
    rows = {"clients": known["c1"], "purchases": None}
    with runtime.engine.connect() as conn:
        p = tables.purchases
        rows["purchases"] = conn.execute(select(p.c.id).where(p.c.external_id == "p1")).scalar()
    for table_name, column in sorted(read):
        table = by_name[table_name]
        with runtime.engine.begin() as conn:
            value = conn.execute(
                select(table.c[column]).where(table.c.id == rows[table_name])
            ).scalar()
            new = known["c2"] if column == "client_id" else _other(value)
            conn.execute(update(table).where(table.c.id == rows[table_name]).values({column: new}))
        assert known["c1"] in clients_to_replan(runtime), f"{table_name}.{column} changed unseen"
        with runtime.engine.begin() as conn:  # back as it was, for the next column
            conn.execute(
                update(table).where(table.c.id == rows[table_name]).values({column: value})
            )
        plan(runtime, NOW)
        assert clients_to_replan(runtime) == []


def test_migration_0007_goes_down_and_up_again(tmp_path: Path, runtime: Runtime) -> None:
    from alembic import command

    seed(runtime, tmp_path)
    plan(runtime, NOW)
    with runtime.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0006")
    assert "planned_clients" not in table_names(runtime.engine)
    # The purchases' triggers went with it: a purchase is written without them.
    load(runtime, tmp_path, "purchases", PURCHASES + "p6,c3,2027-01-08T09:30:00,Mats,90,GBP,paid\n")
    upgrade(runtime.engine)
    assert changed(runtime) == {"c1", "c2", "c3", "c4"}, "every client new to the daemon again"
