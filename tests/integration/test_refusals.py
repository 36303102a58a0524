"""A relay that refuses this client (relay, login, sender) stops the run and bounces nobody; a
recipient's own refusal bounces that recipient only (issue 20, acceptance 1). Against a real
SMTP server (aiosmtpd), pipelined and step by step, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import pickle
import random
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from followup import api
from followup.config import Settings
from followup.delivery.dispatcher import dispatch
from followup.delivery.report import DispatchReport, DispatchStopped
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.service.metrics import Metrics
from followup.storage import tables
from tests.support.refusals import RefusingHandler, refusing_server
from tests.support.settings import make_settings
from tests.support.shop import NOW, seed
from tests.support.smtp import SmtpServer

OpenRuntime = Callable[[Settings], Runtime]
ADDRESSES = ["ann@example.com", "bea@example.org", "cal@example.net"]
RELAY_FIX = r"\[smtp\] host: the server refuses to relay for this client"
LOGIN_FIX = r"\[smtp\] username/password"


@pytest.fixture(params=[True, False], ids=["pipelined", "step-by-step"])
def server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    with refusing_server(pipelining=request.param) as running:
        yield running


def runtime(
    tmp_path: Path,
    database_url: str,
    server: SmtpServer,
    open_runtime: OpenRuntime,
    **smtp: object,
) -> Runtime:
    """The shop seeded and planned (three thank-yous due at NOW), sending to `server`."""
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp"},
        smtp={"host": server.host, "port": server.port, "security": "none", **smtp},
    )
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    assert plan(rt, NOW).planned == 3
    return rt


def send(rt: Runtime, now: datetime = NOW) -> DispatchReport:
    return asyncio.run(dispatch(rt, lambda: now, rng=random.Random(1)))


def handler(server: SmtpServer) -> RefusingHandler:
    assert isinstance(server.handler, RefusingHandler)
    return server.handler


def touches(rt: Runtime) -> dict[str, tuple[str, int]]:
    """Each client's touch: its status and attempts."""
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(c.c.email, t.c.status, t.c.attempts).join(c, c.c.id == t.c.client_id)
        ).all()
    return {row.email: (row.status, row.attempts) for row in rows}


def nobody_bounced(rt: Runtime) -> bool:
    """No client bounced, no address suppressed, no touch failed in its history."""
    with rt.engine.connect() as conn:
        statuses = set(conn.scalars(select(tables.clients.c.status)))
        suppressions = conn.scalar(select(func.count()).select_from(tables.suppressions))
        failed = conn.scalar(
            select(func.count())
            .select_from(tables.touch_events)
            .where(tables.touch_events.c.to_status == "failed")
        )
    return statuses == {"active"} and suppressions == 0 and failed == 0


def stopped(rt: Runtime, match: str) -> DispatchReport:
    with pytest.raises(DispatchStopped, match=match) as stop:
        send(rt)
    return stop.value.report


