"""The dry-run is the truth. Over generated shops and clocks, on SQLite and on PostgreSQL:
everything the dry-run at `now` lists as going out by `now` is what `followup send --once`
at the same `now` (FOLLOWUP_NOW, the real executable) delivers to a real SMTP server, with
the same subject and design, and nothing else is delivered; every touch it lists as skipped
or waiting by `now` is not delivered, and the ledger then holds the status and reason (or,
for a wait, the next attempt) the dry-run gave."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import email
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.policy import default
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

import followup
from followup.dryrun.run import DryRun, DryRunEntry
from followup.storage import people, tables
from followup.storage.dialects import ledger_for
from tests.support.executable import EXECUTABLE
from tests.support.postgres import NO_POSTGRES, POSTGRES_URL
from tests.support.settings import ROOT
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

SECRET = "dry-run-truth"

#: (zone, country, locale): DST zones both sides of the equator, half- and quarter-hour
#: offsets, the first and the last zones of the day, languages with and without templates.
PLACES = [
    ("America/New_York", "US", "en-US"),
    ("Europe/Paris", "FR", "fr-FR"),
    ("America/Toronto", "CA", "fr-CA"),
    ("Asia/Kolkata", "IN", "en-IN"),
    ("Asia/Kathmandu", "NP", "en"),
    ("Australia/Sydney", "AU", "en-AU"),
    ("Pacific/Chatham", "NZ", "en-NZ"),
    ("Pacific/Kiritimati", "KI", "en"),
    ("Pacific/Pago_Pago", "AS", "en-US"),
    ("Europe/London", "GB", "en-GB"),
]
#: Days around occasions of the shipped calendar and DST changes.
DAYS = [
    date(2027, 1, 1),
    date(2027, 2, 14),
    date(2027, 3, 28),
    date(2027, 7, 4),
    date(2027, 11, 7),
    date(2027, 12, 24),
]
PURCHASE_STATUSES = ["paid", "paid", "paid", "unpaid", "disputed", "refunded"]
CLIENT_STATUSES = ["active"] * 8 + ["unsubscribed", "do-not-contact"]


@dataclass(frozen=True)
class Shop:
    clients: list[dict[str, str]]
    purchases: list[dict[str, str]]
    #: When the shop was planned first, and `now`: a later instant, at 7 minutes past an hour
    #: (no send time, window edge or lateness limit is there: the executable's clock, a few
    #: seconds later, decides as the dry-run did).
    planned_at: datetime
    now: datetime
    #: Changes between the two plans: (client, what) with what one of unsubscribe,
    #: suppress, refund (its latest purchase), bounce.
    changes: list[tuple[str, str]]


@st.composite
def shops(draw: st.DrawFn) -> Shop:
    day = draw(st.sampled_from(DAYS))
    planned_at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        hours=draw(st.integers(-36, 12))
    )
    now = planned_at + timedelta(hours=draw(st.integers(0, 60)), minutes=7)
    now = now.replace(minute=7, second=0)
    clients, purchases = [], []
    for n in range(draw(st.integers(3, 10))):
        zone, country, locale = draw(st.sampled_from(PLACES))
        birthday = draw(st.none() | st.dates(date(1950, 1, 1), date(2005, 12, 31)))
        if birthday is not None and draw(st.booleans()):
            # Around the day: a greeting due, deferred or capped near `now`.
            near = day + timedelta(days=draw(st.integers(-1, 2)))
            birthday = birthday.replace(month=near.month, day=min(near.day, 28))
        clients.append(
            {
                "id": f"c{n}",
                "email": f"c{n}@example.com",
                "first_name": f"Client{n}",
                "last_name": "Test",
                "locale": locale,
                "timezone": zone,
                "country": country,
                "birthday": "" if birthday is None else birthday.isoformat(),
                "rep": draw(st.sampled_from(["", "r1", "r2"])),
                "status": draw(st.sampled_from(CLIENT_STATUSES)),
            }
        )
        for k in range(draw(st.integers(0 if n % 3 == 2 else 1, 3))):
            # Ages that make the calendar's after-purchase occasions (2 days, 14 days, 6
            # months) and anniversaries fall near `now`, and any age up to 40 days.
            days_ago = draw(st.sampled_from([(0, 5), (12, 18), (178, 186), (363, 368), (0, 40)]))
            minutes = draw(st.integers(days_ago[0] * 1440, days_ago[1] * 1440))
            bought = planned_at - timedelta(minutes=minutes)
            purchases.append(
                {
                    "id": f"p{n}-{k}",
                    "client": f"c{n}",
                    "purchased_at": bought.isoformat(timespec="seconds"),
                    "product": draw(st.sampled_from(["Roadster", "Citadine", "Helmet"])),
                    "amount": str(draw(st.integers(5, 90_000))),
                    "currency": draw(st.sampled_from(["USD", "EUR", "INR"])),
                    "status": draw(st.sampled_from(PURCHASE_STATUSES)),
                }
            )
    kinds = st.sampled_from(["unsubscribe", "suppress", "refund", "bounce"])
    targets = st.sampled_from([c["id"] for c in clients])
    changes = draw(st.lists(st.tuples(targets, kinds), max_size=5))
    return Shop(clients, purchases, planned_at, now, changes)


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A new, empty database for each example: a SQLite file, or a PostgreSQL database."""
    made: list[str] = []
    if request.param == "postgresql" and not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT") if POSTGRES_URL else None

    def fresh() -> str:
        name = f"followup_truth_{secrets.token_hex(6)}"
        if request.param == "sqlite":
            folder = tmp_path / name
            folder.mkdir()
            return f"sqlite:///{folder / 'followup.db'}"
        assert admin is not None
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    yield fresh
    if admin is not None:
        with admin.connect() as conn:
            for name in made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def environment(url: str, smtp: SmtpServer, folder: Path) -> dict[str, str]:
    return {
        "FOLLOWUP_DATABASE_URL": url,
        "FOLLOWUP_TEMPLATES_DIR": str(ROOT / "templates"),
        "FOLLOWUP_CALENDARS_DIR": str(ROOT / "calendars"),
        "FOLLOWUP_DELIVERY_MODE": "smtp",
        "FOLLOWUP_DELIVERY_CAPTURE_DIR": str(folder / "outbox"),
        "FOLLOWUP_SMTP_HOST": smtp.host,
        "FOLLOWUP_SMTP_PORT": str(smtp.port),
        "FOLLOWUP_SMTP_SECURITY": "none",
        "FOLLOWUP_SECRET_KEY": SECRET,
    }


