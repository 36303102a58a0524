"""Calendars of occasions: the file format, its errors, and the dates each kind yields."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from followup.config import values
from followup.config.calendars import read_calendars
from followup.domain import occasions
from followup.domain.clients import ClientFacts, PurchaseFact
from followup.domain.occasions import occurrences
from followup.errors import ConfigError
from tests.support.settings import ROOT

TODAY = date(2026, 11, 23)


def _calendar(tmp_path: Path, text: str, **files: str) -> occasions.Calendar:
    (tmp_path / "cal.toml").write_text(text, encoding="utf-8")
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    return read_calendars(tmp_path, TODAY)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _calendar(tmp_path, text)
    return str(caught.value)


def _client(
    country: str = "US",
    locale: str = "en-US",
    timezone: str = "America/New_York",
    **extra: object,
) -> ClientFacts:
    return ClientFacts(1, timezone, country, locale, **extra)  # type: ignore[arg-type]


def _days(campaign: occasions.Campaign, client: ClientFacts, first: date, last: date) -> list[date]:
    return [o.day for o in occurrences(campaign, client, first, last)]


# ----------------------------------------------------------------------------- the shipped year


def test_the_shipped_calendar_is_the_salesmans_year() -> None:
    calendar = read_calendars(ROOT / "calendars", TODAY)
    names = {c.name for c in calendar.campaigns}
    assert {
        "thank_you",
        "satisfaction_survey",
        "service_reminder",
        "birthday",
        "purchase_anniversary",
        "new_year",
        "valentines_day",
        "washingtons_birthday",
        "st_patricks_day",
        "mothers_day",
        "national_day",
        "thanksgiving",
        "christmas",
    } <= names
    thank_you = calendar["thank_you"]
    assert (thank_you.kind, thank_you.capped, thank_you.template) == (
        "after_purchase",
        False,
        "thank_you",
    )
    assert date(2027, 1, 1) + calendar["service_reminder"].after == date(2027, 7, 1)
    us = _client()
    first, last = date(2027, 1, 1), date(2027, 12, 31)
    assert _days(calendar["washingtons_birthday"], us, first, last) == [date(2027, 2, 15)]
    assert _days(calendar["st_patricks_day"], us, first, last) == [date(2027, 3, 17)]
    assert _days(calendar["mothers_day"], us, first, last) == [date(2027, 5, 9)]
    assert _days(calendar["national_day"], us, first, last) == [date(2027, 7, 4)]
    assert _days(calendar["thanksgiving"], us, first, last) == [date(2027, 11, 25)]
    assert _days(calendar["christmas"], us, first, last) == [date(2027, 12, 25)]
    france = _client("FR", "fr", "Europe/Paris")
    assert _days(calendar["washingtons_birthday"], france, first, last) == []
    assert _days(calendar["fete_des_meres"], france, first, last) == [date(2027, 5, 30)]
    assert _days(calendar["national_day"], france, first, last) == [date(2027, 7, 14)]


def test_a_french_client_gets_the_holidays_french_name() -> None:
    calendar = read_calendars(ROOT / "calendars", TODAY)
    france = _client("FR", "fr", "Europe/Paris")
    (new_year,) = occurrences(calendar["new_year"], france, date(2027, 1, 1), date(2027, 1, 1))
    assert new_year.name == "Jour de l'an"
    (national,) = occurrences(calendar["national_day"], france, date(2027, 7, 1), date(2027, 7, 31))
    assert national.name == "Fête nationale"
    quebec = _client("CA", "fr-CA", "America/Montreal")
    (canada,) = occurrences(calendar["national_day"], quebec, date(2027, 7, 1), date(2027, 7, 1))
    assert canada.name == "Fête du Canada"
    us = _client()
    (again,) = occurrences(calendar["new_year"], us, date(2027, 1, 1), date(2027, 1, 1))
    assert again.name == "New Year's Day"
    # An rrule occasion takes its name from the calendar's names table, by language.
    (valentine,) = occurrences(
        calendar["valentines_day"], france, date(2027, 2, 14), date(2027, 2, 14)
    )
    assert valentine.name == "la Saint-Valentin"


# ----------------------------------------------------------------------------- yearly


def test_born_on_29_february_is_greeted_on_28_february_in_common_years(tmp_path: Path) -> None:
    calendar = _calendar(
        tmp_path,
        '[occasions.birthday]\nkind = "yearly"\ndate = "birthday"\n',
    )
    leap = _client(birthday=(2, 29, 2000))
    days = _days(calendar["birthday"], leap, date(2026, 1, 1), date(2029, 12, 31))
    assert days == [date(2026, 2, 28), date(2027, 2, 28), date(2028, 2, 29), date(2029, 2, 28)]
    (age,) = occurrences(calendar["birthday"], leap, date(2027, 2, 1), date(2027, 3, 1))
    assert age.years == 27


def test_the_29_february_rule_can_choose_1_march(tmp_path: Path) -> None:
    calendar = _calendar(
        tmp_path,
        '[occasions.birthday]\nkind = "yearly"\ndate = "birthday"\nfeb29 = "mar1"\n',
    )
    leap = _client(birthday=(2, 29, None))
    days = _days(calendar["birthday"], leap, date(2027, 1, 1), date(2028, 12, 31))
    assert days == [date(2027, 3, 1), date(2028, 2, 29)]


def test_the_purchase_anniversary_starts_a_year_after_the_first_purchase(tmp_path: Path) -> None:
    calendar = _calendar(
        tmp_path,
        '[occasions.anniversary]\nkind = "yearly"\ndate = "first_purchase"\n',
    )
    client = _client(first_purchase=date(2025, 6, 3))
    found = list(occurrences(calendar["anniversary"], client, date(2025, 1, 1), date(2027, 12, 31)))
    assert [(o.day, o.years) for o in found] == [(date(2026, 6, 3), 1), (date(2027, 6, 3), 2)]


@given(
    year=st.integers(1901, 2199),
    month=st.integers(1, 12),
    day=st.integers(1, 31),
    rule=st.sampled_from(["feb28", "mar1"]),
)
def test_a_yearly_date_exists_every_year_and_is_the_date_itself_when_it_can_be(
    year: int, month: int, day: int, rule: str
) -> None:
    try:
        date(2000, month, day)  # a date that exists in a leap year
    except ValueError:
        return
    when = occasions.yearly_date(year, month, day, rule)
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if (month, day) != (2, 29) or leap:
        assert (when.month, when.day) == (month, day)
    else:
        assert (when.month, when.day) == ((2, 28) if rule == "feb28" else (3, 1))
    assert when.year == year


@given(
    birthday=st.dates(date(2000, 1, 1), date(2000, 12, 31)),
    born=st.none() | st.integers(1990, 2030),
    first=st.dates(date(2024, 1, 1), date(2030, 12, 31)),
    length=st.integers(0, 800),
    rule=st.sampled_from(["feb28", "mar1"]),
)
@example(birthday=date(2000, 2, 29), born=None, first=date(2027, 2, 27), length=3, rule="feb28")
@example(birthday=date(2000, 2, 29), born=None, first=date(2027, 2, 27), length=3, rule="mar1")
def test_yearly_occurrences_are_the_clients_dates_of_each_year_in_the_window(
    birthday: date, born: int | None, first: date, length: int, rule: str
) -> None:
    campaign = occasions.Campaign("birthday", "yearly", "birthday", "Birthday", feb29=rule)  # type: ignore[arg-type]
    month, day = birthday.month, birthday.day
    last = first + timedelta(days=length)
    expected = [
        when
        for year in range(first.year, last.year + 1)
        if first <= (when := occasions.yearly_date(year, month, day, rule)) <= last
        and (born is None or year > born)
    ]
    assert _days(campaign, _client(birthday=(month, day, born)), first, last) == expected


# ----------------------------------------------------------------------------- after purchase


def test_after_purchase_by_months_and_for_some_products(tmp_path: Path) -> None:
    calendar = _calendar(
        tmp_path,
        '[occasions.service]\nkind = "after_purchase"\nafter = "6 months"\n'
        'products = ["Roadster"]\n',
    )
    bought = datetime(2026, 8, 31, 15, 0, tzinfo=UTC)
    client = _client(
        purchases=(
            PurchaseFact(1, bought, "paid", "roadster"),
            PurchaseFact(2, bought + timedelta(days=1), "paid", "Floor mats"),
            PurchaseFact(3, bought + timedelta(days=2), "unpaid", "Roadster"),
        )
    )
    found = list(occurrences(calendar["service"], client, date(2027, 1, 1), date(2027, 12, 31)))
    # 31 August + 6 months is the last day of February.
    assert [(o.occurrence, o.day, o.purchase_id) for o in found] == [
        (date(2026, 8, 31), date(2027, 2, 28), 1)
    ]


# ----------------------------------------------------------------------------- RFC 5545 3.8.5.3

#: The examples of RFC 5545 section 3.8.5.3 ("Recurrence Rule"), DTSTART 1997-09-02 09:00
#: America/New_York unless the example says otherwise, with the dates the RFC lists.
RFC_EXAMPLES: list[tuple[str, str, str, list[str], list[date]]] = [
    (
        "Daily for 10 occurrences",
        "1997-09-02T09:00",
        "FREQ=DAILY;COUNT=10",
        [],
        [date(1997, 9, d) for d in range(2, 12)],
    ),
    (
        "Daily until December 24, 1997 (first and last of 113)",
        "1997-09-02T09:00",
        "FREQ=DAILY;UNTIL=19971224T000000Z",
        [],
        [date(1997, 9, 2) + timedelta(days=n) for n in range(113)],
    ),
    (
        "Every 10 days, 5 occurrences",
        "1997-09-02T09:00",
        "FREQ=DAILY;INTERVAL=10;COUNT=5",
        [],
        [
            date(1997, 9, 2),
            date(1997, 9, 12),
            date(1997, 9, 22),
            date(1997, 10, 2),
            date(1997, 10, 12),
        ],
    ),
    (
        "Every day in January, for 3 years",
        "1998-01-01T09:00",
        "FREQ=YEARLY;UNTIL=20000131T140000Z;BYMONTH=1;BYDAY=SU,MO,TU,WE,TH,FR,SA",
        [],
        [date(y, 1, d) for y in (1998, 1999, 2000) for d in range(1, 32)],
    ),
    (
        "Weekly for 10 occurrences",
        "1997-09-02T09:00",
        "FREQ=WEEKLY;COUNT=10",
        [],
        [date(1997, 9, 2) + timedelta(weeks=n) for n in range(10)],
    ),
    (
        "Weekly on Tuesday and Thursday for five weeks",
        "1997-09-02T09:00",
        "FREQ=WEEKLY;UNTIL=19971007T000000Z;WKST=SU;BYDAY=TU,TH",
        [],
        [date(1997, 9, d) for d in (2, 4, 9, 11, 16, 18, 23, 25, 30)] + [date(1997, 10, 2)],
    ),
    (
        "Every other week on Monday, Wednesday, and Friday until December 24, 1997",
        "1997-09-01T09:00",
        "FREQ=WEEKLY;INTERVAL=2;UNTIL=19971224T000000Z;WKST=SU;BYDAY=MO,WE,FR",
        [],
        [date(1997, 9, d) for d in (1, 3, 5, 15, 17, 19, 29)]
        + [date(1997, 10, d) for d in (1, 3, 13, 15, 17, 27, 29, 31)]
        + [date(1997, 11, d) for d in (10, 12, 14, 24, 26, 28)]
        + [date(1997, 12, d) for d in (8, 10, 12, 22)],
    ),
    (
        "Every other week on Tuesday and Thursday, for 8 occurrences",
        "1997-09-02T09:00",
        "FREQ=WEEKLY;INTERVAL=2;COUNT=8;WKST=SU;BYDAY=TU,TH",
        [],
        [date(1997, 9, d) for d in (2, 4, 16, 18, 30)] + [date(1997, 10, d) for d in (2, 14, 16)],
    ),
    (
        "Monthly on the first Friday for 10 occurrences",
        "1997-09-05T09:00",
        "FREQ=MONTHLY;COUNT=10;BYDAY=1FR",
        [],
        [
            date(1997, 9, 5),
            date(1997, 10, 3),
            date(1997, 11, 7),
            date(1997, 12, 5),
            date(1998, 1, 2),
            date(1998, 2, 6),
            date(1998, 3, 6),
            date(1998, 4, 3),
            date(1998, 5, 1),
            date(1998, 6, 5),
        ],
    ),
    (
        "Every other month on the first and last Sunday of the month for 10 occurrences",
        "1997-09-07T09:00",
        "FREQ=MONTHLY;INTERVAL=2;COUNT=10;BYDAY=1SU,-1SU",
        [],
        [
            date(1997, 9, 7),
            date(1997, 9, 28),
            date(1997, 11, 2),
            date(1997, 11, 30),
            date(1998, 1, 4),
            date(1998, 1, 25),
            date(1998, 3, 1),
            date(1998, 3, 29),
            date(1998, 5, 3),
            date(1998, 5, 31),
        ],
    ),
    (
        "Monthly on the second-to-last Monday of the month for 6 months",
        "1997-09-22T09:00",
        "FREQ=MONTHLY;COUNT=6;BYDAY=-2MO",
        [],
        [
            date(1997, 9, 22),
            date(1997, 10, 20),
            date(1997, 11, 17),
            date(1997, 12, 22),
            date(1998, 1, 19),
            date(1998, 2, 16),
        ],
    ),
    (
        "Monthly on the first and last day of the month for 10 occurrences",
        "1997-09-30T09:00",
        "FREQ=MONTHLY;COUNT=10;BYMONTHDAY=1,-1",
        [],
        [
            date(1997, 9, 30),
            date(1997, 10, 1),
            date(1997, 10, 31),
            date(1997, 11, 1),
            date(1997, 11, 30),
            date(1997, 12, 1),
            date(1997, 12, 31),
            date(1998, 1, 1),
            date(1998, 1, 31),
            date(1998, 2, 1),
        ],
    ),
    (
        "Every 18 months on the 10th thru 15th of the month for 10 occurrences",
        "1997-09-10T09:00",
        "FREQ=MONTHLY;INTERVAL=18;COUNT=10;BYMONTHDAY=10,11,12,13,14,15",
        [],
        [date(1997, 9, d) for d in range(10, 16)] + [date(1999, 3, d) for d in range(10, 14)],
    ),
    (
        "Yearly in June and July for 10 occurrences",
        "1997-06-10T09:00",
        "FREQ=YEARLY;COUNT=10;BYMONTH=6,7",
        [],
        [date(y, m, 10) for y in range(1997, 2002) for m in (6, 7)],
    ),
    (
        "Every third year on the 1st, 100th, and 200th day for 10 occurrences",
        "1997-01-01T09:00",
        "FREQ=YEARLY;INTERVAL=3;COUNT=10;BYYEARDAY=1,100,200",
        [],
        [
            date(1997, 1, 1),
            date(1997, 4, 10),
            date(1997, 7, 19),
            date(2000, 1, 1),
            date(2000, 4, 9),
            date(2000, 7, 18),
            date(2003, 1, 1),
            date(2003, 4, 10),
            date(2003, 7, 19),
            date(2006, 1, 1),
        ],
    ),
    (
        "Monday of week number 20, forever (first three)",
        "1997-05-12T09:00",
        "FREQ=YEARLY;BYWEEKNO=20;BYDAY=MO",
        [],
        [date(1997, 5, 12), date(1998, 5, 11), date(1999, 5, 17)],
    ),
    (
        "Every Friday the 13th, forever, DTSTART excluded (first five)",
        "1997-09-02T09:00",
        "FREQ=MONTHLY;BYDAY=FR;BYMONTHDAY=13",
        ["1997-09-02T09:00"],
        [
            date(1998, 2, 13),
            date(1998, 3, 13),
            date(1998, 11, 13),
            date(1999, 8, 13),
            date(2000, 10, 13),
        ],
    ),
    (
        "The first Saturday that follows the first Sunday of the month (first ten)",
        "1997-09-13T09:00",
        "FREQ=MONTHLY;BYDAY=SA;BYMONTHDAY=7,8,9,10,11,12,13",
        [],
        [
            date(1997, 9, 13),
            date(1997, 10, 11),
            date(1997, 11, 8),
            date(1997, 12, 13),
            date(1998, 1, 10),
            date(1998, 2, 7),
            date(1998, 3, 7),
            date(1998, 4, 11),
            date(1998, 5, 9),
            date(1998, 6, 13),
        ],
    ),
    (
        "Every 4 years, the first Tuesday after a Monday in November (US election day)",
        "1996-11-05T09:00",
        "FREQ=YEARLY;INTERVAL=4;BYMONTH=11;BYDAY=TU;BYMONTHDAY=2,3,4,5,6,7,8",
        [],
        [date(1996, 11, 5), date(2000, 11, 7), date(2004, 11, 2)],
    ),
    (
        "The third instance of Tuesday, Wednesday or Thursday, for the next 3 months",
        "1997-09-04T09:00",
        "FREQ=MONTHLY;COUNT=3;BYDAY=TU,WE,TH;BYSETPOS=3",
        [],
        [date(1997, 9, 4), date(1997, 10, 7), date(1997, 11, 6)],
    ),
    (
        "The second-to-last weekday of the month (first seven)",
        "1997-09-29T09:00",
        "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-2",
        [],
        [
            date(1997, 9, 29),
            date(1997, 10, 30),
            date(1997, 11, 27),
            date(1997, 12, 30),
            date(1998, 1, 29),
            date(1998, 2, 26),
            date(1998, 3, 30),
        ],
    ),
]


@pytest.mark.parametrize(
    ("title", "dtstart", "rule", "exdates", "expected"),
    RFC_EXAMPLES,
    ids=[example[0] for example in RFC_EXAMPLES],
)
def test_rfc_5545_recurrence_examples_expand_to_the_dates_the_rfc_lists(
    tmp_path: Path, title: str, dtstart: str, rule: str, exdates: list[str], expected: list[date]
) -> None:
    exdate = "".join(f', "{d}"' for d in exdates).lstrip(", ")
    calendar = _calendar(
        tmp_path,
        f'[occasions.example]\nkind = "rrule"\ndtstart = "{dtstart}"\nrrule = "{rule}"\n'
        f"exdate = [{exdate}]\n",
    )
    last = expected[-1]
    days = _days(calendar["example"], _client(), date(1996, 1, 1), last)
    assert days == expected, title


def test_there_are_at_least_twelve_rfc_examples() -> None:
    assert len(RFC_EXAMPLES) >= 12


# ----------------------------------------------------------------------------- .ics


ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//followup tests//EN
BEGIN:VEVENT
UID:open-day@example.com
DTSTART;VALUE=DATE:20270605
SUMMARY:Open day
RRULE:FREQ=YEARLY;COUNT=3
END:VEVENT
BEGIN:VEVENT
UID:sale@example.com
DTSTART;TZID=Europe/Paris:20271126T090000
SUMMARY:Autumn sale
END:VEVENT
END:VCALENDAR
"""


