"""The planner: pure functions from facts and `now` to touches (no database, no clock)."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from followup.config import calendars
from followup.config.values import parse_delay
from followup.domain import occasions, planner
from followup.domain.care import TierRules
from followup.domain.clients import ClientFacts, ClientStats, PurchaseFact, Recipient
from followup.domain.decision import Rules, Send, decide
from followup.domain.occasions import Calendar, Campaign, Window
from followup.domain.planner import Politeness
from followup.domain.statuses import COUNTING, PurchaseStatus, TouchStatus
from followup.domain.touches import DueTouch, LedgerTouch, NewTouch, message_id

NEW_YORK = ZoneInfo("America/New_York")
ALL_ZONES = sorted(available_timezones())

#: Zones whose clocks jumped forward by 3 hours or more at least once since 1990 (date-line
#: moves such as Samoa skipping 2011-12-30, and Antarctic stations): there, a wall time in
#: the gap moves by the whole jump, as documented, which can exceed the usual 1-2 hours.
LARGE_JUMP_ZONES = frozenset(
    {
        "America/Danmarkshavn",
        "Antarctica/Casey",
        "Antarctica/Vostok",
        "Kwajalein",
        "Pacific/Apia",
        "Pacific/Enderbury",
        "Pacific/Fakaofo",
        "Pacific/Kanton",
        "Pacific/Kiritimati",
        "Pacific/Kwajalein",
    }
)


def _exists(wall: datetime, zone: ZoneInfo) -> bool:
    """Whether the naive wall time `wall` is ever shown by the clocks of `zone`."""
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            return True
    return False


# ----------------------------------------------------------------------------- local_instant


def test_local_instant_in_winter_is_five_hours_behind_utc() -> None:
    instant = planner.local_instant(date(2027, 2, 15), time(10, 0), NEW_YORK)
    assert instant == datetime(2027, 2, 15, 15, 0, tzinfo=UTC)
    assert instant.utcoffset() == timedelta(0)
    assert instant.astimezone(NEW_YORK).utcoffset() == timedelta(hours=-5)


def test_local_instant_in_summer_time_is_four_hours_behind_utc() -> None:
    instant = planner.local_instant(date(2027, 3, 17), time(10, 0), NEW_YORK)
    assert instant == datetime(2027, 3, 17, 14, 0, tzinfo=UTC)
    assert instant.astimezone(NEW_YORK).utcoffset() == timedelta(hours=-4)


def test_local_instant_in_the_spring_gap_moves_forward_by_the_gap() -> None:
    # 2027-03-14 in New York: the clocks jump from 02:00 EST to 03:00 EDT; 02:30 never exists.
    requested = datetime(2027, 3, 14, 2, 30)
    gap = timedelta(hours=1)
    assert not _exists(requested, NEW_YORK)

    instant = planner.local_instant(requested.date(), requested.time(), NEW_YORK)
    shown = instant.astimezone(NEW_YORK)

    assert instant == datetime(2027, 3, 14, 7, 30, tzinfo=UTC)
    assert shown.replace(tzinfo=None) == datetime(2027, 3, 14, 3, 30)
    assert shown.utcoffset() == timedelta(hours=-4)
    # Later than asked, by exactly the length of the gap (never earlier).
    assert requested < shown.replace(tzinfo=None) <= requested + gap


def test_local_instant_of_an_ambiguous_time_takes_the_first_instant() -> None:
    # 2027-11-07 in New York: 01:00-02:00 happens twice (EDT, then EST).
    instant = planner.local_instant(date(2027, 11, 7), time(1, 30), NEW_YORK)
    assert instant == datetime(2027, 11, 7, 5, 30, tzinfo=UTC)
    assert instant.astimezone(NEW_YORK).utcoffset() == timedelta(hours=-4)
    second = datetime(2027, 11, 7, 1, 30, tzinfo=NEW_YORK, fold=1).astimezone(UTC)
    assert instant < second


def test_local_instant_across_a_skipped_day_moves_by_the_whole_day() -> None:
    # Samoa crossed the date line: 2011-12-29 23:59:59 (-10:00) was followed by 2011-12-31
    # 00:00 (+14:00). A time on the skipped day lands on the next day at the same time.
    apia = ZoneInfo("Pacific/Apia")
    instant = planner.local_instant(date(2011, 12, 30), time(10, 0), apia)
    shown = instant.astimezone(apia)
    assert shown.replace(tzinfo=None) == datetime(2011, 12, 31, 10, 0)
    assert shown.utcoffset() == timedelta(hours=14)


@given(
    zone_name=st.sampled_from(ALL_ZONES),
    day=st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 12, 31)),
    at=st.times(),
)
def test_local_instant_shows_the_requested_wall_time_or_a_little_later(
    zone_name: str, day: date, at: time
) -> None:
    zone = ZoneInfo(zone_name)
    requested = datetime.combine(day, at)

    instant = planner.local_instant(day, at, zone)

    assert instant.utcoffset() == timedelta(0)
    shown = instant.astimezone(zone)
    wall = shown.replace(tzinfo=None)
    if wall == requested:
        return
    # Only a wall time the clocks jump over may be moved, and only forward.
    assert not _exists(requested, zone)
    shift = wall - requested
    assert shift > timedelta(0)
    assert wall.date() in (day, day + timedelta(days=1))
    # The shift is the length of the gap: the offset after it minus the offset before it.
    before = (instant - shift).astimezone(zone).utcoffset()
    after = shown.utcoffset()
    assert before is not None
    assert after is not None
    assert shift == after - before
    if zone_name not in LARGE_JUMP_ZONES:
        assert shift < timedelta(hours=3)


ALL_HOURS = Window(time(0), time(0))


def _campaign(
    name: str,
    kind: str = "rrule",
    *,
    rule: str = "",
    dtstart: str = "2020-01-01",
    priority: int = 50,
    capped: bool = True,
    lateness: timedelta = timedelta(hours=48),
    send_time: time = time(10, 0),
    window: Window = ALL_HOURS,
    weekdays: frozenset[int] = frozenset(range(7)),
    after: str = "2 days",
    client_date: str = "birthday",
) -> Campaign:
    return Campaign(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        template=name,
        title=name.replace("_", " "),
        priority=priority,
        capped=capped,
        lateness=lateness,
        send_time=send_time,
        window=window,
        weekdays=weekdays,
        after=parse_delay(after),
        client_date=client_date,  # type: ignore[arg-type]
        rule=calendars._rrule_text(dtstart, rule, []) if rule else "",
    )


THANK_YOU = _campaign("thank_you", "after_purchase", priority=100, capped=False)
THANK_YOU = dataclasses.replace(THANK_YOU, lateness=timedelta(hours=72))
BIRTHDAY = _campaign("birthday", "yearly", priority=90, lateness=timedelta(hours=12))
HOLIDAY = _campaign("holiday", rule="FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=15", priority=50)
NO_QUIET = Politeness(max_touches=1, per=timedelta(days=3), quiet=None)
POLITE = Politeness()

#: A wide window: everything in the tests below is due inside it unless a test narrows it.
SINCE = datetime(2000, 1, 1, tzinfo=UTC)
UNTIL = datetime(2100, 1, 1, tzinfo=UTC)
EARLY = datetime(1999, 1, 1, tzinfo=UTC)


def _client(
    *purchases: PurchaseFact,
    timezone: str = "America/New_York",
    birthday: tuple[int, int, int | None] | None = None,
    client_id: int = 7,
) -> ClientFacts:
    return ClientFacts(
        client_id, timezone, "US", "en-US", birthday=birthday, purchases=tuple(purchases)
    )


def _bought(at: datetime, *, purchase_id: int = 1, status: str = "paid") -> PurchaseFact:
    return PurchaseFact(purchase_id, at, status)


def _plan(
    client: ClientFacts,
    *campaigns: Campaign,
    ledger: tuple[LedgerTouch, ...] = (),
    since: datetime = SINCE,
    until: datetime = UNTIL,
    now: datetime = EARLY,
    politeness: Politeness = NO_QUIET,
) -> list[NewTouch]:
    return planner.plan_client(
        campaigns or (THANK_YOU,),
        client,
        ledger,
        since=since,
        until=until,
        now=now,
        politeness=politeness,
    )


# ----------------------------------------------------------------------------- after a purchase


def test_a_paid_purchase_yields_one_touch_two_days_later_at_the_send_time() -> None:
    purchased = datetime(2027, 1, 5, 15, 30, tzinfo=UTC)  # 10:30 in New York
    (touch,) = _plan(_client(_bought(purchased)), until=datetime(2027, 2, 1, tzinfo=UTC))
    assert touch == NewTouch(
        client_id=7,
        campaign="thank_you",
        occurrence=date(2027, 1, 5),
        due_at=datetime(2027, 1, 7, 15, 0, tzinfo=UTC),
        not_after=datetime(2027, 1, 10, 15, 0, tzinfo=UTC),
        template="thank_you",
        purchase_id=1,
        occasion="thank you",
        nominal_at=datetime(2027, 1, 7, 15, 0, tzinfo=UTC),
    )


def test_the_due_time_is_the_send_time_in_the_clients_zone() -> None:
    purchased = datetime(2027, 6, 1, 3, 0, tzinfo=UTC)  # 12:00 in Tokyo
    campaign = dataclasses.replace(THANK_YOU, send_time=time(9, 15), after=parse_delay("3 days"))
    (touch,) = _plan(_client(_bought(purchased), timezone="Asia/Tokyo"), campaign)
    assert touch.due_at.astimezone(ZoneInfo("Asia/Tokyo")) == datetime(
        2027, 6, 4, 9, 15, tzinfo=ZoneInfo("Asia/Tokyo")
    )


@pytest.mark.parametrize(
    "status", [s for s in PurchaseStatus if s is not PurchaseStatus.PAID], ids=str
)
def test_a_purchase_that_is_not_paid_yields_nothing(status: PurchaseStatus) -> None:
    purchased = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)
    assert _plan(_client(_bought(purchased, status=status.value))) == []


def test_two_purchases_on_one_local_day_yield_one_touch() -> None:
    morning = datetime(2027, 1, 5, 14, 0, tzinfo=UTC)
    client = _client(_bought(morning), _bought(morning + timedelta(hours=6), purchase_id=2))
    (touch,) = _plan(client)
    assert touch.purchase_id == 1


def test_a_late_evening_purchase_belongs_to_its_local_day_not_the_utc_one() -> None:
    evening = datetime(2027, 1, 6, 3, 0, tzinfo=UTC)  # 22:00 on 5 January in New York
    (touch,) = _plan(_client(_bought(evening)))
    assert touch.occurrence == date(2027, 1, 5)


def test_a_key_already_in_the_ledger_is_not_planned_again() -> None:
    purchased = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)
    client = _client(_bought(purchased))
    (first,) = _plan(client)
    ledger = (LedgerTouch("thank_you", first.occurrence, first.due_at, "sent", 1),)
    assert _plan(client, ledger=ledger) == []
    # Nor a touch for the same purchase under another occurrence (the zone changed since).
    moved = (LedgerTouch("thank_you", date(2027, 1, 6), first.due_at, "sent", 1),)
    assert _plan(client, ledger=moved) == []


def test_only_touches_due_within_since_until_inclusive_are_returned() -> None:
    purchased = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)
    due = datetime(2027, 1, 7, 15, 0, tzinfo=UTC)
    client = _client(_bought(purchased))
    assert len(_plan(client, since=due, until=due)) == 1
    assert _plan(client, since=due + timedelta(seconds=1)) == []
    assert _plan(client, until=due - timedelta(seconds=1)) == []


def test_a_touch_past_its_lateness_is_skipped_too_late() -> None:
    purchased = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)
    due = datetime(2027, 1, 7, 15, 0, tzinfo=UTC)
    (late,) = _plan(_client(_bought(purchased)), now=due + timedelta(hours=73))
    assert (late.status, late.reason, late.due_at) == (TouchStatus.SKIPPED, planner.TOO_LATE, due)
    (caught_up,) = _plan(_client(_bought(purchased)), now=due + timedelta(hours=5))
    assert caught_up.status is TouchStatus.PLANNED
    assert caught_up.due_at == due + timedelta(hours=5)  # at once: it is still 15:00 local


# ----------------------------------------------------------------------------- windows


def test_a_catch_up_in_quiet_hours_waits_for_the_next_send_time() -> None:
    purchased = datetime(2027, 1, 5, 15, 0, tzinfo=UTC)
    due = datetime(2027, 1, 7, 15, 0, tzinfo=UTC)  # 10:00 local
    at_3am = datetime(2027, 1, 8, 8, 0, tzinfo=UTC)  # 03:00 local, the next day
    (touch,) = _plan(_client(_bought(purchased)), now=at_3am, politeness=POLITE)
    assert touch.status is TouchStatus.PLANNED
    assert touch.due_at == datetime(2027, 1, 8, 15, 0, tzinfo=UTC)  # 10:00 local that day
    assert touch.not_after == due + timedelta(hours=72)
    # With a lateness that ends before the next send time, it is too late.
    short = dataclasses.replace(THANK_YOU, lateness=timedelta(hours=20))
    (skipped,) = _plan(_client(_bought(purchased)), short, now=at_3am, politeness=POLITE)
    assert skipped.status is TouchStatus.SKIPPED
    assert skipped.reason is not None
    assert skipped.reason.startswith(planner.TOO_LATE)


def test_a_reminder_due_on_a_weekend_moves_to_monday() -> None:
    reminder = _campaign(
        "service_reminder", "after_purchase", after="6 months", weekdays=frozenset(range(5))
    )
    purchased = datetime(2026, 7, 3, 15, 0, tzinfo=UTC)  # Friday; 6 months on: a Sunday
    (touch,) = _plan(_client(_bought(purchased)), reminder)
    local = touch.due_at.astimezone(NEW_YORK)
    assert (local.date(), local.time()) == (date(2027, 1, 4), time(10, 0))
    assert local.weekday() == 0
    assert touch.occurrence == date(2026, 7, 3)


# ----------------------------------------------------------------------------- collisions


def test_a_birthday_and_a_holiday_on_one_day_send_one_and_skip_the_other() -> None:
    client = _client(birthday=(2, 15, 1980))
    first, second = _plan(
        client,
        BIRTHDAY,
        HOLIDAY,
        since=datetime(2027, 1, 1, tzinfo=UTC),
        until=datetime(2027, 3, 1, tzinfo=UTC),
    )
    assert (first.campaign, first.status) == ("birthday", TouchStatus.PLANNED)
    assert first.due_at.astimezone(NEW_YORK) == datetime(2027, 2, 15, 10, 0, tzinfo=NEW_YORK)
    assert (second.campaign, second.status) == ("holiday", TouchStatus.SKIPPED)
    assert second.reason == "capped: birthday on 2027-02-15"


def test_the_lower_priority_is_deferred_when_its_lateness_allows() -> None:
    client = _client(birthday=(2, 15, 1980))
    patient = dataclasses.replace(HOLIDAY, lateness=timedelta(days=5))
    touches = _plan(
        client,
        BIRTHDAY,
        patient,
        since=datetime(2027, 1, 1, tzinfo=UTC),
        until=datetime(2027, 3, 1, tzinfo=UTC),
    )
    by_campaign = {t.campaign: t for t in touches}
    holiday = by_campaign["holiday"]
    assert holiday.status is TouchStatus.PLANNED
    # Three days after the birthday: the first day the cap allows.
    assert holiday.due_at.astimezone(NEW_YORK) == datetime(2027, 2, 18, 10, 0, tzinfo=NEW_YORK)
    assert holiday.occurrence == date(2027, 2, 15)
    assert holiday.reason == "deferred from 2027-02-15: birthday on 2027-02-15"


def test_a_thank_you_neither_counts_toward_the_cap_nor_waits() -> None:
    client = _client(_bought(datetime(2027, 2, 13, 15, 0, tzinfo=UTC)), birthday=(2, 15, None))
    touches = _plan(
        client,
        THANK_YOU,
        BIRTHDAY,
        since=datetime(2027, 1, 1, tzinfo=UTC),
        until=datetime(2027, 3, 1, tzinfo=UTC),
    )
    assert [(t.campaign, t.status) for t in touches] == [
        ("birthday", TouchStatus.PLANNED),
        ("thank_you", TouchStatus.PLANNED),
    ]
    assert touches[0].due_at == touches[1].due_at


FEB_SINCE = datetime(2027, 1, 1, tzinfo=UTC)
FEB_UNTIL = datetime(2027, 3, 1, tzinfo=UTC)


def test_the_ledger_counts_toward_the_cap() -> None:
    client = _client(birthday=(2, 15, None))
    sent = LedgerTouch(
        "newsletter", date(2027, 2, 14), datetime(2027, 2, 14, 15, tzinfo=UTC), "sent"
    )
    (birthday,) = _plan(client, BIRTHDAY, ledger=(sent,), since=FEB_SINCE, until=FEB_UNTIL)
    assert birthday.status is TouchStatus.SKIPPED
    assert birthday.reason == "capped: newsletter on 2027-02-14"
    # A skipped or failed touch did not reach the client: it does not count.
    failed = dataclasses.replace(sent, status="failed")
    (again,) = _plan(client, BIRTHDAY, ledger=(failed,), since=FEB_SINCE, until=FEB_UNTIL)
    assert again.status is TouchStatus.PLANNED


def test_a_higher_priority_just_past_the_horizon_is_not_overtaken() -> None:
    # The holiday is due on the 15th, the birthday (higher priority) on the 16th. Planning
    # with a horizon that ends between them still gives the day to the birthday.
    client = _client(birthday=(2, 16, None))
    until = datetime(2027, 2, 15, 23, 0, tzinfo=UTC)
    (holiday,) = _plan(
        client, BIRTHDAY, HOLIDAY, since=datetime(2027, 2, 1, tzinfo=UTC), until=until
    )
    assert (holiday.campaign, holiday.status) == ("holiday", TouchStatus.SKIPPED)
    assert holiday.reason == "capped: birthday on 2027-02-16"


# ----------------------------------------------------------------------------- properties

INSTANTS = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


@given(
    zone_name=st.sampled_from(ALL_ZONES),
    day=st.dates(min_value=date(1995, 1, 1), max_value=date(2080, 12, 31)),
    send_time=st.times().map(lambda t: t.replace(second=0, microsecond=0)),
)
def test_a_touch_goes_out_at_its_local_send_time_or_just_after_a_dst_gap(
    zone_name: str, day: date, send_time: time
) -> None:
    zone = ZoneInfo(zone_name)
    campaign = _campaign("greeting", "yearly", send_time=send_time)
    client = _client(timezone=zone_name, birthday=(day.month, day.day, None))
    since = datetime.combine(day, time(), UTC) - timedelta(days=2)
    until = since + timedelta(days=4)
    touches = [t for t in _plan(client, campaign, since=since, until=until) if t.occurrence == day]
    assume(touches)
    (touch,) = touches
    wall = touch.due_at.astimezone(zone).replace(tzinfo=None)
    requested = datetime.combine(day, send_time)
    if wall != requested:
        assert not _exists(requested, zone)
        assert timedelta(0) < wall - requested <= timedelta(hours=24)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Campaign], ClientFacts, list[LedgerTouch], Politeness]:
    """A client, several capped and uncapped occasions with random rules and priorities, a
    ledger that respects the cap, and a cap."""
    politeness = Politeness(
        max_touches=draw(st.integers(1, 3)),
        per=timedelta(days=draw(st.integers(1, 7))),
        quiet=None,
    )
    campaigns = []
    for n in range(draw(st.integers(1, 5))):
        interval = draw(st.integers(1, 20))
        campaigns.append(
            _campaign(
                f"c{n}",
                rule=f"FREQ=DAILY;INTERVAL={interval}",
                dtstart=f"2027-01-{draw(st.integers(1, 28)):02d}",
                priority=draw(st.integers(0, 3)),
                capped=draw(st.booleans()),
                lateness=timedelta(hours=draw(st.integers(0, 200))),
                send_time=time(draw(st.integers(0, 23)), draw(st.sampled_from([0, 30]))),
            )
        )
    zone = draw(st.sampled_from(ZONES))
    ledger: list[LedgerTouch] = []
    for n in range(draw(st.integers(0, 4))):
        at = SCENARIO_START + timedelta(hours=draw(st.integers(0, 24 * 60)))
        trial = [*(t.at for t in ledger), at]
        if not _over_cap(trial, politeness, ZoneInfo(zone)):
            ledger.append(LedgerTouch(f"old{n}", at.date(), at, "sent"))
    return campaigns, _client(timezone=zone), ledger, politeness


#: The scenarios' time: from late February, so that New York's and Paris's clocks go forward
#: within it, and Sydney's back.
SCENARIO_START = datetime(2027, 2, 20, tzinfo=UTC)
ZONES = ["America/New_York", "Europe/Paris", "Australia/Sydney", "Pacific/Apia", "UTC"]


def _over_cap(times: list[datetime], politeness: Politeness, zone: ZoneInfo) -> bool:
    """Whether more than `max_touches` fall within some `per` of the client's wall clock."""
    walls = sorted(t.astimezone(zone).replace(tzinfo=None) for t in times)
    return any(
        sum(1 for u in walls[i:] if u - t < politeness.per) > politeness.max_touches
        for i, t in enumerate(walls)
    )