def prepare(shop: Shop, url: str, smtp: SmtpServer, folder: Path) -> followup.Runtime:
    """The shop imported and planned at `planned_at`, changed, then planned again at `now`
    (what the daemon does), through the public API."""
    env = environment(url, smtp, folder)
    rt = followup.open(ROOT / "config.toml", env=env, create=True)
    followup.upgrade(rt)
    reps = [
        {"id": "r1", "name": "Joe Girard", "email": "joe@example.com"},
        {"id": "r2", "name": "Marie Curie", "email": "marie@example.com"},
    ]
    files = {
        "reps": write_csv(folder / "reps.csv", reps, ["id", "name", "email"]),
        "clients": write_csv(folder / "clients.csv", shop.clients, list(shop.clients[0])),
        "purchases": write_csv(
            folder / "purchases.csv",
            shop.purchases,
            ["id", "client", "purchased_at", "product", "amount", "currency", "status"],
        ),
    }
    for kind in ("reps", "clients", "purchases"):
        report = followup.import_csv(rt, kind, files[kind], now=shop.planned_at, strict=True)
        assert not report.errors, report.errors
    followup.plan(rt, shop.planned_at)
    change(rt, shop, folder)
    followup.plan(rt, shop.now)
    return rt


def change(rt: followup.Runtime, shop: Shop, folder: Path) -> None:
    """What happens to clients between the plans: opt-outs, bounces, refunds."""
    at = shop.planned_at + (shop.now - shop.planned_at) / 2
    ids = {c["id"] for c in shop.clients}
    with rt.engine.begin() as conn:
        known = ledger_for(conn).id_map(conn, tables.clients, ids)
    for client, what in shop.changes:
        if what == "suppress":
            people.suppress(rt.engine, [f"{client}@example.com"], "complained", at)
        elif what == "refund":
            bought = [p for p in shop.purchases if p["client"] == client]
            if bought:
                refunded = [{**bought[-1], "status": "refunded"}]
                path = write_csv(folder / "refund.csv", refunded, list(refunded[0]))
                followup.import_csv(rt, "purchases", path, now=at, strict=True)
        else:
            with rt.engine.begin() as conn:
                ledger = ledger_for(conn)
                if what == "unsubscribe":
                    ledger.unsubscribe(conn, known[client], at)
                else:
                    ledger.bounce(conn, known[client], f"{client}@example.com", at, "550 5.1.1")


