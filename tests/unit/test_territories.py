"""A client's zone and locale from their country (domain/territories.py, docs/clients.md), and
the VIP rule over spend in several currencies (domain/care.py): pure, over Babel's territory
data and the tz database as installed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.domain import care
from followup.domain.care import TierRules
from followup.domain.clients import ClientStats
from followup.domain.money import minor_digits
from followup.domain.territories import (
    NO_DEFAULTS,
    Inferred,
    NoValue,
    Source,
    TerritoryDefaults,
    _territory_zones,
    countries,
    country_zones,
)
from followup.importing.fields import parse_locale, parse_timezone

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- every country


@pytest.mark.parametrize("country", sorted(countries()))
def test_every_country_gets_a_valid_locale_and_a_zone_or_says_why_not(country: str) -> None:
    locale = NO_DEFAULTS.language(country)
    assert locale.source is Source.COUNTRY
    assert parse_locale(locale.value) == locale.value  # stored as the importer stores a tag
    try:
        zone = NO_DEFAULTS.zone(country, NOW)
    except NoValue as refusal:
        # A refusal names the setting that decides, and the zones when there are several.
        assert f"[defaults.timezones] {country}" in str(refusal)
        assert len(country_zones(country, NOW.year)) != 1
    else:
        several = len(country_zones(country, NOW.year)) > 1
        # A country of several zones gives the one most of its people live in, as a guess.
        assert zone.source is (Source.MAIN if several else Source.COUNTRY)
        assert parse_timezone(zone.value) == zone.value
        assert zone.value in _territory_zones()[country]


@pytest.mark.parametrize(
    ("country", "locale", "zone"),
    [
        ("BR", "pt-BR", "America/Sao_Paulo"),  # the most people's of 4: a guess
        ("FR", "fr-FR", "Europe/Paris"),
        ("CA", "en-CA", "America/Toronto"),  # English is the most spoken official language
        ("CH", "de-CH", "Europe/Zurich"),
        ("BE", "nl-BE", "Europe/Brussels"),
        ("JP", "ja-JP", "Asia/Tokyo"),
        ("NP", "ne-NP", "Asia/Kathmandu"),
        # Two zones with the same clocks from now on are one: Berlin and Busingen.
        ("DE", "de-DE", "Europe/Berlin"),
        ("AR", "es-AR", "America/Argentina/Buenos_Aires"),
    ],
)
def test_the_main_official_language_with_the_country_and_the_single_zone(
    country: str, locale: str, zone: str | None
) -> None:
    assert NO_DEFAULTS.language(country).value == locale
    if zone is None:
        with pytest.raises(NoValue, match=f"{country} has .* time zones"):
            NO_DEFAULTS.zone(country, NOW)
    else:
        assert NO_DEFAULTS.zone(country, NOW).value == zone


@pytest.mark.parametrize(
    ("country", "zone"),
    [("US", "America/New_York"), ("RU", "Europe/Moscow"), ("MX", "America/Mexico_City")],
)
def test_a_country_of_several_zones_takes_the_one_most_of_it_lives_in_as_a_guess(
    country: str, zone: str
) -> None:
    assert len(country_zones(country, NOW.year)) > 1
    assert NO_DEFAULTS.zone(country, NOW) == Inferred(zone, Source.MAIN)
    # [defaults] timezone, set by the shop, comes before the built-in guess.
    shop = TerritoryDefaults(timezone="Europe/Paris")
    assert shop.zone(country, NOW) == Inferred("Europe/Paris", Source.DEFAULT)
    # Antarctica's stations have no such zone: refused, naming the setting.
    with pytest.raises(NoValue, match=r"\[defaults.timezones\] AQ"):
        NO_DEFAULTS.zone("AQ", NOW)


def test_zones_with_the_same_clocks_go_by_the_name_people_use() -> None:
    assert "Europe/Madrid" in country_zones("ES", NOW.year)
    assert "Europe/Lisbon" in country_zones("PT", NOW.year)
    assert "America/Toronto" in country_zones("CA", NOW.year)


def test_a_configured_country_wins_then_the_global_default_is_a_guess() -> None:
    defaults = TerritoryDefaults(
        timezones={"US": "America/Chicago", "FR": "Europe/Paris"},
        locales={"CA": "fr-CA"},
        timezone="America/New_York",
        locale="en",
    )
    assert defaults.zone("US", NOW).source is Source.CONFIGURED
    assert defaults.zone("US", NOW).value == "America/Chicago"
    assert defaults.language("CA").value == "fr-CA"
    guess = defaults.zone("BR", NOW)
    assert (guess.value, guess.source) == ("America/New_York", Source.DEFAULT)
    assert defaults.zone("JP", NOW).source is Source.COUNTRY  # the data before the default
    # Kosovo has no zone in the territory data: the default, a guess.
    assert defaults.zone("XK", NOW).source is Source.DEFAULT
    with pytest.raises(NoValue, match="XK has no time zone"):
        NO_DEFAULTS.zone("XK", NOW)


def test_zones_counted_as_one_keep_the_same_clocks_for_two_years() -> None:
    for country in ("DE", "AR", "CY", "KZ", "MY", "UZ", "US", "BR"):
        for name in country_zones(country, NOW.year):
            others = [z for z in country_zones(country, NOW.year) if z != name]
            # Each listed zone differs from every other one at some hour of the two years.
            for other in others:
                hours = (NOW + timedelta(hours=h) for h in range(0, 2 * 366 * 24, 1))
                assert any(
                    i.astimezone(ZoneInfo(name)).utcoffset()
                    != i.astimezone(ZoneInfo(other)).utcoffset()
                    for i in hours
                ), (country, name, other)


# ----------------------------------------------------------------------------- tiers per currency

RULES = TierRules(vip_min_total_minor=5_000_000, vip_min_purchases=100, currency="EUR")


def spent(*amounts: tuple[str, int], purchases: int = 2) -> ClientStats:
    return ClientStats(
        purchases=purchases,
        spent=tuple(sorted(amounts)),
        first_purchase=NOW - timedelta(days=400),
        last_purchase=NOW - timedelta(days=30),
    )


def test_a_scooter_in_rupees_and_a_car_in_reais_are_not_euros() -> None:
    """89,000 BRL and 250,000 NPR: neither counts toward 50,000 EUR without a rate."""
    client = spent(("BRL", 8_900_000), ("NPR", 25_000_000))
    assert care.tier(client, NOW, RULES) == "regular"
    assert care.counted_total(client, RULES) == 0
    assert care.not_counted(client, RULES) == ("BRL", "NPR")


def test_with_rates_they_count_converted_in_minor_units() -> None:
    rules = TierRules.of(
        "EUR",
        50_000,
        {},
        {"BRL": 0.17, "NPR": 0.0063, "JPY": 0.0061, "KWD": 2.95},
        vip_min_purchases=100,
    )
    # 1,000.00 BRL = 170.00 EUR; 100,000.00 NPR = 630.00 EUR; 10,000 JPY (no decimals) =
    # 61.00 EUR; 1.000 KWD (three decimals) = 2.95 EUR.
    assert care.counted_total(spent(("BRL", 100_000)), rules) == 17_000
    assert care.counted_total(spent(("NPR", 10_000_000)), rules) == 63_000
    assert care.counted_total(spent(("JPY", 10_000)), rules) == 6_100
    assert care.counted_total(spent(("KWD", 1_000)), rules) == 295
    big = spent(("BRL", 8_900_000 * 2), ("NPR", 25_000_000), ("EUR", 1_000_000))
    # 30,260 + 1,575 + 10,000 EUR: still under 50,000.
    assert care.counted_total(big, rules) == 4_183_500
    assert care.tier(big, NOW, rules) == "regular"
    assert care.tier(spent(("BRL", 30_000_000)), NOW, rules) == "vip"  # 51,000 EUR


def test_a_currency_reaching_its_own_threshold_is_vip() -> None:
    rules = TierRules.of("EUR", 50_000, {"BRL": 280_000, "JPY": 7_000_000}, {})
    assert rules.vip_min_totals_minor == {"BRL": 28_000_000, "JPY": 7_000_000}
    assert care.tier(spent(("BRL", 27_999_999)), NOW, rules) == "regular"
    assert care.tier(spent(("BRL", 28_000_000)), NOW, rules) == "vip"
    assert care.tier(spent(("JPY", 7_000_000)), NOW, rules) == "vip"
    assert care.not_counted(spent(("BRL", 1)), rules) == ()


CURRENCIES = ("EUR", "BRL", "NPR", "JPY", "KWD", "USD")


@given(
    amounts=st.dictionaries(st.sampled_from(CURRENCIES), st.integers(0, 10**12), max_size=6),
    rates=st.dictionaries(
        st.sampled_from(CURRENCIES[1:]), st.floats(1e-6, 1e3, allow_nan=False), max_size=5
    ),
    own=st.dictionaries(st.sampled_from(CURRENCIES), st.integers(0, 10**9), max_size=3),
    threshold=st.integers(0, 10**9),
)
def test_the_vip_rule_over_mixed_currencies(
    amounts: dict[str, int], rates: dict[str, float], own: dict[str, int], threshold: int
) -> None:
    rules = TierRules.of("EUR", threshold, own, rates, vip_min_purchases=1_000)
    client = spent(*amounts.items())
    counted = care.counted_total(client, rules)
    # Only the reference currency and the currencies with a rate count, each rounded down.
    expected = amounts.get("EUR", 0) + sum(
        int(amounts[c] * Decimal(repr(rates[c])).scaleb(minor_digits("EUR") - minor_digits(c)))
        for c in amounts
        if c in rates
    )
    assert counted == expected
    vip = counted >= threshold * 100 or any(
        amounts[c] >= own[c] * 10 ** minor_digits(c) for c in amounts if c in own
    )
    assert (care.tier(client, NOW, rules) == "vip") is vip
    # Spend in a currency no rule knows never makes a client vip, whatever its size.
    uncounted = [c for c in amounts if c != "EUR" and c not in rates and c not in own]
    assert set(care.not_counted(client, rules)) == set(uncounted)
    grown = spent(*{**amounts, **dict.fromkeys(uncounted, 10**15)}.items())
    assert (care.tier(grown, NOW, rules) == "vip") is vip
