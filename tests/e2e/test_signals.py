"""SIGTERM and SIGINT in `followup send` and `run`, as in the daemon: the real executable
against a slow SMTP server (each message held by the server's handler before it answers).
Whenever the signal comes, no touch is left `sending`, and every uncertain touch is one the
server's handler saw. And the circuit breaker as the command shows it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
from datetime import date, datetime
from pathlib import Path

import pytest

from followup.importing.demo import write_bulk_shop
from tests.support.executable import EXECUTABLE, followup
from tests.support.faulty import faulty_server
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

TOUCHES = 40
START = datetime.fromisoformat("2027-01-08T16:00:00+00:00")


def ledger(folder: Path) -> tuple[dict[str, int], set[str]]:
    """Touches by status, and the addresses of the uncertain ones."""
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        counts = dict(conn.execute("select status, count(*) from touches group by status"))
        uncertain = {
            row[0]
            for row in conn.execute(
                "select c.email from touches t join clients c on c.id = t.client_id "
                "where t.status = 'uncertain'"
            )
        }
    return counts, uncertain


@pytest.fixture(scope="module")
def planned_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shop with TOUCHES thank-yous planned, due at START; each test works on a copy."""
    folder = tmp_path_factory.mktemp("shop")
    followup(folder, "init")
    write_bulk_shop(folder, TOUCHES, date(2027, 1, 6))
    followup(folder, "db", "upgrade")
    for kind in ("reps", "clients", "purchases"):
        followup(folder, "import", kind, str(folder / f"{kind}.csv"), "--strict")
    followup(folder, "plan", env={"FOLLOWUP_NOW": START.isoformat()})
    return folder


@pytest.mark.parametrize(
    ("signum", "command", "grace", "delay"),
    [
        # The send in flight finishes within the grace period: recorded sent.
        (signal.SIGTERM, ("send",), 30, 0.5),
        (signal.SIGINT, ("send", "--once"), 30, 0.5),
        # The grace period ends first: the send is cut off, and only it may be uncertain.
        (signal.SIGTERM, ("send", "--once"), 0.2, 5),
        (signal.SIGTERM, ("send", "--once", "--processes", "2"), 0.2, 5),
        (signal.SIGTERM, ("run",), 30, 0.5),
    ],
    ids=["term-send", "int-send-once", "term-grace-cut", "term-processes", "term-run"],
)
def test_a_signal_stops_sending_and_leaves_nothing_sending_nor_wrongly_uncertain(
    tmp_path: Path,
    planned_shop: Path,
    smtp_server: SmtpServer,
    signum: signal.Signals,
    command: tuple[str, ...],
    grace: float,
    delay: float,
) -> None:
    shutil.copytree(planned_shop, tmp_path, dirs_exist_ok=True)
    smtp_server.handler.data_delay = delay
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
    env.update(
        {
            "FOLLOWUP_NOW": START.isoformat(),
            "FOLLOWUP_DELIVERY_MODE": "smtp",
            "FOLLOWUP_SMTP_HOST": smtp_server.host,
            "FOLLOWUP_SMTP_PORT": str(smtp_server.port),
            "FOLLOWUP_SMTP_SECURITY": "none",
            "FOLLOWUP_SMTP_POOL_SIZE": "2",
            "FOLLOWUP_SECRET_KEY": "signal-test",
            "FOLLOWUP_SCHEDULE_SHUTDOWN_GRACE_SECONDS": str(grace),
        }
    )
    process = subprocess.Popen(
        [str(EXECUTABLE), *command],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert smtp_server.handler.wait_received(1, 120), "nothing reached the server"
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert f"stopped by {signum.name}" in stdout
    counts, uncertain = ledger(tmp_path)
    assert "sending" not in counts, counts
    seen = {address for item in smtp_server.handler.received for address in item.rcpt_tos}
    assert uncertain <= seen, "a touch the server never saw is uncertain"
    assert counts.get("sent", 0) + len(uncertain) <= len(seen)
    assert counts.get("planned", 0) > 0, "the signal stopped nothing"
    if grace >= delay:
        assert not uncertain, "a send that finished within the grace period is uncertain"


def test_send_against_a_server_that_never_greets_stops_at_the_breaker_and_status_says_so(
    tmp_path: Path, planned_shop: Path
) -> None:
    """The command's summary, `followup status` and the ledger agree."""
    shutil.copytree(planned_shop, tmp_path, dirs_exist_ok=True)
    with faulty_server("never_greet") as server:
        env = {
            "FOLLOWUP_NOW": START.isoformat(),
            "FOLLOWUP_DELIVERY_MODE": "smtp",
            "FOLLOWUP_SMTP_HOST": server.host,
            "FOLLOWUP_SMTP_PORT": str(server.port),
            "FOLLOWUP_SMTP_SECURITY": "none",
            "FOLLOWUP_SMTP_TIMEOUT": "0.3",
            "FOLLOWUP_SMTP_BREAKER_FAILURES": "3",
            "FOLLOWUP_SECRET_KEY": "breaker-test",
        }
        result = followup(tmp_path, "send", "--once", env=env)
    counts, _ = ledger(tmp_path)
    assert counts == {"retry": 3, "planned": TOUCHES - 3}
    assert "sent 0, retry later 3, failed 0" in result.stdout
    assert "the SMTP server is not answering: sending stopped until" in result.stdout
    shown = followup(tmp_path, "status", env={"FOLLOWUP_NOW": START.isoformat()}).stdout
    assert "circuit breaker is open until" in shown
    report = json.loads(
        followup(tmp_path, "status", "--json", env={"FOLLOWUP_NOW": START.isoformat()}).stdout
    )
    assert report["smtp_breaker"]["state"] == "open"
    assert report["runs"]["dispatch"]["outcome"] == "breaker_open"