def test_a_relay_refusal_then_a_login_refusal_stop_the_run_and_bounce_nobody(
    tmp_path: Path, database_url: str, server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = runtime(tmp_path, database_url, server, open_runtime)
    refusals = handler(server)
    refusals.rcpt_reply = "554 5.7.1 <ann@example.com>: Relay access denied"
    report = stopped(rt, rf"refuses to relay for this client: 554 5\.7\.1 .*{RELAY_FIX}")
    assert report.counts() == dict.fromkeys(report.counts(), 0)
    assert report.released == 3
    assert "ann@example.com" not in str(report.stopped)
    # Back in the queue as they were: planned, no attempt spent.
    assert touches(rt) == dict.fromkeys(ADDRESSES, ("planned", 0))
    assert nobody_bounced(rt)

    refusals.rcpt_reply = "530 5.7.0 Authentication required"
    stopped(rt, rf"wants a login it did not get: 530 5\.7\.0 .*{LOGIN_FIX}")
    refusals.rcpt_reply = None
    refusals.mail_reply = "530 5.7.0 Authentication required"
    stopped(rt, rf"wants a login it did not get: 530 5\.7\.0 .*{LOGIN_FIX}")
    assert touches(rt) == dict.fromkeys(ADDRESSES, ("planned", 0))
    assert nobody_bounced(rt)
    assert refusals.received == []

    # The server fixed: every touch is delivered, once.
    refusals.mail_reply = None
    assert send(rt).sent == 3
    assert sorted(r.rcpt_tos[0] for r in refusals.received) == ADDRESSES
    assert len(set(refusals.message_ids())) == 3
    assert {status for status, _ in touches(rt).values()} == {"sent"}
    assert nobody_bounced(rt)


def test_a_user_unknown_bounces_that_client_only(
    tmp_path: Path, database_url: str, server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = runtime(tmp_path, database_url, server, open_runtime)
    handler(server).replies["bea@example.org"] = ["550 5.1.1 <bea@example.org>: User unknown"]
    report = send(rt)
    assert (report.sent, report.failed, report.bounced) == (2, 1, 1)
    assert {k: v[0] for k, v in touches(rt).items()} == {
        "ann@example.com": "sent",
        "bea@example.org": "failed",
        "cal@example.net": "sent",
    }
    with rt.engine.connect() as conn:
        clients = dict(conn.execute(select(tables.clients.c.email, tables.clients.c.status)).all())
        suppressed = list(conn.scalars(select(tables.suppressions.c.reason)))
    assert clients["bea@example.org"] == "bounced"
    assert {v for k, v in clients.items() if k != "bea@example.org"} == {"active"}
    assert suppressed == ["bounced"]


def test_a_refusal_that_names_no_address_fails_that_message_and_suppresses_nobody(
    tmp_path: Path, database_url: str, server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    """A "554 Transaction failed" does not say whom it refuses: not a bounce, not a stop."""
    rt = runtime(tmp_path, database_url, server, open_runtime)
    handler(server).replies["cal@example.net"] = ["554 Transaction failed"]
    report = send(rt)
    assert (report.sent, report.bounced, report.failed) == (2, 0, 1)
    assert touches(rt)["cal@example.net"] == ("failed", 1)
    with rt.engine.connect() as conn:
        assert set(conn.scalars(select(tables.clients.c.status))) == {"active"}
        assert conn.scalar(select(func.count()).select_from(tables.suppressions)) == 0


@pytest.mark.parametrize("pool_size", [1, 3])
def test_a_stop_mid_batch_keeps_what_was_sent_and_releases_the_rest(
    tmp_path: Path,
    database_url: str,
    server: SmtpServer,
    open_runtime: OpenRuntime,
    pool_size: int,
) -> None:
    """The server starts refusing after one recipient: that message is sent and recorded
    (with a pool, while the other connections are refused), and the rest goes back to the
    queue."""
    rt = runtime(tmp_path, database_url, server, open_runtime, pool_size=pool_size)
    refusals = handler(server)
    refusals.rcpt_reply, refusals.accept_first = "554 5.7.1 Relay access denied", 1
    report = stopped(rt, RELAY_FIX)
    statuses = [status for status, _ in touches(rt).values()]
    assert sorted(set(statuses)) <= ["planned", "sent"]
    assert report.sent == statuses.count("sent") == len(refusals.received) == 1
    assert report.released == statuses.count("planned") == 2
    assert nobody_bounced(rt)

    refusals.rcpt_reply = None
    assert send(rt).sent == statuses.count("planned")
    assert len(refusals.received) == 3
    assert len(set(refusals.message_ids())) == 3


def test_a_stop_in_a_worker_process_reaches_the_command_with_its_report(
    tmp_path: Path, database_url: str, server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    """`followup send --processes 2`: each worker's DispatchStopped crosses the process
    boundary with its report, and the counts of both are added up."""
    rt = runtime(tmp_path, database_url, server, open_runtime)
    handler(server).rcpt_reply = "554 5.7.1 Relay access denied"
    with pytest.raises(DispatchStopped, match=RELAY_FIX) as stop:
        api.send(rt, NOW, processes=2)
    # The first process to claim takes all 3 and gives them back; the other claims nothing
    # (they were its) or, if it claims after they came back, is refused and gives them back
    # too: its releases are added up with the first's.
    assert stop.value.report.released in (3, 6)
    assert stop.value.report.sent == 0
    assert touches(rt) == dict.fromkeys(ADDRESSES, ("planned", 0))
    again = pickle.loads(pickle.dumps(stop.value))
    assert str(again) == str(stop.value) and again.report == stop.value.report


def test_the_metrics_count_what_each_run_settled_and_each_stop(
    tmp_path: Path, database_url: str, server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = runtime(tmp_path, database_url, server, open_runtime)
    metrics = Metrics(rt.engine, lambda: NOW)
    refusals = handler(server)
    refusals.rcpt_reply = "530 5.7.0 Authentication required"
    with pytest.raises(DispatchStopped):
        asyncio.run(dispatch(rt, lambda: NOW, on_report=metrics.dispatched))
    refusals.rcpt_reply = None
    refusals.replies["bea@example.org"] = ["550 5.1.1 User unknown"]
    report = asyncio.run(dispatch(rt, lambda: NOW, on_report=metrics.dispatched))
    assert report.summary() == (
        "sent 2, retry later 0, failed 1 (bounced 1), held 0, skipped 0, too late 0, uncertain 0"
    )
    exposed = metrics.exposition().decode()
    assert 'followup_dispatch_touches_total{status="sent"} 2.0' in exposed
    assert 'followup_dispatch_touches_total{status="failed"} 1.0' in exposed
    assert 'followup_dispatch_touches_total{status="bounced"} 1.0' in exposed
    assert "followup_dispatch_stops_total 1.0" in exposed
