"""End to end (issue 20, acceptance 3): a template typo during a daemon run holds its touches,
which go out once the file is fixed, without a restart; `followup retry` sends failed touches
again; `followup run` and the daemon refuse to start on a template that does not compile.
The installed `followup` executable against a real recording SMTP server (aiosmtpd).

Nothing here is timed: the tests wait, with generous timeouts, for what must happen."""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path

import pytest

from followup.importing.demo import write_bulk_shop
from tests.e2e.test_daemon import (
    T0,
    WAIT,
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
from tests.support.executable import followup
from tests.support.ports import ReservedPorts
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

DAY = date(2027, 1, 6)  # thank-yous due at T0


@pytest.fixture
def daemons() -> list[Daemon]:
    """Daemons started by a test, killed at its end if still running."""
    started: list[Daemon] = []
    yield started  # type: ignore[misc]
    for daemon in started:
        daemon.kill()


def health(daemon: Daemon) -> dict[str, object]:
    found: dict[str, object] = json.loads(http("GET", daemon.url("/healthz"))[1])
    return found


def test_a_typo_during_a_daemon_run_holds_its_touches_until_the_file_is_fixed(
    tmp_path: Path,
    smtp_server: SmtpServer,
    daemons: list[Daemon],
    reserved_ports: ReservedPorts,
) -> None:
    make_shop(tmp_path, [DAY] * 5)
    env = smtp_env(smtp_server, reserved_ports, T0, FOLLOWUP_DELIVERY_HOLD_SECONDS="1")
    import_shop(tmp_path, env)
    daemon = Daemon(tmp_path, env)
    daemons.append(daemon)
    received_at_least(smtp_server, 5, "the first 5 thank-yous (the template rendered once)")
    wait_for(lambda: statuses(tmp_path).get("sent") == 5, "5 sent touches")

    # A marketer's typo, saved while the daemon runs; then 5 more clients bought on the 6th.
    text = tmp_path / "templates" / "thank_you" / "en" / "text.txt"
    good = text.read_text(encoding="utf-8")
    text.write_text(good.replace("client.first_name", "client.frist_name"), encoding="utf-8")
    write_bulk_shop(tmp_path, 10, DAY)
    for kind in ("clients", "purchases"):
        followup(tmp_path, "import", kind, str(tmp_path / f"{kind}.csv"), "--strict", env=env)
    wait_for(lambda: statuses(tmp_path).get("held") == 5, "5 held touches")

    assert statuses(tmp_path) == {"sent": 5, "held": 5}, "held, never failed"
    assert len(smtp_server.handler.received) == 5
    reasons = {
        str(r) for (r,) in sqlite_rows(tmp_path, "select reason from touches where status = 'held'")
    }
    assert len(reasons) == 1
    (reason,) = reasons
    assert reason.startswith("template error: templates/thank_you/en/text.txt:1: ")
    assert "frist_name" in reason
    state = health(daemon)
    assert state["status"] == "degraded" and state["held"] == 5
    code, metrics = http("GET", daemon.url("/metrics"))
    assert code == 200 and "followup_touches_held 5.0" in metrics
    shown = followup(tmp_path, "status", env=env).stdout
    assert "held (latest 5 of 5)" in shown and "frist_name" in shown
    assert "event=templates.reloaded" in daemon.log
    assert "event=touch.held" in daemon.log

    # Fixed: the same daemon, no restart, sends them.
    text.write_text(good, encoding="utf-8")
    received_at_least(smtp_server, 10, "the 5 held thank-yous, once the file is fixed")
    wait_for(lambda: statuses(tmp_path) == {"sent": 10}, "10 sent touches, none held")
    assert len({m.rcpt_tos[0] for m in smtp_server.handler.received}) == 10, "each once"
    wait_for(lambda: health(daemon)["status"] == "ok", "/healthz ok again")
    history = sqlite_rows(
        tmp_path,
        "select e.from_status, e.to_status from touch_events e join touches t on t.id = "
        "e.touch_id join clients c on c.id = t.client_id where c.external_id = 'c9' "
        "order by e.id",
    )
    assert ("sending", "held") in history and history[-1] == ("sending", "sent")
    assert daemon.stop() == 0


def test_retry_sends_touches_failed_by_a_template_error_and_nothing_else(
    tmp_path: Path, smtp_server: SmtpServer, reserved_ports: ReservedPorts
) -> None:
    """Touches a template error failed for good (as the release before this one recorded
    them), beside one failed on a bounce, one uncertain and one planned."""
    make_shop(tmp_path, [DAY] * 6)
    env = smtp_env(smtp_server, reserved_ports, T0)
    import_shop(tmp_path, env)
    followup(tmp_path, "plan", env=env)
    error = "template error: templates/thank_you/en/text.txt:1: 'client' has no 'frist_name'"
    with sqlite3.connect(tmp_path / "var" / "followup.db") as conn:
        ids = {
            str(client): int(touch)
            for client, touch in conn.execute(
                "select c.external_id, t.id from touches t join clients c on c.id = t.client_id"
            )
        }
        for client in ("c0", "c1", "c2"):
            conn.execute(
                "update touches set status = 'failed', reason = ? where id = ?",
                (error, ids[client]),
            )
        conn.execute(
            "update touches set status = 'failed', reason = 'bounced: 550 5.1.1 unknown' "
            "where id = ?",
            (ids["c3"],),
        )
        conn.execute(
            "update touches set status = 'uncertain', message_id = '<x@example.com>', "
            "reason = 'uncertain: template error seen' where id = ?",
            (ids["c4"],),
        )
    before = statuses(tmp_path)

    listed = followup(tmp_path, "retry", "--reason", "TEMPLATE ERROR", "--dry-run", env=env)
    assert "3 failed touch(es) would be sent again (nothing changed)" in listed.stdout
    for client in ("c0", "c1", "c2"):
        assert client in listed.stdout
    assert "c3" not in listed.stdout and "c4" not in listed.stdout
    assert statuses(tmp_path) == before, "a dry-run changes nothing"
    nothing = followup(tmp_path, "retry", "--campaign", "birthday", "--dry-run", env=env)
    assert "0 failed touch(es) would be sent again" in nothing.stdout

    done = followup(tmp_path, "retry", "--reason", "template error", env=env)
    assert "3 failed touch(es) back in the queue, due now" in done.stdout
    sent = followup(tmp_path, "send", "--once", env=env)
    assert "sent 4," in sent.stdout, sent.stdout  # c0, c1, c2 and the planned c5
    assert sorted(m.rcpt_tos[0] for m in smtp_server.handler.received) == [
        f"client{n}@example.com" for n in (0, 1, 2, 5)
    ]
    assert statuses(tmp_path) == {"sent": 4, "failed": 1, "uncertain": 1}
    (detail,) = sqlite_rows(
        tmp_path,
        "select detail from touch_events where touch_id = ? and from_status = 'failed'",
        ids["c0"],
    )
    assert detail == ("retry requested by the operator",)
    again = followup(tmp_path, "retry", env=env)
    assert "1 failed touch(es) back in the queue" in again.stdout  # the bounce, if asked
    assert statuses(tmp_path)["uncertain"] == 1, "an uncertain touch never moves"


def test_run_and_the_daemon_refuse_to_start_on_a_template_that_does_not_compile(
    tmp_path: Path, smtp_server: SmtpServer, reserved_ports: ReservedPorts
) -> None:
    make_shop(tmp_path, [DAY] * 2)
    env = smtp_env(smtp_server, reserved_ports, T0)
    import_shop(tmp_path, env)
    text = tmp_path / "templates" / "thank_you" / "en" / "text.txt"
    text.write_text("Dear {{ client.first_name }},\n\n{% if %}\n", encoding="utf-8")

    result = followup(tmp_path, "run", env=env, check=False)
    assert result.returncode == 1
    assert "templates/thank_you/en/text.txt:3" in result.stderr
    assert "nothing was sent" in result.stderr
    assert smtp_server.handler.received == []
    daemon = Daemon(tmp_path, env)
    try:
        assert daemon.process.wait(timeout=WAIT) == 1
    finally:
        daemon.kill()
    assert "templates/thank_you/en/text.txt:3" in daemon.log
    assert smtp_server.handler.received == []
