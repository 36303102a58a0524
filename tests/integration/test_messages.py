"""Messages through a real run, on SQLite and PostgreSQL, delivered to a real SMTP server
(aiosmtpd): variant rotation recorded in the ledger, header injection through client and rep
fields, and a broken template failing only its own touches."""

from __future__ import annotations

import asyncio
import email
import random
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

from sqlalchemy import select

from followup.config import Settings
from followup.delivery.dispatcher import dispatch
from followup.delivery.report import DispatchReport
from followup.dryrun import output as dryrun_output
from followup.dryrun.run import dry_run
from followup.importing import importer
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.service import reports
from followup.storage import tables
from tests.support.settings import ROOT, make_settings
from tests.support.smtp import SmtpServer

# Monday 4 January 2027, 20:00 UTC.
NOW = datetime(2027, 1, 4, 20, 0, tzinfo=UTC)

REPS = "id,name,email,signature\nr1,Joe Girard,joe@example.com,Joe\n"
CLIENTS = (
    "id,email,first_name,last_name,locale,timezone,country,rep\n"
    "c1,ann@example.com,Ann,Lee,en-US,America/New_York,US,r1\n"
    "c2,bea@example.org,Béatrice,Roy,fr,Europe/Paris,FR,r1\n"
)
# c1 buys on three days in a row: three thank-yous, due at 10:00 New York time two days later.
PURCHASES = (
    "id,client,purchased_at,product,amount,currency,status\n"
    "p1,c1,2027-01-04T11:00:00,Roadster,32500.00,USD,paid\n"
    "p2,c1,2027-01-05T11:00:00,Roof box,425.00,USD,paid\n"
    "p3,c1,2027-01-06T11:00:00,Snow chains,89.00,USD,paid\n"
    "p4,c2,2027-01-04T11:00:00,Citadine,18900.00,EUR,paid\n"
)
OpenRuntime = Callable[[Settings], Runtime]


def _runtime(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    templates: Path = ROOT / "templates",
) -> Runtime:
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp"},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
        templates={"dir": str(templates)},
    )
    rt = open_runtime(settings)
    for kind, content in (("reps", REPS), ("clients", CLIENTS), ("purchases", PURCHASES)):
        path = tmp_path / f"{kind}.csv"
        path.write_text(content, encoding="utf-8")
        report = importer.import_csv(rt.engine, importer.Kind(kind), path, now=NOW, strict=True)
        assert report.errors == []
    plan(rt, NOW, until=NOW + timedelta(days=5))
    return rt


def send(rt: Runtime, now: datetime) -> DispatchReport:
    return asyncio.run(dispatch(rt, lambda: now, rng=random.Random(1)))


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def test_consecutive_touches_to_a_client_rotate_variants_and_the_ledger_shows_them(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    # With two designs, "never the previous one" leaves no choice: they must alternate,
    # whatever the hash of each touch key says.
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "thank_you" / "variants.toml").write_text(
        '[[variant]]\nname = "ivory"\naccent = "#a08c5b"\n\n'
        '[[variant]]\nname = "ink"\naccent = "#1f2a44"\n'
    )
    rt = _runtime(tmp_path, database_url, smtp_server, open_runtime, templates)
    # One dispatch a day at 16:00 UTC (11:00 in New York): one thank-you of c1's each time.
    for day in (6, 7, 8):
        report = send(rt, datetime(2027, 1, day, 16, 0, tzinfo=UTC))
        assert report.sent >= 1 and report.failed == 0
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(t.c.occurrence, t.c.status, t.c.variant, t.c.message_id)
            .join(c, c.c.id == t.c.client_id)
            .where(c.c.external_id == "c1")
            .order_by(t.c.occurrence)
        ).all()
    assert [r.status for r in rows] == ["sent", "sent", "sent"]
    variants = [r.variant for r in rows]
    names = [v.name for v in rt.templates.variants("thank_you")]
    assert all(v in names for v in variants), variants
    assert variants[0] != variants[1] and variants[1] != variants[2], variants
    assert variants in (["ivory", "ink", "ivory"], ["ink", "ivory", "ink"])
    # The message each client received is drawn in the design the ledger names.
    colours = {v.name: v.colours["accent"] for v in rt.templates.variants("thank_you")}
    by_id = {parse(r.data)["Message-ID"]: parse(r.data) for r in smtp_server.handler.received}
    for row in rows:
        html = by_id[row.message_id].get_body(preferencelist=("html",))
        assert html is not None
        assert colours[row.variant] in html.get_content(), row.variant