def test_ics_events_and_their_recurrences_become_occasions(tmp_path: Path) -> None:
    calendar = _calendar(
        tmp_path,
        '[occasions.events]\nkind = "ics"\nfile = "events.ics"\ntemplate = "holiday"\n',
        **{"events.ics": ICS},
    )
    found = list(occurrences(calendar["events"], _client(), date(2027, 1, 1), date(2029, 12, 31)))
    assert [(o.day, o.name) for o in found] == [
        (date(2027, 6, 5), "Open day"),
        (date(2027, 11, 26), "Autumn sale"),
        (date(2028, 6, 5), "Open day"),
        (date(2029, 6, 5), "Open day"),
    ]


def test_a_broken_ics_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "events.ics").write_text("BEGIN:VCALENDAR\nnonsense", encoding="utf-8")
    message = _error(tmp_path, '[occasions.events]\nkind = "ics"\nfile = "events.ics"\n')
    assert "cal.toml:3: [occasions.events] file:" in message
    assert "events.ics" in message


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[occasions.x]\nkind = "weekly"\n',
            'cal.toml:2: [occasions.x] kind: unknown kind "weekly"',
        ),
        (
            '[occasions.x]\nkind = "after_purchase"\nafter = "soon"\n',
            "cal.toml:3: [occasions.x] after:",
        ),
        (
            '[occasions.x]\nkind = "after_purchase"\nafter = "2 days"\nsend_time = "25:00"\n',
            "cal.toml:4: [occasions.x] send_time:",
        ),
        (
            '[occasions.x]\nkind = "yearly"\ndate = "birthday"\n\nfeb29 = "mar2"\n',
            "cal.toml:5: [occasions.x] feb29:",
        ),
        (
            '[occasions.x]\nkind = "rrule"\ndtstart = "2020-01-01"\nrrule = "FREQ=SOMETIMES"\n',
            "cal.toml:4: [occasions.x] rrule: not a valid RFC 5545 rule",
        ),
        ('[occasions.x]\nkind = "holiday"\nholidays = 3\n', "cal.toml:3: [occasions.x] holidays:"),
        (
            '[occasions.x]\nkind = "holiday"\nholidays = "*"\ncountries = ["USA"]\n',
            "cal.toml:4: [occasions.x] countries:",
        ),
        (
            '[occasions.x]\nkind = "holiday"\nholidays = "*"\nweekdays = "mon-funday"\n',
            "cal.toml:4: [occasions.x] weekdays:",
        ),
        ('[occasions.x]\nkind = "yearly"\n', "cal.toml:1: [occasions.x]: date is required"),
        (
            '[occasions.x]\nkind = "holiday"\nholidays = "*"\nshoe_size = 4\n',
            "cal.toml:4: [occasions.x] shoe_size: unknown key",
        ),
        ('[occasions.Bad-Name]\nkind = "yearly"\n', "cal.toml:1: [occasions.Bad-Name]:"),
        ("[ocasions.x]\n", "cal.toml:1: [ocasions]: unknown table"),
        ("[occasions.x\n", "cal.toml: "),
    ],
)
def test_calendar_errors_name_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    message = _error(tmp_path, text)
    assert expected.replace('"', "'") in message.replace('"', "'"), message
    assert str(tmp_path) in message


