"""A client's zone and language from their country, when their data gives none
(docs/clients.md, "Zone and language from the country"). Pure: Babel's territory data (CLDR)
and the tz database in, a value or the reason there is none out.

- The zone: the one configured for the country (`[defaults.timezones]`), else the country's
  only zone, else the zone all its zones agree with from now on (Germany's Europe/Berlin and
  Europe/Busingen), else `[defaults] timezone` (a guess: the import warns), else the zone most
  of the country's people live in (US: America/New_York; a guess too), else none.
- The language: the one configured for the country (`[defaults.locales]`), else the country's
  most spoken official language with the country (BR -> pt-BR, CH -> de-CH, CA -> en-CA),
  else its most spoken language, else `[defaults] locale`.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from babel import Locale, UnknownLocaleError
from babel.core import get_global

#: The zone most of a country's people live in, for the countries of several zones (or of
#: zones whose names CLDR's golden zones do not settle): a client of the country without a
#: zone of their own takes it, with a warning, and a set of zones with the same clocks goes by
#: it when it is among them (else by CLDR's golden zone, its Windows mapping's, else the
#: first name: Spain's Europe/Madrid, not Africa/Ceuta).
_MAIN = {
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "CD": "Africa/Kinshasa",
    "CL": "America/Santiago",
    "CN": "Asia/Shanghai",
    "CY": "Asia/Nicosia",
    "EC": "America/Guayaquil",
    "ES": "Europe/Madrid",
    "FM": "Pacific/Chuuk",
    "GL": "America/Nuuk",
    "ID": "Asia/Jakarta",
    "KI": "Pacific/Tarawa",
    "KZ": "Asia/Almaty",
    "MH": "Pacific/Majuro",
    "MN": "Asia/Ulaanbaatar",
    "MX": "America/Mexico_City",
    "NZ": "Pacific/Auckland",
    "PF": "Pacific/Tahiti",
    "PG": "Pacific/Port_Moresby",
    "PT": "Europe/Lisbon",
    "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv",
    "US": "America/New_York",
    "UZ": "Asia/Tashkent",
}
#: How far ahead, and how finely, two zones are compared (their clocks from now on).
_AHEAD = timedelta(days=2 * 366)
_STEP = timedelta(hours=1)
_OFFICIAL = ("official", "de_facto_official")


class Source(enum.StrEnum):
    """Where an inferred value comes from."""

    CONFIGURED = "configured"  # [defaults.timezones] / [defaults.locales] for the country
    COUNTRY = "country"  # the country's data
    DEFAULT = "default"  # [defaults] timezone / locale: a guess for this country
    MAIN = "main"  # the zone most of the country lives in: a guess for this client


class NoValue(ValueError):
    """Nothing to infer from: the reason, for the import's report."""


@dataclass(frozen=True, slots=True)
class Inferred:
    value: str
    source: Source


@dataclass(frozen=True)
class TerritoryDefaults:
    """The `[defaults]` of config.toml: per country, then for every country ("" for none)."""

    timezones: Mapping[str, str] = field(default_factory=dict, hash=False)
    locales: Mapping[str, str] = field(default_factory=dict, hash=False)
    timezone: str = ""
    locale: str = ""

    def infer(self, column: str, country: str, now: datetime) -> Inferred:
        """The `timezone` or the `locale` of a client in `country`."""
        return self.zone(country, now) if column == "timezone" else self.language(country)

    def zone(self, country: str, now: datetime) -> Inferred:
        """The zone of a client in `country`, or NoValue saying why there is none."""
        configured = self.timezones.get(country)
        if configured:
            return Inferred(configured, Source.CONFIGURED)
        zones = country_zones(country, now.year)
        if len(zones) == 1:
            return Inferred(zones[0], Source.COUNTRY)
        if self.timezone:
            return Inferred(self.timezone, Source.DEFAULT)
        main = _MAIN.get(country)
        if main is not None and main in _zones():
            return Inferred(main, Source.MAIN)
        raise NoValue(_no_zone(country, zones))

    def language(self, country: str) -> Inferred:
        """The locale (BCP 47) of a client in `country`, or NoValue saying why there is none."""
        configured = self.locales.get(country)
        if configured:
            return Inferred(configured, Source.CONFIGURED)
        found = country_locale(country)
        if found is not None:
            return Inferred(found, Source.COUNTRY)
        if self.locale:
            return Inferred(self.locale, Source.DEFAULT)
        raise NoValue(
            f"{country} has no language in the territory data: give the locale, or set "
            f'[defaults.locales] {country} = "..." or [defaults] locale in config.toml'
        )


