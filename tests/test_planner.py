"""The planner: pure functions from facts and `now` to touches (no database, no clock)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from followup import planner
from followup.models import PurchaseStatus, TouchStatus
from followup.planner import AfterPurchase, NewTouch, PurchaseFact

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

THANK_YOU = AfterPurchase(
    name="thank_you",
    template="thank_you",
    delay_days=2,
    send_time=time(10, 0),
    lateness=timedelta(hours=72),
)

#: A wide window: everything in the tests below is due inside it unless a test narrows it.
SINCE = datetime(2000, 1, 1, tzinfo=UTC)
UNTIL = datetime(2100, 1, 1, tzinfo=UTC)
EARLY = datetime(1999, 1, 1, tzinfo=UTC)


def _fact(
    purchased_at: datetime,
    *,
    purchase_id: int = 1,
    client_id: int = 7,
    timezone: str = "America/New_York",
    status: str = "paid",
) -> PurchaseFact:
    return PurchaseFact(purchase_id, client_id, purchased_at, timezone, status)


def _plan(
    facts: list[PurchaseFact],
    *,
    campaign: AfterPurchase = THANK_YOU,
    since: datetime = SINCE,
    until: datetime = UNTIL,
    now: datetime = EARLY,
) -> list[NewTouch]:
    return list(planner.plan_after_purchase(campaign, facts, since=since, until=until, now=now))


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


# ----------------------------------------------------------------------------- plan_after_purchase


def test_a_paid_purchase_yields_one_touch_delay_days_later_at_the_send_time() -> None:
    purchased = datetime(2027, 1, 5, 15, 0, tzinfo=NEW_YORK)
    fact = _fact(purchased.astimezone(UTC), purchase_id=41, client_id=7)

    touches = _plan([fact])

    due = datetime(2027, 1, 7, 10, 0, tzinfo=NEW_YORK).astimezone(UTC)
    assert touches == [
        NewTouch(
            client_id=7,
            campaign="thank_you",
            occurrence=date(2027, 1, 5),
            due_at=due,
            not_after=due + timedelta(hours=72),
            template="thank_you",
            purchase_id=41,
            status=TouchStatus.PLANNED,
            reason=None,
        )
    ]
    assert due == datetime(2027, 1, 7, 15, 0, tzinfo=UTC)


def test_the_due_time_is_the_send_time_in_the_clients_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    purchased = datetime(2027, 6, 1, 12, 0, tzinfo=tokyo)
    campaign = AfterPurchase("thank_you", "thank_you", 3, time(9, 15), timedelta(hours=1))

    (touch,) = _plan([_fact(purchased, timezone="Asia/Tokyo")], campaign=campaign)

    assert touch.occurrence == date(2027, 6, 1)
    assert touch.due_at.astimezone(tokyo).replace(tzinfo=None) == datetime(2027, 6, 4, 9, 15)
    assert touch.not_after == touch.due_at + timedelta(hours=1)


@pytest.mark.parametrize(
    "status", [PurchaseStatus.UNPAID, PurchaseStatus.DISPUTED, PurchaseStatus.REFUNDED]
)
def test_a_purchase_that_is_not_paid_yields_nothing(status: PurchaseStatus) -> None:
    fact = _fact(datetime(2027, 1, 5, 15, 0, tzinfo=UTC), status=status.value)
    assert _plan([fact]) == []


def test_two_purchases_on_one_local_day_yield_one_touch() -> None:
    morning = _fact(datetime(2027, 1, 5, 9, 0, tzinfo=NEW_YORK), purchase_id=1)
    evening = _fact(datetime(2027, 1, 5, 22, 0, tzinfo=NEW_YORK), purchase_id=2)

    touches = _plan([morning, evening])

    assert len(touches) == 1
    assert touches[0].occurrence == date(2027, 1, 5)
    assert touches[0].purchase_id == 1


def test_an_unpaid_purchase_does_not_take_the_days_slot_from_a_paid_one() -> None:
    unpaid = _fact(datetime(2027, 1, 5, 9, 0, tzinfo=NEW_YORK), purchase_id=1, status="unpaid")
    paid = _fact(datetime(2027, 1, 5, 11, 0, tzinfo=NEW_YORK), purchase_id=2)

    touches = _plan([unpaid, paid])

    assert [t.purchase_id for t in touches] == [2]


def test_purchases_on_other_days_or_by_other_clients_yield_their_own_touches() -> None:
    facts = [
        _fact(datetime(2027, 1, 5, 9, 0, tzinfo=NEW_YORK), purchase_id=1, client_id=7),
        _fact(datetime(2027, 1, 5, 9, 0, tzinfo=NEW_YORK), purchase_id=2, client_id=8),
        _fact(datetime(2027, 1, 6, 9, 0, tzinfo=NEW_YORK), purchase_id=3, client_id=7),
    ]

    touches = _plan(facts)

    assert [(t.client_id, t.occurrence) for t in touches] == [
        (7, date(2027, 1, 5)),
        (8, date(2027, 1, 5)),
        (7, date(2027, 1, 6)),
    ]


def test_a_late_evening_purchase_belongs_to_its_local_day_not_the_utc_one() -> None:
    purchased = datetime(2027, 1, 5, 23, 30, tzinfo=NEW_YORK)
    assert purchased.astimezone(UTC).date() == date(2027, 1, 6)

    (touch,) = _plan([_fact(purchased.astimezone(UTC))])

    assert touch.occurrence == date(2027, 1, 5)
    assert touch.due_at == datetime(2027, 1, 7, 10, 0, tzinfo=NEW_YORK).astimezone(UTC)


def test_an_early_morning_purchase_east_of_utc_belongs_to_its_local_day() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    purchased = datetime(2027, 1, 6, 0, 30, tzinfo=tokyo)
    assert purchased.astimezone(UTC).date() == date(2027, 1, 5)

    (touch,) = _plan([_fact(purchased.astimezone(UTC), timezone="Asia/Tokyo")])

    assert touch.occurrence == date(2027, 1, 6)


def test_only_touches_due_within_since_until_inclusive_are_yielded() -> None:
    fact = _fact(datetime(2027, 1, 5, 15, 0, tzinfo=NEW_YORK))
    due = datetime(2027, 1, 7, 10, 0, tzinfo=NEW_YORK).astimezone(UTC)
    tick = timedelta(microseconds=1)

    assert len(_plan([fact], since=due, until=due)) == 1
    assert _plan([fact], since=due + tick, until=UNTIL) == []
    assert _plan([fact], since=SINCE, until=due - tick) == []


def test_a_touch_past_its_lateness_is_skipped_too_late() -> None:
    fact = _fact(datetime(2027, 1, 5, 15, 0, tzinfo=NEW_YORK))
    due = datetime(2027, 1, 7, 10, 0, tzinfo=NEW_YORK).astimezone(UTC)
    not_after = due + THANK_YOU.lateness

    (late,) = _plan([fact], now=not_after + timedelta(microseconds=1))
    (last_chance,) = _plan([fact], now=not_after)

    assert late.status is TouchStatus.SKIPPED
    assert late.reason == planner.TOO_LATE
    assert late.due_at == due
    assert late.not_after == not_after
    assert last_chance.status is TouchStatus.PLANNED
    assert last_chance.reason is None


ZONES_FOR_FACTS = st.sampled_from(
    [
        "UTC",
        "America/New_York",
        "Europe/Paris",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "Pacific/Kiritimati",
        "Etc/GMT+12",
        "Pacific/Apia",
    ]
)
STATUSES = st.sampled_from([s.value for s in PurchaseStatus])
INSTANTS = st.datetimes(
    min_value=datetime(2026, 12, 25), max_value=datetime(2027, 1, 10), timezones=st.just(UTC)
)


@st.composite
def purchase_facts(draw: st.DrawFn) -> list[PurchaseFact]:
    """Purchases by a few clients, each client in one zone, bunched over a fortnight."""
    zones = draw(st.lists(ZONES_FOR_FACTS, min_size=1, max_size=4))
    rows = draw(
        st.lists(
            st.tuples(st.integers(0, len(zones) - 1), INSTANTS, STATUSES),
            max_size=30,
        )
    )
    return [
        PurchaseFact(n, client + 1, at, zones[client], status)
        for n, (client, at, status) in enumerate(rows, start=1)
    ]


@given(
    facts=purchase_facts(),
    delay_days=st.integers(0, 5),
    send_time=st.times(),
    since=INSTANTS,
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
    now=INSTANTS,
)
def test_the_planned_keys_are_unique_and_cover_every_paid_day(
    facts: list[PurchaseFact],
    delay_days: int,
    send_time: time,
    since: datetime,
    length: timedelta,
    now: datetime,
) -> None:
    campaign = AfterPurchase("thank_you", "thank_you", delay_days, send_time, timedelta(hours=6))
    until = since + length

    touches = _plan(facts, campaign=campaign, since=since, until=until, now=now)

    keys = [(t.client_id, t.campaign, t.occurrence) for t in touches]
    assert len(keys) == len(set(keys))
    expected = set()
    for fact in facts:
        occurrence, due = planner.after_purchase_due(campaign, fact)
        if fact.status == "paid" and since <= due <= until:
            expected.add((fact.client_id, "thank_you", occurrence))
    assert set(keys) == expected
    by_id = {f.purchase_id: f for f in facts}
    for touch in touches:
        assert touch.purchase_id is not None
        source = by_id[touch.purchase_id]
        assert source.status == "paid"
        assert source.client_id == touch.client_id
        assert since <= touch.due_at <= until
        assert (touch.status is TouchStatus.SKIPPED) == (touch.not_after < now)


# ----------------------------------------------------------------------------- purchase_window

WINDOW_ZONES = st.sampled_from(ALL_ZONES)
PURCHASES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
)
MARGINS = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=5))


def _due(
    zone_name: str, delay_days: int, send_time: time, purchased_at: datetime
) -> tuple[AfterPurchase, datetime]:
    campaign = AfterPurchase("thank_you", "thank_you", delay_days, send_time, timedelta(0))
    _, due = planner.after_purchase_due(campaign, _fact(purchased_at, timezone=zone_name))
    return campaign, due


@given(
    zone_name=WINDOW_ZONES,
    delay_days=st.integers(0, 400),
    send_time=st.times(),
    purchased_at=PURCHASES,
    before=MARGINS,
    after=MARGINS,
)
@example(
    # 23:30 EST on Saturday 2027-03-13; due at 00:00 EDT on 2027-03-15 (04:00 UTC), the
    # clocks having sprung forward in between: only 23.5 h of real time after the purchase.
    zone_name="America/New_York",
    delay_days=2,
    send_time=time(0, 0),
    purchased_at=datetime(2027, 3, 14, 4, 30, tzinfo=UTC),
    before=timedelta(hours=1),
    after=timedelta(0),
)
def test_purchase_window_contains_every_purchase_due_in_the_range(
    zone_name: str,
    delay_days: int,
    send_time: time,
    purchased_at: datetime,
    before: timedelta,
    after: timedelta,
) -> None:
    campaign, due = _due(zone_name, delay_days, send_time, purchased_at)
    since, until = due - before, due + after

    start, end = planner.purchase_window(campaign, since, until)

    assert start <= purchased_at <= end


# ----------------------------------------------------------------------------- message_id


def test_message_id_is_deterministic_for_a_key() -> None:
    first = planner.message_id(7, "thank_you", date(2027, 1, 5), "example.com")
    again = planner.message_id(7, "thank_you", date(2027, 1, 5), "example.com")
    assert first == again


def test_message_id_looks_like_hex_at_the_domain() -> None:
    mid = planner.message_id(7, "thank_you", date(2027, 1, 5), "shop.example.org")
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
    base = planner.message_id(7, "thank_you", date(2027, 1, 5), "example.com")
    assert planner.message_id(*other, "example.com") != base


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
    assert planner.message_id(*a, "example.com") != planner.message_id(*b, "example.com")
