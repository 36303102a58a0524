"""What works but is probably a mistake (followup/config/environment.py, checks.py): FOLLOWUP_*
variables that no setting reads, with the one they probably meant, a login in clear text
allowed on purpose; and `check_config`, which collects every error and warning at once."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from followup.config.checks import check_config, config_warnings, log_warnings
from followup.config.environment import OTHER_VARIABLES, known_variables, unknown_variables
from followup.config.settings import load_settings, setting_variables
from followup.logs import EventFormatter
from tests.support.settings import ROOT

REPOSITORY_CONFIG = ROOT / "config.toml"
#: The example of a typo, in the docs and docstrings.
MISSPELLED_ON_PURPOSE = {"FOLLOWUP_SMTP_PASWORD"}


def unknown(env: dict[str, str]) -> dict[str, str | None]:
    return {u.name: u.suggestion for u in unknown_variables(env)}


# ----------------------------------------------------------------- unknown variables


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("FOLLOWUP_SMTP_PASWORD", "FOLLOWUP_SMTP_PASSWORD"),
        ("FOLLOWUP_SMPT_HOST", "FOLLOWUP_SMTP_HOST"),
        ("FOLLOWUP_DATABASE_UR", "FOLLOWUP_DATABASE_URL"),
        ("FOLLOWUP_SECRETKEY", "FOLLOWUP_SECRET_KEY"),
        ("FOLLOWUP_SCHEDULE_PLAN_HORIZON", "FOLLOWUP_SCHEDULE_PLAN_HORIZON_DAYS"),
        ("followup_smtp_port", "FOLLOWUP_SMTP_PORT"),
        ("Followup_Now", "FOLLOWUP_NOW"),
        (
            "FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENES_HOURS",
            "FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS",
        ),
        ("FOLLOWUP_CAMPAIGNS_BIRTHDAY_ENABLD", "FOLLOWUP_CAMPAIGNS_BIRTHDAY_ENABLED"),
    ],
)
def test_a_misspelled_variable_is_named_with_the_one_it_probably_meant(
    variable: str, meant: str
) -> None:
    assert unknown({variable: "x", "HOME": "/root"}) == {variable: meant}


@pytest.mark.parametrize("variable", ["FOLLOWUP_BOGUS", "FOLLOWUP_", "FOLLOWUP_CAMPAIGNS_X"])
def test_a_variable_like_no_known_one_is_named_without_a_suggestion(variable: str) -> None:
    assert unknown({variable: "x"}) == {variable: None}


def test_every_variable_followup_reads_is_known() -> None:
    env = dict.fromkeys(setting_variables(), "x")
    env.update(dict.fromkeys(OTHER_VARIABLES, "x"))
    env.update(
        {
            "FOLLOWUP_TEST_POSTGRES_URL": "x",
            "FOLLOWUP_TEST_ANYTHING_NEW": "x",
            "FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS": "x",
            "FOLLOWUP_CAMPAIGNS_SATISFACTION_SURVEY_ENABLED": "x",
            "FOLLOWUP_CAMPAIGNS_NEW_YEAR_SEND_TIME": "x",
            "PATH": "/usr/bin",
            "XFOLLOWUP_SMTP_PASWORD": "x",
        }
    )
    assert {"FOLLOWUP_SMTP_PORT", "FOLLOWUP_TEMPLATES_DIR", "FOLLOWUP_LOG_FORMAT"} <= set(env)
    assert unknown(env) == {}


def test_the_known_variables_are_all_that_followup_its_tests_and_docs_use() -> None:
    """Every FOLLOWUP_* name written in the code, the tests, the benchmarks and the docs is a
    setting or in OTHER_VARIABLES: a new knob is added there, or its users get a warning
    (this file and the config tests name unknown ones on purpose)."""
    files = [
        *ROOT.glob("followup/**/*.py"),
        *ROOT.glob("bench/**/*.py"),
        *ROOT.glob("docs/*.md"),
        *(p for p in ROOT.glob("tests/**/*.py") if not p.name.startswith("test_config")),
        ROOT / "README.md",
        ROOT / ".ci" / "run",
        ROOT / "config.toml",
    ]
    names = set()
    for path in files:
        names |= set(re.findall(r"\bFOLLOWUP_[A-Z0-9_]*[A-Z0-9]\b", path.read_text("utf-8")))
    assert {"FOLLOWUP_NOW", "FOLLOWUP_TEST_POSTGRES_URL", "FOLLOWUP_CRASH_SEED"} <= names
    assert unknown(dict.fromkeys(names - MISSPELLED_ON_PURPOSE, "x")) == {}
    assert "FOLLOWUP_CONFIG" in known_variables()


# ----------------------------------------------------------------- warnings and their logs


def test_a_login_in_clear_text_allowed_on_purpose_is_a_warning() -> None:
    env = {
        "FOLLOWUP_SMTP_SECURITY": "none",
        "FOLLOWUP_SMTP_USERNAME": "shop",
        "FOLLOWUP_SMTP_ALLOW_CLEARTEXT_AUTH": "true",
        "FOLLOWUP_SMTP_HOST": "relay.internal",
        "FOLLOWUP_SMTP_PASSWORD": "hunter2",
    }
    warnings = config_warnings(load_settings(REPOSITORY_CONFIG, env), env)

    assert [w.event for w in warnings] == ["config.cleartext_auth"]
    assert dict(warnings[0].fields) == {"host": "relay.internal", "port": 587}
    assert "relay.internal:587 in clear text" in warnings[0].message
    assert "hunter2" not in repr(warnings)


@pytest.mark.parametrize(
    "env",
    [
        {"FOLLOWUP_SMTP_ALLOW_CLEARTEXT_AUTH": "true", "FOLLOWUP_SMTP_USERNAME": "shop"},
        {"FOLLOWUP_SMTP_ALLOW_CLEARTEXT_AUTH": "true", "FOLLOWUP_SMTP_SECURITY": "none"},
        {},
    ],
)
def test_no_warning_when_no_password_crosses_in_clear(env: dict[str, str]) -> None:
    """The permission alone (over TLS, or without a login) sends nothing in clear."""
    assert config_warnings(load_settings(REPOSITORY_CONFIG, env), env) == []


def test_warnings_are_logged_as_events_without_the_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"FOLLOWUP_SMTP_PASWORD": "hunter2", "FOLLOWUP_BOGUS": "secret-too"}
    with caplog.at_level(logging.WARNING, logger="followup"):
        log_warnings(config_warnings(load_settings(REPOSITORY_CONFIG, env), env))

    lines = [EventFormatter().format(record).split(" ", 1)[1] for record in caplog.records]
    assert lines == [
        "warning event=config.unknown_variable variable=FOLLOWUP_BOGUS",
        "warning event=config.unknown_variable variable=FOLLOWUP_SMTP_PASWORD "
        "suggestion=FOLLOWUP_SMTP_PASSWORD",
    ]
    assert "hunter2" not in caplog.text and "secret-too" not in caplog.text


# ----------------------------------------------------------------- check_config


def test_a_good_configuration_checks_clean() -> None:
    result = check_config(REPOSITORY_CONFIG, {})
    assert result.ok
    assert (result.source, result.errors, result.warnings) == (str(REPOSITORY_CONFIG), [], [])
    assert result.settings is not None and result.settings.smtp.port == 587


def test_every_error_and_every_warning_come_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[smtp]\ntimeout = inf\n[http]\nport = 0\n", encoding="utf-8")
    env = {"FOLLOWUP_SMTP_PASWORD": "x", "FOLLOWUP_SCHEDULE_DISPATCH_INTERVAL_SECONDS": "nan"}
    result = check_config(path, env)

    assert not result.ok and result.settings is None
    assert [error.split(": ", 2)[1] for error in result.errors] == [
        "[smtp] timeout",
        "[http] port",
        "[schedule] dispatch_interval_seconds (from FOLLOWUP_SCHEDULE_DISPATCH_INTERVAL_SECONDS)",
    ]
    assert [w.fields["variable"] for w in result.warnings] == ["FOLLOWUP_SMTP_PASWORD"]


def test_the_calendars_are_checked_too(tmp_path: Path) -> None:
    (tmp_path / "calendars").mkdir()
    (tmp_path / "calendars" / "shop.toml").write_text(
        '[occasions.x]\nkind = "yearly"\ndate = "birthday"\nlateness_hours = -3\n',
        encoding="utf-8",
    )
    path = tmp_path / "config.toml"
    path.write_text("", encoding="utf-8")
    result = check_config(path, {})

    assert result.errors == [
        f"{tmp_path / 'calendars' / 'shop.toml'}:4: [occasions.x] lateness_hours: "
        "must be between 0 and 8784 (a year)"
    ]


def test_a_missing_file_is_an_error_of_the_check(tmp_path: Path) -> None:
    result = check_config(tmp_path / "none.toml", {"FOLLOWUP_NOWW": "x"})
    assert len(result.errors) == 1 and "no such configuration file" in result.errors[0]
    assert [w.fields.get("suggestion") for w in result.warnings] == ["FOLLOWUP_NOW"]
