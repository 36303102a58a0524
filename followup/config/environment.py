"""FOLLOWUP_* environment variables: the ones followup reads, and those it would ignore without
a word (a misspelled FOLLOWUP_SMTP_PASWORD), each with the name it probably meant."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from followup.config.settings import CampaignSettings, setting_variables

PREFIX = "FOLLOWUP_"
CAMPAIGNS = PREFIX + "CAMPAIGNS_"

#: The variables followup reads that are no FOLLOWUP_<SECTION>_<KEY> setting.
OTHER_VARIABLES: dict[str, str] = {
    "FOLLOWUP_CONFIG": "the configuration file (--config)",
    "FOLLOWUP_NOW": "the instant the clock starts at (--now)",
    "FOLLOWUP_SMTP_PASSWORD": "secret: the SMTP password",
    "FOLLOWUP_SECRET_KEY": "secret: signs the links of the messages",
    "FOLLOWUP_CRASH_SEED": "test suite: the seed of tests/e2e/test_crash.py",
    "FOLLOWUP_TRUTH_EXAMPLES": "test suite: examples of tests/e2e/test_dryrun_truth.py",
}
#: Prefixes of the test suite's own variables (FOLLOWUP_TEST_POSTGRES_URL, ...).
OTHER_PREFIXES = ("FOLLOWUP_TEST_",)

#: How alike (difflib's ratio, after the prefix) a known name must be to be suggested.
SIMILAR = 0.75


@dataclass(frozen=True)
class UnknownVariable:
    """A FOLLOWUP_* variable that followup does not read, and the known one nearest to it."""

    name: str
    suggestion: str | None


def known_variables() -> set[str]:
    """Every fixed name followup reads (the campaigns' names are open: see `is_known`)."""
    return set(setting_variables()) | set(OTHER_VARIABLES)


def is_known(name: str, known: set[str]) -> bool:
    if name in known or name.startswith(OTHER_PREFIXES):
        return True
    rest = name.removeprefix(CAMPAIGNS)
    if rest == name:
        return False
    return any(rest.endswith(suffix) and len(rest) > len(suffix) for suffix in _campaign_suffixes())


def unknown_variables(env: Mapping[str, str]) -> list[UnknownVariable]:
    """The variables of `env` named FOLLOWUP_* (in any case) that no setting or other use of
    followup reads, sorted, each with a "did you mean" when a known name is close."""
    known = known_variables()
    found = []
    for name in sorted(env):
        if not name.upper().startswith(PREFIX) or is_known(name, known):
            continue
        found.append(UnknownVariable(name, suggest(name, known)))
    return found


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The known name nearest to `name`, if one is near enough. A campaign's variable is
    compared with each key under each name its words could spell."""
    upper = name.upper()
    candidates = set(known)
    if upper.startswith(CAMPAIGNS):
        words = upper.removeprefix(CAMPAIGNS).split("_")
        for end in range(1, len(words)):
            campaign = "_".join(words[:end])
            candidates |= {CAMPAIGNS + campaign + suffix for suffix in _campaign_suffixes()}
    tails = {candidate.removeprefix(PREFIX): candidate for candidate in candidates}
    match = difflib.get_close_matches(upper.removeprefix(PREFIX), tails, n=1, cutoff=SIMILAR)
    return tails[match[0]] if match else None


def _campaign_suffixes() -> list[str]:
    return ["_" + key.upper() for key in CampaignSettings.model_fields]
