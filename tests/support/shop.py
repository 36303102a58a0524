"""The small shop several modules seed: one rep, four clients in four zones, five purchases
(one unpaid) of Wednesday 6 January 2027, whose thank-yous are due at NOW."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from followup.domain.touches import NewTouch
from followup.importing import importer
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.dialects import ledger_for

# Friday 8 January 2027, 12:00 UTC: purchases of Wednesday the 6th are due today at 10:00 local.
NOW = datetime(2027, 1, 8, 16, 0, tzinfo=UTC)

REPS = "id,name,email,signature\nr1,Joe Girard,joe@example.com,Joe\n"
CLIENTS = (
    "id,email,first_name,last_name,locale,timezone,country,rep\n"
    "c1,ann@example.com,Ann,Lee,en-US,America/New_York,US,r1\n"
    "c2,bea@example.org,Béatrice,Roy,fr,Europe/Paris,FR,r1\n"
    "c3,cal@example.net,Cal,Ng,en-GB,Europe/London,GB,r1\n"
    "c4,dan@example.com,Dan,Ode,en-US,America/Chicago,US,\n"
)
PURCHASES = (
    "id,client,purchased_at,product,amount,currency,status\n"
    "p1,c1,2027-01-06T11:00:00,Roadster,32500.00,USD,paid\n"
    "p2,c2,2027-01-06T15:30:00,Citadine,18900.00,EUR,paid\n"
    "p3,c3,2027-01-06T09:00:00,Estate,26400.00,GBP,paid\n"
    "p4,c4,2027-01-06T10:00:00,Tyres,640.00,USD,unpaid\n"
    "p5,c1,2027-01-06T17:00:00,Roof box,425.00,USD,paid\n"
)


def seed(rt: Runtime, tmp_path: Path, purchases: str = PURCHASES) -> None:
    for kind, content in (("reps", REPS), ("clients", CLIENTS), ("purchases", purchases)):
        path = tmp_path / f"{kind}.csv"
        path.write_text(content, encoding="utf-8")
        report = importer.import_csv(rt.engine, importer.Kind(kind), path, now=NOW, strict=True)
        assert report.errors == []


def seed_greetings(rt: Runtime, tmp_path: Path, clients: int) -> None:
    """`clients` clients (g0, g1, ... in London), each with a New Year greeting due an hour
    before NOW, inserted into the ledger as the planner would."""
    path = tmp_path / "clients.csv"
    rows = [f"g{n},g{n}@example.com,G{n},Lee,en,Europe/London,GB," for n in range(clients)]
    path.write_text(CLIENTS.splitlines()[0] + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    report = importer.import_csv(rt.engine, importer.Kind.CLIENTS, path, now=NOW, strict=True)
    assert report.errors == []
    with rt.engine.begin() as conn:
        ids = list(conn.execute(select(tables.clients.c.id)).scalars())
        due = NOW - timedelta(hours=1)
        greetings = [
            NewTouch(i, "new_year", date(2027, 1, 1), due, due + timedelta(days=3), "new_year")
            for i in ids
        ]
        ledger_for(conn).insert_touches(conn, greetings, NOW)