def dry_runs(rt: followup.Runtime, now: datetime) -> list[DryRun]:
    """The dry-runs of every local date `now` falls on somewhere (UTC-12 to UTC+14)."""
    return [followup.dry_run(rt, now.date() + timedelta(days=d), now) for d in (-1, 0, 1)]


def send_once(url: str, smtp: SmtpServer, folder: Path, now: datetime) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
    env.update(environment(url, smtp, folder), FOLLOWUP_NOW=now.isoformat())
    config = str(ROOT / "config.toml")
    result = subprocess.run(
        [str(EXECUTABLE), "--config", config, "send", "--once"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


Key = tuple[str, str, str]


def key(entry: DryRunEntry) -> Key:
    return (entry.client, entry.campaign, entry.occurrence.isoformat())


def ledger_after(rt: followup.Runtime) -> dict[Key, Any]:
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(
                c.c.external_id,
                t.c.campaign,
                t.c.occurrence,
                t.c.status,
                t.c.reason,
                t.c.next_attempt_at,
                t.c.message_id,
                t.c.variant,
            ).join(c, c.c.id == t.c.client_id)
        ).all()
    return {(r.external_id, r.campaign, r.occurrence.isoformat()): r for r in rows}


def delivered(smtp: SmtpServer) -> dict[str, str]:
    """Message-ID -> decoded subject of every message the server accepted."""
    found = {}
    for item in smtp.handler.received:
        message = email.message_from_bytes(item.data, policy=default)
        found[str(message["Message-ID"])] = str(message["Subject"])
    return found


def check(runs: list[DryRun], ledger: dict[Key, Any], sent: dict[str, str], now: datetime) -> None:
    messages = [e for run in runs for e in run.messages]
    due = {key(e): e for e in messages if e.send_at <= now}
    by_message_id = {row.message_id: k for k, row in ledger.items() if row.message_id in sent}
    # Everything due by now went out, with the subject and design the dry-run showed, and
    # nothing else did.
    assert set(by_message_id.values()) == set(due), (sorted(due), sorted(by_message_id.values()))
    assert len(sent) == len(by_message_id)
    for message_id, k in by_message_id.items():
        assert ledger[k].status == "sent"
        assert sent[message_id] == due[k].subject
        assert ledger[k].variant == due[k].variant
    for entry in messages:
        if entry.send_at > now and key(entry) in ledger:
            assert ledger[key(entry)].status in ("planned", "retry"), entry
    for run in runs:
        for entry in run.skipped:
            if entry.send_at <= now:
                row = ledger[key(entry)]
                assert (row.status, row.reason) == (entry.status, entry.reason), entry
        for entry in run.waiting:
            if entry.send_at <= now:
                row = ledger[key(entry)]
                assert row.status == entry.status and row.next_attempt_at == entry.until, entry


def _shop(now: datetime, changes: list[tuple[str, str]], zone: str = "America/New_York") -> Shop:
    """One client, its purchase bought 3 days before `now`'s day at 15:00 local (its thank-you
    due 2 days later, 10:00 local), planned at that purchase: the cases each kind of send-time
    decision needs, for examples the generated shops may not reach."""
    place = next(p for p in PLACES if p[0] == zone)
    client = {
        "id": "c0",
        "email": "c0@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "locale": place[2],
        "timezone": place[0],
        "country": place[1],
        "birthday": "",
        "rep": "r1",
        "status": "active",
    }
    bought = datetime.combine(now.date() - timedelta(days=3), time(15), ZoneInfo(zone))
    purchase = {
        "id": "p0",
        "client": "c0",
        "purchased_at": bought.isoformat(timespec="seconds"),
        "product": "Roadster",
        "amount": "32500",
        "currency": "USD",
        "status": "paid",
    }
    return Shop([client], [purchase], bought.astimezone(UTC), now, changes)


# Its thank-you was due at 10:00 in New York; now it is 22:07 there: it waits for 10:00.
NIGHT = datetime(2027, 1, 5, 3, 7, tzinfo=UTC)
# 14:07 in New York: it goes out now, unless something happened since it was planned.
DAY = datetime(2027, 1, 5, 19, 7, tzinfo=UTC)


@example(shop=_shop(NIGHT, []))
@example(shop=_shop(DAY, []))
@example(shop=_shop(DAY, [("c0", "unsubscribe")]))
@example(shop=_shop(DAY, [("c0", "suppress")]))
@example(shop=_shop(DAY, [("c0", "refund")]))
@example(shop=_shop(DAY, [("c0", "bounce")]))
@settings(
    max_examples=int(os.environ.get("FOLLOWUP_TRUTH_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shop=shops())
def test_what_the_dry_run_shows_for_now_is_what_send_delivers(
    shop: Shop, databases: Any, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    url = databases()
    folder = Path(make_url(url).database or "").parent if url.startswith("sqlite") else tmp_path
    folder = folder / "shop"
    folder.mkdir(parents=True, exist_ok=True)
    smtp_server.handler.received.clear()
    rt = prepare(shop, url, smtp_server, folder)
    try:
        runs = dry_runs(rt, shop.now)
        send_once(url, smtp_server, folder, shop.now)
        check(runs, ledger_after(rt), delivered(smtp_server), shop.now)
    finally:
        rt.engine.dispose()


# ----------------------------------------------------------------------------- a later day


def play_the_daemon(rt: followup.Runtime, start: datetime, end: datetime) -> None:
    """The daemon from `start` to `end`, in process: at each instant a touch falls due (and a
    minute later, as a dispatcher that polls would), plan, then dispatch what is due."""
    t = tables.touches
    at = start
    while at <= end:
        followup.plan(rt, at)
        asyncio.run(followup.dispatch(rt, lambda at=at: at))
        with rt.engine.connect() as conn:
            found = conn.execute(
                select(func.min(t.c.next_attempt_at)).where(
                    t.c.status.in_(("planned", "retry")), t.c.next_attempt_at > at
                )
            ).scalar()
        if found is None:
            return
        at = found + timedelta(minutes=1)


def what_happened_on(rt: followup.Runtime, on: date) -> dict[Key, Any]:
    """The touches the ledger settled on day `on` in each client's zone, by key: status,
    reason, variant. A message is on the day it was sent (its last change); a skipped or
    failed touch on the day it was due to be taken up (its next attempt), as the dry-run lists
    it: a skip the planner records is written when the plan runs, maybe days before."""
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(
                c.c.external_id,
                c.c.timezone,
                t.c.campaign,
                t.c.occurrence,
                t.c.status,
                t.c.reason,
                t.c.variant,
                t.c.updated_at,
                t.c.next_attempt_at,
            )
            .join(c, c.c.id == t.c.client_id)
            .where(t.c.status.in_(("sent", "skipped", "failed")))
        ).all()
    return {
        (r.external_id, r.campaign, r.occurrence.isoformat()): r
        for r in rows
        if (r.updated_at if r.status == "sent" else r.next_attempt_at)
        .astimezone(ZoneInfo(r.timezone))
        .date()
        == on
    }


@settings(
    max_examples=int(os.environ.get("FOLLOWUP_TRUTH_EXAMPLES", "12")) // 2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shop=shops())
def test_a_dry_run_of_tomorrow_is_what_the_dispatcher_does_that_day(
    shop: Shop, databases: Any, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    """Taken at `now`, the dry-run of the next day lists the messages the daemon sends that
    day, in the designs it sends them in, and the touches it skips, with their reasons; the
    days between (waits overnight, the designs of the messages before) are played as the
    dispatcher plays them. Nothing changes in the shop meanwhile."""
    url = databases()
    folder = tmp_path / "later"
    folder.mkdir(exist_ok=True)
    shop = dataclasses.replace(shop, changes=[])
    rt = prepare(shop, url, smtp_server, folder)
    try:
        tomorrow = shop.now.date() + timedelta(days=1)
        preview = followup.dry_run(rt, tomorrow, shop.now)
        end = datetime.combine(tomorrow + timedelta(days=1), time(), UTC) + timedelta(hours=14)
        play_the_daemon(rt, shop.now, end)
        happened = what_happened_on(rt, tomorrow)
        sent = {k: r for k, r in happened.items() if r.status == "sent"}
        assert {key(e): e.variant for e in preview.messages} == {
            k: r.variant for k, r in sent.items()
        }
        skipped = {k: (r.status, r.reason) for k, r in happened.items() if r.status != "sent"}
        listed = {key(e): (e.status, e.reason) for e in preview.skipped if e.status != "sent"}
        assert {k: v for k, v in listed.items() if k in skipped} == skipped
    finally:
        rt.engine.dispose()
