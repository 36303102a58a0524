"""End to end (issue 20, acceptance 2, the daemon's half): a running `followup daemon` whose
thank-you template is a bomb (two nested loops of 100,000 items) keeps its HTTP app answering
while the bomb renders in its worker thread, takes a one-click unsubscribe, sends another
campaign's touches (birthdays), holds the thank-yous on the render limit, and exits 0 on
SIGTERM. The installed executable against a real recording SMTP server (aiosmtpd).

Nothing here is timed against a speed: the HTTP requests carry a timeout as a safety net, and
the latencies seen are printed (the issue's bound is 1 s; see the closing note of issue 20)."""

from __future__ import annotations

import csv
import email
import re
import time
import urllib.request
from datetime import date
from email.policy import default
from pathlib import Path

import pytest

from tests.e2e.test_daemon import (
    ONE_CLICK,
    T0,
    Daemon,
    http,
    import_shop,
    make_shop,
    received_at_least,
    smtp_env,
    sqlite_rows,
    statuses,
    wait_for,
)
from tests.support.ports import ReservedPorts
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
DAY = date(2027, 1, 6)  # thank-yous due at T0 (Friday 8 January 2027, 12:00 in London)
LONG_AGO = date(2026, 6, 1)  # no thank-you or anniversary due at T0
BIRTHDAY = "1980-01-08"  # due at 10:00 local on 8 January, lateness 12 h


def give_birthdays(folder: Path, clients: set[str]) -> None:
    path = folder / "clients.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index("birthday")
    for row in rows[1:]:
        if row[0] in clients:
            row[column] = BIRTHDAY
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)


def timed_get(url: str) -> float:
    """Seconds a GET took to answer 200 (a 30 s timeout as a safety net only)."""
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        response.read()
    return time.monotonic() - started


def test_a_template_bomb_never_stops_the_daemon(
    tmp_path: Path, smtp_server: SmtpServer, reserved_ports: ReservedPorts
) -> None:
    make_shop(tmp_path, [DAY] * 3 + [LONG_AGO] * 3)  # c0-c2 thank-yous, c3-c5 birthdays
    give_birthdays(tmp_path, {"c3", "c4", "c5"})
    (tmp_path / "templates" / "thank_you" / "en" / "text.txt").write_text(BOMB, encoding="utf-8")
    env = smtp_env(
        smtp_server,
        reserved_ports,
        T0,
        FOLLOWUP_DELIVERY_HOLD_SECONDS="1",  # the held thank-yous render the bomb again and again
        FOLLOWUP_TEMPLATES_RENDER_SECONDS="1",
    )
    import_shop(tmp_path, env)
    daemon = Daemon(tmp_path, env)
    try:
        # Another campaign's touches go out.
        received_at_least(smtp_server, 3, "the 3 birthday messages")
        birthdays = sorted(m.rcpt_tos[0] for m in smtp_server.handler.received)
        assert birthdays == [f"client{n}@example.com" for n in (3, 4, 5)]
        # The bomb's touches are held on the render limit, naming file, line and limit.
        wait_for(lambda: statuses(tmp_path).get("held") == 3, "3 held thank-yous")
        reasons = {
            r for (r,) in sqlite_rows(tmp_path, "select reason from touches where status = 'held'")
        }
        assert len(reasons) == 1
        (reason,) = reasons
        assert str(reason).startswith("template error: templates/thank_you/en/text.txt:1: ")
        assert "render_seconds" in str(reason) or "max_loop_iterations" in str(reason)

        # While the bomb keeps rendering (held touches come back every second), the HTTP app
        # answers: /healthz (degraded, with the held touches) and /metrics.
        latencies = [timed_get(daemon.url("/healthz")) for _ in range(10)]
        latencies += [timed_get(daemon.url("/metrics")) for _ in range(5)]
        print(f"HTTP latencies while the bomb renders: max {max(latencies):.3f} s")
        code, body = http("GET", daemon.url("/healthz"))
        assert code == 200 and '"status": "degraded"' in body

        # A one-click unsubscribe, with the link of a message the server received.
        to_c3 = next(
            m for m in smtp_server.handler.received if m.rcpt_tos == ["client3@example.com"]
        )
        message = email.message_from_bytes(to_c3.data, policy=default)
        link = re.search(r"<(http[^>]+)>", str(message["List-Unsubscribe"]))
        assert link is not None
        assert http("POST", link.group(1), b"List-Unsubscribe=One-Click", ONE_CLICK)[0] == 200
        c3 = "select status from clients where external_id = 'c3'"
        assert sqlite_rows(tmp_path, c3) == [("unsubscribed",)]

        # SIGTERM: exit 0 (within [schedule] shutdown_grace_seconds: the render in flight
        # ends at its 1 s budget); the thank-yous stay held, none failed or sent.
        assert daemon.stop() == 0
        assert statuses(tmp_path) == {"sent": 3, "held": 3}
        assert len(smtp_server.handler.received) == 3
    finally:
        daemon.kill()
