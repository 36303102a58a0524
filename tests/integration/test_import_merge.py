"""An import's merge (storage/imports.py) on SQLite and PostgreSQL: each row new, updated or
unchanged (and then not written at all), the columns a file does not have kept, and the
reps an operator moved clients to kept by the next import of the same file."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Table, delete, select, update

from followup.config import Settings
from followup.domain.columns import OPTIONAL, REQUIRED
from followup.importing.importer import ImportReport, Kind, import_csv
from followup.planning.plan import clients_to_replan, plan
from followup.runtime import Runtime
from followup.storage import people, tables
from followup.storage.engine import driver, reader
from followup.storage.sqlite import stamp
from tests.support.settings import make_settings
from tests.support.shop import CLIENTS, NOW, PURCHASES, REPS

LATER = NOW + timedelta(days=1)

REPS_MORE = REPS + "r2,Lea Marsh,lea@example.com,Lea\nr3,Sam Oak,sam@example.com,Sam\n"


def load(rt: Runtime, tmp_path: Path, kind: str, content: str, **options: Any) -> ImportReport:
    path = tmp_path / f"{kind}.csv"
    path.write_text(content, encoding="utf-8")
    return import_csv(rt.engine, Kind(kind), path, **{"now": NOW, **options})


def counts(report: ImportReport) -> tuple[int, int, int, int]:
    return report.created, report.updated, report.unchanged, report.rejected_rows


def stored(rt: Runtime, table: Table) -> dict[str, dict[str, Any]]:
    with reader(rt.engine) as conn:
        rows = conn.execute(select(table)).mappings().all()
    return {row["external_id"]: dict(row) for row in rows}


def rep_of(rt: Runtime) -> dict[str, str | None]:
    """Each client's rep, by external ids."""
    reps = {row["id"]: name for name, row in stored(rt, tables.reps).items()}
    return {name: reps.get(row["rep_id"]) for name, row in stored(rt, tables.clients).items()}


def shop(rt: Runtime, tmp_path: Path) -> None:
    for kind, content in (("reps", REPS_MORE), ("clients", CLIENTS), ("purchases", PURCHASES)):
        report = load(rt, tmp_path, kind, content)
        assert report.errors == [] and report.created == report.rows > 0


# ----------------------------------------------------------------------------- counts


def test_the_same_files_again_are_unchanged_and_write_nothing(
    runtime: Runtime, tmp_path: Path
) -> None:
    shop(runtime, tmp_path)
    plan(runtime, NOW)
    assert clients_to_replan(runtime) == []
    before = {t: stored(runtime, t) for t in (tables.reps, tables.clients, tables.purchases)}

    reports = [
        load(runtime, tmp_path, kind, content, now=LATER)
        for kind, content in (("reps", REPS_MORE), ("clients", CLIENTS), ("purchases", PURCHASES))
    ]

    assert [counts(r) for r in reports] == [(0, 0, 3, 0), (0, 0, 4, 0), (0, 0, 5, 0)]
    assert [(r.imported, r.written) for r in reports] == [(3, False), (4, False), (5, False)]
    for table, rows in before.items():
        assert stored(runtime, table) == rows, f"{table.name}: updated_at and all kept"
    assert clients_to_replan(runtime) == [], "nothing to plan again"


def test_a_changed_cell_updates_its_row_alone(runtime: Runtime, tmp_path: Path) -> None:
    shop(runtime, tmp_path)
    plan(runtime, NOW)
    changed = CLIENTS.replace("c2,bea@example.org", "c2,bea@example.fr")
    report = load(
        runtime,
        tmp_path,
        "clients",
        changed + "c5,eve@example.com,Eve,Ng,en,UTC,GB,r2\n",
        now=LATER,
    )
    assert counts(report) == (1, 1, 3, 0)
    clients = stored(runtime, tables.clients)
    assert clients["c2"]["email"] == "bea@example.fr"
    assert clients["c2"]["updated_at"] == LATER
    assert clients["c1"]["updated_at"] == NOW
    assert clients["c5"]["created_at"] == clients["c5"]["updated_at"] == LATER
    # The e-mail is not a column the planner reads: only the new client is to plan.
    assert clients_to_replan(runtime) == [clients["c5"]["id"]]

    moved = PURCHASES.replace("p3,c3,2027-01-06T09:00:00", "p3,c3,2027-01-06T10:00:00")
    report = load(runtime, tmp_path, "purchases", moved, now=LATER)
    assert counts(report) == (0, 1, 4, 0)
    assert set(clients_to_replan(runtime)) == {clients["c3"]["id"], clients["c5"]["id"]}


