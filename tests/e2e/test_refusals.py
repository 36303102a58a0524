"""End to end, the real `followup` against a real SMTP server (aiosmtpd): a relay that refuses
this client stops `followup send` with the setting to fix and bounces nobody (issue 20,
acceptance 1); and the CLI summary, the `dispatch.done` log event and the run record say what
the ledger says (uncertain touches are not failed ones)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.executable import followup
from tests.support.refusals import RefusingHandler, refusing_server
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with refusing_server() as running:
        yield running


@pytest.fixture
def shop(tmp_path: Path, server: SmtpServer) -> tuple[Path, dict[str, str]]:
    """The demo shop, planned, sending to `server`; and its environment."""
    env = {
        "FOLLOWUP_DELIVERY_MODE": "smtp",
        "FOLLOWUP_SMTP_HOST": server.host,
        "FOLLOWUP_SMTP_PORT": str(server.port),
        "FOLLOWUP_SMTP_SECURITY": "none",
        "FOLLOWUP_SECRET_KEY": "e2e-secret",
    }
    followup(tmp_path, "init")
    followup(tmp_path, "demo")
    followup(tmp_path, "plan", env=env)
    return tmp_path, env


def rows(folder: Path, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return list(conn.execute(query))


def statuses(folder: Path) -> Counter[str]:
    return Counter({str(s): int(str(n)) for s, n in rows(folder, TOUCHES_BY_STATUS)})


TOUCHES_BY_STATUS = "select status, count(*) from touches group by status"
CLIENTS_BY_STATUS = "select status, count(*) from clients group by status order by status"
DUE = (
    "select c.email from touches t join clients c on c.id = t.client_id "
    "where t.status = 'planned' and t.next_attempt_at <= '2026-11-23 18:00:00.999999' "
    "order by t.id"
)


def handler(server: SmtpServer) -> RefusingHandler:
    assert isinstance(server.handler, RefusingHandler)
    return server.handler


def test_a_refusing_relay_stops_send_with_the_setting_to_fix_and_bounces_nobody(
    shop: tuple[Path, dict[str, str]], server: SmtpServer
) -> None:
    folder, env = shop
    before, clients = statuses(folder), rows(folder, CLIENTS_BY_STATUS)
    due = [str(email) for (email,) in rows(folder, DUE)]
    assert len(due) >= 3, "the demo shop has thank-yous due now"
    refusals = handler(server)
    for reply, fix in (
        ("554 5.7.1 <x@example.com>: Relay access denied", "[smtp] host: the server refuses"),
        ("530 5.7.0 Authentication required", "[smtp] username/password"),
    ):
        refusals.rcpt_reply = reply
        result = followup(folder, "send", "--once", env=env, check=False)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: SMTP server 127.0.0.1:"), result.stderr
        assert reply.split(" <")[0].split(" Authentication")[0] in result.stderr
        assert fix in result.stderr
        assert "nobody was bounced" in result.stderr and "Traceback" not in result.stderr
        assert "x@example.com" not in result.stderr
        assert result.stdout.startswith("sent 0, retry later 0, failed 0 (bounced 0)")
        # Nothing moved: no touch failed or left sending, no client bounced or suppressed.
        assert statuses(folder) == before
        assert rows(folder, CLIENTS_BY_STATUS) == clients
        assert rows(folder, "select count(*) from suppressions") == [(0,)]
        assert rows(folder, "select count(*) from touch_events where to_status = 'failed'") == [
            (0,)
        ]
        assert rows(folder, "select outcome from runs where kind = 'dispatch'") == [("stopped",)]
    assert refusals.received == []

    refusals.rcpt_reply = None
    result = followup(folder, "send", "--once", env=env)
    assert result.stdout.startswith(f"sent {len(due)}, ")
    assert sorted(r.rcpt_tos[0] for r in refusals.received) == sorted(due)
    assert len(set(refusals.message_ids())) == len(due)
    after = statuses(folder)
    assert after["sent"] == before["sent"] + len(due)
    assert after["failed"] == 0 and after["uncertain"] == 0


def test_the_summary_the_log_and_the_run_record_say_what_the_ledger_says(
    shop: tuple[Path, dict[str, str]], server: SmtpServer
) -> None:
    """A server that drops the connection after the data of a message: that touch is
    uncertain, not failed, in every count. The loss opens the circuit breaker, which stops the
    run there (followup.delivery.breaker): what the run did before it is counted the same way
    by the CLI summary, the log event, the run record and the ledger."""
    folder, env = shop
    due = [str(email) for (email,) in rows(folder, DUE)]
    # Clients with one touch due (the server's behaviour is by address).
    alone = [email for email in due if due.count(email) == 1]
    assert len(alone) >= 6, "the demo shop has thank-yous due now"
    refusals = handler(server)
    refusals.drop_after_data = {alone[0]}
    refusals.replies[alone[1]] = ["550 5.1.1 User unknown"]
    refusals.replies[alone[2]] = ["451 4.3.0 try again later"]
    bounced_sql = "select count(*) from clients where status = 'bounced'"
    before, ((bounced_before,),) = statuses(folder), rows(folder, bounced_sql)
    result = followup(folder, "-v", "--log-json", "send", "--once", env=env)
    after, ((bounced_after,),) = statuses(folder), rows(folder, bounced_sql)
    delta = Counter({status: after[status] - before[status] for status in after | before})

    # The ledger: one uncertain touch, then the breaker stopped the run; nothing is left
    # claimed, and what was not sent waits in the queue.
    assert delta["uncertain"] == 1
    assert after.get("sending", 0) == 0
    assert delta["sent"] + delta["failed"] + delta["retry"] + 1 <= len(due)
    assert delta["failed"] == bounced_after - bounced_before  # only the 550 5.1.1 fails
    expected = {
        "sent": delta["sent"],
        "retry": delta["retry"],
        "failed": delta["failed"],
        "bounced": bounced_after - bounced_before,
        "held": 0,
        "skipped": delta["skipped"],
        "too_late": 0,
        "uncertain": 1,
    }
    # The CLI summary.
    summary = re.search(r"^sent .*$", result.stdout, re.M)
    assert summary is not None
    assert summary.group(0) == (
        f"sent {expected['sent']}, retry later {expected['retry']}, "
        f"failed {expected['failed']} (bounced {expected['bounced']}), held 0, "
        f"skipped {expected['skipped']}, too late 0, uncertain 1"
    )
    assert "sending stopped until" in result.stdout
    # The log event.
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    done = [e for e in events if e.get("event") == "dispatch.done"]
    assert len(done) == 1
    assert {name: done[0][name] for name in expected} == expected
    # The run record.
    ((outcome, detail),) = rows(folder, "select outcome, detail from runs where kind='dispatch'")
    assert outcome == "breaker_open"
    counts = " ".join(f"{name}={count}" for name, count in expected.items())
    assert detail.startswith(counts + " breaker_until=")
