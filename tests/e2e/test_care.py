"""Client care end to end, with the real executable on the demo shop: exclusions and tiers in a
dry-run, reassigning a rep, export and erase, suppression lists, audience rules in the check."""

from __future__ import annotations

import email
import json
import sqlite3
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from tests.support.executable import NOW, followup

pytestmark = pytest.mark.e2e


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    followup(tmp_path, "init")
    followup(tmp_path, "demo", "--today", NOW[:10])
    return tmp_path


def dry_run(folder: Path, day: str) -> dict[str, Any]:
    out = folder / "dry-run" / day
    result = followup(folder, "run", "--dry-run", "--on", day, "--json", "--out", str(out))
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def rows(folder: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return list(conn.execute(query, args))


def test_new_year_skips_bad_payers_with_the_reason_and_dresses_vips_in_their_designs(
    shop: Path,
) -> None:
    manifest = dry_run(shop, "2027-01-01")
    reasons = {e["reason"] for e in manifest["skipped"]}
    assert {"excluded: unpaid purchase", "excluded: disputed purchase"} <= reasons
    unpaid = {
        r[0]
        for r in rows(
            shop,
            "SELECT c.external_id FROM clients c JOIN purchases p ON p.client_id = c.id "
            "WHERE p.status IN ('unpaid', 'disputed')",
        )
    }
    assert unpaid
    assert not unpaid & {e["client"] for e in manifest["messages"]}

    # vip by the client data (the demo marks some) or by their purchases ([tiers]).
    marked = {r[0] for r in rows(shop, "SELECT external_id FROM clients WHERE tier = 'vip'")}
    greeted_vips = [e for e in manifest["messages"] if e["tier"] == "vip"]
    others = [e for e in manifest["messages"] if e["tier"] != "vip"]
    assert marked & {e["client"] for e in greeted_vips}
    assert others
    assert {e["variant"] for e in greeted_vips} <= {"gold", "midnight"}
    assert not {e["variant"] for e in others} & {"gold", "midnight"}


def test_reassigning_a_rep_changes_who_signs_later_messages_not_earlier_ones(
    shop: Path,
) -> None:
    followup(shop, "run")  # sends today's thank-yous, signed by the reps of the day
    sent = rows(
        shop,
        "SELECT c.external_id, r.external_id FROM touches t JOIN clients c ON c.id = t.client_id "
        "JOIN reps r ON r.id = t.rep_id WHERE t.status = 'sent' AND r.external_id = 'rep-sam'",
    )
    assert sent, "the demo sends thank-yous signed by rep-sam today"
    client = sent[0][0]
    sam_clients = {
        r[0]
        for r in rows(
            shop,
            "SELECT c.external_id FROM clients c JOIN reps r ON r.id = c.rep_id "
            "WHERE r.external_id = 'rep-sam'",
        )
    }

    result = followup(shop, "reassign", "--from", "rep-sam", "--to", "rep-lea", "--retire")
    assert f"{len(sam_clients)} client(s) of rep-sam now with rep-lea" in result.stdout

    manifest = dry_run(shop, "2027-01-01")
    lea = rows(shop, "SELECT name, email FROM reps WHERE external_id = 'rep-lea'")[0]
    former = [e for e in manifest["messages"] if e["client"] in sam_clients]
    assert former
    for entry in former:
        eml = (shop / "dry-run" / "2027-01-01" / entry["file"]).read_bytes()
        message = email.message_from_bytes(eml, policy=default)
        for header in ("From", "Reply-To"):
            (address,) = message[header].addresses
            assert (address.display_name, address.addr_spec) == (lea[0], lea[1])
    # What was sent before keeps its signer, in the history and in the export.
    history = json.loads(followup(shop, "history", client, "--json").stdout)
    assert "rep-sam" in {t["rep"] for t in history["touches"] if t["status"] == "sent"}
    export = json.loads(followup(shop, "client", "export", client).stdout)
    assert "rep-sam" in {t["rep"] for t in export["touches"] if t["status"] == "sent"}
    assert export["client"]["rep"]["external_id"] == "rep-lea"


def test_export_then_erase_leaves_no_trace_and_a_later_import_stays_suppressed(
    shop: Path,
) -> None:
    followup(shop, "run")
    client, email, first, last = rows(
        shop,
        "SELECT c.external_id, c.email, c.first_name, c.last_name FROM clients c "
        "JOIN touches t ON t.client_id = c.id WHERE t.status = 'sent' LIMIT 1",
    )[0]
    out = shop / "export.json"
    followup(shop, "client", "export", client, "--out", str(out))
    assert out.stat().st_mode & 0o077 == 0
    export = json.loads(out.read_text(encoding="utf-8"))
    assert export["client"]["email"] == email
    assert export["purchases"]
    assert export["touches"]
    assert all(t["history"] for t in export["touches"])

    result = followup(shop, "client", "erase", client, "--yes")
    assert "anonymous touch(es) kept" in result.stdout
    with sqlite3.connect(shop / "var" / "followup.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                text = " ".join(str(v) for v in row)
                assert email not in text, f"{table} still holds the address"
                assert f"{first} {last}" not in text, f"{table} still holds the name"
    kept = rows(
        shop,
        "SELECT count(*) FROM touches t JOIN clients c ON c.id = t.client_id "
        "WHERE c.status = 'erased'",
    )
    assert kept[0][0] == len(export["touches"])

    # The same client comes back in a later import: they stay suppressed.
    header = "id,email,first_name,last_name,locale,timezone,country\n"
    (shop / "again.csv").write_text(
        header + f"{client},{email},{first},{last},en-US,America/New_York,US\n", encoding="utf-8"
    )
    followup(shop, "import", "clients", "again.csv")
    again = json.loads(followup(shop, "client", "export", email).stdout)
    assert again["suppressed"] == "erased"
    manifest = dry_run(shop, "2027-01-01")
    (entry,) = [e for e in manifest["skipped"] if e["client"] == client]
    assert entry["reason"] == "suppressed (erased)"


def test_suppression_lists_report_bad_lines_and_store_nothing_then_everything(
    shop: Path,
) -> None:
    (shop / "list.csv").write_text("email\nann@example.com\nnot-an-address\n", encoding="utf-8")
    bad = followup(shop, "suppress", "--file", "list.csv", check=False)
    assert bad.returncode == 1
    assert "list.csv:3: email:" in bad.stderr
    assert rows(shop, "SELECT count(*) FROM suppressions WHERE email = 'ann@example.com'") == [(0,)]
    (shop / "list.csv").write_text("email\nAnn@Example.com\nbob@example.com\n", encoding="utf-8")
    good = followup(shop, "suppress", "--file", "list.csv", "--reason", "complained")
    assert "2 address(es) added" in good.stdout
    followup(shop, "unsuppress", "bob@example.com")
    assert rows(shop, "SELECT email, reason FROM suppressions ORDER BY email") == [
        ("ann@example.com", "complained")
    ]


def test_templates_check_names_the_campaign_of_a_broken_audience_rule(shop: Path) -> None:
    (shop / "calendars" / "vip.toml").write_text(
        '[occasions.vip_day]\nkind = "rrule"\ndtstart = "2027-01-01"\n'
        'rrule = "FREQ=YEARLY"\ntemplate = "holiday"\naudience = "client.tier == "\n',
        encoding="utf-8",
    )
    result = followup(shop, "templates", "check", check=False)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "vip.toml:6: [occasions.vip_day] audience:" in output
