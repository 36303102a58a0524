"""Calendars of occasions: calendars/*.toml (and the .ics files they name) -> campaigns.

A campaign is an occasion (the dates it yields for a client) plus how to greet it (template,
priority, send time and window in the client's local time, lateness, whether it counts toward
the frequency cap). Loading reads files and reports errors with file, line and key; everything
after loading is pure: `occurrences` takes a client's facts and a window and returns dates.

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

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import holidays as holidays_lib
from dateutil.relativedelta import relativedelta
from dateutil.rrule import rrulestr

from followup.care import EXCLUSIONS, ClientStats, check_rule
from followup.errors import ConfigError

Kind = Literal["after_purchase", "yearly", "holiday", "rrule", "ics"]
KINDS: tuple[str, ...] = ("after_purchase", "yearly", "holiday", "rrule", "ics")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


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


ALL_DAY = Window(time(0), time(0))


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
        for candidate in _locale_chain(locale):
            if candidate in self.names:
                return self.names[candidate]
        return self.title

    def applies_to(self, country: str) -> bool:
        return self.countries is None or country.upper() in self.countries


@lru_cache(maxsize=1024)
def _locale_chain(locale: str) -> tuple[str, ...]:
    parts = locale.replace("_", "-").split("-")
    return tuple("-".join(parts[:n]) for n in range(len(parts), 0, -1))


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


@dataclass(frozen=True, slots=True)
class PurchaseFact:
    purchase_id: int
    purchased_at: datetime
    status: str
    product: str = ""


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What the planner knows about one client."""

    client_id: int
    timezone: str
    country: str
    locale: str
    birthday: tuple[int, int, int | None] | None = None
    #: Local date of the first paid purchase.
    first_purchase: date | None = None
    purchases: tuple[PurchaseFact, ...] = ()
    status: str = "active"
    stats: ClientStats = field(default_factory=ClientStats)
    #: What audience rules see as `client` (tier, purchases, total_spent, ...).
    context: Mapping[str, Any] = field(default_factory=dict)


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


def line_of(text: str, table: str, key: str | None) -> int:
    """The line of `key` in `[table]` (or of the table's header) in a TOML file; 1 if unknown."""
    lines = text.splitlines()
    dotted = r"\s*\.\s*".join(map(re.escape, table.split(".")))
    header = re.compile(r"^\s*\[\s*" + dotted + r"\s*\]")
    for number, line in enumerate(lines, start=1):
        if header.match(line):
            if key is None:
                return number
            for offset, inner in enumerate(lines[number:], start=number + 1):
                if re.match(r"^\s*\[", inner):
                    break
                if re.match(r"^\s*" + re.escape(key) + r"\s*=", inner):
                    return offset
            return number
    return 1


