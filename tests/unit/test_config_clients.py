"""[tiers] per currency and [defaults] zones and locales (config/clients.py): read from the file
and the environment, bounded, and refused with the key named."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import annotated_types
import pytest
from pydantic import BaseModel

from followup.config import load_settings
from followup.config.settings import Settings
from followup.errors import ConfigError
from tests.support.settings import ROOT

REPOSITORY_CONFIG = ROOT / "config.toml"


def test_every_number_of_a_table_has_a_lower_and_an_upper_bound() -> None:
    """[tiers.rates] BRL = 1e300 is a typo, as much as any other number."""
    tables = 0
    for name, info in Settings.model_fields.items():
        if not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            continue
        for key, field in info.annotation.model_fields.items():
            args = get_args(field.annotation)
            if len(args) != 2 or args[0] is not str or args[1] is str:
                continue
            tables += 1
            metadata = getattr(args[1], "__metadata__", ())
            bounds = [m for f in metadata for m in getattr(f, "metadata", [f])]
            lower = [m for m in bounds if isinstance(m, annotated_types.Ge | annotated_types.Gt)]
            upper = [m for m in bounds if isinstance(m, annotated_types.Le | annotated_types.Lt)]
            assert lower and upper, f"[{name}.{key}] has no lower or no upper bound"
    assert tables >= 2


def test_the_tables_come_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[tiers]\ncurrency = "BRL"\n[tiers.rates]\nEUR = 5.9\n[tiers.vip_min_totals]\n'
        'JPY = 7000000\n[defaults]\ntimezone = "Europe/Paris"\nlocale = "fr_ca"\n'
        '[defaults.timezones]\nUS = "America/Chicago"\n[defaults.locales]\nCA = "fr-CA"\n',
        encoding="utf-8",
    )
    settings = load_settings(path, {})
    assert (settings.tiers.currency, settings.tiers.rates) == ("BRL", {"EUR": 5.9})
    assert settings.tiers.vip_min_totals == {"JPY": 7_000_000}
    assert (settings.defaults.timezone, settings.defaults.locale) == ("Europe/Paris", "fr-CA")
    assert settings.defaults.timezones == {"US": "America/Chicago"}
    assert settings.defaults.locales == {"CA": "fr-CA"}

    env = {
        "FOLLOWUP_TIERS_RATES": "BRL=0.17, NPR=0.0063",
        "FOLLOWUP_DEFAULTS_TIMEZONES": "US=America/New_York,BR=America/Sao_Paulo",
    }
    from_env = load_settings(REPOSITORY_CONFIG, env)
    assert from_env.tiers.rates == {"BRL": 0.17, "NPR": 0.0063}
    assert from_env.defaults.timezones == {"US": "America/New_York", "BR": "America/Sao_Paulo"}


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("[tiers.rates]\nBRL = 0\n", "[tiers.rates] BRL", "greater than 0"),
        ("[tiers.rates]\nBRL = 1e12\n", "[tiers.rates] BRL", "less than or equal"),
        ("[tiers.rates]\nbrl = 0.2\n", "[tiers] rates", "'brl' is not an ISO 4217"),
        ("[tiers.rates]\nEUR = 2\n", "[tiers] rates", "EUR is [tiers] currency"),
        ("[tiers.vip_min_totals]\nBRL = -1\n", "[tiers.vip_min_totals] BRL", "greater than"),
        ('[tiers]\ncurrency = "EURO"\n', "[tiers] currency", "'EURO' is not an ISO 4217"),
        ('[defaults]\ntimezone = "Mars/Base"\n', "[defaults] timezone", "not an IANA"),
        ('[defaults]\nlocale = "xx-99"\n', "[defaults] locale", "not a known locale"),
        ('[defaults.timezones]\nUSA = "America/Chicago"\n', "[defaults] timezones", "'USA'"),
        ('[defaults.locales]\nCA = "klingon"\n', "[defaults] locales", "not a known locale"),
    ],
)
def test_a_bad_table_value_names_the_key(
    tmp_path: Path, text: str, where: str, reason: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, {})
    assert f"{path}: {where}" in str(raised.value)
    assert reason in str(raised.value)


def test_a_bad_pair_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(REPOSITORY_CONFIG, {"FOLLOWUP_TIERS_RATES": "BRL:0.17"})
    message = str(raised.value)
    assert "[tiers] rates (from FOLLOWUP_TIERS_RATES)" in message
    assert "'BRL:0.17' is not KEY=VALUE" in message