NO_DEFAULTS = TerritoryDefaults()


def _no_zone(country: str, zones: tuple[str, ...]) -> str:
    if not zones:
        listed = "no time zone in the tz database"
    else:
        shown = ", ".join(zones[:4]) + (", ..." if len(zones) > 4 else "")
        listed = f"{len(zones)} time zones ({shown})"
    return (
        f"is empty and {country} has {listed}: give the zone, or set "
        f'[defaults.timezones] {country} = "..." (or [defaults] timezone) in config.toml'
    )


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


@functools.cache
def country_zones(country: str, year: int) -> tuple[str, ...]:
    """The country's zones whose clocks differ from one another over the two years from the
    start of `year`, one name for each set of zones that agree; sorted."""
    known = sorted(z for z in _territory_zones().get(country, ()) if z in _zones())
    start = datetime(year, 1, 1, tzinfo=UTC)
    instants = [start + n * _STEP for n in range(int(_AHEAD / _STEP))]
    groups: list[list[str]] = []
    offsets: list[list[Any]] = []
    for name in known:
        zone = ZoneInfo(name)
        for group, clocks in zip(groups, offsets, strict=True):
            if all(
                i.astimezone(zone).utcoffset() == c for i, c in zip(instants, clocks, strict=True)
            ):
                group.append(name)
                break
        else:
            groups.append([name])
            offsets.append([i.astimezone(zone).utcoffset() for i in instants])
    return tuple(sorted(_name(country, group) for group in groups))


def _name(country: str, group: list[str]) -> str:
    main = _MAIN.get(country)
    if main in group:
        return main
    golden = _golden_zones()
    return next((name for name in group if name in golden), group[0])


@functools.cache
def _golden_zones() -> frozenset[str]:
    mapping: Mapping[str, str] = get_global("windows_zone_mapping")
    return frozenset(mapping.values())


def _territory_zones() -> Mapping[str, list[str]]:
    zones: Mapping[str, list[str]] = get_global("territory_zones")
    return zones


@functools.cache
def country_locale(country: str) -> str | None:
    """The country's most spoken official language with the country, as a tag Babel knows
    (pt-BR, de-CH, zh-Hans-CN), or the language alone when Babel has no locale for the pair;
    its most spoken language when none is official; None without language data."""
    spoken: Mapping[str, Mapping[str, Any]] = get_global("territory_languages").get(country, {})
    ranked = sorted(
        spoken.items(),
        key=lambda item: (
            item[1].get("official_status") not in _OFFICIAL,
            -(item[1].get("population_percent") or 0.0),
            item[0],
        ),
    )
    for language, _ in ranked:
        for candidate in (f"{language}_{country}", language):
            try:
                return tag(Locale.parse(candidate))
            except (UnknownLocaleError, ValueError):
                continue
    return None


@functools.cache
def countries() -> frozenset[str]:
    """The ISO 3166 alpha-2 codes CLDR names, without its non-countries: ZZ (unknown region)
    and the pseudo-regions of RFC 5646."""
    pseudo = {"ZZ", "XA", "XB", "QO", "EU", "EZ", "UN"}
    return frozenset(
        str(code)
        for code in Locale("en").territories
        if re.fullmatch(r"[A-Z]{2}", str(code)) and str(code) not in pseudo
    )


def canonical_locale(value: str) -> str:
    """A BCP 47 tag Babel knows (fr, en_US, fr-CA) in its stored form; ValueError if none."""
    try:
        return tag(Locale.parse(value.strip().replace("_", "-"), sep="-"))
    except (UnknownLocaleError, ValueError, TypeError):
        raise ValueError(f"{value.strip()!r} is not a known locale (e.g. en, en-US, fr)") from None


def tag(locale: Locale) -> str:
    """A Babel locale as the BCP 47 tag followup stores (fr, en-US, zh-Hans-CN)."""
    parts = [locale.language, locale.script, locale.territory]
    return "-".join(p for p in parts if p)
