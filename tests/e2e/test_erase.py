"""`followup client erase` leaves nothing, through the real executable (issue 20, acceptance
6): after a real run in capture mode and a dry-run, every byte of the SQLite database file
(free pages included, with its -wal and -shm), of var/ and of the dry-run folders is scanned
for the client's address, name, zone, birthday and purchase dates. PostgreSQL's files cannot
be scanned from a test: tests/integration/test_erase.py checks its rows instead."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from tests.support.executable import followup

pytestmark = pytest.mark.e2e

ADDRESS = "Zephyrine.Quillfeather@Example.org"
FIRST, LAST = "Zephyrine", "Quillfeather"
ZONE = "America/Argentina/Ushuaia"
REPS = "id,name,email\nr1,Joe Girard,joe@example.com\n"
CLIENTS = (
    "id,email,first_name,last_name,locale,timezone,country,birthday,rep\n"
    f"zq-1977,{ADDRESS},{FIRST},{LAST},fr,{ZONE},AR,1977-08-23,r1\n"
    "on-1,otto@example.com,Otto,Normal,en-US,America/New_York,US,1960-02-11,r1\n"
)
PURCHASES = (
    "id,client,purchased_at,product,amount,currency\n"
    "zp-1,zq-1977,2026-11-21T10:00:00,Roadster,32500.00,USD\n"
    "zp-2,zq-1977,2025-05-17T12:00:00,Roof box,425.00,USD\n"
    "op-1,on-1,2026-11-20T10:00:00,Tyres,640.00,USD\n"
)

#: Each needle as it may be written: ISO dates, and the day and month alone.
TEXT_NEEDLES = [
    ADDRESS.lower(),
    FIRST.lower(),
    LAST.lower(),
    ZONE.lower(),
    "2026-11-21",
    "2025-05-17",
    "08-23",
    "08/23",
    "23/08",
    "23.08.",
]
#: Digits alone are checked where they are not part of a longer hexadecimal run (hashes,
#: Message-IDs and keys are hexadecimal and may hold any four digits by chance).
DIGIT_NEEDLES = ["0823", "20261121", "20250517"]


def found_in(data: bytes) -> list[str]:
    lowered = data.lower()
    hits = [n for n in TEXT_NEEDLES if n.encode() in lowered]
    for digits in DIGIT_NEEDLES:
        if re.search(rb"(?<![0-9a-f])" + digits.encode() + rb"(?![0-9a-f])", lowered):
            hits.append(digits)
    return hits


def scan(shop: Path) -> dict[str, list[str]]:
    """Every file of var/ (the database and its -wal and -shm, the capture maildir) and of
    the dry-run folders -> the needles found in its bytes."""
    hits: dict[str, list[str]] = {}
    for folder in (shop / "var", shop / "dry-run"):
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                found = found_in(path.read_bytes())
                if found:
                    hits[str(path.relative_to(shop))] = found
    return hits


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    followup(tmp_path, "init")
    for kind, content in (("reps", REPS), ("clients", CLIENTS), ("purchases", PURCHASES)):
        (tmp_path / f"{kind}.csv").write_text(content, encoding="utf-8")
        followup(tmp_path, "import", kind, f"{kind}.csv")
    # A year ahead: the birthday (23 August) and the purchase anniversary are in the ledger.
    followup(tmp_path, "plan", "--until", "2027-12-31")
    return tmp_path


def test_an_erased_client_leaves_no_byte_in_the_database_var_or_the_dry_runs(
    shop: Path,
) -> None:
    listed = json.loads(followup(shop, "run", "--dry-run", "--on", "2026-11-23", "--json").stdout)
    assert ADDRESS.lower() in {e["to"].lower() for e in listed["messages"]}
    empty = json.loads(followup(shop, "run", "--dry-run", "--on", "2026-12-05", "--json").stdout)
    assert not empty["messages"], "a dry-run of a quiet day, which must survive the erasure"
    followup(shop, "run")  # capture mode: the thank-you goes to var/outbox
    before = scan(shop)
    database = "var/followup.db"
    assert {ADDRESS.lower(), FIRST.lower(), "08-23", "2026-11-21"} <= {
        n for path, found in before.items() if path.startswith(database) for n in found
    }, "the database holds the client (the scan would find them)"
    assert any(p.startswith("var/outbox/") for p in before), "the captured message"
    assert any(p.startswith("dry-run/2026-11-23/") for p in before), "the dry-run's copy"

    result = followup(shop, "client", "erase", "zq-1977", "--yes")
    assert "1 captured message(s) and 1 dry-run folder(s) removed; vacuumed" in result.stdout

    assert scan(shop) == {}
    assert not (shop / "dry-run" / "2026-11-23").exists()
    assert (shop / "dry-run" / "2026-12-05" / "manifest.json").exists()
    (others,) = (shop / "var" / "outbox" / "new").iterdir()
    assert b"otto@example.com" in others.read_bytes(), "another client's message stays"
    with sqlite3.connect(shop / "var" / "followup.db") as conn:
        kept = conn.execute(
            "SELECT t.campaign, t.occurrence, t.status, t.message_id, t.locale "
            "FROM touches t JOIN clients c ON c.id = t.client_id WHERE c.status = 'erased'"
        ).fetchall()
        (digest,) = conn.execute(
            "SELECT email FROM suppressions WHERE reason = 'erased'"
        ).fetchone()
    assert kept, "the anonymous touches stay, for the counts"
    assert {occurrence[4:] for _, occurrence, *_ in kept} <= {"-01-01", "-01-02"}
    assert ("thank_you", "2026-01-01", "sent", None, None) in kept
    assert digest.startswith("hmac-sha256:")

    # The address comes back in an import: suppressed, by the keyed hash.
    (shop / "again.csv").write_text(
        f"id,email,first_name,last_name,locale,timezone,country\nzq-2,{ADDRESS},Z,Q,fr,UTC,AR\n",
        encoding="utf-8",
    )
    followup(shop, "import", "clients", "again.csv")
    export = json.loads(followup(shop, "client", "export", "zq-2").stdout)
    assert export["suppressed"] == "erased"


def test_db_vacuum_rewrites_the_database_after_an_erasure_without_vacuum(shop: Path) -> None:
    result = followup(shop, "client", "erase", ADDRESS, "--yes", "--no-vacuum")
    assert "not vacuumed (secure_delete only); WAL truncated" in result.stdout
    wal = shop / "var" / "followup.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "the WAL held earlier pages"
    vacuumed = followup(shop, "db", "vacuum")
    assert "vacuumed; WAL truncated" in vacuumed.stdout
    assert scan(shop) == {}


def test_unsuppress_puts_a_wrongly_bounced_client_back_and_history_says_why(shop: Path) -> None:
    # As a relay's refusal taken for a bounce left it: suppressed, and the client bounced.
    followup(shop, "suppress", "otto@example.com", "--reason", "bounced")
    with sqlite3.connect(shop / "var" / "followup.db") as conn:
        conn.execute("UPDATE clients SET status = 'bounced' WHERE external_id = 'on-1'")

    result = followup(shop, "-v", "unsuppress", "otto@example.com", "--reason", "relay refusal")

    assert "1 bounced client(s) with this address are active again" in result.stdout
    assert "client.unsuppressed" in result.stderr
    assert "otto@example.com" not in result.stderr, "the address stays out of the logs"
    history = json.loads(followup(shop, "history", "on-1", "--json").stdout)
    assert (history["status"], history["suppressed"]) == ("active", None)
    assert [(e["kind"], e["detail"]) for e in history["events"]] == [
        ("unsuppressed", "relay refusal")
    ]
    assert "unsuppressed: relay refusal" in followup(shop, "history", "on-1").stdout
    again = followup(shop, "unsuppress", "otto@example.com", check=False)
    assert again.returncode == 1
    assert "is not on the suppression list and bounced no client" in again.stderr
