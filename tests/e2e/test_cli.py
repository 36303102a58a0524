"""End to end: the installed `followup` executable, run as a user would, in a fresh folder."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import typer.main

from followup.cli.main import cli
from tests.support.executable import followup
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

COMMANDS = [
    "init",
    "demo",
    "import",
    "plan",
    "send",
    "run",
    "status",
    "db upgrade",
    "templates check",
    "preview",
    "studio",
    "daemon",
    "history",
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder after `followup init` and `followup demo`."""
    folder = tmp_path_factory.mktemp("shop")
    followup(folder, "init")
    followup(folder, "demo")
    return folder


def db_rows(folder: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return list(conn.execute(query))


def test_help_lists_every_command_and_each_has_an_example(tmp_path: Path) -> None:
    top = followup(tmp_path, "--help").stdout
    for command in COMMANDS:
        assert command.split()[0] in top
        assert "Example" in followup(tmp_path, *command.split(), "--help").stdout, command
    module = subprocess.run(
        [sys.executable, "-m", "followup", "--help"], capture_output=True, text=True, check=True
    )
    assert "plan" in module.stdout


def test_usage_errors_exit_2_and_config_errors_exit_1(tmp_path: Path) -> None:
    assert followup(tmp_path, "plan", "--until", "nope", check=False).returncode == 2
    (tmp_path / "config.toml").write_text('[smtp]\nport = "abc"\n')
    bad = followup(tmp_path, "status", check=False)
    assert bad.returncode == 1
    assert "[smtp] port" in bad.stderr
    missing = followup(tmp_path, "--config", "nowhere.toml", "status", check=False)
    assert missing.returncode == 1 and "nowhere.toml" in missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr


def test_the_demo_shop_has_what_it_promises(shop: Path) -> None:
    assert db_rows(shop, "select count(*) from reps")[0][0] >= 3
    assert db_rows(shop, "select count(*) from clients")[0][0] >= 200
    locales = {r[0].split("-")[0] for r in db_rows(shop, "select distinct locale from clients")}
    assert {"en", "fr"} <= locales
    assert len(db_rows(shop, "select distinct country from clients")) >= 4
    assert len(db_rows(shop, "select distinct timezone from clients")) >= 5
    assert (
        db_rows(shop, "select count(*) from clients where birthday_month=2 and birthday_day=29")[0][
            0
        ]
        >= 1
    )
    statuses = {r[0] for r in db_rows(shop, "select distinct status from purchases")}
    assert {"paid", "unpaid", "disputed"} <= statuses
    first, last = db_rows(shop, "select min(purchased_at), max(purchased_at) from purchases")[0]
    span = datetime.fromisoformat(str(last)) - datetime.fromisoformat(str(first))
    assert span > timedelta(days=600)


def test_dry_run_two_days_after_a_purchase_lists_the_thank_you_at_10_local(
    shop: Path, tmp_path: Path
) -> None:
    # A paid purchase by a client in a zone whose offset is not zero.
    client, zone, purchased_at = db_rows(
        shop,
        "select c.external_id, c.timezone, p.purchased_at from purchases p "
        "join clients c on c.id = p.client_id where p.status = 'paid' and c.status = 'active' "
        "and c.timezone = 'America/New_York' order by p.purchased_at desc limit 1",
    )[0]
    local_day = (
        datetime.fromisoformat(str(purchased_at))
        .replace(tzinfo=ZoneInfo("UTC"))
        .astimezone(ZoneInfo(str(zone)))
        .date()
    )
    on = local_day + timedelta(days=2)
    before = hashlib.sha256((shop / "var" / "followup.db").read_bytes()).hexdigest()
    result = followup(
        shop, "run", "--dry-run", "--on", on.isoformat(), "--out", str(tmp_path / "out"), "--json"
    )
    manifest = json.loads(result.stdout)
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = next(m for m in manifest["messages"] if m["client"] == client)
    local = datetime.fromisoformat(entry["send_at_local"])
    expected = datetime(on.year, on.month, on.day, 10, 0, tzinfo=ZoneInfo(str(zone)))
    assert local == expected and local.utcoffset() == expected.utcoffset()
    assert (local.hour, local.minute) == (10, 0)
    assert entry["campaign"] == "thank_you" and entry["template"] == "thank_you"
    for key in ("to", "occasion", "occurrence", "locale", "variant", "send_at_utc", "subject"):
        assert entry[key], key
    assert (tmp_path / "out" / entry["file"]).is_file()
    assert (tmp_path / "out" / "index.html").is_file()
    assert hashlib.sha256((shop / "var" / "followup.db").read_bytes()).hexdigest() == before


def test_plan_twice_then_send_once_delivers_each_thank_you_once(
    shop: Path, smtp_server: SmtpServer
) -> None:
    env = {
        "FOLLOWUP_DELIVERY_MODE": "smtp",
        "FOLLOWUP_SMTP_HOST": smtp_server.host,
        "FOLLOWUP_SMTP_PORT": str(smtp_server.port),
        "FOLLOWUP_SMTP_SECURITY": "none",
        "FOLLOWUP_SECRET_KEY": "e2e-secret",
    }
    first = followup(shop, "plan", env=env)
    second = followup(shop, "plan", env=env)
    assert "planned 0 touch" in second.stdout
    assert "planned 0 touch" not in first.stdout
    followup(shop, "send", "--once", env=env)
    followup(shop, "send", "--once", env=env)
    sent = db_rows(shop, "select message_id from touches where status = 'sent'")
    assert sent, "the demo shop has thank-yous due now"
    received = smtp_server.handler.message_ids()
    assert sorted(received) == sorted(str(r[0]) for r in sent)
    assert len(set(received)) == len(received)
    status = followup(shop, "status").stdout
    assert "sent" in status


def test_send_from_two_processes_delivers_each_message_once(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    followup(tmp_path, "init")
    followup(tmp_path, "demo")
    env = {
        "FOLLOWUP_DELIVERY_MODE": "smtp",
        # Small batches and a slow server: the second process finds work left when it starts.
        "FOLLOWUP_DELIVERY_BATCH_SIZE": "2",
        "FOLLOWUP_SMTP_HOST": smtp_server.host,
        "FOLLOWUP_SMTP_PORT": str(smtp_server.port),
        "FOLLOWUP_SMTP_SECURITY": "none",
        "FOLLOWUP_SECRET_KEY": "e2e-secret",
    }
    followup(tmp_path, "plan", env=env)
    smtp_server.handler.data_delay = 0.3
    result = followup(tmp_path, "-v", "--log-json", "send", "--once", "--processes", "2", env=env)
    started = [
        json.loads(line) for line in result.stderr.splitlines() if '"processes.start"' in line
    ]
    # On Linux the workers are forked: they start without importing followup again.
    method = "fork" if sys.platform == "linux" else "spawn"
    assert [(e["processes"], e["method"]) for e in started] == [(2, method)]
    sent = db_rows(tmp_path, "select message_id from touches where status = 'sent'")
    assert len(sent) > 4
    assert f"sent {len(sent)}," in result.stdout
    received = smtp_server.handler.message_ids()
    assert sorted(received) == sorted(str(r[0]) for r in sent)
    assert len(set(received)) == len(received)
    claims = db_rows(
        tmp_path, "select distinct detail from touch_events where detail like 'claimed by %'"
    )
    pids = {str(detail).split(":")[1] for (detail,) in claims}
    assert len(pids) == 2, f"two processes claimed touches: {claims}"
    assert db_rows(tmp_path, "select count(*) from touches where status = 'sending'") == [(0,)]


def test_import_rejects_bad_rows_with_line_and_reason(shop: Path, tmp_path: Path) -> None:
    path = tmp_path / "clients.csv"
    rows = [
        [
            "id",
            "email",
            "first_name",
            "last_name",
            "locale",
            "timezone",
            "country",
            "birthday",
            "shoe_size",
        ],
        ["N1", "good.one@example.com", "Good", "One", "en-US", "America/Denver", "US", "", "42"],
        ["N2", "not-an-address", "Bad", "Mail", "en-US", "America/Denver", "US", "", ""],
        ["N3", "zone@example.com", "Bad", "Zone", "fr", "Europe/Atlantis", "FR", "", ""],
        ["N4", "feb@example.com", "Bad", "Date", "fr", "Europe/Paris", "FR", "1990-02-30", ""],
        ["N5", "good.two@example.com", "Good", "Two", "fr", "Europe/Paris", "FR", "2000-02-29", ""],
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    count = "select count(*) from clients where external_id like 'N%'"
    strict = followup(shop, "import", "clients", str(path), "--strict", check=False)
    assert strict.returncode == 1
    assert db_rows(shop, count)[0][0] == 0
    result = followup(shop, "import", "clients", str(path), check=False)
    assert result.returncode == 1
    assert "clients.csv:1: shoe_size: unknown column" in result.stderr
    assert "clients.csv:3: email:" in result.stderr
    assert "clients.csv:4: timezone:" in result.stderr
    assert "clients.csv:5: birthday:" in result.stderr
    assert "2 imported" in result.stdout
    assert sorted(
        r[0] for r in db_rows(shop, "select external_id from clients where external_id like 'N%'")
    ) == ["N1", "N5"]


def test_user_errors_are_one_line_without_a_traceback(shop: Path) -> None:
    cases = [
        (("status",), {"FOLLOWUP_DATABASE_URL": "nonsense"}, "database"),
        (
            ("status",),
            {"FOLLOWUP_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x"},
            "Connection refused",
        ),
        (("import", "clients", str(shop)), {}, "Is a directory"),
        (("import", "clients", "missing.csv"), {}, "missing.csv"),
    ]
    for args, env, expected in cases:
        result = followup(shop, *args, env=env, check=False)
        assert result.returncode == 1, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert followup(shop, "demo", "--today", "soon", check=False).returncode == 2


def test_templates_check_passes_on_the_shipped_templates(tmp_path: Path) -> None:
    followup(tmp_path, "init")
    result = followup(tmp_path, "templates", "check")
    assert "no problems" in result.stdout
    assert result.stderr == ""


def test_templates_check_names_file_and_line_and_exits_1(tmp_path: Path) -> None:
    followup(tmp_path, "init")
    templates = tmp_path / "templates"
    (templates / "birthday" / "en" / "html.html").write_text(
        '{% extends "_layouts/base.html" %}\n{% block content %}\n<h1>Hi</h1>\n'
        "{% if client.first_name %}\n<p>x</p>\n{% endblock %}\n"
    )
    text = templates / "survey" / "fr" / "text.txt"
    lines = text.read_text(encoding="utf-8").splitlines()
    lines[4] = "Mon {{ voiture }} !"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = followup(tmp_path, "templates", "check", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "templates/birthday/en/html.html:6: " in result.stderr, result.stderr
    assert "templates/survey/fr/text.txt:5: 'voiture' is undefined" in result.stderr
    assert "2 problem(s)" in result.stderr
    assert "Traceback" not in result.stderr


def test_preview_prints_the_message_and_writes_html_and_eml(tmp_path: Path) -> None:
    followup(tmp_path, "init")
    result = followup(
        tmp_path, "preview", "holiday", "--locale", "fr", "--variant", "sage", "--on", "2027-07-14"
    )
    assert "Subject: Noël : meilleurs vœux, Zoé" in result.stdout
    assert "(14 juillet 2027)" in result.stdout
    html = tmp_path / "preview" / "holiday-fr-sage-sample-fr.html"
    eml = tmp_path / "preview" / "holiday-fr-sage-sample-fr.eml"
    assert f"HTML part: {html.relative_to(tmp_path)}" in result.stdout
    assert "#4f7a5a" in html.read_text(encoding="utf-8")
    assert b"Subject: =?utf-8?" in eml.read_bytes() or b"Subject: No" in eml.read_bytes()


def test_preview_of_a_real_client(shop: Path, tmp_path: Path) -> None:
    client, first_name = db_rows(
        shop,
        "select c.external_id, c.first_name from clients c join purchases p on "
        "p.client_id = c.id where c.locale like 'en%' and p.status = 'paid' limit 1",
    )[0]
    result = followup(shop, "preview", "thank_you", "--client", str(client), "--out", str(tmp_path))
    assert f"Subject: Thank you, {first_name}!" in result.stdout
    assert f"client {client})" in result.stdout
    assert list(tmp_path.glob("thank_you-en-*.eml"))
    missing = followup(shop, "preview", "thank_you", "--client", "nobody", check=False)
    assert missing.returncode == 1
    assert "no client with id 'nobody'" in missing.stderr
    unknown = followup(shop, "preview", "nothing", check=False)
    assert unknown.returncode == 1 and "no message 'nothing'" in unknown.stderr


def every_command() -> list[tuple[list[str], Any]]:
    """Every command and subcommand of the app (its click commands), as typed after
    `followup`; a group (db, templates, client) is only its subcommands' prefix. Typer may
    bring its own copy of click: a group is what has subcommands."""
    found: list[tuple[list[str], Any]] = []

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found.append((path, command))
            return
        for name, subcommand in subcommands.items():
            walk(subcommand, [*path, name])

    walk(typer.main.get_command(cli), [])
    return found


def example_lines(command: Any) -> list[str]:
    """The lines given to example() for this command: its epilog after the "Example:"
    heading, less the \\b marker that keeps click from rewrapping them."""
    heading, *lines = str(command.epilog or "").splitlines() or [""]
    if heading != "Example:":
        return []
    return [line.strip() for line in lines if line.strip() not in ("", "\b")]


def test_every_help_ends_with_its_examples_one_a_line(tmp_path: Path) -> None:
    commands = every_command()
    names = {" ".join(path) for path, _ in commands}
    assert {"init", "run", "db upgrade", "templates check", "client erase"} <= names
    assert len(commands) >= 18
    for path, command in commands:
        examples = example_lines(command)
        assert examples, f"followup {' '.join(path)} has no example"
        # Narrow: a long example must not be wrapped either.
        shown = followup(tmp_path, *path, "--help", env={"COLUMNS": "60"}).stdout
        lines = [line.strip() for line in shown.splitlines() if line.strip()]
        assert lines[-len(examples) - 1 :] == ["Example:", *examples], (path, shown)


def test_init_creates_the_database_the_next_commands_use(tmp_path: Path) -> None:
    result = followup(tmp_path, "init", "shop")
    shop = tmp_path / "shop"
    assert (shop / "var" / "followup.db").is_file()
    assert "created shop/config.toml" in result.stdout
    assert "created shop/var/followup.db (database at revision " in result.stdout
    for command in ("status", "plan"):
        after = followup(shop, command, check=False)
        assert after.returncode == 0, (command, after.stdout, after.stderr)
        assert "db upgrade" not in after.stdout + after.stderr
    # Again: the files and the database are kept; --force rewrites the files, never the
    # database.
    runs = "select count(*) from runs"
    before = db_rows(shop, runs)
    again = followup(tmp_path, "init", "shop")
    assert "kept existing shop/config.toml" in again.stderr
    assert "kept existing database shop/var/followup.db" in again.stderr
    assert "created" not in again.stdout
    forced = followup(tmp_path, "init", "shop", "--force")
    assert "created shop/config.toml" in forced.stdout
    assert "kept existing database shop/var/followup.db" in forced.stderr
    assert db_rows(shop, runs) == before != [(0,)]


def test_init_creates_the_schema_in_the_database_of_followup_database_url(
    tmp_path: Path, postgres_url: str
) -> None:
    env = {"FOLLOWUP_DATABASE_URL": postgres_url}
    result = followup(tmp_path, "init", "shop", env=env)
    assert "(database at revision " in result.stdout
    assert not (tmp_path / "shop" / "var" / "followup.db").exists()
    followup(tmp_path / "shop", "status", env=env)
    followup(tmp_path / "shop", "plan", env=env)


def test_the_now_option_is_in_the_help_with_its_environment_variable(tmp_path: Path) -> None:
    shown = " ".join(followup(tmp_path, "--help").stdout.split())
    assert "--now <instant> Pretend the time is this ISO 8601 instant" in shown
    assert "[env var: FOLLOWUP_NOW]" in shown
    bad = followup(tmp_path, "status", env={"FOLLOWUP_NOW": "soon"}, check=False)
    assert bad.returncode == 2 and "not an ISO 8601 date-time" in bad.stderr
