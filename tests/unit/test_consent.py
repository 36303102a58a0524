"""Consent by purpose (followup.domain.consent), as the planner and the send-time decision apply
it, and the consent cells of an import file (followup.importing.records). Pure: no database."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import given
from hypothesis import strategies as st

from followup.config import calendars
from followup.domain import consent, planner
from followup.domain.care import TierRules
from followup.domain.clients import ClientFacts, ClientStats, PurchaseFact, Recipient
from followup.domain.consent import NO_CONSENT, ConsentRule, Mode, Purpose
from followup.domain.decision import Rules, Send, Skip, decide
from followup.domain.occasions import Calendar, Campaign
from followup.domain.planner import Politeness
from followup.domain.statuses import Consent, TouchStatus
from followup.domain.touches import DueTouch
from followup.errors import ConfigError
from followup.importing.fields import FieldError, parse_consent
from followup.importing.records import consent_cells, settle_consent
from tests.support.settings import ROOT

STATES = [c.value for c in Consent]
RULES = st.builds(ConsentRule, st.sampled_from(list(Mode)), st.integers(0, 120))
INSTANTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
PURCHASES = st.none() | INSTANTS


# ----------------------------------------------------------------------------- the rule


@given(
    purpose=st.sampled_from(list(Purpose)),
    state=st.sampled_from(STATES),
    rule=RULES,
    bought=PURCHASES,
    at=INSTANTS,
)
def test_the_rule_over_states_purposes_settings_and_dates(
    purpose: Purpose, state: str, rule: ConsentRule, bought: datetime | None, at: datetime
) -> None:
    refused = consent.refusal(purpose, state, bought, rule, at)
    assert refused in (None, NO_CONSENT)
    if purpose is Purpose.SERVICE:
        assert refused is None, "a service message is never stopped by consent"
    elif state == "no":
        assert refused == NO_CONSENT
    elif state == "yes" or rule.mode is Mode.SOFT_OPT_IN:
        assert refused is None
    elif bought is None or rule.implied_months == 0:
        assert refused == NO_CONSENT, "opt-in: nothing implies consent"
    else:
        ends = bought + relativedelta(months=rule.implied_months)
        assert (refused is None) == (at < ends)


@given(state=st.sampled_from(STATES), rule=RULES, bought=PURCHASES, at=INSTANTS)
def test_consent_once_lapsed_stays_lapsed_as_time_goes_on(
    state: str, rule: ConsentRule, bought: datetime | None, at: datetime
) -> None:
    """Without a new purchase or a new answer, time only takes consent away."""
    if not consent.marketing_allowed(state, bought, rule, at):
        for later in (timedelta(seconds=1), timedelta(days=1), timedelta(days=3650)):
            assert not consent.marketing_allowed(state, bought, rule, at + later)


def test_opt_in_implies_consent_up_to_the_period_end_and_not_at_it() -> None:
    rule = ConsentRule(Mode.OPT_IN, 24)
    bought = datetime(2025, 1, 31, 15, tzinfo=UTC)
    ends = datetime(2027, 1, 31, 15, tzinfo=UTC)
    assert consent.marketing_allowed("unknown", bought, rule, ends - timedelta(seconds=1))
    assert not consent.marketing_allowed("unknown", bought, rule, ends)
    assert consent.marketing_allowed("yes", bought, rule, ends + timedelta(days=9999))
    assert not consent.marketing_allowed("no", bought, rule, bought)
    assert not consent.marketing_allowed("unknown", None, rule, bought)
    assert consent.marketing_allowed("unknown", None, ConsentRule(), bought), "soft opt-in"


def test_after_purchase_occasions_are_service_and_the_others_marketing_by_default() -> None:
    for kind in ("after_purchase", "yearly", "holiday", "rrule", "ics"):
        made = Campaign(name="x", kind=kind, template="x", title="X")
        expected = Purpose.SERVICE if kind == "after_purchase" else Purpose.MARKETING
        assert made.effective_purpose is expected
        given_purpose = dataclasses.replace(made, purpose=Purpose.SERVICE)
        assert given_purpose.effective_purpose is Purpose.SERVICE


# ----------------------------------------------------------------------------- calendars


def test_the_shipped_calendar_names_every_occasions_purpose() -> None:
    calendar = calendars.read_calendars(ROOT / "calendars", date(2027, 1, 1))
    purposes = {c.name: c.purpose for c in calendar.campaigns}
    assert None not in purposes.values(), purposes
    assert {n for n, p in purposes.items() if p is Purpose.SERVICE} == {
        "thank_you",
        "satisfaction_survey",
        "service_reminder",
    }


def test_a_calendar_purpose_overrides_the_kind_and_a_bad_one_names_file_line_and_key(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.toml").write_text(
        '[occasions.loyalty]\nkind = "yearly"\ndate = "first_purchase"\npurpose = "service"\n'
        '[occasions.promo]\nkind = "after_purchase"\nafter = "1 day"\n',
        encoding="utf-8",
    )
    found = calendars.read_calendars(tmp_path, date(2027, 1, 1))
    assert found.get("loyalty").effective_purpose is Purpose.SERVICE  # type: ignore[union-attr]
    assert found.get("promo").effective_purpose is Purpose.SERVICE  # type: ignore[union-attr]
    overridden = calendars.read_calendars(
        tmp_path, date(2027, 1, 1), {"promo": {"purpose": "marketing"}}
    )
    assert overridden.get("promo").effective_purpose is Purpose.MARKETING  # type: ignore[union-attr]
    (tmp_path / "a.toml").write_text(
        '[occasions.promo]\nkind = "holiday"\nholidays = "*"\npurpose = "sales"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as error:
        calendars.read_calendars(tmp_path, date(2027, 1, 1))
    assert str(error.value) == (
        f"{tmp_path / 'a.toml'}:4: [occasions.promo] purpose: "
        "expected service or marketing, got 'sales'"
    )


# ----------------------------------------------------------------------------- the planner

NOW = datetime(2027, 1, 1, 6, tzinfo=UTC)
THANK_YOU = Campaign(
    name="thank_you",
    kind="after_purchase",
    template="thank_you",
    title="Thank you",
    after=relativedelta(days=2),
    capped=False,
)
BIRTHDAY = Campaign(name="birthday", kind="yearly", template="birthday", title="Happy birthday")
#: A planned touch's status and reason, by campaign.
Planned = tuple[TouchStatus, str | None]


def _client(state: str, bought: datetime) -> ClientFacts:
    stats = ClientStats(1, (("EUR", 100),), bought, bought)
    return ClientFacts(
        client_id=7,
        timezone="America/New_York",
        country="US",
        locale="en-US",
        birthday=(1, 1, 1980),
        purchases=(PurchaseFact(1, bought, "paid"),),
        stats=stats,
        consent=state,
    )


def _plan(client: ClientFacts, rule: ConsentRule = consent.DEFAULT_RULE) -> dict[str, Planned]:
    found = planner.plan_client(
        [THANK_YOU, BIRTHDAY],
        client,
        [],
        since=NOW - timedelta(days=1),
        until=NOW + timedelta(days=2),
        now=NOW,
        politeness=Politeness(),
        consent=rule,
    )
    return {t.campaign: (t.status, t.reason) for t in found}


BOUGHT = datetime(2026, 12, 30, 17, tzinfo=UTC)


def test_a_no_clients_birthday_is_skipped_no_marketing_consent_and_its_thank_you_planned() -> None:
    assert _plan(_client("no", BOUGHT)) == {
        "thank_you": (TouchStatus.PLANNED, None),
        "birthday": (TouchStatus.SKIPPED, NO_CONSENT),
    }
    for state in ("yes", "unknown"):
        assert _plan(_client(state, BOUGHT))["birthday"] == (TouchStatus.PLANNED, None)


def test_under_opt_in_the_planner_reads_the_implied_period_at_the_occasions_due_time() -> None:
    rule = ConsentRule(Mode.OPT_IN, 24)
    # The birthday is due on 1 January 2027 at 10:00 in New York: 15:00 UTC.
    due = datetime(2027, 1, 1, 15, tzinfo=UTC)
    lapsed = _client("unknown", due - relativedelta(months=24))
    implied = _client("unknown", due - relativedelta(months=24) + timedelta(seconds=1))
    assert _plan(lapsed, rule)["birthday"] == (TouchStatus.SKIPPED, NO_CONSENT)
    assert _plan(implied, rule)["birthday"] == (TouchStatus.PLANNED, None)
    assert _plan(_client("yes", due - relativedelta(years=9)), rule)["birthday"][1] is None


# ----------------------------------------------------------------------------- the decision


def _decide(state: str, campaign: Campaign, rule: ConsentRule = consent.DEFAULT_RULE) -> object:
    at = datetime(2027, 1, 1, 15, tzinfo=UTC)
    touch = DueTouch(
        id=1,
        client_id=7,
        campaign=campaign.name,
        occurrence=date(2027, 1, 1),
        template=campaign.template,
        occasion=None,
        due_at=at,
        purchase_id=None,
        attempts=1,
        not_after=at + timedelta(hours=12),
        variant=None,
    )
    recipient = Recipient(
        7, "c7", "ann@example.com", "Ann", "Lee", "en-US", "America/New_York", "US", "", "",
        "active", None, None, None, None, None, None, None, None, None, None,
        marketing_consent=state,
    )  # fmt: skip
    rules = Rules(Calendar((THANK_YOU, BIRTHDAY)), Politeness(), TierRules(), rule)
    stats = ClientStats(1, (("EUR", 100),), BOUGHT, BOUGHT)
    return decide(
        touch, recipient, suppression=None, stats=stats, sent=[], designs=(), rules=rules, now=at
    )


def test_consent_withdrawn_after_planning_stops_a_marketing_touch_at_send_time() -> None:
    assert _decide("no", BIRTHDAY) == Skip(NO_CONSENT)
    assert isinstance(_decide("yes", BIRTHDAY), Send)
    assert isinstance(_decide("unknown", BIRTHDAY), Send)
    assert isinstance(_decide("no", THANK_YOU), Send), "a thank-you is service"
    opt_in = ConsentRule(Mode.OPT_IN, 0)
    assert _decide("unknown", BIRTHDAY, opt_in) == Skip(NO_CONSENT)
    assert isinstance(_decide("unknown", THANK_YOU, opt_in), Send)


# ----------------------------------------------------------------------------- import cells

WORDS = {"yes": "yes", "Y": "yes", "TRUE": "yes", "1": "yes", "no": "no", " n ": "no"}
WORDS |= {"False": "no", "0": "no", "Unknown": "unknown"}


@pytest.mark.parametrize(("cell", "state"), sorted(WORDS.items()))
def test_consent_words(cell: str, state: str) -> None:
    assert parse_consent(cell) == state


@given(st.text(max_size=12))
def test_any_consent_cell_is_a_state_or_an_error_naming_the_column(cell: str) -> None:
    try:
        state = parse_consent(cell)
    except FieldError as exc:
        assert exc.column == "marketing_consent"
        assert cell.strip().lower() not in {word.strip().lower() for word in WORDS}
    else:
        assert state in STATES


def test_consent_cells_read_the_date_in_the_clients_zone_and_refuse_a_date_alone() -> None:
    row = {"marketing_consent": "yes", "consent_at": "2026-03-01", "consent_source": "web form"}
    assert consent_cells(row, "Europe/Paris") == (
        "yes",
        "web form",
        datetime(2026, 2, 28, 23, tzinfo=UTC),
    )
    assert consent_cells({"marketing_consent": " "}, "UTC") == (None, None, None)
    with pytest.raises(FieldError) as error:
        consent_cells({"marketing_consent": "", "consent_at": "2026-03-01"}, "UTC")
    assert (error.value.column, error.value.reason) == (
        "consent_at",
        "is given without a marketing_consent value",
    )


STORED = st.none() | st.tuples(
    st.sampled_from(STATES), st.none() | st.text(max_size=8), st.none() | INSTANTS
)
GIVEN = st.tuples(
    st.none() | st.sampled_from(STATES),
    st.none() | st.text(min_size=1, max_size=8),
    st.none() | INSTANTS,
)


@given(given_=GIVEN, stored=STORED, now=INSTANTS)
def test_settling_an_imports_consent(
    given_: tuple[str | None, str | None, datetime | None],
    stored: tuple[str, str | None, datetime | None] | None,
    now: datetime,
) -> None:
    settled = settle_consent(given_, stored, "import:clients.csv", now)
    wanted, given_source, given_at = given_
    if wanted is None:
        assert settled == (stored or ("unknown", None, None)), "a blank keeps it"
    elif stored is not None and stored[0] == wanted:
        # The same answer again (tonight's import of the same file) changes nothing.
        assert settled == stored
    elif (
        stored is not None
        and stored[0] == "no"
        and (given_at is None or (stored[2] is not None and given_at <= stored[2]))
    ):
        assert settled == stored, "a 'no' is lifted only by a consent dated after it"
    else:
        assert settled == (wanted, given_source or "import:clients.csv", given_at or now)


def test_a_nightly_export_that_still_says_yes_never_undoes_a_no() -> None:
    said_no = datetime(2026, 12, 6, 9, tzinfo=UTC)
    stored = ("no", "unsubscribe", said_no)
    tonight = datetime(2026, 12, 7, 2, tzinfo=UTC)
    assert settle_consent(("yes", "shopify", None), stored, "import:c.csv", tonight) == stored
    older = ("yes", "shopify", said_no - timedelta(days=30))
    assert settle_consent(older, stored, "import:c.csv", tonight) == stored
    # The client said yes again, after: a file that dates it lifts the "no".
    later = said_no + timedelta(hours=5)
    assert settle_consent(("yes", "form", later), stored, "import:c.csv", tonight) == (
        "yes",
        "form",
        later,
    )
    # A file's "no" always applies.
    assert settle_consent(("no", None, None), ("yes", "form", later), "import:c.csv", tonight) == (
        "no",
        "import:c.csv",
        tonight,
    )