class _Spec:
    """Reads one occasion table, collecting the first error with its key."""

    def __init__(self, path: Path, text: str, table: str, values: Mapping[str, Any]) -> None:
        self.path, self.text, self.table, self.values = path, text, table, values
        self.used: set[str] = set()

    def fail(self, key: str | None, message: str) -> ConfigError:
        line = line_of(self.text, self.table, key)
        where = f"[{self.table}]" + (f" {key}" if key else "")
        return ConfigError(f"{self.path}:{line}: {where}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.values:
            return default
        value = self.values[key]
        if isinstance(value, bool) and kind is not bool and bool not in _as_tuple(kind):
            raise self.fail(key, f"expected {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def require(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.values:
            raise self.fail(None, f"{key} is required")
        return self.get(key, kind)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
    names[dict] = "a table"
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def parse_time(value: Any) -> time:
    if isinstance(value, time):
        return value
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", str(value).strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError(f"expected a local time like 10:00, got {value!r}")
    return time(int(match[1]), int(match[2]))


def parse_window(value: str) -> Window:
    match = re.fullmatch(r"\s*(\S+)\s*-\s*(\S+)\s*", value)
    if not match:
        raise ValueError(f'expected hours like "08:00-20:00", got {value!r}')
    return Window(parse_time(match[1]), parse_time(match[2]))


def parse_weekdays(value: str | Sequence[str]) -> frozenset[int]:
    """ "mon-fri", "sat,sun" or ["mon", "wed"] -> weekday numbers (Monday = 0)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    days: set[int] = set()
    for item in items:
        item = str(item).strip().lower()[:3] if "-" not in str(item) else str(item).strip().lower()
        if "-" in item:
            start, end = (part.strip()[:3] for part in item.split("-", 1))
            if start not in WEEKDAYS or end not in WEEKDAYS:
                raise ValueError(f"unknown weekday in {item!r} (use mon..sun)")
            a, b = WEEKDAYS.index(start), WEEKDAYS.index(end)
            days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        elif item in WEEKDAYS:
            days.add(WEEKDAYS.index(item))
        else:
            raise ValueError(f"unknown weekday {item!r} (use mon..sun)")
    if not days:
        raise ValueError("no weekday given")
    return frozenset(days)


_DELAY = re.compile(r"\s*(\d{1,4})\s*(day|days|week|weeks|month|months|year|years)\s*")


def parse_delay(value: str) -> relativedelta:
    """ "2 days", "6 months", "1 year" -> a calendar delay."""
    match = _DELAY.fullmatch(value)
    if not match:
        raise ValueError(f'expected a delay like "2 days" or "6 months", got {value!r}')
    count, unit = int(match[1]), match[2].rstrip("s")
    return {
        "day": relativedelta(days=count),
        "week": relativedelta(weeks=count),
        "month": relativedelta(months=count),
        "year": relativedelta(years=count),
    }[unit]


_COMMON: tuple[str, ...] = ("kind", "template", "title", "names", "priority", "send_time")
_COMMON += ("window", "weekdays", "lateness_hours", "capped", "enabled", "countries")
_COMMON += ("audience", "exclude")
_BY_KIND: dict[str, tuple[str, ...]] = {
    "after_purchase": ("after", "products"),
    "yearly": ("date", "feb29"),
    "holiday": ("holidays", "observed"),
    "rrule": ("rrule", "dtstart", "exdate"),
    "ics": ("file", "years"),
}


def _campaign(
    spec: _Spec, name: str, defaults: Mapping[str, Any], calendars_dir: Path, today: date
) -> Campaign:
    values = {**defaults, **spec.values}
    spec.values = values
    kind = spec.require("kind", str)
    if kind not in KINDS:
        raise spec.fail("kind", f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    allowed = set(_COMMON) | set(_BY_KIND[kind])
    for key in spec.values:
        if key not in allowed and key in spec.values and key not in defaults:
            raise spec.fail(key, f"unknown key for a {kind} occasion")

    def convert(key: str, parse: Any, default: Any) -> Any:
        raw = spec.get(key, (str, int, list, time, dict), None)
        if raw is None:
            return default
        try:
            return parse(raw)
        except (ValueError, TypeError) as exc:
            raise spec.fail(key, str(exc)) from None

    template = spec.get("template", str, name)
    title = spec.get("title", str, name.replace("_", " ").capitalize())
    names_raw = spec.get("names", dict, {})
    names = {str(k).replace("_", "-"): str(v) for k, v in names_raw.items()}
    priority = spec.get("priority", int, 50)
    lateness = spec.get("lateness_hours", int, 72)
    if lateness < 0:
        raise spec.fail("lateness_hours", "must be 0 or more")
    countries_raw = spec.get("countries", list, None)
    countries = None
    if countries_raw is not None:
        countries = frozenset(str(c).upper() for c in countries_raw)
        bad = [c for c in countries if not re.fullmatch(r"[A-Z]{2}", c)]
        if bad:
            raise spec.fail("countries", f"expected two-letter country codes, got {bad[0]!r}")
    campaign: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "template": template,
        "title": title,
        "names": names,
        "priority": priority,
        "send_time": convert("send_time", parse_time, time(10, 0)),
        "window": convert("window", parse_window, Window(time(8), time(20))),
        "weekdays": convert("weekdays", parse_weekdays, frozenset(range(7))),
        "lateness": timedelta(hours=lateness),
        "capped": spec.get("capped", bool, True),
        "enabled": spec.get("enabled", bool, True),
        "countries": countries,
        "source": str(spec.path),
    }
    audience = spec.get("audience", str, "").strip()
    if audience:
        problem = check_rule(audience)
        if problem is not None:
            raise spec.fail("audience", problem)
    campaign["audience"] = audience
    exclude = spec.get("exclude", list, list(EXCLUSIONS))
    unknown_exclusions = [e for e in exclude if e not in EXCLUSIONS]
    if unknown_exclusions:
        raise spec.fail(
            "exclude", f"unknown exclusion {unknown_exclusions[0]!r} (known: unpaid, disputed)"
        )
    campaign["exclude"] = tuple(exclude)
    if not campaign["window"].contains(campaign["send_time"]):
        raise spec.fail("send_time", f"{campaign['send_time']:%H:%M} is outside the window")
    if kind == "after_purchase":
        campaign["after"] = convert("after", parse_delay, None)
        if campaign["after"] is None:
            raise spec.fail(None, 'after is required (e.g. after = "2 days")')
        products = spec.get("products", list, None)
        if products is not None:
            campaign["products"] = frozenset(str(p).lower() for p in products)
    elif kind == "yearly":
        which = spec.require("date", str)
        if which not in ("birthday", "first_purchase"):
            raise spec.fail("date", f"expected birthday or first_purchase, got {which!r}")
        campaign["client_date"] = which
        feb29 = spec.get("feb29", str, "feb28")
        if feb29 not in ("feb28", "mar1"):
            raise spec.fail("feb29", f"expected feb28 or mar1, got {feb29!r}")
        campaign["feb29"] = feb29
    elif kind == "holiday":
        wanted = spec.require("holidays", (str, list))
        if wanted == "*":
            campaign["holidays"] = None
        elif isinstance(wanted, list) and wanted and all(isinstance(h, str) for h in wanted):
            campaign["holidays"] = frozenset(h.lower() for h in wanted)
        else:
            raise spec.fail("holidays", 'expected "*" or a list of holiday names in English')
        campaign["observed"] = spec.get("observed", bool, False)
    elif kind == "rrule":
        rule = spec.require("rrule", str)
        dtstart = spec.require("dtstart", (str, date))
        exdates = spec.get("exdate", list, [])
        text = _rrule_text(str(dtstart), rule, [str(d) for d in exdates])
        try:
            rrulestr(text, forceset=True)
        except (ValueError, TypeError) as exc:
            raise spec.fail("rrule", f"not a valid RFC 5545 rule: {exc}") from None
        campaign["rule"] = text
    else:
        file = spec.require("file", str)
        years = spec.get("years", int, 3)
        path = (calendars_dir / file).resolve()
        try:
            campaign["events"] = load_ics(path, today, years)
        except OSError as exc:
            raise spec.fail("file", f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise spec.fail("file", f"{path}: {exc}") from None
    return Campaign(**campaign)


def _rrule_text(dtstart: str, rule: str, exdates: Iterable[str]) -> str:
    def stamp(value: str) -> str:
        value = value.strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return value.replace("-", "")
        return value.replace("-", "").replace(":", "")

    start = stamp(dtstart)
    at = start[8:] if "T" in start else ""
    lines = [f"DTSTART:{start}"]
    rules = rule.strip()
    for part in re.split(r"\s*\n\s*", rules):
        if not part:
            continue
        named = re.match(r"^(RRULE|EXRULE|RDATE|EXDATE)[:;]", part)
        # Dates here are floating (each client's local calendar): a UTC UNTIL is read as local.
        part = re.sub(r"(UNTIL=\d{8}(?:T\d{6})?)Z", r"\1", part)
        lines.append(part if named else f"RRULE:{part}")
    # An exception given as a date drops that day's occurrence, whatever DTSTART's time.
    lines.extend(f"EXDATE:{stamp(d)}{at if 'T' not in stamp(d) else ''}" for d in exdates)
    return "\n".join(lines)


def load_ics(path: Path, today: date, years: int) -> tuple[tuple[date, str], ...]:
    """Every occurrence of the events of an .ics file from a year before `today` to `years`
    after it, as (local date, summary)."""
    import icalendar
    import recurring_ical_events

    try:
        calendar = icalendar.Calendar.from_ical(path.read_bytes())
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not an iCalendar file: {exc}") from None
    start = date(today.year - 1, 1, 1)
    end = date(today.year + years, 12, 31)
    found: set[tuple[date, str]] = set()
    for event in recurring_ical_events.of(calendar).between(start, end):
        begin = event.get("DTSTART").dt
        day = begin.date() if isinstance(begin, datetime) else begin
        found.add((day, str(event.get("SUMMARY", ""))))
    return tuple(sorted(found))


def load_calendar(
    calendars_dir: Path, today: date, overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> Calendar:
    """Every campaign of calendars/*.toml, with config overrides ([campaigns.NAME]) applied.

    Errors name the file, the line and the key."""
    overrides = dict(overrides or {})
    files = sorted(calendars_dir.glob("*.toml")) if calendars_dir.is_dir() else []
    campaigns: dict[str, Campaign] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        unknown = set(data) - {"defaults", "occasions"}
        if unknown:
            key = sorted(unknown)[0]
            line = line_of(text, key, None)
            raise ConfigError(f"{path}:{line}: [{key}]: unknown table (use [occasions.NAME])")
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict):
            raise ConfigError(f"{path}: defaults must be a table")
        known = set(_COMMON).union(*_BY_KIND.values())
        for key in defaults:
            if key not in known:
                line = line_of(text, "defaults", key)
                raise ConfigError(f"{path}:{line}: [defaults] {key}: unknown key")
        occasions = data.get("occasions", {})
        for name, values in occasions.items():
            table = f"occasions.{name}"
            if not NAME.fullmatch(name):
                line = line_of(text, table, None)
                raise ConfigError(
                    f"{path}:{line}: [{table}]: an occasion name is 1-64 lower-case letters, "
                    "digits or _"
                )
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: [{table}] must be a table")
            if name in campaigns:
                line = line_of(text, table, None)
                raise ConfigError(
                    f"{path}:{line}: [{table}]: already defined in {campaigns[name].source}"
                )
            merged = dict(values)
            for key, value in overrides.pop(name, {}).items():
                merged[key] = value
            spec = _Spec(path, text, table, merged)
            campaigns[name] = _campaign(spec, name, defaults, calendars_dir, today)
    if overrides:
        name = sorted(overrides)[0]
        raise ConfigError(
            f"[campaigns.{name}]: no occasion {name!r} in {calendars_dir}/*.toml "
            f"(known: {', '.join(sorted(campaigns)) or 'none'})"
        )
    return Calendar(tuple(campaigns.values()), tuple(files))
