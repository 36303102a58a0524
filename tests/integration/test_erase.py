"""Erasure, keyed suppressions and unsuppress against a real database (SQLite, and PostgreSQL
when FOLLOWUP_TEST_POSTGRES_URL is set). PostgreSQL's files cannot be scanned byte by byte
from a test (tests/e2e/test_erase.py scans SQLite's): here every row of every table is."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import insert, inspect, select, update

from followup.domain.statuses import ClientStatus, Consent, TouchStatus
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.service import privacy as service_privacy
from followup.service.reports import history
from followup.storage import people, privacy, tables
from followup.storage.dialects import ledger_for
from followup.storage.overview import suppressed
from followup.storage.schema import _alembic_config, upgrade
from tests.support.shop import NOW, PURCHASES, seed

# c1 of tests/support/shop.py: Ann Lee, in New York, whose two purchases are moved to days of
# her own here.
ADDRESS, NAME = "ann@example.com", "Ann Lee"
HERS = PURCHASES.replace("p1,c1,2027-01-06", "p1,c1,2026-10-14").replace(
    "p5,c1,2027-01-06", "p5,c1,2026-12-29"
)


def every_row(rt: Runtime) -> str:
    """The text of every row of every table, lower-cased."""
    lines = []
    with rt.engine.connect() as conn:
        for name in inspect(conn).get_table_names():
            table = tables.SQLModel.metadata.tables.get(name)
            if table is None:
                continue  # alembic_version
            for row in conn.execute(select(table)):
                lines.append(" ".join(str(v) for v in row))
    return "\n".join(lines).lower()


def test_an_erased_client_leaves_no_row_naming_or_describing_them(
    tmp_path: Path, runtime: Runtime
) -> None:
    seed(runtime, tmp_path, HERS)
    plan(runtime, NOW, NOW + timedelta(days=400))
    c1 = select(tables.clients.c.id).where(tables.clients.c.external_id == "c1")
    with runtime.engine.begin() as conn:
        client_id = conn.execute(c1).scalar_one()
        conn.execute(
            update(tables.clients)
            .where(tables.clients.c.id == client_id)
            .values(birthday_month=8, birthday_day=23, birthday_year=1977)
        )
        # A stopped run whose error quotes a server's reply naming her.
        ledger_for(conn).record_run(
            conn, "dispatch", "w1", NOW, NOW, "error", f"554 5.7.1 <{ADDRESS}>: Relay denied"
        )
    # Her consent, given in words that name her, on a day of hers.
    given = datetime(2026, 9, 30, tzinfo=UTC)
    people.set_consent(runtime.engine, "c1", Consent.YES, f"{NAME} at the counter", given, NOW)
    plan(runtime, NOW, NOW + timedelta(days=400))
    before = every_row(runtime)
    assert ADDRESS in before and "2026-10-14" in before and "-08-23" in before
    assert "2026-09-30" in before and f"{NAME} at the counter".lower() in before

    erased = people.erase_client(runtime.engine, "c1", NOW)

    after = every_row(runtime)
    for needle in (ADDRESS, NAME.lower(), "america/new_york", "2026-10-14", "2026-12-29", "-08-23"):
        assert needle not in after, needle
    assert "2026-09-30" not in after, "the consent's date"
    assert erased.touches_kept > 0
    t = tables.touches
    with runtime.engine.connect() as conn:
        kept = conn.execute(
            select(t.c.occurrence, t.c.due_at, t.c.status, t.c.message_id, t.c.locale).where(
                t.c.client_id == client_id
            )
        ).all()
        (digest, reason) = conn.execute(
            select(tables.suppressions.c.email, tables.suppressions.c.reason)
        ).one()
        key = privacy.address_key(conn)
        assert suppressed(conn, ADDRESS.upper()) == "erased"
    assert len(kept) == erased.touches_kept
    for occurrence, due_at, status, message_id, locale in kept:
        assert (occurrence.month, due_at.month, due_at.day) == (1, 1, 1)
        assert message_id is None and locale is None
        assert status not in (TouchStatus.PLANNED.value, TouchStatus.RETRY.value)
    assert (digest, reason) == (privacy.keyed_hash(key, ADDRESS), "erased")
    assert ADDRESS not in digest and hashlib.sha256(ADDRESS.encode()).hexdigest() not in digest
    found = history(runtime, f"erased-{client_id}")
    assert found is not None and [e.kind for e in found.events] == ["erased"]


def test_the_vacuum_after_an_erasure_runs_on_both_databases(
    tmp_path: Path, runtime: Runtime
) -> None:
    seed(runtime, tmp_path)
    report = service_privacy.erase(runtime, ADDRESS, NOW, dry_runs=tmp_path / "none")
    assert report.vacuum.startswith("vacuumed")
    assert (report.captured_removed, report.dry_runs_removed) == (0, [])
    assert report.erasure.purchases_removed == 2


def test_unsuppress_puts_a_wrongly_bounced_client_back_with_the_reason_in_history(
    tmp_path: Path, runtime: Runtime
) -> None:
    seed(runtime, tmp_path)
    with runtime.engine.connect() as conn:
        query = select(tables.clients.c.external_id, tables.clients.c.id)
        ids = {str(row.external_id): int(row.id) for row in conn.execute(query)}
    with runtime.engine.begin() as conn:
        ledger_for(conn).bounce(conn, ids["c1"], ADDRESS, NOW, "554 5.7.1 Relay access denied")
        ledger_for(conn).unsubscribe(conn, ids["c2"], NOW)

    done = people.unsuppress(runtime.engine, "Ann@Example.com", NOW, "relay refusal")

    assert (done.removed, done.reactivated) == (True, 1)
    found = history(runtime, "c1")
    assert found is not None
    assert (found.status, found.suppressed) == (ClientStatus.ACTIVE.value, None)
    assert [(e.kind, e.detail, e.at) for e in found.events] == [
        ("unsuppressed", "relay refusal", NOW)
    ]
    # Only the client can opt in again: an unsubscribed client stays so.
    back = people.unsuppress(runtime.engine, "bea@example.org", NOW, "asked by phone")
    assert (back.removed, back.reactivated) == (True, 0)
    other = history(runtime, "c2")
    assert other is not None and other.status == ClientStatus.UNSUBSCRIBED.value
    assert other.events == []
    nothing = people.unsuppress(runtime.engine, "nobody@example.com", NOW, "x")
    assert (nothing.removed, nothing.reactivated) == (False, 0)


def test_migration_0008_rekeys_the_unkeyed_hashes_of_erased_addresses(
    runtime: Runtime,
) -> None:
    with runtime.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0007")
        unkeyed = "sha256:" + hashlib.sha256(ADDRESS.encode()).hexdigest()
        conn.execute(
            insert(tables.suppressions).values(
                email=unkeyed, reason="erased", detail=None, created_at=NOW
            )
        )
        conn.execute(
            insert(tables.suppressions).values(
                email="bob@example.com", reason="bounced", detail=None, created_at=NOW
            )
        )
    upgrade(runtime.engine)
    with runtime.engine.connect() as conn:
        query = select(tables.suppressions.c.email, tables.suppressions.c.reason)
        rows = {str(row.email): str(row.reason) for row in conn.execute(query)}
        key = privacy.address_key(conn)
        assert suppressed(conn, ADDRESS) == "erased"
    assert rows == {privacy.keyed_hash(key, ADDRESS): "erased", "bob@example.com": "bounced"}