def test_the_dry_run_manifest_shows_the_variant(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = _runtime(tmp_path, database_url, smtp_server, open_runtime)
    send(rt, datetime(2027, 1, 6, 16, 0, tzinfo=UTC))
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        (last,) = conn.execute(
            select(t.c.variant)
            .join(c, c.c.id == t.c.client_id)
            .where(t.c.status == "sent", c.c.external_id == "c1")
        ).one()
    run = dry_run(rt, datetime(2027, 1, 7).date(), None)
    dryrun_output.write(run, tmp_path / "dry-run")
    entries = dryrun_output.manifest(run)["messages"]
    names = {v.name for v in rt.templates.variants("thank_you")}
    c1 = [e for e in entries if e["client"] == "c1"]
    assert len(c1) == 1 and c1[0]["variant"] in names
    # The ledger's last variant for c1 (sent on the 6th) is not the next one.
    assert last in names and c1[0]["variant"] != last
    index = (tmp_path / "dry-run" / "index.html").read_text(encoding="utf-8")
    assert "<th>variant</th>" in index and f"<td>{c1[0]['variant']}</td>" in index


def test_a_header_injection_through_client_and_rep_names_adds_no_header_or_recipient(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = _runtime(tmp_path, database_url, smtp_server, open_runtime)
    # The importer refuses control characters; the database may still hold them (older
    # imports, other tools), so they are written directly.
    with rt.engine.begin() as conn:
        conn.execute(
            tables.clients.update()
            .where(tables.clients.c.external_id == "c1")
            .values(first_name="Eve\r\nBcc: x@y.z", last_name="Lee\nCc: cc@y.z")
        )
        conn.execute(tables.reps.update().values(name="Joe\r\nBcc: rep@y.z", signature="Joe"))
    report = send(rt, datetime(2027, 1, 6, 16, 0, tzinfo=UTC))
    assert report.failed == 0
    received = [r for r in smtp_server.handler.received if r.rcpt_tos == ["ann@example.com"]]
    assert len(received) == 1
    assert all(len(r.rcpt_tos) == 1 for r in smtp_server.handler.received)
    assert not any("y.z" in rcpt for r in smtp_server.handler.received for rcpt in r.rcpt_tos)
    message = parse(received[0].data)
    assert sorted(set(message.keys())) == sorted(
        {
            "Subject",
            "From",
            "Reply-To",
            "To",
            "Date",
            "Message-ID",
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "MIME-Version",
            "Content-Type",
            "Content-Language",
        }
    )
    assert message["Bcc"] is None and message["Cc"] is None
    (to,) = message["To"].addresses
    assert to.addr_spec == "ann@example.com"
    assert "\n" not in to.display_name and "\r" not in to.display_name
    (sender,) = message["From"].addresses
    assert sender.addr_spec == "joe@example.com"
    assert sender.display_name == "Joe Bcc: rep@y.z"
    assert message["Subject"] == "Thank you, Eve Bcc: x@y.z!"
    for part in message.walk():
        assert part["Bcc"] is None and part["Cc"] is None


def test_a_broken_template_holds_only_its_touches_with_file_and_line(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    text = templates / "thank_you" / "fr" / "text.txt"
    text.write_text(text.read_text().replace("Bonjour", "{{ client.nickname }}"))
    rt = _runtime(tmp_path, database_url, smtp_server, open_runtime, templates)
    report = send(rt, datetime(2027, 1, 6, 16, 0, tzinfo=UTC))
    # c2 (French) is held on the broken template (issue 20: it used to fail); c1's English
    # thank-you still goes out.
    assert report.held == 1 and report.failed == 0 and report.sent == 1
    assert [r.rcpt_tos for r in smtp_server.handler.received] == [["ann@example.com"]]
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        status, reason = conn.execute(
            select(t.c.status, t.c.reason)
            .join(c, c.c.id == t.c.client_id)
            .where(c.c.external_id == "c2")
        ).one()
    assert status == "held"
    assert reason.startswith("template error: templates/thank_you/fr/text.txt:1: ")
    assert "nickname" in reason
    report_now = reports.status(rt, datetime(2027, 1, 6, 16, 0, tzinfo=UTC))
    assert report_now.counts["held"] == 1 and report_now.counts["sent"] == 1
    assert [line.reason for line in report_now.held] == [reason]
