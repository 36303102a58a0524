"""Client care: tiers, exclusions and audience rules (pure), and their effect on planning
(tests/integration/test_care.py erases clients in a real database)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.config.calendars import read_calendars
from followup.domain import care, planner
from followup.domain.care import TierRules
from followup.domain.clients import ClientFacts, ClientStats
from followup.domain.planner import Politeness
from followup.domain.statuses import TouchStatus
from followup.errors import ConfigError

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
RULES = TierRules(
    vip_min_total_minor=2_000_000,
    vip_min_purchases=4,
    new_within=timedelta(days=90),
    lapsed_after=timedelta(days=730),
)


def stats(
    purchases: int = 2,
    total: int = 500_000,
    first_days: int = 400,
    last_days: int = 30,
    **flags: bool,
) -> ClientStats:
    return ClientStats(
        purchases=purchases,
        spent=(("EUR", total),),
        first_purchase=NOW - timedelta(days=first_days),
        last_purchase=NOW - timedelta(days=last_days),
        **flags,
    )


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (stats(), "regular"),
        (stats(total=2_000_000), "vip"),
        (stats(purchases=4), "vip"),
        (stats(first_days=30, last_days=30), "new"),
        (stats(total=9_000_000, last_days=731), "lapsed"),
        (ClientStats(), "new"),
    ],
)
def test_tiers_follow_recency_frequency_and_money(facts: ClientStats, expected: str) -> None:
    assert care.tier(facts, NOW, RULES) == expected


def test_a_tier_given_in_the_clients_data_wins() -> None:
    assert care.tier(stats(total=9_000_000), NOW, RULES, assigned="friend") == "friend"


@given(
    purchases=st.integers(0, 50),
    total=st.integers(0, 10**9),
    first=st.integers(0, 5000),
    gap=st.integers(0, 5000),
)
def test_every_client_has_exactly_one_known_tier(
    purchases: int, total: int, first: int, gap: int
) -> None:
    facts = stats(purchases, total, first_days=first + gap, last_days=first)
    assert care.tier(facts, NOW, RULES) in ("vip", "regular", "new", "lapsed")


@pytest.mark.parametrize(
    ("status", "flags", "exclude", "reason"),
    [
        ("active", {}, care.EXCLUSIONS, None),
        ("active", {"has_unpaid": True}, care.EXCLUSIONS, "excluded: unpaid purchase"),
        ("active", {"has_disputed": True}, care.EXCLUSIONS, "excluded: disputed purchase"),
        ("active", {"has_unpaid": True}, ("disputed",), None),
        ("do-not-contact", {}, (), "excluded: client is do-not-contact"),
        ("unsubscribed", {}, care.EXCLUSIONS, "excluded: client is unsubscribed"),
    ],
)
def test_exclusions_say_why(
    status: str, flags: dict[str, bool], exclude: tuple[str, ...], reason: str | None
) -> None:
    assert care.exclusion(status, stats(**flags), exclude) == reason


def test_audience_rules_are_sandboxed_expressions_over_client_facts() -> None:
    vip = dict(care.SAMPLE_CLIENT)
    assert care.in_audience('client.tier == "vip" and not client.has_unpaid', vip)
    assert not care.in_audience('client.tier == "vip" and client.purchases > 10', vip)
    assert care.in_audience("", vip)
    assert care.in_audience('"newsletter" in client.tags', vip)


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("client.tier ==", "audience 'client.tier ==': unexpected 'end of template'"),
        ("client.shoe_size > 3", "'dict object' has no attribute 'shoe_size'"),
        ("client.__class__", "unsafe"),
        ("client.tier.__class__.__mro__", "unsafe"),
        ("client.items().__iter__", "unsafe"),
        ("lipsum.__globals__", "lipsum"),
    ],
)
def test_a_broken_or_unsafe_rule_is_reported(rule: str, problem: str) -> None:
    message = care.check_rule(rule)
    assert message is not None
    assert problem in message


# ----------------------------------------------------------------------------- planning

CALENDAR = """
[occasions.vip_preview]
kind = "rrule"
dtstart = "2027-01-01"
rrule = "FREQ=YEARLY;BYMONTH=1;BYMONTHDAY=12"
audience = 'client.tier == "vip"'
template = "holiday"

[occasions.new_year]
kind = "rrule"
dtstart = "2027-01-01"
rrule = "FREQ=YEARLY;BYMONTH=1;BYMONTHDAY=20"
template = "new_year"

[occasions.thank_you]
kind = "after_purchase"
after = "2 days"
exclude = []
capped = false
"""


def _client(tier: str, **flags: bool) -> ClientFacts:
    facts = stats(**flags)
    return ClientFacts(
        1,
        "Europe/Paris",
        "FR",
        "fr",
        stats=facts,
        context=care.client_context(facts, tier, lambda at: at.date(), RULES),
    )


def test_audiences_and_exclusions_shape_the_plan(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(CALENDAR, encoding="utf-8")
    calendar = read_calendars(tmp_path, NOW.date())

    def plan(client: ClientFacts) -> list[tuple[str, str, str | None]]:
        touches = planner.plan_client(
            calendar.enabled,
            client,
            (),
            since=NOW,
            until=NOW + timedelta(days=20),
            now=NOW,
            politeness=Politeness(quiet=None),
        )
        return [(t.campaign, t.status.value, t.reason) for t in touches]

    assert plan(_client("vip")) == [
        ("vip_preview", "planned", None),
        ("new_year", "planned", None),
    ]
    # Outside the audience: no touch at all, nothing to record.
    assert plan(_client("regular")) == [("new_year", "planned", None)]
    # An excluded client: each occasion recorded as skipped with the reason.
    assert plan(_client("vip", has_unpaid=True)) == [
        ("vip_preview", TouchStatus.SKIPPED.value, "excluded: unpaid purchase"),
        ("new_year", TouchStatus.SKIPPED.value, "excluded: unpaid purchase"),
    ]


def test_a_campaign_can_waive_the_built_in_exclusions(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(CALENDAR, encoding="utf-8")
    calendar = read_calendars(tmp_path, NOW.date())
    assert calendar["thank_you"].exclude == ()
    assert calendar["new_year"].exclude == care.EXCLUSIONS


def test_a_bad_audience_rule_names_file_line_and_occasion(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        '[occasions.vip_day]\nkind = "rrule"\ndtstart = "2027-01-01"\nrrule = "FREQ=YEARLY"\n'
        'audience = "client.tier = 1"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        read_calendars(tmp_path, date(2027, 1, 1))
    assert str(caught.value).startswith(f"{tmp_path / 'c.toml'}:5: [occasions.vip_day] audience:")


@pytest.mark.parametrize("rule", ["client.purchases ** 99999999", "client.tags * 1000000000"])
def test_a_rule_cannot_build_huge_values(rule: str) -> None:
    message = care.check_rule(rule)
    assert message is not None
    assert "audience rule" in message


def test_a_send_time_inside_the_quiet_hours_stops_start_up(tmp_path: Path) -> None:
    from followup.config.calendars import load_calendar
    from tests.support.settings import make_settings

    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'x.db'}", politeness={"quiet_hours": "09:30-12:00"}
    )
    with pytest.raises(ConfigError, match=r"send_time 10:00 is inside \[politeness\] quiet_hours"):
        load_calendar(settings)