@settings(deadline=None)
@given(scenario=scenarios(), now_hours=st.integers(0, 24 * 40), horizon=st.integers(1, 20))
def test_the_cap_is_never_exceeded_and_no_key_is_planned_twice(
    scenario: tuple[list[Campaign], ClientFacts, list[LedgerTouch], Politeness],
    now_hours: int,
    horizon: int,
) -> None:
    campaigns, client, ledger, politeness = scenario
    capped = {c.name for c in campaigns if c.capped}
    now = SCENARIO_START + timedelta(hours=now_hours)
    # Plan repeatedly as the daemon does, a day at a time, the ledger growing each pass.
    ledger = list(ledger)
    keys: list[tuple[str, date]] = []
    for day in range(0, 30, max(1, horizon // 4)):
        at = now + timedelta(days=day)
        new = planner.plan_client(
            campaigns,
            client,
            ledger,
            since={c.name: at - c.lateness for c in campaigns},
            until=at + timedelta(days=horizon),
            now=at,
            politeness=politeness,
        )
        for touch in new:
            keys.append((touch.campaign, touch.occurrence))
            ledger.append(
                LedgerTouch(touch.campaign, touch.occurrence, touch.due_at, touch.status.value)
            )
            if touch.status is TouchStatus.PLANNED:
                assert touch.due_at < touch.not_after
                assert touch.due_at >= at or touch.due_at >= touch.nominal_at  # never earlier
    assert len(keys) == len(set(keys)), "a key was planned twice"
    counted = [
        t.at
        for t in ledger
        if t.status in COUNTING and (t.campaign in capped or t.campaign.startswith("old"))
    ]
    assert not _over_cap(counted, politeness, ZoneInfo(client.timezone))


@settings(deadline=None)
@given(scenario=scenarios(), now_hours=st.integers(0, 24 * 40))
def test_two_planners_on_the_same_ledger_plan_the_same_touches(
    scenario: tuple[list[Campaign], ClientFacts, list[LedgerTouch], Politeness], now_hours: int
) -> None:
    campaigns, client, ledger, politeness = scenario
    now = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(hours=now_hours)

    def run() -> list[NewTouch]:
        return planner.plan_client(
            campaigns,
            client,
            ledger,
            since=now - timedelta(days=10),
            until=now + timedelta(days=5),
            now=now,
            politeness=politeness,
        )

    assert run() == run()


#: Occasions next to the scenarios' rules: one far from the window, one for other countries.
FAR = _campaign("far", rule="FREQ=YEARLY;BYMONTH=7;BYMONTHDAY=4", priority=3)
ELSEWHERE = dataclasses.replace(
    _campaign("elsewhere", rule="FREQ=DAILY", priority=3), countries=frozenset({"FR"})
)


@settings(deadline=None)
@given(
    scenario=scenarios(),
    now_hours=st.integers(0, 24 * 40),
    horizon=st.integers(1, 10),
    birthday=st.tuples(st.integers(1, 2), st.integers(1, 28)),
    bought_hours=st.lists(st.integers(-24 * 10, 24 * 40), max_size=3),
)
def test_planning_only_the_campaigns_for_the_client_plans_the_same_touches(
    scenario: tuple[list[Campaign], ClientFacts, list[LedgerTouch], Politeness],
    now_hours: int,
    horizon: int,
    birthday: tuple[int, int],
    bought_hours: list[int],
) -> None:
    rules, client, ledger, politeness = scenario
    start = datetime(2027, 1, 1, tzinfo=UTC)
    client = dataclasses.replace(
        client,
        birthday=(*birthday, 1980),
        purchases=tuple(
            _bought(start + timedelta(hours=h), purchase_id=n) for n, h in enumerate(bought_hours)
        ),
    )
    campaigns = [*rules, THANK_YOU, BIRTHDAY, FAR, ELSEWHERE]
    capped = {c.name: c.capped for c in campaigns}
    ledger = list(ledger)
    # Plan a day at a time as the daemon does; the ledger grows, late occasions are skipped.
    for day in range(0, 20, 2):
        at = start + timedelta(hours=now_hours, days=day)
        since = {c.name: at - c.lateness for c in campaigns}
        until = at + timedelta(days=horizon)

        some = planner.campaigns_for(
            campaigns, client, since=since, until=until, politeness=politeness
        )
        assert FAR not in some and ELSEWHERE not in some
        new, filtered = (
            planner.plan_client(
                which,
                client,
                ledger,
                since=since,
                until=until,
                now=at,
                politeness=politeness,
                capped=capped,
            )
            for which in (campaigns, some)
        )
        assert filtered == new
        ledger.extend(LedgerTouch(t.campaign, t.occurrence, t.due_at, t.status.value) for t in new)


# ----------------------------------------------------------------------------- purchase_window

WINDOW_ZONES = st.sampled_from(ALL_ZONES)
PURCHASES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)
MARGINS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=5))


