"""[tiers] and [defaults]: what followup works out about clients from their data, tiers
from their purchases in several currencies and a zone and locale from their country
(docs/clients.md)."""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Annotated, Any

from babel.numbers import is_currency
from pydantic import Field, ValidationInfo, field_validator

from followup.config.base import YEAR_DAYS, Section
from followup.domain.territories import canonical_locale, countries

#: A currency's own VIP threshold (major units) and its rate to the reference currency.
_Threshold = Annotated[int, Field(ge=0, le=10**15)]
_Rate = Annotated[float, Field(gt=0, le=10**9, allow_inf_nan=False)]


def _table(value: Any) -> Any:
    """A table given in the environment, "BRL=0.17, NPR=0.0063", as a dict (a table in the
    file is one already)."""
    if not isinstance(value, str):
        return value
    table: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, found = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item.strip()!r} is not KEY=VALUE (e.g. BRL=0.17, NPR=0.0063)")
        table[key.strip()] = found.strip()
    return table


def _currency_keys(table: dict[str, Any]) -> dict[str, Any]:
    for code in table:
        if not re.fullmatch(r"[A-Z]{3}", code) or not is_currency(code):
            raise ValueError(f"{code!r} is not an ISO 4217 currency code (upper case, e.g. BRL)")
    return table


class TierSettings(Section):
    """RFM tiers: from recency, frequency and monetary value of each client's paid purchases.
    A tier given in the client's data (the clients.csv `tier` column) wins."""

    #: The reference currency of vip_min_total and of the rates.
    currency: str = "EUR"
    #: vip: spent at least this much (in major units of `currency`, the other currencies
    #: converted by `rates`) ...
    vip_min_total: int = Field(default=50_000, ge=0, le=10**12)
    #: ... or at least a currency's own threshold in that currency alone ([tiers.vip_min_totals]
    #: BRL = 280000, major units) ...
    vip_min_totals: dict[str, _Threshold] = Field(default_factory=dict)
    #: ... or bought at least this many times. What 1 unit of a currency is worth in
    #: `currency` ([tiers.rates] BRL = 0.17); spend in a currency with neither a threshold
    #: nor a rate is not counted.
    rates: dict[str, _Rate] = Field(default_factory=dict)
    vip_min_purchases: int = Field(default=4, ge=1, le=1_000_000)
    #: new: first purchase within this many days.
    new_within_days: int = Field(default=90, ge=0, le=100 * YEAR_DAYS)
    #: lapsed: no purchase for this many days.
    lapsed_after_days: int = Field(default=730, ge=1, le=100 * YEAR_DAYS)

    @field_validator("currency")
    @classmethod
    def _a_currency(cls, value: str) -> str:
        return next(iter(_currency_keys({value.strip(): None})))

    @field_validator("vip_min_totals", "rates", mode="before")
    @classmethod
    def _from_the_environment(cls, value: Any) -> Any:
        return _table(value)

    @field_validator("vip_min_totals")
    @classmethod
    def _currencies(cls, value: dict[str, int]) -> dict[str, int]:
        return _currency_keys(value)

    @field_validator("rates")
    @classmethod
    def _rates(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        """The reference currency is worth itself: a rate for it other than 1 is a typo."""
        reference = info.data.get("currency")
        if value.get(reference or "", 1) != 1:
            raise ValueError(f"{reference} is [tiers] currency: its rate is 1 (or leave it out)")
        return _currency_keys(value)


class DefaultsSettings(Section):
    """A client's zone and locale when the import file gives none: per country, then for
    every country (docs/clients.md, "Zone and language from the country")."""

    #: The zone of a client of a country with several zones and none configured below: a
    #: guess, which the import report warns about ("" for none: the zone most of the
    #: country lives in, also a guess; a country without one, such as Antarctica, is rejected).
    timezone: str = ""
    #: The locale of a client of a country without language data ("": [sender]
    #: default_locale).
    locale: str = ""
    #: [defaults.timezones] US = "America/New_York": a country's zone (it wins over the data).
    timezones: dict[str, str] = Field(default_factory=dict)
    #: [defaults.locales] CA = "fr-CA": a country's locale (it wins over the data).
    locales: dict[str, str] = Field(default_factory=dict)

    @field_validator("timezones", "locales", mode="before")
    @classmethod
    def _from_the_environment(cls, value: Any) -> Any:
        return _table(value)

    @field_validator("timezone")
    @classmethod
    def _a_zone(cls, value: str) -> str:
        return _zone(value) if value.strip() else ""

    @field_validator("locale")
    @classmethod
    def _a_locale(cls, value: str) -> str:
        return canonical_locale(value) if value.strip() else ""

    @field_validator("timezones")
    @classmethod
    def _zones(cls, value: dict[str, str]) -> dict[str, str]:
        return {_country(k): _zone(v) for k, v in value.items()}

    @field_validator("locales")
    @classmethod
    def _locales(cls, value: dict[str, str]) -> dict[str, str]:
        return {_country(k): canonical_locale(v) for k, v in value.items()}


def _zone(value: str) -> str:
    value = value.strip()
    if value not in _zone_names():
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)")
    return value


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _country(code: str) -> str:
    if code not in countries():
        raise ValueError(f"{code!r} is not an ISO 3166 alpha-2 country code (upper case, e.g. US)")
    return code
