"""Calendars of occasions on disk: calendars/*.toml (and the .ics files they name) -> a
Calendar of campaigns, with the config's [campaigns.NAME] overrides applied. Every error names
the file, the line and the key. What the campaigns then yield is pure (followup.domain.occasions).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from dateutil.rrule import rrulestr

from followup.config.base import YEAR_DAYS
from followup.config.settings import Settings
from followup.config.values import line_of, parse_delay, parse_time, parse_weekdays, parse_window
from followup.domain.care import EXCLUSIONS, check_rule
from followup.domain.consent import Purpose
from followup.domain.occasions import KINDS, Calendar, Campaign, Window
from followup.errors import ConfigError

NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Bounds of an occasion's numbers, the same as those of [campaigns.NAME] in config.toml.
MAX_PRIORITY = 1_000_000
MAX_LATENESS_HOURS = YEAR_DAYS * 24


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


_COMMON: tuple[str, ...] = ("kind", "template", "title", "names", "priority", "send_time")
_COMMON += ("window", "weekdays", "lateness_hours", "capped", "enabled", "countries")
_COMMON += ("audience", "exclude", "purpose")
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
    """One occasion table (over the file's [defaults]) -> its Campaign: the keys every kind
    has, then the kind's own."""
    spec.values = {**defaults, **spec.values}
    kind = _kind(spec, defaults)
    campaign = _common(spec, name, kind)
    if kind == "after_purchase":
        campaign.update(_after_purchase(spec))
    elif kind == "yearly":
        campaign.update(_yearly(spec))
    elif kind == "holiday":
        campaign.update(_holiday(spec))
    elif kind == "rrule":
        campaign.update(_rrule(spec))
    else:
        campaign.update(_ics(spec, calendars_dir, today))
    return Campaign(**campaign)


def _kind(spec: _Spec, defaults: Mapping[str, Any]) -> str:
    """The occasion's kind, once every key of the table is known for it (a default that only
    another kind uses is not an error)."""
    kind: str = spec.require("kind", str)
    if kind not in KINDS:
        raise spec.fail("kind", f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    allowed = set(_COMMON) | set(_BY_KIND[kind])
    for key in spec.values:
        if key not in allowed and key in spec.values and key not in defaults:
            raise spec.fail(key, f"unknown key for a {kind} occasion")
    return kind


def _convert(spec: _Spec, key: str, parse: Any, default: Any) -> Any:
    """A value read by `parse` (a delay, a time, a window...), its errors naming the key."""
    raw = spec.get(key, (str, int, list, time, dict), None)
    if raw is None:
        return default
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise spec.fail(key, str(exc)) from None


def _common(spec: _Spec, name: str, kind: str) -> dict[str, Any]:
    """The Campaign fields that every kind of occasion has. The keys are checked in a fixed
    order: a table with several errors always reports the same one."""
    template = spec.get("template", str, name)
    title = spec.get("title", str, name.replace("_", " ").capitalize())
    names_raw = spec.get("names", dict, {})
    names = {str(k).replace("_", "-"): str(v) for k, v in names_raw.items()}
    priority = spec.get("priority", int, 50)
    if abs(priority) > MAX_PRIORITY:
        raise spec.fail("priority", f"must be between -{MAX_PRIORITY} and {MAX_PRIORITY}")
    lateness = spec.get("lateness_hours", int, 72)
    if not 0 <= lateness <= MAX_LATENESS_HOURS:
        raise spec.fail("lateness_hours", f"must be between 0 and {MAX_LATENESS_HOURS} (a year)")
    countries = _countries(spec)
    campaign: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "template": template,
        "title": title,
        "names": names,
        "priority": priority,
        "send_time": _convert(spec, "send_time", parse_time, time(10, 0)),
        "window": _convert(spec, "window", parse_window, Window(time(8), time(20))),
        "weekdays": _convert(spec, "weekdays", parse_weekdays, frozenset(range(7))),
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
    campaign["purpose"] = _purpose(spec)
    if not campaign["window"].contains(campaign["send_time"]):
        raise spec.fail("send_time", f"{campaign['send_time']:%H:%M} is outside the window")
    return campaign


def _purpose(spec: _Spec) -> Purpose | None:
    """service or marketing (docs/consent.md); None: the kind's default."""
    purpose = spec.get("purpose", str, None)
    if purpose is None:
        return None
    if purpose not in tuple(Purpose):
        raise spec.fail("purpose", f"expected service or marketing, got {purpose!r}")
    return Purpose(purpose)


def _countries(spec: _Spec) -> frozenset[str] | None:
    """The countries the occasion is for (None: every country)."""
    countries_raw = spec.get("countries", list, None)
    if countries_raw is None:
        return None
    countries = frozenset(str(c).upper() for c in countries_raw)
    bad = [c for c in countries if not re.fullmatch(r"[A-Z]{2}", c)]
    if bad:
        raise spec.fail("countries", f"expected two-letter country codes, got {bad[0]!r}")
    return countries


def _after_purchase(spec: _Spec) -> dict[str, Any]:
    fields: dict[str, Any] = {"after": _convert(spec, "after", parse_delay, None)}
    if fields["after"] is None:
        raise spec.fail(None, 'after is required (e.g. after = "2 days")')
    products = spec.get("products", list, None)
    if products is not None:
        fields["products"] = frozenset(str(p).lower() for p in products)
    return fields


def _yearly(spec: _Spec) -> dict[str, Any]:
    which = spec.require("date", str)
    if which not in ("birthday", "first_purchase"):
        raise spec.fail("date", f"expected birthday or first_purchase, got {which!r}")
    feb29 = spec.get("feb29", str, "feb28")
    if feb29 not in ("feb28", "mar1"):
        raise spec.fail("feb29", f"expected feb28 or mar1, got {feb29!r}")
    return {"client_date": which, "feb29": feb29}


def _holiday(spec: _Spec) -> dict[str, Any]:
    wanted = spec.require("holidays", (str, list))
    holidays: frozenset[str] | None
    if wanted == "*":
        holidays = None
    elif isinstance(wanted, list) and wanted and all(isinstance(h, str) for h in wanted):
        holidays = frozenset(h.lower() for h in wanted)
    else:
        raise spec.fail("holidays", 'expected "*" or a list of holiday names in English')
    return {"holidays": holidays, "observed": spec.get("observed", bool, False)}


def _rrule(spec: _Spec) -> dict[str, Any]:
    rule = spec.require("rrule", str)
    dtstart = spec.require("dtstart", (str, date))
    exdates = spec.get("exdate", list, [])
    text = _rrule_text(str(dtstart), rule, [str(d) for d in exdates])
    try:
        rrulestr(text, forceset=True)
    except (ValueError, TypeError) as exc:
        raise spec.fail("rrule", f"not a valid RFC 5545 rule: {exc}") from None
    return {"rule": text}


def _ics(spec: _Spec, calendars_dir: Path, today: date) -> dict[str, Any]:
    file = spec.require("file", str)
    years = spec.get("years", int, 3)
    path = (calendars_dir / file).resolve()
    try:
        return {"events": load_ics(path, today, years)}
    except OSError as exc:
        raise spec.fail("file", f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise spec.fail("file", f"{path}: {exc}") from None


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


def read_calendars(
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


def load_calendar(settings: Settings) -> Calendar:
    """The installation's calendar: calendars/*.toml with the config's [campaigns.NAME]
    overrides applied. A send time inside the quiet hours is refused: nothing would go out."""
    overrides = {name: c.overrides() for name, c in settings.campaigns.items()}
    calendar = read_calendars(
        settings.path(settings.calendars_dir), datetime.now(UTC).date(), overrides
    )
    quiet = settings.politeness.quiet
    for campaign in calendar.enabled:
        if quiet is not None and quiet.contains(campaign.send_time):
            raise ConfigError(
                f"{campaign.source}: [occasions.{campaign.name}] send_time "
                f"{campaign.send_time:%H:%M} is inside [politeness] quiet_hours {quiet}: "
                "nothing would ever go out"
            )
    return calendar