@given(
    zone_name=WINDOW_ZONES,
    delay=st.sampled_from(["0 days", "2 days", "14 days", "1 month", "6 months", "1 year"]),
    send_time=st.times(),
    purchased_at=PURCHASES,
    before=MARGINS,
    after=MARGINS,
)
@example(
    # 23:30 EST on Saturday 2027-03-13; due at 00:00 EDT on 2027-03-15 (04:00 UTC), the
    # clocks having sprung forward in between: only 23.5 h of real time after the purchase.
    zone_name="America/New_York",
    delay="2 days",
    send_time=time(0, 0),
    purchased_at=datetime(2027, 3, 14, 4, 30, tzinfo=UTC),
    before=timedelta(hours=1),
    after=timedelta(0),
)
def test_purchase_window_contains_every_purchase_due_in_the_range(
    zone_name: str,
    delay: str,
    send_time: time,
    purchased_at: datetime,
    before: timedelta,
    after: timedelta,
) -> None:
    campaign = _campaign("c", "after_purchase", after=delay, send_time=send_time)
    client = _client(_bought(purchased_at), timezone=zone_name)
    (touch,) = _plan(client, campaign, since=datetime(1990, 1, 1, tzinfo=UTC))
    since, until = touch.due_at - before, touch.due_at + after

    start, end = planner.purchase_window(occasions.longest_delay(campaign.after), since, until)

    assert start <= purchased_at <= end


