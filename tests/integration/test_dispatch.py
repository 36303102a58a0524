"""Plan and send against a real SMTP server (aiosmtpd), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import random
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from email.policy import default
from pathlib import Path
from time import monotonic
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from followup import processes
from followup.config import Settings
from followup.config.calendars import load_calendar
from followup.delivery.batch import Batch
from followup.delivery.dispatcher import dispatch, dispatch_in_processes, process_settings
from followup.delivery.report import DispatchReport
from followup.delivery.smtp import SmtpSetupError
from followup.domain import occasions
from followup.domain.clients import Recipient
from followup.domain.statuses import TouchStatus
from followup.dryrun.run import dry_run
from followup.importing import importer
from followup.messages import compose
from followup.planning.plan import plan
from followup.processes import YOUNG_COLLECTION_THRESHOLD, freeze_startup_heap, start_method
from followup.runtime import Clock, Runtime
from followup.storage import tables
from followup.storage.dialects import ledger_for
from followup.storage.ledger import Ledger
from followup.storage.overview import suppressed
from followup.storage.queries import recipient_query
from tests.support.settings import ROOT, make_settings
from tests.support.shop import CLIENTS, NOW, PURCHASES, seed, seed_greetings
from tests.support.smtp import SmtpServer

OpenRuntime = Callable[[Settings], Runtime]

#: The server offers PIPELINING (the default, RFC 2920), or not (step by step): the outcomes
#: must be the same.
BOTH_WAYS = pytest.mark.parametrize(
    "smtp_server", [True, False], indirect=True, ids=["pipelined", "step-by-step"]
)


@pytest.fixture
def smtp_runtime(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> Runtime:
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp", "retry_base_seconds": 60, "max_attempts": 3},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
    )
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    return rt


def smtp_runtime_with(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    **smtp: object,
) -> Runtime:
    """A seeded, planned runtime delivering to the recording server, with extra [smtp] keys."""
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp"},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none", **smtp},
    )
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    plan(rt, NOW)
    return rt


def at(instant: datetime) -> Callable[[], datetime]:
    return lambda: instant


def send(rt: Runtime, now: datetime) -> DispatchReport:
    return asyncio.run(dispatch(rt, at(now), rng=random.Random(1)))


def ledger(rt: Runtime) -> dict[str, tuple[str, str | None, str | None]]:
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(c.c.external_id, t.c.status, t.c.message_id, t.c.reason).join(
                c, c.c.id == t.c.client_id
            )
        ).all()
    return {row.external_id: (row.status, row.message_id, row.reason) for row in rows}


@BOTH_WAYS
def test_plan_twice_then_send_delivers_each_thank_you_exactly_once(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    first = plan(smtp_runtime, NOW)
    second = plan(smtp_runtime, NOW)
    # c1 bought twice on the 6th: one thank-you. c4's purchase is unpaid: none.
    assert first.planned == 3
    assert second.planned == 0
    report = send(smtp_runtime, NOW)
    assert report.sent == 3
    again = send(smtp_runtime, NOW + timedelta(hours=1))
    assert again.sent == 0

    received = smtp_server.handler.received
    assert sorted(r.rcpt_tos[0] for r in received) == [
        "ann@example.com",
        "bea@example.org",
        "cal@example.net",
    ]
    rows = ledger(smtp_runtime)
    assert {k: v[0] for k, v in rows.items()} == {"c1": "sent", "c2": "sent", "c3": "sent"}
    assert sorted(smtp_server.handler.message_ids()) == sorted(str(v[1]) for v in rows.values())

    french = next(r for r in received if r.rcpt_tos == ["bea@example.org"])
    message = email.message_from_bytes(french.data, policy=default)
    assert message["Subject"] == "Merci, Béatrice !"
    assert message["From"] == "Joe Girard <joe@example.com>"
    assert message["Reply-To"] == "Joe Girard <joe@example.com>"
    assert french.mail_from == "bounces@example.com"


def test_a_touch_is_not_sent_before_its_local_hour(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    # 14:00 UTC: 09:00 in New York (not yet due), 15:00 in Paris and 14:00 in London (due).
    early = datetime(2027, 1, 8, 14, 0, tzinfo=UTC)
    plan(smtp_runtime, early)
    assert send(smtp_runtime, early).sent == 2
    assert send(smtp_runtime, datetime(2027, 1, 8, 15, 0, tzinfo=UTC)).sent == 1
    assert len(smtp_server.handler.received) == 3


@BOTH_WAYS
def test_temporary_failures_are_retried_and_a_550_suppresses(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    handler = smtp_server.handler
    handler.replies["ann@example.com"] = ["451 4.3.0 try again later"]
    handler.replies["bea@example.org"] = ["550 5.1.1 no such user"]
    handler.drop_once.add("cal@example.net")
    plan(smtp_runtime, NOW)
    first = send(smtp_runtime, NOW)
    assert (first.sent, first.retry, first.failed) == (0, 2, 1)
    rows = ledger(smtp_runtime)
    assert rows["c2"][0] == "failed" and "550" in str(rows["c2"][2])
    with smtp_runtime.engine.connect() as conn:
        assert suppressed(conn, "bea@example.org") == "bounced"
    # Not yet time for the retry: nothing goes out.
    assert send(smtp_runtime, NOW + timedelta(seconds=10)).sent == 0
    later = send(smtp_runtime, NOW + timedelta(hours=1))
    assert later.sent == 2
    assert sorted(r.rcpt_tos[0] for r in handler.received) == ["ann@example.com", "cal@example.net"]
    assert len(set(handler.message_ids())) == len(handler.received)


@BOTH_WAYS
def test_retries_give_up_after_max_attempts(smtp_runtime: Runtime, smtp_server: SmtpServer) -> None:
    smtp_server.handler.replies["ann@example.com"] = ["421 4.7.0 busy"] * 5
    plan(smtp_runtime, NOW)
    moment = NOW
    for _ in range(4):
        send(smtp_runtime, moment)
        moment += timedelta(hours=2)
    status, _, reason = ledger(smtp_runtime)["c1"]
    assert status == "failed"
    assert "3 attempt" in str(reason)
    # Exactly three attempts reached the server (two of the five refusals are left unused).
    assert len(smtp_server.handler.replies["ann@example.com"]) == 2


def test_unsubscribed_after_planning_is_skipped_at_send_time(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    plan(smtp_runtime, NOW)
    with smtp_runtime.engine.begin() as conn:
        ledger_for(conn).suppress(conn, "ann@example.com", "unsubscribed", NOW)
        conn.execute(
            tables.clients.update()
            .where(tables.clients.c.external_id == "c3")
            .values(status="do-not-contact")
        )
    report = send(smtp_runtime, NOW)
    assert (report.sent, report.skipped) == (1, 2)
    rows = ledger(smtp_runtime)
    assert rows["c1"][0] == "skipped" and rows["c1"][2] == "suppressed (unsubscribed)"
    assert rows["c3"][2] == "client is do-not-contact"
    assert [r.rcpt_tos for r in smtp_server.handler.received] == [["bea@example.org"]]


def test_a_broken_template_holds_only_its_touches_until_it_is_fixed(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    """Issue 20: a template error holds its touches (it used to fail them for good); the
    same runtime renders the fixed file at its next run (no restart), and they go out."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    text = templates / "thank_you" / "fr" / "text.txt"
    good = text.read_text()
    text.write_text("Bonjour {{ client.nickname }}\n")
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp", "hold_seconds": 60},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
    ).model_copy(update={"templates_dir": str(templates)})
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    plan(rt, NOW)
    report = send(rt, NOW)
    assert (report.sent, report.held, report.failed) == (2, 1, 0)
    status, _, reason = ledger(rt)["c2"]
    assert status == "held"
    assert "thank_you/fr/text.txt:1" in str(reason) and "nickname" in str(reason)
    # Tried again after hold_seconds, still broken: still held, never failed.
    report = send(rt, NOW + timedelta(seconds=61))
    assert (report.sent, report.held, report.failed) == (0, 1, 0)
    assert send(rt, NOW + timedelta(seconds=90)).held == 0, "not due again before a minute"
    text.write_text(good)
    report = send(rt, NOW + timedelta(seconds=125))
    assert (report.sent, report.held) == (1, 0)
    assert ledger(rt)["c2"][0] == "sent"
    assert len(smtp_server.handler.received) == 3
    with rt.engine.connect() as conn:
        changes = conn.execute(
            select(tables.touch_events.c.from_status, tables.touch_events.c.to_status)
            .join(tables.touches, tables.touches.c.id == tables.touch_events.c.touch_id)
            .join(tables.clients, tables.clients.c.id == tables.touches.c.client_id)
            .where(tables.clients.c.external_id == "c2")
            .order_by(tables.touch_events.c.id)
        ).all()
    assert [tuple(change) for change in changes] == [
        (None, "planned"),
        ("planned", "sending"),
        ("sending", "held"),
        ("held", "sending"),
        ("sending", "held"),
        ("held", "sending"),
        ("sending", "sent"),
    ]


