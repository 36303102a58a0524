"""Occasions: the dates a campaign yields for a client. Pure: the calendars are loaded by
followup.config.calendars; from there, `occurrences` takes a client's facts and a window and
returns dates.

A campaign is an occasion (the dates it yields for a client) plus how to greet it (template,
priority, send time and window in the client's local time, lateness, whether it counts toward
the frequency cap).

Occasion kinds:
- after_purchase: a delay ("2 days", "6 months") after each paid purchase, optionally for some
  products only; the occurrence is the purchase's local date.
- yearly: a client date every year (birthday, first purchase); 29 February falls on 28 February
  (or 1 March) in common years.
- holiday: public holidays of the client's country by English name (or all of them), named in
  the client's language (the `holidays` package).
- rrule: an RFC 5545 recurrence (DTSTART, RRULE with UNTIL or COUNT, EXDATE) of local dates.
- ics: the events of an iCalendar file, recurrences expanded (recurring-ical-events).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import holidays as holidays_lib
from dateutil.relativedelta import relativedelta
from dateutil.rrule import rrulestr

from followup.domain.care import EXCLUSIONS
from followup.domain.clients import ClientFacts
from followup.domain.consent import Purpose, default_purpose
from followup.domain.locales import locale_chain

Kind = Literal["after_purchase", "yearly", "holiday", "rrule", "ics"]
KINDS: tuple[str, ...] = ("after_purchase", "yearly", "holiday", "rrule", "ics")


@dataclass(frozen=True, slots=True)
class Window:
    """Local hours [start, end); end <= start wraps past midnight ("21:00-08:00")."""

    start: time
    end: time

    def contains(self, at: time) -> bool:
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True)
class Campaign:
    """One occasion and how to greet it."""

    name: str
    kind: Kind
    template: str
    title: str
    #: Display names by language ("fr", "en"), for rrule and yearly occasions.
    names: Mapping[str, str] = field(default_factory=dict)
    priority: int = 50
    send_time: time = time(10, 0)
    window: Window = Window(time(8), time(20))
    #: Allowed local weekdays, Monday = 0.
    weekdays: frozenset[int] = frozenset(range(7))
    lateness: timedelta = timedelta(hours=72)
    capped: bool = True
    enabled: bool = True
    #: ISO country codes the occasion applies to; None: every country.
    countries: frozenset[str] | None = None
    #: A sandboxed Jinja2 expression over `client` facts; "" takes every client.
    audience: str = ""
    #: Built-in exclusions this campaign applies ("unpaid", "disputed").
    exclude: tuple[str, ...] = EXCLUSIONS
    #: service or marketing (followup.domain.consent); None: by kind (`default_purpose`).
    purpose: Purpose | None = None
    # after_purchase
    after: relativedelta = field(default_factory=relativedelta)
    products: frozenset[str] | None = None
    # yearly
    client_date: Literal["birthday", "first_purchase"] = "birthday"
    feb29: Literal["feb28", "mar1"] = "feb28"
    # holiday: English names, lower-cased; None: every public holiday
    holidays: frozenset[str] | None = None
    observed: bool = False
    # rrule
    rule: str = ""
    # ics: (date, summary) of every occurrence, expanded at load time within `ics_years`
    events: tuple[tuple[date, str], ...] = ()
    source: str = ""

    def name_in(self, locale: str) -> str:
        for candidate in locale_chain(locale):
            if candidate in self.names:
                return self.names[candidate]
        return self.title

    def applies_to(self, country: str) -> bool:
        return self.countries is None or country.upper() in self.countries

    @property
    def effective_purpose(self) -> Purpose:
        """The purpose the consent rule reads: the calendar's, else its kind's default."""
        return self.purpose if self.purpose is not None else default_purpose(self.kind)


# ----------------------------------------------------------------------------- occurrences


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One date of an occasion for one client: the touch key's occurrence and what to say."""

    campaign: str
    occurrence: date
    #: The local date the message is meant for (the occurrence, or after it for a delay).
    day: date
    name: str
    years: int | None = None
    purchase_id: int | None = None