# ----------------------------------------------------------------------------- message_id


# ----------------------------------------------------------------------------- the deadline

LOS_ANGELES = "America/Los_Angeles"
#: Washington's Birthday as the shipped calendar has it: the third Monday of February, 10:00
#: local, a day's lateness, capped.
WASHINGTON = _campaign(
    "washingtons_birthday",
    rule="FREQ=YEARLY;BYMONTH=2;BYDAY=3MO",
    lateness=timedelta(hours=24),
    window=Window(time(8), time(20)),
)


def test_a_touch_deferred_onto_its_deadline_is_skipped_not_planned_there() -> None:
    """The issue's case: planned at 2027-02-13T12:00Z, Washington's Birthday (Monday 15
    February, 10:00 in Los Angeles: 18:00Z) collides with a greeting of the 13th; the next
    day's send time is 2027-02-16T18:00Z, its deadline exactly. A touch due then would be
    "too late" when the dispatcher takes it up: it is skipped with the cap's reason."""
    other = LedgerTouch(
        "valentine", date(2027, 2, 13), datetime(2027, 2, 13, 18, tzinfo=UTC), "planned"
    )
    plan_at = datetime(2027, 2, 13, 12, tzinfo=UTC)
    (touch,) = _plan(
        _client(timezone=LOS_ANGELES),
        WASHINGTON,
        ledger=(other,),
        since=plan_at,
        until=datetime(2027, 2, 20, tzinfo=UTC),
        now=plan_at,
        politeness=POLITE,
    )
    assert touch.not_after == datetime(2027, 2, 16, 18, tzinfo=UTC)
    assert (touch.status, touch.reason) == (TouchStatus.SKIPPED, "capped: valentine on 2027-02-13")


