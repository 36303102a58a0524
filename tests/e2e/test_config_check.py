"""End to end: `followup config check` and the warnings every command logs at start, through
the installed executable, in a folder made by `followup init`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.executable import followup

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shop")
    followup(folder, "init")
    return folder


@pytest.fixture
def shop(initialised: Path, tmp_path: Path) -> Path:
    """A copy of the initialised folder, free to edit."""
    folder = tmp_path / "shop"
    shutil.copytree(initialised, folder, symlinks=True)
    return folder


def edit_config(shop: Path, replacements: dict[str, str]) -> str:
    """Replace the first line of config.toml that starts with each key; returns the text
    before."""
    config = shop / "config.toml"
    before = text = config.read_text(encoding="utf-8")
    for old, new in replacements.items():
        line = next(line for line in text.splitlines() if line.startswith(old))
        text = text.replace(line, new, 1)
    config.write_text(text, encoding="utf-8")
    return before


def test_a_good_configuration_checks_clean(shop: Path) -> None:
    result = followup(shop, "config", "check", "--strict")
    assert result.stdout.strip() == "config.toml: ok (0 warning(s))"
    assert result.stderr == ""


def test_a_misspelled_variable_is_a_warning_and_with_strict_an_error(shop: Path) -> None:
    env = {"FOLLOWUP_SMTP_PASWORD": "hunter2"}
    result = followup(shop, "config", "check", env=env)
    assert result.stdout.strip() == "config.toml: ok (1 warning(s))"
    assert result.stderr.strip() == (
        "warning: the environment variable FOLLOWUP_SMTP_PASWORD is not a setting of followup "
        "and is ignored; did you mean FOLLOWUP_SMTP_PASSWORD?"
    )

    strict = followup(shop, "config", "check", "--strict", env=env, check=False)
    assert strict.returncode == 1
    assert "error: config.toml: 1 warning(s), and --strict" in strict.stderr
    assert "hunter2" not in strict.stdout + strict.stderr + result.stderr


def test_every_command_logs_the_warnings_when_it_starts(shop: Path) -> None:
    result = followup(shop, "status", env={"FOLLOWUP_SMTP_PASWORD": "hunter2"})
    assert (
        "warning event=config.unknown_variable variable=FOLLOWUP_SMTP_PASWORD "
        "suggestion=FOLLOWUP_SMTP_PASSWORD" in result.stderr
    )
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        (
            "FOLLOWUP_SMTP_TIMEOUT",
            "inf",
            "[smtp] timeout (from FOLLOWUP_SMTP_TIMEOUT): Input "
            "should be a finite number, got 'inf'",
        ),
        (
            "FOLLOWUP_SMTP_TIMEOUT",
            "-5",
            "[smtp] timeout (from FOLLOWUP_SMTP_TIMEOUT): Input should be greater than 0, got '-5'",
        ),
        (
            "FOLLOWUP_SMTP_RATE_PER_SECOND",
            "1e-9",
            "[smtp] rate_per_second (from "
            "FOLLOWUP_SMTP_RATE_PER_SECOND): Value error, must be 0 (no limit) or at least 0.001",
        ),
    ],
)
def test_a_number_that_is_not_finite_or_absurd_stops_the_check_and_every_command(
    shop: Path, variable: str, value: str, problem: str
) -> None:
    for command in (["config", "check"], ["status"]):
        result = followup(shop, *command, env={variable: value}, check=False)
        assert result.returncode == 1, command
        assert f"error: config.toml: {problem}" in result.stderr, (command, result.stderr)


def test_every_error_is_listed_at_once(shop: Path) -> None:
    config = shop / "config.toml"
    good = config.read_text(encoding="utf-8")
    config.write_text(
        good.replace("timeout = 30", "timeout = nan").replace("port = 8025", "port = 0")
    )
    env = {"FOLLOWUP_SCHEDULE_DISPATCH_INTERVAL_SECONDS": "-inf"}
    result = followup(shop, "config", "check", env=env, check=False)

    assert result.returncode == 1
    assert [line.split(":", 3)[2].strip() for line in result.stderr.splitlines()] == [
        "[smtp] timeout",
        "[http] port",
        "[schedule] dispatch_interval_seconds (from FOLLOWUP_SCHEDULE_DISPATCH_INTERVAL_SECONDS)",
    ]
    # The calendars are read once config.toml is good.
    (shop / "config.toml").write_text(good, encoding="utf-8")
    (shop / "calendars" / "extra.toml").write_text(
        '[occasions.x]\nkind = "yearly"\ndate = "birthday"\nlateness_hours = 99999999\n',
        encoding="utf-8",
    )
    result = followup(shop, "config", "check", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {shop / 'calendars' / 'extra.toml'}:4: [occasions.x] lateness_hours: must be "
        "between 0 and 8784 (a year)"
    )


def test_a_login_in_clear_text_is_refused_unless_allowed_and_then_logged(shop: Path) -> None:
    edit_config(shop, {"security =": 'security = "none"', "username =": 'username = "shop"'})
    for command in (["config", "check"], ["status"]):
        refused = followup(shop, *command, check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            'error: config.toml: [smtp] username is set with [smtp] security = "none": '
            "the password would cross the network in clear text."
        ), refused.stderr
        assert "set [smtp] allow_cleartext_auth = true" in refused.stderr

    env = {"FOLLOWUP_SMTP_ALLOW_CLEARTEXT_AUTH": "true"}
    checked = followup(shop, "config", "check", env=env)
    assert '[smtp] allow_cleartext_auth = true: with security = "none"' in checked.stderr
    assert followup(shop, "config", "check", "--strict", env=env, check=False).returncode == 1
    started = followup(shop, "status", env=env)
    assert "warning event=config.cleartext_auth host=" in started.stderr