def yearly_date(year: int, month: int, day: int, feb29: str) -> date:
    """The client date in `year`: 29 February in a common year is 28 February or 1 March."""
    if month == 2 and day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 3, 1) if feb29 == "mar1" else date(year, 2, 28)
    return date(year, month, day)


@lru_cache(maxsize=4096)
def _holidays(country: str, year: int, language: str | None, observed: bool) -> dict[date, str]:
    try:
        found = holidays_lib.country_holidays(
            country, years=year, language=language, observed=observed
        )
    except NotImplementedError:
        return {}
    return dict(found.items())


@lru_cache(maxsize=1024)
def holiday_language(country: str, locale: str) -> str | None:
    """The `holidays` language closest to the client's locale, or None (the country's own)."""
    try:
        supported = holidays_lib.country_holidays(country).supported_languages
    except NotImplementedError:
        return None
    wanted = locale.replace("-", "_")
    language = wanted.split("_")[0]
    for candidate in (wanted, language):
        if candidate in supported:
            return candidate
    prefix = [s for s in supported if s.split("_")[0] == language]
    if language == "en" and "en_US" in supported:
        return "en_US"
    return prefix[0] if prefix else None


@lru_cache(maxsize=4096)
def public_holidays(
    country: str, year: int, locale: str, observed: bool = False
) -> tuple[tuple[date, str, str], ...]:
    """(date, English name, name in the client's language) of a country's public holidays."""
    english = _holidays(country.upper(), year, "en_US", observed)
    local = _holidays(country.upper(), year, holiday_language(country.upper(), locale), observed)
    return tuple((day, name, local.get(day, name)) for day, name in sorted(english.items()))


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    """A time zone by IANA name, kept for the life of the process."""
    return ZoneInfo(name)


@lru_cache(maxsize=256)
def _rrule_dates(rule: str, start: date, end: date) -> tuple[date, ...]:
    parsed = rrulestr(rule, forceset=True)
    found = parsed.between(
        datetime.combine(start, time()), datetime.combine(end, time(23, 59)), inc=True
    )
    return tuple(sorted({d.date() for d in found}))


#: Occurrences that depend only on the campaign, the country, the language and the dates
#: (holidays, rules, .ics), shared by every client with the same: a million clients in a few
#: countries and zones compute them a few dozen times. The campaign object is kept in the
#: value so its id cannot be reused while cached.
_SHARED: dict[tuple[int, str, str, date, date], tuple[Campaign, tuple[Occurrence, ...]]] = {}


def occurrences(
    campaign: Campaign, client: ClientFacts, first: date, last: date
) -> tuple[Occurrence, ...]:
    """The occurrences of `campaign` for `client` whose local day is in [first, last]."""
    if not campaign.enabled or not campaign.applies_to(client.country):
        return ()
    kind = campaign.kind
    if kind == "after_purchase":
        if not client.purchases:
            return ()
        return tuple(_after_purchase(campaign, client, first, last))
    if kind == "yearly":
        return tuple(_yearly(campaign, client, first, last))
    key = (id(campaign), client.country, client.locale, first, last)
    cached = _SHARED.get(key)
    if cached is not None and cached[0] is campaign:
        return cached[1]
    if len(_SHARED) > 50_000:
        _SHARED.clear()
    found = tuple(_shared(campaign, client, first, last))
    _SHARED[key] = (campaign, found)
    return found


def _shared(
    campaign: Campaign, client: ClientFacts, first: date, last: date
) -> Iterator[Occurrence]:
    kind = campaign.kind
    title = campaign.name_in(client.locale)
    if kind == "holiday":
        for year in range(first.year, last.year + 1):
            for day, english, local in public_holidays(
                client.country, year, client.locale, campaign.observed
            ):
                if not first <= day <= last:
                    continue
                base = english.lower().removesuffix(" (observed)")
                if campaign.holidays is not None and base not in campaign.holidays:
                    continue
                yield Occurrence(campaign.name, day, day, local)
    elif kind == "rrule":
        for day in _rrule_dates(campaign.rule, first, last):
            yield Occurrence(campaign.name, day, day, title)
    else:
        for day, summary in campaign.events:
            if first <= day <= last:
                yield Occurrence(campaign.name, day, day, summary or title)