def test_a_catch_up_whose_next_send_time_is_its_deadline_is_too_late() -> None:
    """Planned after downtime at 2027-02-16T13:00Z (05:00 in Los Angeles, quiet hours): the
    only later send time within the lateness would be the deadline itself."""
    (touch,) = _plan(
        _client(timezone=LOS_ANGELES),
        WASHINGTON,
        since=datetime(2027, 2, 14, 12, tzinfo=UTC),
        until=datetime(2027, 2, 20, tzinfo=UTC),
        now=datetime(2027, 2, 16, 13, tzinfo=UTC),
        politeness=POLITE,
    )
    assert touch.status is TouchStatus.SKIPPED
    assert touch.reason == f"{planner.TOO_LATE}: no allowed send time"


def _recipient(client: ClientFacts) -> Recipient:
    return Recipient(
        client.client_id, "c7", "ann@example.com", "Ann", "Lee", client.locale, client.timezone,
        client.country, "", "", "active", None, None, None, None, None, None, None, None, None,
        None,
    )  # fmt: skip


@settings(deadline=None)
@given(
    scenario=scenarios(),
    now_hours=st.integers(0, 24 * 40),
    lateness_days=st.lists(st.integers(0, 4), min_size=5, max_size=5),
    window=st.tuples(st.integers(0, 23), st.integers(0, 23)),
    weekdays=st.sets(st.integers(0, 6), min_size=1),
    quiet=st.booleans(),
)
@example(
    scenario=(
        [WASHINGTON],
        _client(timezone=LOS_ANGELES),
        [LedgerTouch("old", date(2027, 2, 13), datetime(2027, 2, 13, 18, tzinfo=UTC), "sent")],
        POLITE,
    ),
    now_hours=-7 * 24 + 12,
    lateness_days=[1, 1, 1, 1, 1],
    window=(8, 20),
    weekdays=set(range(7)),
    quiet=True,
)
def test_a_planned_touch_is_due_before_its_deadline_and_goes_out_when_due(
    scenario: tuple[list[Campaign], ClientFacts, list[LedgerTouch], Politeness],
    now_hours: int,
    lateness_days: list[int],
    window: tuple[int, int],
    weekdays: set[int],
    quiet: bool,
) -> None:
    """Whatever the windows, weekdays, quiet hours, cap and lateness (whole days, so that a
    deadline often falls exactly on a later day's send time): a planned touch is due strictly
    before its deadline, and the send-time decision at its due time sends it."""
    campaigns, client, ledger, politeness = scenario
    campaigns = [
        dataclasses.replace(
            c,
            lateness=c.lateness if c is WASHINGTON else timedelta(days=lateness_days[n]),
            window=c.window if c is WASHINGTON else Window(time(window[0]), time(window[1])),
            weekdays=frozenset(weekdays) if c is not WASHINGTON else c.weekdays,
        )
        for n, c in enumerate(campaigns)
    ]
    if quiet:
        politeness = dataclasses.replace(politeness, quiet=planner.QUIET)
    now = SCENARIO_START + timedelta(hours=now_hours)
    new = planner.plan_client(
        campaigns,
        client,
        ledger,
        since={c.name: now - c.lateness for c in campaigns},
        until=now + timedelta(days=10),
        now=now,
        politeness=politeness,
    )
    rules = Rules(Calendar(tuple(campaigns)), politeness, TierRules())
    for n, touch in enumerate(t for t in new if t.status is TouchStatus.PLANNED):
        assert touch.due_at < touch.not_after
        due = DueTouch(
            n, client.client_id, touch.campaign, touch.occurrence, touch.template,
            touch.occasion, touch.due_at, None, 1, touch.not_after, None,
        )  # fmt: skip
        decision = decide(
            due,
            _recipient(client),
            suppression=None,
            stats=ClientStats(),
            sent=[],
            designs=(),
            rules=rules,
            now=touch.due_at,
        )
        assert isinstance(decision, Send), (touch, decision)


