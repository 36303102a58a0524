"""What every section of config.toml is: its keys fixed, its values frozen and finite."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

#: Bounds of the numeric settings: an hour and a day in seconds, a (leap) year in days.
HOUR, DAY = 3600, 86_400
YEAR_DAYS = 366


class Section(BaseModel):
    #: inf and nan are refused everywhere (TOML's `inf`, FOLLOWUP_SMTP_TIMEOUT=inf), and every
    #: number has a lower and an upper bound (tests/unit/test_config.py checks it).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