def test_strict_writes_nothing_when_a_row_is_bad(runtime: Runtime, tmp_path: Path) -> None:
    shop(runtime, tmp_path)
    before = stored(runtime, tables.clients)
    content = (
        CLIENTS.replace("Ann,Lee", "Anne,Lee")
        + "c5,eve@example.com,Eve,Ng,en,UTC,GB,r2\n"
        + "c6,not-an-address,Fay,Ng,en,UTC,GB,r2\n"
    )
    report = load(runtime, tmp_path, "clients", content, now=LATER, strict=True)

    assert [(e.line, e.column) for e in report.errors] == [(7, "email")]
    assert (report.imported, report.created, report.updated, report.written) == (0, 0, 0, False)
    assert stored(runtime, tables.clients) == before


# ----------------------------------------------------------------------------- absent columns


def test_columns_the_file_does_not_have_keep_their_values(runtime: Runtime, tmp_path: Path) -> None:
    header = "id,email,first_name,last_name,locale,timezone,country,rep,birthday,tier,tags,status\n"
    load(runtime, tmp_path, "reps", REPS_MORE)
    full = (
        header
        + "c1,ann@example.com,Ann,Lee,en-US,America/New_York,US,r1,1980-05-04,gold,a b,bounced\n"
    )
    assert load(runtime, tmp_path, "clients", full).errors == []
    consent_at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with runtime.engine.begin() as conn:
        conn.execute(
            update(tables.clients).values(
                marketing_consent="no",
                consent_source="shop form",
                consent_at=consent_at,
                inferred="timezone,locale",
            )
        )
    before = stored(runtime, tables.clients)["c1"]

    # Only the required columns, one of them changed.
    bare = "id,email,first_name,last_name,locale,timezone,country\n"
    report = load(
        runtime,
        tmp_path,
        "clients",
        bare + "c1,ann@example.com,Ann,Lee,en-US,America/Denver,US\n",
        now=LATER,
    )
    assert counts(report) == (0, 1, 0, 0)
    after = stored(runtime, tables.clients)["c1"]
    assert after["timezone"] == "America/Denver"
    changed = ("timezone", "updated_at", "plan_version", "inferred")
    kept = {k: v for k, v in after.items() if k not in changed}
    assert kept == {k: v for k, v in before.items() if k in kept}
    # The file gives the zone and the locale: no longer inferred (docs/clients.md).
    assert after["inferred"] == ""
    assert (after["status"], after["tier"], after["birthday_year"]) == ("bounced", "gold", 1980)
    assert (after["marketing_consent"], after["consent_at"]) == ("no", consent_at)
    assert after["file_rep"] == "r1" and rep_of(runtime)["c1"] == "r1"

    # The same file again: unchanged.
    again = load(
        runtime, tmp_path, "clients", bare + "c1,ann@example.com,Ann,Lee,en-US,America/Denver,US\n"
    )
    assert counts(again) == (0, 0, 1, 0)

    # A new client from such a file takes the columns' defaults.
    report = load(runtime, tmp_path, "clients", bare + "c9,new@example.com,Nia,Bo,en,UTC,GB\n")
    assert counts(report) == (1, 0, 0, 0)
    c9 = stored(runtime, tables.clients)["c9"]
    assert (c9["status"], c9["tier"], c9["tags"], c9["rep_id"], c9["file_rep"]) == (
        "active",
        "",
        "",
        None,
        None,
    )
    assert (c9["marketing_consent"], c9["inferred"], c9["birthday_month"]) == ("unknown", "", None)


def test_a_purchase_file_without_status_keeps_the_stored_status(
    runtime: Runtime, tmp_path: Path
) -> None:
    shop(runtime, tmp_path)
    without = "\n".join(line.rsplit(",", 1)[0] for line in PURCHASES.splitlines()) + "\n"
    report = load(runtime, tmp_path, "purchases", without, now=LATER)
    assert counts(report) == (0, 0, 5, 0)
    assert stored(runtime, tables.purchases)["p4"]["status"] == "unpaid"


# ----------------------------------------------------------------------------- reassignments