def test_message_id_is_deterministic_for_a_key() -> None:
    first = message_id(7, "thank_you", date(2027, 1, 5), "example.com")
    again = message_id(7, "thank_you", date(2027, 1, 5), "example.com")
    assert first == again


def test_message_id_looks_like_hex_at_the_domain() -> None:
    mid = message_id(7, "thank_you", date(2027, 1, 5), "shop.example.org")
    assert re.fullmatch(r"<[0-9a-f]{32}@shop\.example\.org>", mid)


@pytest.mark.parametrize(
    "other",
    [
        (8, "thank_you", date(2027, 1, 5)),
        (7, "birthday", date(2027, 1, 5)),
        (7, "thank_you", date(2027, 1, 6)),
    ],
)
def test_message_id_differs_when_any_part_of_the_key_differs(
    other: tuple[int, str, date],
) -> None:
    base = message_id(7, "thank_you", date(2027, 1, 5), "example.com")
    assert message_id(*other, "example.com") != base


KEYS = st.tuples(
    st.integers(1, 10**9),
    st.text(min_size=1, max_size=20),
    st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)),
)


@given(a=KEYS, b=KEYS)
def test_distinct_keys_have_distinct_message_ids(
    a: tuple[int, str, date], b: tuple[int, str, date]
) -> None:
    assume(a != b)
    assert message_id(*a, "example.com") != message_id(*b, "example.com")