def test_a_config_override_of_an_unknown_occasion_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "cal.toml").write_text(
        '[occasions.birthday]\nkind = "yearly"\ndate = "birthday"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"\[campaigns.winback\]: no occasion 'winback'"):
        read_calendars(tmp_path, TODAY, {"winback": {"enabled": False}})
    calendar = read_calendars(tmp_path, TODAY, {"birthday": {"enabled": False, "priority": 7}})
    assert (calendar["birthday"].enabled, calendar["birthday"].priority) == (False, 7)
    assert calendar.enabled == ()


def test_an_occasion_defined_twice_names_both_files(tmp_path: Path) -> None:
    text = '[occasions.birthday]\nkind = "yearly"\ndate = "birthday"\n'
    (tmp_path / "a.toml").write_text(text, encoding="utf-8")
    (tmp_path / "b.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"b.toml:1: \[occasions.birthday\]: already defined"):
        read_calendars(tmp_path, TODAY)


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat,sun", {5, 6}),
        ("fri-mon", {4, 5, 6, 0}),
        ("Monday, wednesday", {0, 2}),
    ],
)
def test_weekdays_parse(text: str, days: set[int]) -> None:
    assert values.parse_weekdays(text) == frozenset(days)


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        ("08:00-20:00", ["08:00", "19:59"], ["20:00", "07:59"]),
        ("21:00-08:00", ["21:00", "23:30", "00:00", "07:59"], ["08:00", "12:00", "20:59"]),
    ],
)
def test_windows_contain_their_hours(window: str, inside: list[str], outside: list[str]) -> None:
    parsed = values.parse_window(window)
    assert all(parsed.contains(values.parse_time(t)) for t in inside)
    assert not any(parsed.contains(values.parse_time(t)) for t in outside)