@lru_cache(maxsize=65536)
def _add(day: date, after: relativedelta) -> date:
    """`day` + a calendar delay (relativedelta arithmetic is slow; the same pairs recur)."""
    result: date = day + after
    return result


def _after_purchase(
    campaign: Campaign, client: ClientFacts, first: date, last: date
) -> Iterator[Occurrence]:
    local = zone(client.timezone)
    seen: set[date] = set()
    title = None
    for purchase in client.purchases:
        if purchase.status != "paid":
            continue
        if campaign.products is not None and purchase.product.lower() not in campaign.products:
            continue
        bought = purchase.purchased_at.astimezone(local).date()
        day = _add(bought, campaign.after)
        if not first <= day <= last or bought in seen:
            continue
        seen.add(bought)
        if title is None:
            title = campaign.name_in(client.locale)
        yield Occurrence(campaign.name, bought, day, title, purchase_id=purchase.purchase_id)


def _days(first: date, last: date) -> Iterator[date]:
    for offset in range((last - first).days + 1):
        yield first + timedelta(days=offset)


#: Every (month, day) of the calendar but 29 February: the same date in every year.
_EVERY_YEAR = frozenset((d.month, d.day) for d in _days(date(2001, 1, 1), date(2001, 12, 31)))


@lru_cache(maxsize=1024)
def _month_days(first: date, last: date) -> frozenset[tuple[int, int]]:
    """The (month, day) pairs of the dates in [first, last]."""
    if (last - first).days >= 366:
        return _EVERY_YEAR | {(2, 29)}
    return frozenset((d.month, d.day) for d in _days(first, last))


def _yearly(
    campaign: Campaign, client: ClientFacts, first: date, last: date
) -> Iterator[Occurrence]:
    if campaign.client_date == "birthday":
        if client.birthday is None:
            return
        month, day, born = client.birthday
    else:
        if client.first_purchase is None:
            return
        month, day, born = (
            client.first_purchase.month,
            client.first_purchase.day,
            client.first_purchase.year,
        )
    if (month, day) in _EVERY_YEAR and (month, day) not in _month_days(first, last):
        return  # in no year of the window (29 February and invalid dates take the long way)
    title = campaign.name_in(client.locale)
    for year in range(first.year, last.year + 1):
        when = yearly_date(year, month, day, campaign.feb29)
        if not first <= when <= last:
            continue
        years = None if born is None else year - born
        if years is not None and years <= 0:
            continue  # not yet born, or the day of the first purchase itself
        yield Occurrence(campaign.name, when, when, title, years=years)


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Calendar:
    campaigns: tuple[Campaign, ...]
    files: tuple[Path, ...] = ()

    def __getitem__(self, name: str) -> Campaign:
        for campaign in self.campaigns:
            if campaign.name == name:
                return campaign
        raise KeyError(name)

    def get(self, name: str) -> Campaign | None:
        try:
            return self[name]
        except KeyError:
            return None

    @property
    def enabled(self) -> tuple[Campaign, ...]:
        return tuple(c for c in self.campaigns if c.enabled)

    @property
    def max_lateness(self) -> timedelta:
        return max((c.lateness for c in self.enabled), default=timedelta(0))

    @property
    def max_delay(self) -> timedelta:
        """The longest after-purchase delay, as a safe upper bound in days."""
        return max(
            (longest_delay(c.after) for c in self.enabled if c.kind == "after_purchase"),
            default=timedelta(0),
        )


#: The first and last day of every month of a leap-year cycle: the extremes of a delay in
#: months or years.
_PROBES = tuple(
    day
    for year in range(2000, 2004)
    for month in range(1, 13)
    for day in (date(year, month, 1), date(year, month, 1) + relativedelta(months=1, days=-1))
)


def longest_delay(after: relativedelta) -> timedelta:
    """The longest real duration of a calendar delay ("6 months" is 181 to 184 days)."""
    return max((probe + after) - probe for probe in _PROBES)