@pytest.mark.parametrize(
    ("zone_name", "first", "second"),
    [
        # Clocks go forward overnight: 23 hours between the two 10:00s.
        ("America/New_York", date(2027, 3, 13), date(2027, 3, 14)),
        ("Europe/Paris", date(2027, 3, 27), date(2027, 3, 28)),
        # Back: 25 hours.
        ("America/New_York", date(2027, 11, 6), date(2027, 11, 7)),
        # Lord Howe Island moves its clocks by half an hour.
        ("Australia/Lord_Howe", date(2027, 4, 3), date(2027, 4, 4)),
    ],
)
def test_one_capped_touch_a_day_means_one_each_local_day_across_a_dst_change(
    zone_name: str, first: date, second: date
) -> None:
    # "At most one per day": the occasions of two consecutive local days both go out at their
    # 10:00, however many hours lie between; a third the same day as the second waits a day.
    zone = ZoneInfo(zone_name)
    campaigns = [
        _campaign(
            name,
            rule=f"FREQ=YEARLY;BYMONTH={day.month};BYMONTHDAY={day.day}",
            priority=priority,
            lateness=timedelta(days=3),
        )
        for name, day, priority in (("one", first, 60), ("two", second, 50), ("three", second, 40))
    ]
    touches = _plan(
        _client(timezone=zone_name),
        *campaigns,
        since=datetime(first.year, 1, 1, tzinfo=UTC),
        until=datetime(first.year, 12, 31, tzinfo=UTC),
        now=datetime.combine(first - timedelta(days=1), time(12), tzinfo=zone),
        politeness=Politeness(max_touches=1, per=timedelta(days=1), quiet=None),
    )
    due = {t.campaign: t.due_at.astimezone(zone) for t in touches}
    assert {t.status for t in touches} == {TouchStatus.PLANNED}
    assert due["one"] == datetime.combine(first, time(10), tzinfo=zone)
    assert due["two"] == datetime.combine(second, time(10), tzinfo=zone)
    assert due["three"] == datetime.combine(second + timedelta(days=1), time(10), tzinfo=zone)


