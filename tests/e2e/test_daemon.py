"""End to end: the installed `followup daemon` process against a real recording SMTP server
(aiosmtpd), on SQLite and, with three instances sharing the work, on PostgreSQL.

Nothing here is timed: the tests wait, with generous timeouts, for what must happen."""

from __future__ import annotations

import csv
import email
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import date, datetime, timedelta
from email.policy import default
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import text

from followup.config import Settings
from followup.importing import importer
from followup.importing.demo import write_bulk_shop
from followup.planning.plan import plan
from followup.runtime import Runtime
from tests.support.executable import EXECUTABLE, followup
from tests.support.ports import ReservedPorts
from tests.support.settings import make_settings
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

# Friday 8 January 2027, 12:00 UTC (London is on UTC): thank-yous for the 6th are due at 10:00.
T0 = datetime.fromisoformat("2027-01-08T12:00:00+00:00")
WAIT = 120.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Until `condition()`, which reads what another process (the daemon) changes, in its
    database or over HTTP: checked every 50 ms, as nothing tells this process when it changed.
    (What reaches the SMTP server, in this process, is waited for with wait_received.)"""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def make_shop(folder: Path, purchase_days: list[date]) -> None:
    """One client per purchase day (c0, c1, ...), all in London; imported into the database
    that FOLLOWUP_DATABASE_URL (or config.toml) names."""
    followup(folder, "init")
    paths = write_bulk_shop(folder, len(purchase_days), purchase_days[0])
    with paths["purchases"].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    for row, day in zip(rows[1:], purchase_days, strict=True):
        row[2] = day.isoformat()
    with paths["purchases"].open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)


def import_shop(folder: Path, env: dict[str, str]) -> None:
    followup(folder, "db", "upgrade", env=env)
    for kind in ("reps", "clients", "purchases"):
        followup(folder, "import", kind, str(folder / f"{kind}.csv"), "--strict", env=env)


def smtp_env(
    server: SmtpServer, ports: ReservedPorts, now: datetime, **extra: str
) -> dict[str, str]:
    """The environment of a daemon that sends to `server` and serves HTTP on a port of its
    own, reserved until the end of the test (its links name it)."""
    port = ports.reserve()
    return {
        "FOLLOWUP_NOW": now.isoformat(),
        "FOLLOWUP_DELIVERY_MODE": "smtp",
        "FOLLOWUP_SMTP_HOST": server.host,
        "FOLLOWUP_SMTP_PORT": str(server.port),
        "FOLLOWUP_SMTP_SECURITY": "none",
        "FOLLOWUP_SECRET_KEY": "daemon-test-secret",
        "FOLLOWUP_HTTP_PORT": str(port),
        "FOLLOWUP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "FOLLOWUP_SCHEDULE_DISPATCH_INTERVAL_SECONDS": "1",
        "FOLLOWUP_SCHEDULE_PLAN_INTERVAL_SECONDS": "2",
        "FOLLOWUP_LOG_LEVEL": "INFO",
        **extra,
    }


def received_at_least(server: SmtpServer, count: int, what: str) -> None:
    """Until the SMTP server, in this process, has received `count` messages in all: it says
    when it receives one."""
    assert server.handler.wait_received(count, WAIT), f"gave up waiting for {what}"


class Daemon:
    """One `followup daemon` process; its logs (stderr) go to a file."""

    def __init__(self, folder: Path, env: dict[str, str], name: str = "daemon") -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
        environment.update(env)
        self.port = int(env["FOLLOWUP_HTTP_PORT"])
        self.log_path = folder / f"{name}-{time.monotonic_ns()}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(EXECUTABLE), "daemon"],
            cwd=folder,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.process.poll() is None, f"the daemon exited early:\n{self.log}"
            try:
                return http("GET", self.url("/healthz"))[0] == 200
            except OSError:
                return False

        wait_for(up, "the daemon's /healthz")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=WAIT)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sqlite_rows(folder: Path, query: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return list(conn.execute(query, params))


def statuses(folder: Path) -> dict[str, int]:
    return {str(s): int(n) for s, n in sqlite_rows(folder, QUERY_STATUSES)}


QUERY_STATUSES = "select status, count(*) from touches group by status"
ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def daemons() -> list[Daemon]:
    """Daemons started by a test, killed at its end if still running."""
    started: list[Daemon] = []
    yield started  # type: ignore[misc]
    for daemon in started:
        daemon.kill()


def test_the_daemon_delivers_serves_health_metrics_and_one_click_unsubscribe_then_stops(
    tmp_path: Path,
    smtp_server: SmtpServer,
    daemons: list[Daemon],
    reserved_ports: ReservedPorts,
) -> None:
    received = smtp_server.handler.received
    # 30 thank-yous due at T0; c0 bought again on the 7th: a second thank-you due on the 9th.
    days = [date(2027, 1, 6)] * 30
    make_shop(tmp_path, days)
    with (tmp_path / "purchases.csv").open("a", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerow(
            ["p-again", "c0", "2027-01-07", "Roof box", "50.00", "EUR", "paid"]
        )
    env = smtp_env(smtp_server, reserved_ports, T0)
    import_shop(tmp_path, env)

    daemon = Daemon(tmp_path, env)
    daemons.append(daemon)
    received_at_least(smtp_server, 30, "30 messages at the SMTP server")
    wait_for(lambda: statuses(tmp_path).get("sent") == 30, "30 sent touches in the ledger")

    # Health and metrics.
    code, body = http("GET", daemon.url("/healthz"))
    health = json.loads(body)
    assert code == 200 and health["status"] == "ok"
    assert health["database"] and health["schema_at_head"]
    assert health["last_plan"]["outcome"] == "ok"
    wait_for(
        lambda: json.loads(http("GET", daemon.url("/healthz"))[1])["last_dispatch"] is not None,
        "a finished dispatch run",
    )
    code, metrics = http("GET", daemon.url("/metrics"))
    assert code == 200
    assert 'followup_touches{campaign="thank_you",status="sent"} 30.0' in metrics
    assert 'followup_touches{campaign="thank_you",status="planned"} 1.0' in metrics
    assert "followup_queue_depth 1.0" in metrics
    assert "followup_send_seconds_count 30.0" in metrics
    assert 'followup_deliveries_total{outcome="sent"} 30.0' in metrics
    assert re.search(r'^followup_plan_runs_total\{outcome="ok"\} [1-9]', metrics, re.M)

    # SQLite is single-instance: a second daemon on the same file says so and exits 1.
    second = followup(
        tmp_path,
        "daemon",
        env={**env, "FOLLOWUP_HTTP_PORT": str(reserved_ports.reserve())},
        check=False,
    )
    assert second.returncode == 1
    assert "another followup daemon is running" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr

    # One-click unsubscribe with the link of a message the server actually received.
    to_c0 = next(r for r in received if r.rcpt_tos == ["client0@example.com"])
    message = email.message_from_bytes(to_c0.data, policy=default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.search(r"<(http[^>]+)>", str(message["List-Unsubscribe"]))
    assert link is not None
    url = link.group(1)
    assert url.startswith(daemon.url("/unsubscribe/"))
    c0 = "select c.status, s.reason from clients c left join suppressions s on s.email = c.email"
    c0 += " where c.external_id = 'c0'"
    # A link scanner's GET changes nothing; it gets a page whose button POSTs.
    code, page = http("GET", url)
    assert code == 200 and 'method="post"' in page
    assert sqlite_rows(tmp_path, c0) == [("active", None)]
    # An altered token answers 4xx and changes nothing.
    token = url.rsplit("/", 1)[1]
    altered = url[: -len(token)] + token.replace(".", ".x", 1)
    code, _ = http("POST", altered, b"List-Unsubscribe=One-Click", ONE_CLICK)
    assert 400 <= code < 500
    assert sqlite_rows(tmp_path, c0) == [("active", None)]
    # The one-click POST unsubscribes; a second one is harmless.
    assert http("POST", url, b"List-Unsubscribe=One-Click", ONE_CLICK)[0] == 200
    assert sqlite_rows(tmp_path, c0) == [("unsubscribed", "unsubscribed")]
    assert http("POST", url, b"List-Unsubscribe=One-Click", ONE_CLICK)[0] == 200
    assert sqlite_rows(tmp_path, c0) == [("unsubscribed", "unsubscribed")]

    assert daemon.stop() == 0
    assert "sending" not in statuses(tmp_path)

    # A day later c0's second thank-you is due: skipped at send time, with the reason.
    later = smtp_env(smtp_server, reserved_ports, T0 + timedelta(days=1))
    restarted = Daemon(tmp_path, later)
    daemons.append(restarted)
    again = "select t.status, t.reason from touches t join purchases p on p.id = t.purchase_id"
    again += " where p.external_id = 'p-again'"
    wait_for(lambda: sqlite_rows(tmp_path, again)[0][0] == "skipped", "the skipped touch")
    assert sqlite_rows(tmp_path, again) == [("skipped", "client is unsubscribed")]
    assert restarted.stop() == 0
    assert len(received) == 30
    assert "sending" not in statuses(tmp_path)

    # The history of c0 tells all of it; status sums it up.
    history = json.loads(followup(tmp_path, "history", "c0", "--json", env=later).stdout)
    assert history["status"] == "unsubscribed" and history["suppressed"] == "unsubscribed"
    first, second_touch = history["touches"]
    assert [e["to_status"] for e in first["events"]] == ["planned", "sending", "sent"]
    assert first["message_id"] == message["Message-ID"]
    assert first["smtp_reply"].startswith("250") and first["rep"] == "r1"
    assert first["template"] == "thank_you" and first["locale"] and first["variant"]
    assert second_touch["events"][-1]["to_status"] == "skipped"
    assert second_touch["reason"] == "client is unsubscribed"
    by_email = json.loads(followup(tmp_path, "history", "CLIENT0@example.com", "--json").stdout)
    assert by_email["client"] == "c0"
    report = json.loads(followup(tmp_path, "status", "--json", env=later).stdout)
    assert report["counts"] == {"sent": 30, "skipped": 1}
    assert report["waiting"] == 0 and report["due_now"] == 0
    assert report["runs"]["plan"]["outcome"] == "ok"
    assert report["runs"]["dispatch"]["outcome"] == "ok"
    assert "last dispatch: 2027-01-09" in followup(tmp_path, "status", env=later).stdout

    # The logs name events, never a client's address or name (acceptance 5).
    logs = daemon.log + restarted.log
    for event in (
        "daemon.started",
        "plan.done",
        "touch.sent",
        "unsubscribe.done",
        "daemon.stopping",
        "daemon.stopped",
    ):
        assert f"event={event}" in logs, event
    assert " info " in logs
    assert "@example.com" not in logs.replace("joe@example.com", "")
    assert not re.search(r"Client\d+ Test", logs)


def test_a_client_imported_while_the_daemon_runs_is_planned_without_a_plan_of_every_client(
    tmp_path: Path,
    smtp_server: SmtpServer,
    daemons: list[Daemon],
    reserved_ports: ReservedPorts,
) -> None:
    received = smtp_server.handler.received
    make_shop(tmp_path, [date(2027, 1, 6)] * 3)
    # The daemon starts with c0 and c1; c2 comes with the next import, the whole files again.
    for kind in ("clients", "purchases"):
        lines = (tmp_path / f"{kind}.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (tmp_path / f"{kind}-first.csv").write_text("".join(lines[:3]), encoding="utf-8")
    env = smtp_env(
        smtp_server, reserved_ports, T0, FOLLOWUP_SCHEDULE_FULL_PLAN_INTERVAL_SECONDS="86400"
    )
    followup(tmp_path, "db", "upgrade", env=env)
    followup(tmp_path, "import", "reps", str(tmp_path / "reps.csv"), env=env)
    for kind in ("clients", "purchases"):
        followup(tmp_path, "import", kind, str(tmp_path / f"{kind}-first.csv"), env=env)

    daemon = Daemon(tmp_path, env)
    daemons.append(daemon)
    wait_for(lambda: statuses(tmp_path).get("sent") == 2, "c0's and c1's thank-yous sent")
    for kind in ("clients", "purchases"):
        followup(tmp_path, "import", kind, str(tmp_path / f"{kind}.csv"), env=env)
    wait_for(lambda: statuses(tmp_path).get("sent") == 3, "c2's thank-you sent")
    assert sorted(r.rcpt_tos[0] for r in received) == [f"client{n}@example.com" for n in range(3)]
    assert daemon.stop() == 0
    # Only the first plan read every client; the one that planned c2 read c2 alone (the
    # files imported again left c0 and c1 unchanged).
    done = re.findall(r"event=plan\.done .*", daemon.log)
    assert "changed=" not in done[0], done
    assert any(re.search(r"planned=1 .*changed=1\b", line) for line in done), done
    assert all("changed=" in line for line in done[1:]), done


def test_sigterm_lets_the_send_in_flight_finish_and_returns_the_rest_to_the_queue(
    tmp_path: Path,
    smtp_server: SmtpServer,
    daemons: list[Daemon],
    reserved_ports: ReservedPorts,
) -> None:
    received = smtp_server.handler.received
    # A slow server: each message takes a while to be answered.
    smtp_server.handler.data_delay = 0.3
    make_shop(tmp_path, [date(2027, 1, 6)] * 40)
    env = smtp_env(smtp_server, reserved_ports, T0, FOLLOWUP_LOG_FORMAT="json")
    import_shop(tmp_path, env)
    daemon = Daemon(tmp_path, env)
    daemons.append(daemon)
    received_at_least(smtp_server, 3, "the first messages")
    assert statuses(tmp_path).get("sending", 0) > 0, "stopping while a batch is claimed"
    assert daemon.stop() == 0
    counts = statuses(tmp_path)
    assert "sending" not in counts
    # What reached the server is recorded as sent; the rest waits in the queue.
    assert counts.get("sent") == len(received)
    assert counts.get("planned") == 40 - len(received)
    assert 0 < len(received) < 40
    events = [json.loads(line)["event"] for line in daemon.log.splitlines()]
    assert events.index("daemon.stopping") < events.index("daemon.stopped")


def test_after_two_days_down_the_daemon_sends_what_is_still_in_time_and_skips_the_rest(
    tmp_path: Path,
    smtp_server: SmtpServer,
    daemons: list[Daemon],
    reserved_ports: ReservedPorts,
) -> None:
    received = smtp_server.handler.received
    # c0, c1 due on the 8th (now), c2, c3 on the 9th, c4, c5 on the 10th, each at 10:00.
    days = [date(2027, 1, 6)] * 2 + [date(2027, 1, 7)] * 2 + [date(2027, 1, 8)] * 2
    make_shop(tmp_path, days)
    lateness = {
        "FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS": "24",
        "FOLLOWUP_SCHEDULE_PLAN_HORIZON_DAYS": "0",
    }
    env = smtp_env(smtp_server, reserved_ports, T0, **lateness)
    import_shop(tmp_path, env)
    first = Daemon(tmp_path, env)
    daemons.append(first)
    received_at_least(smtp_server, 2, "the two thank-yous due now")
    assert first.stop() == 0

    # Down for two days: back on the 10th at 12:00. The 9th's touches are more than 24 hours
    # late; the 10th's are two hours late, within their lateness.
    restarted = Daemon(
        tmp_path, smtp_env(smtp_server, reserved_ports, T0 + timedelta(days=2), **lateness)
    )
    daemons.append(restarted)
    received_at_least(smtp_server, 4, "the two thank-yous still in time")
    wait_for(lambda: statuses(tmp_path) == {"sent": 4, "skipped": 2}, "the ledger settled")
    assert restarted.stop() == 0
    rows = sqlite_rows(
        tmp_path,
        "select c.external_id, t.status, t.reason from touches t "
        "join clients c on c.id = t.client_id order by c.external_id",
    )
    assert rows == [
        ("c0", "sent", None),
        ("c1", "sent", None),
        ("c2", "skipped", "too late"),
        ("c3", "skipped", "too late"),
        ("c4", "sent", None),
        ("c5", "sent", None),
    ]
    assert sorted(r.rcpt_tos[0] for r in received) == [
        f"client{n}@example.com" for n in (0, 1, 4, 5)
    ]


TOUCHES = 2000


@pytest.mark.postgres
def test_three_daemons_on_postgresql_share_the_work_and_deliver_each_touch_once(
    tmp_path: Path,
    smtp_server: SmtpServer,
    postgres_url: str,
    daemons: list[Daemon],
    open_runtime: Callable[[Settings], Runtime],
    reserved_ports: ReservedPorts,
) -> None:
    # The shop is set up in-process (the CLI's import and plan are tested elsewhere).
    followup(tmp_path, "init")
    paths = write_bulk_shop(tmp_path, TOUCHES, date(2027, 1, 6))
    rt = open_runtime(make_settings(tmp_path, postgres_url))
    for kind in (importer.Kind.REPS, importer.Kind.CLIENTS, importer.Kind.PURCHASES):
        importer.import_csv(rt.engine, kind, paths[kind.value], now=T0, strict=True)
    assert plan(rt, T0).planned == TOUCHES
    base = {"FOLLOWUP_DATABASE_URL": postgres_url}
    for n in range(3):
        env = smtp_env(
            smtp_server,
            reserved_ports,
            T0,
            **base,
            FOLLOWUP_DELIVERY_BATCH_SIZE="20",
            FOLLOWUP_SCHEDULE_PLAN_INTERVAL_SECONDS="3600",
        )
        daemons.append(Daemon(tmp_path, env, name=f"daemon{n}"))

    def ledger(query: str) -> list[tuple[object, ...]]:
        with rt.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]

    def settled() -> bool:
        for daemon in daemons:
            assert daemon.process.poll() is None, f"a daemon exited:\n{daemon.log}"
        return ledger("select count(*) from touches where status = 'sent'")[0][0] == TOUCHES

    wait_for(settled, f"{TOUCHES} sent touches", timeout=600)
    for daemon in daemons:
        assert daemon.stop() == 0, daemon.log
    ids = smtp_server.handler.message_ids()
    assert len(ids) == TOUCHES
    assert len(set(ids)) == TOUCHES, "a Message-ID reached the server twice"
    sent = {str(r[0]) for r in ledger("select message_id from touches where status='sent'")}
    assert sent == set(ids)
    # Every process did part of the work: the claim of each sent touch names its owner.
    claims = ledger(
        "select e.detail, count(*) from touch_events e join touches t on t.id = e.touch_id "
        "where e.to_status = 'sending' and t.status = 'sent' group by e.detail"
    )
    pids: dict[int, int] = {}
    for detail, count in claims:
        pid = int(str(detail).removeprefix("claimed by ").split(":")[1])
        pids[pid] = pids.get(pid, 0) + int(str(count))
    assert set(pids) == {d.process.pid for d in daemons}, pids
    assert sum(pids.values()) == TOUCHES
    for daemon in daemons:
        assert "event=touch.sent" in daemon.log
