"""The nightly import of the same files through the real `followup` executable: every row
unchanged, nothing planned again, the reps `reassign` set kept, a retired rep reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.executable import followup

REPS = "id,name,email\nr1,Sam Oak,sam@example.com\nr2,Lea Marsh,lea@example.com\n"
CLIENTS = (
    "id,email,first_name,last_name,locale,timezone,country,rep\n"
    "c1,ann@example.com,Ann,Lee,en,Europe/London,GB,r1\n"
    "c2,bea@example.com,Bea,Roy,fr,Europe/Paris,FR,r1\n"
)
PURCHASES = (
    "id,client,purchased_at,product,amount,currency\n"
    "p1,c1,2027-01-06,Roadster,32500.00,GBP\n"
    "p2,c2,2027-01-06,Citadine,18900.00,EUR\n"
)


def rows(folder: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return list(conn.execute(query))


def test_importing_the_same_files_after_a_reassign_changes_nothing(tmp_path: Path) -> None:
    followup(tmp_path, "init")
    for kind, content in (("reps", REPS), ("clients", CLIENTS), ("purchases", PURCHASES)):
        (tmp_path / f"{kind}.csv").write_text(content, encoding="utf-8")
        result = followup(tmp_path, "import", kind, f"{kind}.csv")
        assert "0 updated, 0 unchanged), 0 rejected" in result.stdout
    followup(tmp_path, "plan")
    followup(tmp_path, "reassign", "--from", "r1", "--to", "r2", "--retire")
    clients = "select external_id, rep_id, file_rep, updated_at, plan_version from clients"
    before = rows(tmp_path, clients)

    again = {
        kind: followup(tmp_path, "import", kind, f"{kind}.csv")
        for kind in ("reps", "clients", "purchases")
    }

    assert (
        "reps.csv: 2 imported (0 new, 0 updated, 2 unchanged), 0 rejected" in again["reps"].stdout
    )
    assert "clients.csv: 2 imported (0 new, 0 updated, 2 unchanged), 0 rejected" in (
        again["clients"].stdout
    )
    assert "purchases.csv: 2 imported (0 new, 0 updated, 2 unchanged)" in again["purchases"].stdout
    assert again["clients"].stderr.splitlines() == [
        f"warning: clients.csv:{line}: rep: rep 'r1' is retired: not applied, the client keeps "
        "rep 'r2'"
        for line in (2, 3)
    ]
    assert rows(tmp_path, clients) == before
    (r2,) = rows(tmp_path, "select id from reps where external_id = 'r2'")
    assert {(row[1], row[2]) for row in before} == {(r2[0], "r1")}
    # Nothing to plan again: the plan versions the last plan read are the clients' own.
    assert rows(
        tmp_path,
        "select count(*) from clients c left join planned_clients p on p.client_id = c.id "
        "left join purchase_versions v on v.client_id = c.id "
        "where p.plan_version is null or p.plan_version <> c.plan_version + coalesce(v.version, 0)",
    ) == [(0,)]