def test_an_exdate_given_as_a_date_drops_that_day_whatever_dtstarts_time(
    tmp_path: Path,
) -> None:
    calendar = _calendar(
        tmp_path,
        '[occasions.v]\nkind = "rrule"\ndtstart = "2020-02-14T09:00"\n'
        'rrule = "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=14"\nexdate = ["2027-02-14"]\n',
    )
    assert _days(calendar["v"], _client(), date(2026, 1, 1), date(2028, 12, 31)) == [
        date(2026, 2, 14),
        date(2028, 2, 14),
    ]


def test_observed_days_of_named_holidays_are_greeted_when_asked(tmp_path: Path) -> None:
    # Christmas 2027 is a Saturday: the US observes it on Friday the 24th.
    text = '[occasions.c]\nkind = "holiday"\nholidays = ["Christmas Day"]\n'
    plain = _calendar(tmp_path, text)
    first, last = date(2027, 12, 1), date(2027, 12, 31)
    assert _days(plain["c"], _client(), first, last) == [date(2027, 12, 25)]
    observed = _calendar(tmp_path, text + "observed = true\n")
    assert _days(observed["c"], _client(), first, last) == [date(2027, 12, 24), date(2027, 12, 25)]


def test_an_unknown_default_key_names_file_and_line(tmp_path: Path) -> None:
    message = _error(tmp_path, '[defaults]\nsend_time = "10:00"\nlateness = 12\n')
    assert message.startswith(f"{tmp_path / 'cal.toml'}:3: [defaults] lateness: unknown key")