def test_a_reassigned_client_keeps_its_new_rep_until_the_file_changes_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    shop(runtime, tmp_path)
    plan(runtime, NOW)
    moved = people.reassign(runtime.engine, "r1", "r2", NOW)
    assert moved.total == 3
    clients = stored(runtime, tables.clients)
    assert {c: clients[c]["file_rep"] for c in ("c1", "c4")} == {"c1": "r1", "c4": None}, (
        "reassign leaves the file's rep as it was"
    )

    report = load(runtime, tmp_path, "clients", CLIENTS, now=LATER)
    assert counts(report) == (0, 0, 4, 0)
    assert rep_of(runtime) == {"c1": "r2", "c2": "r2", "c3": "r2", "c4": None}

    # Another cell of c2 changes: its row is written, its rep stays.
    renamed = CLIENTS.replace("Béatrice,Roy", "Béa,Roy")
    report = load(runtime, tmp_path, "clients", renamed, now=LATER)
    assert counts(report) == (0, 1, 3, 0)
    assert rep_of(runtime) == {"c1": "r2", "c2": "r2", "c3": "r2", "c4": None}
    assert stored(runtime, tables.clients)["c2"]["first_name"] == "Béa"

    # The file itself now names another rep for c1 and c4: they move, the others stay.
    changed = renamed.replace("US,r1\nc2", "US,r3\nc2").replace(
        "America/Chicago,US,\n", "America/Chicago,US,r3\n"
    )
    report = load(runtime, tmp_path, "clients", changed, now=LATER)
    assert counts(report) == (0, 2, 2, 0)
    assert rep_of(runtime) == {"c1": "r3", "c2": "r2", "c3": "r2", "c4": "r3"}
    clients = stored(runtime, tables.clients)
    assert (clients["c1"]["file_rep"], clients["c1"]["updated_at"]) == ("r3", LATER)


def test_a_row_naming_a_retired_rep_is_reported_and_changes_nothing(
    runtime: Runtime, tmp_path: Path
) -> None:
    shop(runtime, tmp_path)
    people.reassign(runtime.engine, "r1", "r2", NOW, retire=True)
    before = stored(runtime, tables.clients)

    # The nightly file still names r1; c4 now names it too.
    content = CLIENTS.replace("America/Chicago,US,\n", "America/Chicago,US,r1\n")
    content += "c5,eve@example.com,Eve,Ng,en,UTC,GB,r1\n"
    report = load(runtime, tmp_path, "clients", content, now=LATER, strict=True)

    assert report.errors == []
    assert counts(report) == (1, 0, 4, 0)
    assert [(w.file, w.line, w.column) for w in report.warnings] == [
        ("clients.csv", n, "rep") for n in (2, 3, 4, 5, 6)
    ]
    assert (
        report.warnings[0].reason == "rep 'r1' is retired: not applied, the client keeps rep 'r2'"
    )
    assert report.warnings[3].reason == "rep 'r1' is retired: not applied, the client keeps no rep"
    after = stored(runtime, tables.clients)
    assert {k: after[k] for k in before} == before
    assert (after["c5"]["rep_id"], after["c5"]["file_rep"]) == (None, None)
    assert rep_of(runtime) == {"c1": "r2", "c2": "r2", "c3": "r2", "c4": None, "c5": None}


# ----------------------------------------------------------------------------- property

_IDS = itertools.count()
_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp")), max_size=12
).map(str.strip)
#: The columns client_cells writes (the consent columns have their own tests: test_consent).
CLIENT_COLUMNS = [
    *("id", "email", "first_name", "last_name", "locale", "timezone", "country"),
    *("birthday", "rep", "tier", "tags", "status"),
]
PURCHASE_COLUMNS = [*REQUIRED[Kind.PURCHASES], *OPTIONAL[Kind.PURCHASES]]


@st.composite
def client_cells(draw: st.DrawFn, external_id: str) -> dict[str, str]:
    return {
        "id": external_id,
        "email": draw(st.from_regex(r"[a-z0-9]{1,8}@[a-z]{1,8}\.example", fullmatch=True)),
        "first_name": draw(_TEXT.filter(bool)),
        "last_name": draw(_TEXT),
        "locale": draw(st.sampled_from(["en", "fr-CA", "de", "pt-BR"])),
        "timezone": draw(
            st.sampled_from(["UTC", "Europe/Paris", "Asia/Tokyo", "America/St_Johns"])
        ),
        "country": draw(st.sampled_from(["FR", "JP", "CA", "NZ"])),
        "birthday": draw(st.sampled_from(["", "1970-01-31", "--02-29", "2000-12-01"])),
        "rep": draw(st.sampled_from(["", "r1", "r2"])),
        "tier": draw(st.sampled_from(["", "gold"])),
        "tags": draw(_TEXT),
        "status": draw(st.sampled_from(["active", "bounced"])),
    }