def test_a_touch_23_hours_and_a_half_after_another_on_the_wall_clock_waits_across_fall_back() -> (
    None
):
    # Sydney, one capped touch a day. The clocks go back in the night of 04-03: 09:30 on 04-04
    # is 24.5 hours after 10:00 on 04-03, but 23.5 on the client's clock: it waits a day.
    zone = ZoneInfo("Australia/Sydney")
    sent = datetime(2027, 4, 3, 10, tzinfo=zone)
    ledger = (LedgerTouch("old", date(2027, 4, 3), sent.astimezone(UTC), "sent"),)
    campaign = _campaign(
        "two",
        rule="FREQ=YEARLY;BYMONTH=4;BYMONTHDAY=4",
        send_time=time(9, 30),
        lateness=timedelta(days=3),
    )
    (touch,) = _plan(
        _client(timezone="Australia/Sydney"),
        campaign,
        ledger=ledger,
        since=datetime(2027, 1, 1, tzinfo=UTC),
        until=datetime(2027, 12, 31, tzinfo=UTC),
        now=datetime(2027, 4, 3, 12, tzinfo=zone),
        politeness=Politeness(max_touches=1, per=timedelta(days=1), quiet=None),
    )
    assert touch.status is TouchStatus.PLANNED
    assert touch.due_at.astimezone(zone) == datetime(2027, 4, 5, 9, 30, tzinfo=zone)


def test_a_higher_priority_occasion_keeps_its_day_whatever_the_horizon_across_fall_back() -> None:
    # The daemon's horizon reaches the low-priority occasion (04-03 10:00) first; the
    # high-priority one is 23.5 hours later on the client's clock (24.5 in real time) and must
    # take part in that first arbitration, as it does when both are planned at once.
    zone = ZoneInfo("Australia/Sydney")
    low, high = (
        _campaign(
            name,
            rule=f"FREQ=YEARLY;BYMONTH=4;BYMONTHDAY={day}",
            priority=priority,
            send_time=send_time,
            lateness=timedelta(days=3),
        )
        for name, day, priority, send_time in (
            ("low", 3, 10, time(10)),
            ("high", 4, 90, time(9, 30)),
        )
    )
    politeness = Politeness(max_touches=1, per=timedelta(days=1), quiet=None)
    client = _client(timezone="Australia/Sydney")
    now = datetime(2027, 4, 1, 12, tzinfo=zone)

    def plan(until: datetime, ledger: list[LedgerTouch]) -> list[NewTouch]:
        return planner.plan_client(
            [low, high],
            client,
            ledger,
            since=datetime(2027, 3, 1, tzinfo=UTC),
            until=until,
            now=now,
            politeness=politeness,
        )

    def local(touches: list[NewTouch]) -> dict[str, datetime]:
        return {t.campaign: t.due_at.astimezone(zone) for t in touches}

    at_once = local(plan(datetime(2027, 4, 10, tzinfo=UTC), []))
    first = plan(datetime(2027, 4, 3, 10, tzinfo=zone).astimezone(UTC), [])
    ledger = [LedgerTouch(t.campaign, t.occurrence, t.due_at, t.status.value) for t in first]
    step_by_step = local([*first, *plan(datetime(2027, 4, 10, tzinfo=UTC), ledger)])
    assert at_once["high"] == datetime(2027, 4, 4, 9, 30, tzinfo=zone)
    assert step_by_step == at_once


def test_a_capped_catch_up_takes_the_same_days_send_time_when_the_cap_allows() -> None:
    # Paris, one capped touch per day; another went out on 06-09 at 09:00. This one was due
    # 06-09 at 10:00 and may be 30 h late; planning at 08:30 on 06-10 gives it 10:00 that day.
    paris = ZoneInfo("Europe/Paris")
    campaign = _campaign(
        "greeting", rule="FREQ=YEARLY;BYMONTH=6;BYMONTHDAY=9", lateness=timedelta(hours=30)
    )
    other = LedgerTouch("other", date(2027, 6, 9), datetime(2027, 6, 9, 9, 0, tzinfo=paris), "sent")
    now = datetime(2027, 6, 10, 8, 30, tzinfo=paris)
    (touch,) = _plan(
        _client(timezone="Europe/Paris"),
        campaign,
        ledger=(other,),
        since=datetime(2027, 6, 1, tzinfo=UTC),
        until=datetime(2027, 6, 12, tzinfo=UTC),
        now=now,
        politeness=Politeness(max_touches=1, per=timedelta(days=1), quiet=None),
    )
    assert touch.status is TouchStatus.PLANNED
    assert touch.due_at == datetime(2027, 6, 10, 10, 0, tzinfo=paris)