def test_a_held_touch_past_its_lateness_is_skipped_too_late(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "thank_you" / "fr" / "text.txt").write_text("{{ client.nickname }}\n")
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp"},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
    ).model_copy(update={"templates_dir": str(templates)})
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    plan(rt, NOW)
    assert send(rt, NOW).held == 1
    report = send(rt, NOW + timedelta(days=30))
    assert (report.too_late, report.held, report.failed) == (1, 0, 0)
    assert ledger(rt)["c2"][0] == "skipped" and ledger(rt)["c2"][2] == "too late"


def test_capture_mode_writes_a_maildir_and_sends_nothing_out(
    tmp_path: Path, database_url: str, open_runtime: OpenRuntime
) -> None:
    settings = make_settings(tmp_path, database_url)
    assert settings.delivery.mode == "capture"
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    plan(rt, NOW)
    report = send(rt, NOW)
    assert report.sent == 3
    files = list((tmp_path / "outbox" / "new").iterdir())
    assert len(files) == 3
    subjects = {
        str(email.message_from_bytes(f.read_bytes(), policy=default)["Subject"]) for f in files
    }
    assert subjects == {"Thank you, Ann!", "Merci, Béatrice !", "Thank you, Cal!"}


def test_downtime_past_lateness_is_recorded_as_too_late(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    # Planned once on the 5th with a horizon of two days, then down until the 12th.
    plan(smtp_runtime, datetime(2027, 1, 5, 12, 0, tzinfo=UTC))
    back = datetime(2027, 1, 12, 12, 0, tzinfo=UTC)
    report = plan(smtp_runtime, back)
    assert report.skipped == 3
    assert send(smtp_runtime, back).sent == 0
    assert {v[0] for v in ledger(smtp_runtime).values()} == {TouchStatus.SKIPPED.value}
    assert {v[2] for v in ledger(smtp_runtime).values()} == {"too late"}


def test_a_campaign_enabled_again_starts_afresh_without_skipping_its_disabled_months(
    tmp_path: Path, database_url: str, open_runtime: OpenRuntime
) -> None:
    # Planned on the 5th with the thank-you enabled, then disabled (plans go on: the daemon's),
    # then enabled again on the 12th: what fell due while it was off was not missed, so it is
    # not recorded as skipped "too late" (downtime, above, is); the first plan after it starts
    # at the lateness limit, like a campaign's first plan.
    def runtime(enabled: bool) -> Runtime:
        settings = make_settings(
            tmp_path, database_url, campaigns={"thank_you_enabled": str(enabled).lower()}
        )
        assert [c.name for c in load_calendar(settings).enabled][:1] == (
            ["thank_you"] if enabled else ["satisfaction_survey"]
        )
        return open_runtime(settings)

    on = runtime(True)
    seed(on, tmp_path)
    assert plan(on, datetime(2027, 1, 5, 12, 0, tzinfo=UTC)).planned == 0
    off = runtime(False)
    plan(off, datetime(2027, 1, 8, 12, 0, tzinfo=UTC))
    again = runtime(True)
    report = plan(again, datetime(2027, 1, 12, 12, 0, tzinfo=UTC))
    assert report.skipped == 0
    assert ledger(again) == {}


@pytest.mark.parametrize(
    ("group_size", "left"), [(1, ["planned", "planned", "sent"]), (2, ["planned", "sent", "sent"])]
)
def test_touches_never_handed_to_the_mailer_are_released_when_dispatch_stops(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    monkeypatch: pytest.MonkeyPatch,
    group_size: int,
    left: list[str],
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp", "group_size": group_size},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
    )
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    plan(rt, NOW)
    calls = 0
    original = Ledger.hand_off_many

    def hand_off_then_fail(*args: Any, **kwargs: Any) -> Any:
        # The database goes away while the second group is about to be handed to the mailer.
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("the database went away")
        return original(*args, **kwargs)

    monkeypatch.setattr(Ledger, "hand_off_many", hand_off_then_fail)
    with pytest.raises(ConnectionResetError):
        send(rt, NOW)
    # The first group sent; the touches never handed to the mailer are back in the queue, not
    # "sending" (nor uncertain later).
    assert sorted(v[0] for v in ledger(rt).values()) == left
    monkeypatch.setattr(Ledger, "hand_off_many", original)
    assert send(rt, NOW).sent == left.count("planned")
    assert len(smtp_server.handler.received) == 3
    assert len(set(smtp_server.handler.message_ids())) == 3


def test_a_bug_while_composing_fails_that_touch_and_the_run_goes_on(
    smtp_runtime: Runtime, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan(smtp_runtime, NOW)
    original = compose.compose

    def broken_for_french(*args: object, **kwargs: object) -> object:
        facts = args[2]
        if getattr(facts, "locale", "") == "fr":
            raise ZeroDivisionError("division by zero")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compose, "compose", broken_for_french)
    report = send(smtp_runtime, NOW)
    assert (report.sent, report.failed) == (2, 1)
    status, _, reason = ledger(smtp_runtime)["c2"]
    assert status == "failed" and "ZeroDivisionError" in str(reason)


def test_a_corrected_time_zone_does_not_give_a_purchase_a_second_thank_you(
    smtp_runtime: Runtime, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    plan(smtp_runtime, NOW)
    assert send(smtp_runtime, NOW).sent == 3
    # The clients' zones are corrected: Ann's purchase (16:00 UTC on the 6th) now falls on the
    # 7th in Kiritimati (UTC+14), Cal's (09:00 UTC on the 6th) on the 5th in Pago Pago (UTC-11).
    moved = CLIENTS.replace("America/New_York", "Pacific/Kiritimati").replace(
        "Cal,Ng,en-GB,Europe/London", "Cal,Ng,en-GB,Pacific/Pago_Pago"
    )
    path = tmp_path / "moved.csv"
    path.write_text(moved, encoding="utf-8")
    assert (
        importer.import_csv(smtp_runtime.engine, importer.Kind.CLIENTS, path, now=NOW).errors == []
    )
    later = NOW + timedelta(hours=20)
    plan(smtp_runtime, later)
    assert send(smtp_runtime, later).sent == 0
    assert len(smtp_server.handler.received) == 3


@BOTH_WAYS
def test_a_sender_refused_with_5xx_stops_the_run_and_fails_nothing(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.mail_reply = "550 5.7.1 sender domain not allowed"
    plan(smtp_runtime, NOW)
    with pytest.raises(SmtpSetupError, match=r"refused the sender 'bounces@example\.com': 550"):
        send(smtp_runtime, NOW)
    assert {v[0] for v in ledger(smtp_runtime).values()} == {"planned"}
    smtp_server.handler.mail_reply = None
    assert send(smtp_runtime, NOW).sent == 3


@BOTH_WAYS
def test_no_reply_after_the_message_data_is_uncertain_and_not_resent(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = smtp_runtime_with(tmp_path, database_url, smtp_server, open_runtime, timeout=0.5)
    smtp_server.handler.data_delay = 1.5
    report = send(rt, NOW)
    assert report.sent == 0
    rows = ledger(rt)
    # The circuit breaker opens at the first loss after the data: one touch is uncertain, the
    # others wait in the queue instead of being spent the same way.
    assert sorted(v[0] for v in rows.values()) == ["planned", "planned", "uncertain"]
    assert report.breaker_until is not None
    uncertain = [v for v in rows.values() if v[0] == "uncertain"]
    assert all("may have accepted" in str(v[2]) for v in uncertain)
    smtp_server.handler.data_delay = 0
    assert send(rt, NOW + timedelta(hours=1)).sent == 2
    # The server did keep the uncertain message: resending it would have delivered it twice.
    assert len(smtp_server.handler.received) == 3


def test_a_purchase_disputed_after_planning_gets_no_thank_you(
    smtp_runtime: Runtime, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    plan(smtp_runtime, NOW)
    path = tmp_path / "disputed.csv"
    path.write_text(
        PURCHASES.replace(
            "p2,c2,2027-01-06T15:30:00,Citadine,18900.00,EUR,paid",
            "p2,c2,2027-01-06T15:30:00,Citadine,18900.00,EUR,disputed",
        )
    )
    importer.import_csv(smtp_runtime.engine, importer.Kind.PURCHASES, path, now=NOW)
    assert send(smtp_runtime, NOW).sent == 2
    assert ledger(smtp_runtime)["c2"][0::2] == ("skipped", "purchase is disputed")


def test_the_dry_run_follows_the_ledger_and_shows_the_catch_up_of_today(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    # Planned at 10:00 local, then the send time is changed: the ledger's time still rules.
    plan(smtp_runtime, NOW - timedelta(days=1))
    calendar = smtp_runtime.calendar
    later = occasions.Calendar(
        tuple(
            dataclasses.replace(c, send_time=time(15, 0)) if c.name == "thank_you" else c
            for c in calendar.campaigns
        )
    )
    rt = Runtime(smtp_runtime.settings, smtp_runtime.engine, smtp_runtime.templates, later)
    on = NOW.date()
    preview = dry_run(rt, on)
    assert sorted(e.client for e in preview.messages) == ["c1", "c2", "c3"]
    assert {e.send_at.astimezone(ZoneInfo(e.timezone)).hour for e in preview.messages} == {10}
    # Late in the day, with nothing sent yet, the overdue touches would go out at once.
    evening = datetime(2027, 1, 8, 23, 0, tzinfo=UTC)
    catch_up = dry_run(rt, on, evening)
    assert {e.send_at for e in catch_up.messages} >= {evening}
    # The dry-run wrote nothing.
    assert {v[0] for v in ledger(smtp_runtime).values()} == {"planned"}
    assert smtp_server.handler.received == []


@BOTH_WAYS
def test_a_pool_of_connections_sends_in_parallel_and_each_message_once(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = smtp_runtime_with(tmp_path, database_url, smtp_server, open_runtime, pool_size=3)
    smtp_server.handler.data_delay = 0.2
    assert send(rt, NOW).sent == 3
    received = smtp_server.handler.received
    assert len({r.peer for r in received}) == 3, "three connections were used"
    assert len(set(smtp_server.handler.message_ids())) == 3


def test_an_hourly_limit_defers_the_rest_to_the_next_hour(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = smtp_runtime_with(tmp_path, database_url, smtp_server, open_runtime, rate_per_hour=2)
    first = send(rt, NOW)
    assert (first.sent, first.rate_limited) == (2, True)
    assert send(rt, NOW + timedelta(minutes=30)).sent == 0
    assert send(rt, NOW + timedelta(minutes=61)).sent == 1
    assert sorted(v[0] for v in ledger(rt).values()) == ["sent", "sent", "sent"]


def test_a_touch_caught_up_at_night_waits_for_the_next_local_send_time(
    smtp_runtime: Runtime, smtp_server: SmtpServer
) -> None:
    plan(smtp_runtime, NOW)
    # Down all day; back at 02:30 UTC: 21:30 in New York, 03:30 in Paris, 02:30 in London,
    # quiet hours everywhere. Nothing goes out; each touch waits for 10:00 local.
    night = datetime(2027, 1, 9, 2, 30, tzinfo=UTC)
    report = send(smtp_runtime, night)
    assert (report.sent, report.skipped, report.failed) == (0, 0, 0)
    assert smtp_server.handler.received == []
    t, c = tables.touches, tables.clients
    with smtp_runtime.engine.connect() as conn:
        rows = conn.execute(
            select(c.c.external_id, c.c.timezone, t.c.status, t.c.next_attempt_at).join(
                c, c.c.id == t.c.client_id
            )
        ).all()
    for row in rows:
        assert row.status == "planned"
        local = row.next_attempt_at.astimezone(ZoneInfo(row.timezone))
        assert (local.date().isoformat(), local.hour, local.minute) == ("2027-01-09", 10, 0)
    # At 10:10 in New York the three go out (Paris and London are well inside their windows).
    morning = datetime(2027, 1, 9, 15, 10, tzinfo=UTC)
    assert send(smtp_runtime, morning).sent == 3


def test_the_clock_given_to_other_processes_keeps_followup_now() -> None:
    import pickle

    start = datetime(2027, 1, 8, 16, 0, tzinfo=UTC)
    copy = pickle.loads(pickle.dumps(Clock.starting_at(start)))
    first = copy()
    assert start <= first < start + timedelta(seconds=5)
    assert copy() >= first, "time goes on from FOLLOWUP_NOW"
    real = Clock.starting_at(None)()
    assert abs(real - datetime.now(UTC)) < timedelta(seconds=5)


def test_processes_share_the_per_second_rate_and_a_ledger_limit_keeps_one(
    tmp_path: Path, database_url: str
) -> None:
    base = make_settings(tmp_path, database_url, smtp={"rate_per_second": 10})
    shared, count = process_settings(base, 4)
    assert count == 4 and shared.smtp.rate_per_second == 2.5
    assert process_settings(base, 1) == (base, 1)
    hourly = make_settings(tmp_path, database_url, smtp={"rate_per_hour": 100})
    assert process_settings(hourly, 4) == (hourly, 1)
    free = make_settings(tmp_path, database_url)
    assert process_settings(free, 3) == (free, 3)


def test_worker_processes_are_spawned_while_a_thread_runs_or_a_connection_is_held(
    runtime: Runtime,
) -> None:
    # A fork copies one thread only: one holding a lock (a progress bar's, a logger's) would
    # leave it held forever in the child; and a child must not inherit an open connection.
    # (That the CLI's workers are forked otherwise is checked end to end in test_cli_e2e.)
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert start_method(runtime.engine) == "spawn"
    finally:
        stop.set()
        other.join()
    if threading.active_count() == 1:
        with runtime.engine.connect():
            assert start_method(runtime.engine) == "spawn"
        assert start_method(runtime.engine) == ("fork" if sys.platform == "linux" else "spawn")


def test_the_recipient_query_selects_the_recipient_fields_in_their_order() -> None:
    # The dispatcher builds a Recipient from a row's values by position.
    fields = list(Recipient._fields)
    assert [column.name for column in recipient_query().selected_columns] == fields


def test_spawned_workers_log_as_the_command_that_started_them(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A connection held while the workers start makes them spawned: fresh interpreters,
    # whose logging the pool's initializer configures like the parent's.
    import json
    import logging

    from followup import logs

    rt = smtp_runtime_with(tmp_path, database_url, smtp_server, open_runtime)
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name in ("followup", "apscheduler")
        for logger in [logging.getLogger(name)]
    }
    logs.configure(logging.INFO, json_lines=True)
    try:
        with rt.engine.connect():
            report = dispatch_in_processes(rt, Clock.starting_at(NOW), 2)
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate = handlers, propagate
            logger.setLevel(level)
    events = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line]
    started = [e for e in events if e["event"] == "processes.start"]
    assert [(e["processes"], e["method"]) for e in started] == [(2, "spawn")]
    sent = [e for e in events if e["event"] == "touch.sent"]
    assert report.sent == len(sent) == len(smtp_server.handler.received) > 0


def test_the_startup_heap_is_frozen_once_after_its_garbage_is_collected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A long run's full garbage collections no longer walk what was alive at its start; a
    # cycle that was already garbage is collected first, not kept for ever. The youngest
    # generation is collected less often (each collection walks what is alive in it).
    import gc
    import weakref

    class Node:
        other: object = None

    monkeypatch.setattr(processes, "_heap_frozen", False)
    gc.unfreeze()
    thresholds = gc.get_threshold()
    garbage = Node()
    garbage.other = Node()
    garbage.other.other = garbage  # type: ignore[attr-defined]
    gone = weakref.ref(garbage)
    kept = Node()
    del garbage
    try:
        freeze_startup_heap()
        assert gone() is None
        frozen = gc.get_freeze_count()
        assert frozen > 0 and not any(obj is kept for obj in gc.get_objects())
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
        assert thresholds[0] < YOUNG_COLLECTION_THRESHOLD
        freeze_startup_heap()  # once per process
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def greeted_runtime(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    clients: int,
    **sections: dict[str, object],
) -> Runtime:
    """`clients` clients, each with a New Year greeting due now (any hour: no quiet hours, an
    all-day window), delivered to the recording server with the settings given."""
    smtp = {"host": smtp_server.host, "port": smtp_server.port, "security": "none"}
    settings = make_settings(
        tmp_path,
        database_url,
        **{
            "politeness": {"quiet_hours": ""},
            "campaigns": {"new_year_window": "00:00-00:00"},
            **sections,
            "delivery": {"mode": "smtp", **sections.get("delivery", {})},
            "smtp": {**smtp, **sections.get("smtp", {})},
        },
    )
    rt = open_runtime(settings)
    seed_greetings(rt, tmp_path, clients)
    return rt


def statuses(rt: Runtime) -> list[str]:
    with rt.engine.connect() as conn:
        return sorted(conn.execute(select(tables.touches.c.status)).scalars())


def two_connections(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> Runtime:
    """12 greetings, sent over 2 connections in groups of 2."""
    return greeted_runtime(
        tmp_path,
        database_url,
        smtp_server,
        open_runtime,
        12,
        delivery={"group_size": 2, "batch_size": 100},
        smtp={"pool_size": 2},
    )


def hand_off_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of touches of each hand-off transaction, as they happen."""
    sizes: list[int] = []
    original = Ledger.hand_off_many

    def counted(ledger: Ledger, conn: Any, items: Any, *args: Any, **kwargs: Any) -> list[bool]:
        sizes.append(len(items))
        return original(ledger, conn, items, *args, **kwargs)

    monkeypatch.setattr(Ledger, "hand_off_many", counted)
    return sizes


def test_connections_are_refilled_together_and_never_hold_more_than_a_group(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When one connection's queue runs dry, every connection's next messages are handed off
    in one transaction (the others topped up to a group): fewer transactions than groups. No
    connection ever holds more than group_size touches handed off and not yet given to the
    mailer (what a crash can leave uncertain unsent), even when it is topped up."""
    rt = two_connections(tmp_path, database_url, smtp_server, open_runtime)
    # Every fourth client's message is slow: the first refill gives connection 0 g0 (slow)
    # and g1, connection 1 g2 and g3; connection 1 runs dry while g0 is in flight, and its
    # refill tops up connection 0, which still holds g1.
    original_data = smtp_server.handler.handle_DATA

    async def uneven(server: Any, session: Any, envelope: Any) -> str:
        number = int(envelope.rcpt_tos[0].split("@")[0][1:])
        await asyncio.sleep(0.2 if number % 4 == 0 else 0.002)
        return await original_data(server, session, envelope)

    monkeypatch.setattr(smtp_server.handler, "handle_DATA", uneven)
    hand_offs = hand_off_sizes(monkeypatch)
    queued: list[tuple[list[int], list[int]]] = []
    original_refill = Batch._refill

    async def refill(batch: Batch, index: int) -> None:
        before = [len(queue) for queue in batch.queues]
        await original_refill(batch, index)
        queued.append((before, [len(queue) for queue in batch.queues]))

    monkeypatch.setattr(Batch, "_refill", refill)
    report = send(rt, NOW)
    assert report.sent == 12
    assert statuses(rt) == ["sent"] * 12
    assert len({r.peer for r in smtp_server.handler.received}) == 2
    assert len(set(smtp_server.handler.message_ids())) == 12
    assert max(max(after) for _, after in queued) <= 2
    topped_up = [
        (before, after)
        for before, after in queued
        if any(0 < b < a for b, a in zip(before, after, strict=True))
    ]
    assert topped_up, queued
    # The first refill filled both queues; each later one hands off at least a group: one
    # hand-off per group would be 6.
    assert hand_offs[0] == 4
    assert sum(hand_offs) == 12 and len(hand_offs) < 6


def test_a_slow_server_has_the_leases_of_queued_touches_renewed(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    """Each message takes 2 s of the run's clock (a slow server) against a lease of 10 s:
    the touches still queued on each connection have their leases renewed at half the lease,
    and each goes out once. (Batches of 8: a claim's lease covers its touches until they are
    handed off.)"""
    rt = greeted_runtime(
        tmp_path,
        database_url,
        smtp_server,
        open_runtime,
        16,
        delivery={"group_size": 4, "batch_size": 8},
        smtp={"pool_size": 2},
        database={"lease_seconds": 10},
    )
    smtp_server.handler.data_delay = 0.1
    began = monotonic()

    def clock() -> datetime:
        return NOW + timedelta(seconds=(monotonic() - began) * 20)

    # When each message reaches the server, its touch's lease must still run.
    expired: list[str] = []
    original_data = smtp_server.handler.handle_DATA
    t, c = tables.touches, tables.clients

    async def check_lease(server: Any, session: Any, envelope: Any) -> str:
        with rt.engine.connect() as conn:
            lease = conn.execute(
                select(t.c.lease_expires_at)
                .join(c, c.c.id == t.c.client_id)
                .where(c.c.email == envelope.rcpt_tos[0])
            ).scalar_one()
            # On the lease clock (the machine's or the server's), not the run's.
            if lease < rt.ledger.database_time(conn):
                expired.append(envelope.rcpt_tos[0])
        return await original_data(server, session, envelope)

    renewed: list[int] = []
    seen: set[int] = set()
    original = Ledger.hand_off_many

    def watched(ledger: Ledger, conn: Any, items: Any, *args: Any, **kwargs: Any) -> list[bool]:
        ids = {item.touch_id for item in items}
        renewed.extend(ids & seen)
        seen.update(ids)
        return original(ledger, conn, items, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ledger, "hand_off_many", watched)
        patch.setattr(smtp_server.handler, "handle_DATA", check_lease)
        report = asyncio.run(dispatch(rt, clock, rng=random.Random(1)))
    assert report.sent == 16
    assert renewed, "no lease was renewed"
    assert expired == []
    assert statuses(rt) == ["sent"] * 16
    assert len(set(smtp_server.handler.message_ids())) == 16


def test_a_failed_hand_off_that_tops_up_other_connections_gives_back_what_was_not_sent(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database goes away during the second hand-off, which tops up the other connection
    too: the run stops, what the mailer got is recorded or left "sending" (uncertain when its
    lease ends, never resent: the other connection may have been handed its next touch when
    the run was cancelled), everything else (composed, queued on either connection, or not
    yet composed) is back in the queue, and the next run sends it once."""
    rt = two_connections(tmp_path, database_url, smtp_server, open_runtime)
    calls = 0
    original = Ledger.hand_off_many

    def fail_second(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("the database went away")
        return original(*args, **kwargs)

    monkeypatch.setattr(Ledger, "hand_off_many", fail_second)
    with pytest.raises(ConnectionResetError):
        send(rt, NOW)
    received = len(smtp_server.handler.received)
    assert 1 <= received <= 4
    t = tables.touches
    with rt.engine.connect() as conn:
        rows = conn.execute(select(t.c.status, t.c.message_id)).all()
    left = sorted(status for status, _ in rows)
    # Sent (recorded when the run stopped), at most one touch per connection in the mailer's
    # hands, the rest back in the queue without a Message-ID.
    in_flight = [message_id for status, message_id in rows if status == "sending"]
    sent, planned = left.count("sent"), left.count("planned")
    assert len(in_flight) <= 2 and all(in_flight)
    assert sent + planned + len(in_flight) == 12
    # A touch in flight may have reached the server before its reply was read.
    assert sent <= received <= sent + len(in_flight)
    assert all(message_id is None for status, message_id in rows if status == "planned")
    monkeypatch.setattr(Ledger, "hand_off_many", original)
    assert send(rt, NOW).sent == planned
    assert statuses(rt).count("sent") == 12 - len(in_flight)
    ids = smtp_server.handler.message_ids()
    assert len(set(ids)) == len(ids) == received + planned


def test_groups_of_one_are_handed_off_one_touch_at_a_time(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`group_size = 1`, the most cautious setting: each touch is handed off just before it
    is sent, and no other connection is topped up meanwhile (a crash leaves at most the
    touch a connection was about to send uncertain)."""
    rt = greeted_runtime(
        tmp_path,
        database_url,
        smtp_server,
        open_runtime,
        6,
        delivery={"group_size": 1},
        smtp={"pool_size": 2},
    )
    sizes = hand_off_sizes(monkeypatch)
    assert send(rt, NOW).sent == 6
    assert sizes == [1] * 6