@st.composite
def purchase_cells(draw: st.DrawFn, external_id: str, client: str) -> dict[str, str]:
    when = draw(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1)))
    written = [when.date().isoformat(), when.isoformat(), f"{when.isoformat()}+05:30"]
    currency, amount = draw(
        st.sampled_from([("EUR", "12.34"), ("JPY", "1500000"), ("KWD", "1.250"), ("USD", "0")])
    )
    return {
        "id": external_id,
        "client": client,
        "purchased_at": draw(st.sampled_from([*written, f"{when.isoformat()}Z"])),
        "product": draw(_TEXT.filter(bool)),
        "amount": amount,
        "currency": currency,
        "status": draw(st.sampled_from(["paid", "refunded", "unpaid"])),
    }


def csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    def line(row: dict[str, str]) -> str:
        return ",".join('"' + row[c].replace('"', '""') + '"' for c in header)

    return "\n".join([",".join(header), *map(line, rows)]) + "\n"


def instant(text: str, zone: str) -> datetime:
    """What a purchased_at cell means: ISO 8601, local to the client's zone without offset."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ZoneInfo(zone))


def written_values(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("updated_at", "plan_version")}


@pytest.fixture
def sqlite_runtime(tmp_path: Path, open_runtime: Callable[[Settings], Runtime]) -> Runtime:
    rt = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    load(rt, tmp_path, "reps", REPS_MORE)
    return rt


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), size=st.integers(min_value=1, max_value=5))
def test_the_merge_stores_exactly_what_the_rows_say(
    sqlite_runtime: Runtime, tmp_path: Path, data: st.DataObject, size: int
) -> None:
    """Rows imported, then imported again, some changed: read back through SQLAlchemy's
    types, the stored rows are what the last file says, and exactly the rows whose stored
    values changed were written (updated_at) and counted as updated."""
    rt = sqlite_runtime
    with rt.engine.begin() as conn:
        for table in (tables.purchase_versions, tables.purchases, tables.clients):
            conn.execute(delete(table))
    ids = [f"c{next(_IDS)}" for _ in range(size)]
    files: list[tuple[list[dict[str, str]], list[dict[str, str]]]] = []
    for _ in range(2):
        clients = [data.draw(client_cells(i)) for i in ids]
        buys = [data.draw(purchase_cells(f"p-{i}", i)) for i in ids]
        # The second file keeps some rows of the first as they were.
        if files:
            keep = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
            clients = [a if k else b for a, b, k in zip(files[0][0], clients, keep, strict=True)]
            buys = [a if k else b for a, b, k in zip(files[0][1], buys, keep, strict=True)]
        files.append((clients, buys))

    reports = []
    snapshots = []
    for (clients, buys), now in zip(files, (NOW, LATER), strict=True):
        for kind, header, rows in (
            ("clients", CLIENT_COLUMNS, clients),
            ("purchases", PURCHASE_COLUMNS, buys),
        ):
            report = load(rt, tmp_path, kind, csv_text(header, rows), now=now)
            assert report.errors == []
            reports.append(report)
        snapshots.append((stored(rt, tables.clients), stored(rt, tables.purchases)))

    (clients_before, buys_before), (clients_after, buys_after) = snapshots
    with reader(rt.engine) as conn:
        texts = dict(
            driver(conn).execute("SELECT external_id, purchased_at FROM purchases").fetchall()
        )
    reps = {row["id"]: name for name, row in stored(rt, tables.reps).items()}
    for row in files[1][0]:
        got = clients_after[row["id"]]
        year, month, day = got["birthday_year"], got["birthday_month"], got["birthday_day"]
        birthday = "" if month is None else f"{year or '-'}-{month:02d}-{day:02d}"
        read = {c: got[c] for c in CLIENT_COLUMNS if c not in ("id", "birthday", "rep")}
        read |= {"id": got["external_id"], "birthday": birthday, "rep": reps.get(got["rep_id"], "")}
        assert read == row
        assert got["file_rep"] == (row["rep"] or None)
    for row in files[1][1]:
        got = buys_after[row["id"]]
        zone = clients_after[row["client"]]["timezone"]
        assert got["purchased_at"] == instant(row["purchased_at"], zone)
        # In the text form every other writer of SQLite uses (queries compare it as text).
        assert texts[row["id"]] == stamp(got["purchased_at"])
        assert got["client_id"] == clients_after[row["client"]]["id"]
        assert (got["product"], got["currency"], got["status"]) == (
            row["product"],
            row["currency"],
            row["status"],
        )
    for before, after, report in (
        (clients_before, clients_after, reports[2]),
        (buys_before, buys_after, reports[3]),
    ):
        changed = {k for k in after if written_values(after[k]) != written_values(before[k])}
        assert {k for k in after if after[k]["updated_at"] == LATER} == changed
        assert (report.created, report.updated, report.unchanged) == (
            0,
            len(changed),
            size - len(changed),
        )
