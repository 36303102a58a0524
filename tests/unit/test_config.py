"""config.toml -> Settings (docs/operations.md): defaults, environment overrides, errors that
name the file and the key, secrets only from the environment, paths relative to the file."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, time
from pathlib import Path
from typing import get_args

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from followup.config import Settings, load_settings
from followup.config.calendars import read_calendars
from followup.config.settings import CampaignSettings
from followup.errors import ConfigError
from tests.support.settings import ROOT

REPOSITORY_CONFIG = ROOT / "config.toml"


def write_config(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {} if env is None else env)
    return str(caught.value)


# ----------------------------------------------------------------------------- defaults


def test_defaults_load_from_the_repository_config() -> None:
    settings = load_settings(REPOSITORY_CONFIG, {})

    assert settings.base_dir == ROOT
    assert settings.database.url == "sqlite:///var/followup.db"
    assert settings.database.lease_seconds == 300
    assert (settings.delivery.mode, settings.delivery.batch_size) == ("capture", 200)
    assert settings.delivery.retry_base_seconds == 60.0
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.security) == (
        "localhost",
        587,
        "starttls",
    )
    assert (settings.smtp.timeout, settings.smtp.pool_size) == (30.0, 1)
    assert settings.sender.business_name == "Girard Motors"
    assert settings.sender.default_from == ("Girard Motors", "hello@example.com")
    assert settings.sender.envelope_from == "bounces@example.com"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8025)
    assert settings.schedule.plan_horizon_days == 2
    assert (settings.smtp_password, settings.secret_key) == ("", "")

    # The occasions live in calendars/; the shipped config overrides none of them.
    assert settings.campaigns == {}
    assert (settings.politeness.max_touches, settings.politeness.per_days) == (1, 3)
    assert settings.politeness.quiet_hours == "21:00-08:00"


def test_without_a_file_the_built_in_defaults_apply() -> None:
    settings = load_settings(None, {})

    assert settings == Settings(base_dir=Path.cwd())
    assert settings.smtp.port == 587
    assert settings.campaigns == {}
    assert settings.sender.default_from == ("Our shop", "hello@example.com")


def test_an_empty_file_gives_the_built_in_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, ""), {})

    assert settings == Settings(base_dir=tmp_path.resolve())


# ----------------------------------------------------------------------------- the environment


def test_an_environment_variable_overrides_the_file() -> None:
    settings = load_settings(REPOSITORY_CONFIG, {"FOLLOWUP_SMTP_PORT": "2525"})

    assert settings.smtp.port == 2525
    assert settings.smtp.host == "localhost"  # the rest of the section still comes from the file


@pytest.mark.parametrize(
    ("variable", "value", "read", "expected"),
    [
        ("FOLLOWUP_DATABASE_URL", "postgresql+psycopg://db/f", lambda s: s.database.url, None),
        ("FOLLOWUP_DELIVERY_MODE", "smtp", lambda s: s.delivery.mode, None),
        ("FOLLOWUP_SMTP_SECURITY", "tls", lambda s: s.smtp.security, None),
        ("FOLLOWUP_SMTP_RATE_PER_SECOND", "2.5", lambda s: s.smtp.rate_per_second, 2.5),
        ("FOLLOWUP_SENDER_DOMAIN", "girard.example", lambda s: s.sender.domain, None),
        ("FOLLOWUP_HTTP_PORT", "9000", lambda s: s.http.port, 9000),
        ("FOLLOWUP_SCHEDULE_PLAN_HORIZON_DAYS", "7", lambda s: s.schedule.plan_horizon_days, 7),
        ("FOLLOWUP_TEMPLATES_DIR", "/srv/templates", lambda s: s.templates_dir, None),
    ],
)
def test_every_section_can_be_overridden(
    variable: str, value: str, read: Callable[[Settings], object], expected: object
) -> None:
    settings = load_settings(REPOSITORY_CONFIG, {variable: value})
    assert read(settings) == (value if expected is None else expected)


def test_secrets_come_from_the_environment() -> None:
    settings = load_settings(
        REPOSITORY_CONFIG,
        {"FOLLOWUP_SMTP_PASSWORD": "hunter2", "FOLLOWUP_SECRET_KEY": "k" * 32},
    )

    assert settings.smtp_password == "hunter2"
    assert settings.secret_key == "k" * 32


def test_a_bad_value_from_the_environment_names_the_key_and_the_variable() -> None:
    message = config_error(REPOSITORY_CONFIG, {"FOLLOWUP_SMTP_PORT": "abc"})

    assert message.startswith(f"{REPOSITORY_CONFIG}: ")
    assert "[smtp] port (from FOLLOWUP_SMTP_PORT)" in message
    assert "'abc'" in message


def test_a_bad_value_in_the_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[smtp]\nport = "abc"\n')
    message = config_error(path)

    assert message.startswith(f"{path}: [smtp] port: ")
    assert "'abc'" in message
    assert "FOLLOWUP_SMTP_PORT" not in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("return_path", "Bounces <bounces@example.com>"),
        ("return_path", "bounces @example.com"),
        ("return_path", "bounces"),
        ("from_email", "<hello@example.com>"),
        ("from_email", "hello@example.com\r\nBcc: x@example.net"),
        ("domain", "shop@example.com"),
        ("domain", "example .com"),
        ("domain", ""),
    ],
)
def test_a_sender_address_that_cannot_go_between_angle_brackets_is_refused(
    tmp_path: Path, key: str, value: str
) -> None:
    """Refused when the configuration is read (followup check, every command), not when the
    first message goes out: a pipelined run stopped there, on the envelope sender."""
    path = write_config(tmp_path, f"[sender]\n{key} = {value!r}\n".replace("'", '"'))
    message = config_error(path)
    assert message.startswith(f"{path}: [sender] {key}: Value error, must be a bare ")
    variable = f"FOLLOWUP_SENDER_{key.upper()}"
    from_env = config_error(REPOSITORY_CONFIG, {variable: value})
    assert f"[sender] {key} (from {variable}): Value error, must be a bare " in from_env


def test_sender_addresses_and_domain_are_kept_without_surrounding_spaces(tmp_path: Path) -> None:
    text = '[sender]\ndomain = " shop.example "\nreturn_path = " b@shop.example "\n'
    sender = load_settings(write_config(tmp_path, text), {}).sender
    assert sender.envelope_from == "b@shop.example"
    assert sender.default_from[1] == "hello@shop.example"
    # Outside ASCII is an address too (sent with SMTPUTF8 when the server offers it).
    text = '[sender]\nfrom_email = "anaïs@exemple.fr"\n'
    assert (
        load_settings(write_config(tmp_path, text), {}).sender.default_from[1] == "anaïs@exemple.fr"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[smtp]\nport = 70000\n", "[smtp] port"),
        ('[smtp]\nsecurity = "ssl"\n', "[smtp] security"),
        ('[delivery]\nmode = "carrier-pigeon"\n', "[delivery] mode"),
        ("[delivery]\nbatch_size = 0\n", "[delivery] batch_size"),
        ("[database]\nlease_seconds = 1\n", "[database] lease_seconds"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path: Path, text: str, where: str) -> None:
    path = write_config(tmp_path, text)
    assert config_error(path).startswith(f"{path}: {where}: ")


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[smtp]\nport = "abc"\n[http]\nport = 0\n')
    lines = config_error(path).splitlines()

    assert len(lines) == 2
    assert lines[0].startswith(f"{path}: [smtp] port: ")
    assert lines[1].startswith(f"{path}: [http] port: ")


# ---------------------------------------------------------------------- unknown keys and secrets


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[smtp]\nhots = "mail.example.com"\n', "[smtp] hots"),
        ("[smtpp]\nport = 25\n", "smtpp"),
        ('template_dir = "t"\n', "template_dir"),
        ("[campaigns.thank_you]\ndelay = 3\n", "[campaigns.thank_you] delay"),
    ],
)
def test_an_unknown_key_in_the_file_is_named(tmp_path: Path, text: str, where: str) -> None:
    path = write_config(tmp_path, text)
    assert config_error(path) == f"{path}: {where}: unknown key"


@pytest.mark.parametrize("key", ["base_dir", "smtp_password", "secret_key"])
def test_internal_fields_cannot_be_set_from_the_file(tmp_path: Path, key: str) -> None:
    path = write_config(tmp_path, f'{key} = "x"\n')
    assert config_error(path) == f"{path}: unknown key {key!r}"


@pytest.mark.parametrize(
    ("section", "key", "variable"),
    [
        ("smtp", "password", "FOLLOWUP_SMTP_PASSWORD"),
        ("http", "secret_key", "FOLLOWUP_SECRET_KEY"),
        ("sender", "secret_key", "FOLLOWUP_SECRET_KEY"),
    ],
)
def test_a_secret_in_the_file_is_refused(
    tmp_path: Path, section: str, key: str, variable: str
) -> None:
    path = write_config(tmp_path, f'[{section}]\n{key} = "x"\n')
    message = config_error(path, {variable: "from-env"})

    assert message.startswith(f"{path}: [{section}] {key} is a secret")
    assert f"set the environment variable {variable} instead" in message
    assert "'x'" not in message  # the secret itself is not echoed


# ----------------------------------------------------------------------------- unreadable files


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.toml"
    message = config_error(path)

    assert message.startswith(f"{path}: no such configuration file")
    assert "followup init" in message


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[smtp\nport = 25\n", name="broken.toml")
    message = config_error(path)

    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 1" in message


def test_a_section_that_is_not_a_table_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "smtp = 3\n")
    message = config_error(path, {"FOLLOWUP_SMTP_PORT": "25"})

    assert message.startswith(f"{path}: smtp: ")


# ----------------------------------------------------------------------------- campaigns


def test_a_campaign_key_is_overridden_from_the_environment() -> None:
    settings = load_settings(
        REPOSITORY_CONFIG,
        {
            "FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS": "5",
            "FOLLOWUP_CAMPAIGNS_THANK_YOU_SEND_TIME": "08:30",
            "FOLLOWUP_CAMPAIGNS_SATISFACTION_SURVEY_ENABLED": "false",
        },
    )
    thank_you = settings.campaigns["thank_you"]

    assert thank_you.lateness_hours == 5
    assert thank_you.send_time == time(8, 30)
    assert thank_you.overrides() == {"lateness_hours": 5, "send_time": time(8, 30)}
    assert settings.campaigns["satisfaction_survey"].overrides() == {"enabled": False}


def test_a_bad_campaign_value_from_the_environment_names_key_and_variable() -> None:
    message = config_error(REPOSITORY_CONFIG, {"FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS": "x"})

    assert (
        "[campaigns.thank_you] lateness_hours (from FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS)"
        in message
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"10:00"', time(10, 0)),
        ('"9:05"', time(9, 5)),
        ('"23:59"', time(23, 59)),
        ("07:15:00", time(7, 15)),
    ],
)
def test_send_time_parses(tmp_path: Path, value: str, expected: time) -> None:
    path = write_config(tmp_path, f"[campaigns.thank_you]\nsend_time = {value}\n")
    assert load_settings(path, {}).campaigns["thank_you"].send_time == expected


@pytest.mark.parametrize("value", ["25:00", "10:60", "ten", "10h"])
def test_a_bad_send_time_names_the_key(tmp_path: Path, value: str) -> None:
    path = write_config(tmp_path, f'[campaigns.thank_you]\nsend_time = "{value}"\n')
    assert config_error(path).startswith(f"{path}: [campaigns.thank_you] send_time: ")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('after = "soon"', "after"),
        ('window = "8-20"', "window"),
        ('weekdays = "funday"', "weekdays"),
        ("lateness_hours = -1", "lateness_hours"),
        ("delay_days = 7", "delay_days"),
    ],
)
def test_a_bad_override_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_config(tmp_path, f"[campaigns.thank_you]\n{text}\n")
    assert config_error(path).startswith(f"{path}: [campaigns.thank_you] {key}: ")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("max_touches = 0", "max_touches"),
        ("per_days = -1", "per_days"),
        ('quiet_hours = "late"', "quiet_hours"),
    ],
)
def test_a_bad_politeness_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_config(tmp_path, f"[politeness]\n{text}\n")
    assert config_error(path).startswith(f"{path}: [politeness] {key}: ")


def test_no_quiet_hours(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[politeness]\nquiet_hours = ""\n')
    assert load_settings(path, {}).politeness.quiet is None


# ----------------------------------------------------------------------------- paths


def test_a_relative_sqlite_url_is_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "etc", '[database]\nurl = "sqlite:///var/followup.db"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(path, {})

    folder = (tmp_path / "etc").resolve()
    assert settings.base_dir == folder
    assert settings.database.url == "sqlite:///var/followup.db"
    assert settings.database_url == f"sqlite:///{folder / 'var' / 'followup.db'}"


def test_a_relative_sqlite_url_from_the_environment_is_resolved_too(tmp_path: Path) -> None:
    path = write_config(tmp_path / "etc", "")
    settings = load_settings(path, {"FOLLOWUP_DATABASE_URL": "sqlite:///data/f.db"})

    assert settings.database_url == f"sqlite:///{(tmp_path / 'etc').resolve() / 'data' / 'f.db'}"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////srv/followup/followup.db",
        "sqlite:///:memory:",
        "sqlite://",
        "postgresql+psycopg://followup@db.internal/followup",
    ],
)
def test_other_database_urls_are_left_alone(tmp_path: Path, url: str) -> None:
    path = write_config(tmp_path, f'[database]\nurl = "{url}"\n')
    assert load_settings(path, {}).database_url == url


def test_relative_paths_are_resolved_against_the_config_folder(tmp_path: Path) -> None:
    path = write_config(tmp_path / "etc", 'templates_dir = "tpl"\n')
    settings = load_settings(path, {"FOLLOWUP_CALENDARS_DIR": "/srv/calendars"})

    assert settings.path(settings.templates_dir) == (tmp_path / "etc").resolve() / "tpl"
    assert settings.path(settings.calendars_dir) == Path("/srv/calendars")


# ------------------------------------------------------------ non-finite and absurd numbers


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("smtp", "timeout", "inf"),
        ("smtp", "timeout", "nan"),
        ("smtp", "rate_per_second", "inf"),
        ("delivery", "retry_base_seconds", "nan"),
        ("schedule", "shutdown_grace_seconds", "-inf"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_in_the_file(
    tmp_path: Path, section: str, key: str, value: str
) -> None:
    """TOML writes inf and nan bare: `timeout = inf` parses, and was taken."""
    path = write_config(tmp_path, f"[{section}]\n{key} = {value}\n")
    message = config_error(path)
    assert message.startswith(f"{path}: [{section}] {key}: Input should be a finite number")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "Infinity", "1e400"])
def test_a_number_that_is_not_finite_is_refused_from_the_environment(value: str) -> None:
    message = config_error(REPOSITORY_CONFIG, {"FOLLOWUP_SMTP_TIMEOUT": value})
    assert message.startswith(
        f"{REPOSITORY_CONFIG}: [smtp] timeout (from FOLLOWUP_SMTP_TIMEOUT): "
        "Input should be a finite number"
    ), message


@pytest.mark.parametrize(
    ("variable", "value", "where", "problem"),
    [
        ("FOLLOWUP_SMTP_TIMEOUT", "-1", "[smtp] timeout", "greater than 0"),
        ("FOLLOWUP_SMTP_TIMEOUT", "0", "[smtp] timeout", "greater than 0"),
        ("FOLLOWUP_SMTP_TIMEOUT", "86400", "[smtp] timeout", "less than or equal to 3600"),
        ("FOLLOWUP_SMTP_RATE_PER_SECOND", "-2", "[smtp] rate_per_second", "greater than or"),
        ("FOLLOWUP_SMTP_RATE_PER_SECOND", "1e-9", "[smtp] rate_per_second", "must be 0 (no"),
        ("FOLLOWUP_SMTP_RATE_PER_SECOND", "1e12", "[smtp] rate_per_second", "less than or"),
        ("FOLLOWUP_SMTP_RATE_PER_HOUR", "10000000000", "[smtp] rate_per_hour", "less than or"),
        ("FOLLOWUP_SMTP_RATE_PER_DAY", "-1", "[smtp] rate_per_day", "greater than or"),
        ("FOLLOWUP_DATABASE_LEASE_SECONDS", "99999999", "[database] lease_seconds", "less than"),
        ("FOLLOWUP_DELIVERY_RETRY_BASE_SECONDS", "0", "[delivery] retry_base_seconds", "greater"),
        ("FOLLOWUP_DELIVERY_MAX_ATTEMPTS", "1000000", "[delivery] max_attempts", "less than"),
        (
            "FOLLOWUP_SCHEDULE_DISPATCH_INTERVAL_SECONDS",
            "1000000000",
            "[schedule] dispatch_interval_seconds",
            "less than or equal to 3600",
        ),
        (
            "FOLLOWUP_SCHEDULE_SHUTDOWN_GRACE_SECONDS",
            "-5",
            "[schedule] shutdown_grace_seconds",
            "greater than or equal to 0",
        ),
        ("FOLLOWUP_TIERS_VIP_MIN_TOTAL", "1e30", "[tiers] vip_min_total", ""),
        (
            "FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS",
            "1000000",
            "[campaigns.thank_you] lateness_hours",
            "less than or equal to 8784",
        ),
        (
            "FOLLOWUP_CAMPAIGNS_THANK_YOU_PRIORITY",
            "10000000000",
            "[campaigns.thank_you] priority",
            "less than or equal to 1000000",
        ),
    ],
)
def test_an_absurd_number_is_refused_with_the_key_and_the_variable(
    variable: str, value: str, where: str, problem: str
) -> None:
    message = config_error(REPOSITORY_CONFIG, {variable: value})
    assert message.startswith(f"{REPOSITORY_CONFIG}: {where} (from {variable}): "), message
    assert problem in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[smtp]\ntimeout = -30\n", "[smtp] timeout"),
        ("[smtp]\nrate_per_second = 0.00001\n", "[smtp] rate_per_second"),
        ("[schedule]\nplan_interval_seconds = 1_000_000_000\n", "[schedule] plan_interval_seconds"),
        ("[tiers]\nlapsed_after_days = 1_000_000\n", "[tiers] lapsed_after_days"),
    ],
)
def test_an_absurd_number_in_the_file_names_the_file_and_the_key(
    tmp_path: Path, text: str, where: str
) -> None:
    path = write_config(tmp_path, text)
    assert config_error(path).startswith(f"{path}: {where}: ")


def test_zero_rates_still_mean_no_limit_and_small_ones_are_kept(tmp_path: Path) -> None:
    text = "[smtp]\nrate_per_second = 0\nrate_per_hour = 0\nrate_per_day = 0\n"
    smtp = load_settings(write_config(tmp_path, text), {}).smtp
    assert (smtp.rate_per_second, smtp.rate_per_hour, smtp.rate_per_day) == (0, 0, 0)
    slow = load_settings(REPOSITORY_CONFIG, {"FOLLOWUP_SMTP_RATE_PER_SECOND": "0.001"})
    assert slow.smtp.rate_per_second == 0.001


def _numeric_fields() -> list[tuple[str, FieldInfo]]:
    models: dict[str, type[BaseModel]] = {"campaigns.NAME": CampaignSettings}
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            models[name] = info.annotation
    fields = []
    for section, model in models.items():
        for key, info in model.model_fields.items():
            kinds = set(get_args(info.annotation)) or {info.annotation}
            if kinds & {int, float}:
                fields.append((f"[{section}] {key}", info))
    return fields


def test_every_numeric_setting_has_a_lower_and_an_upper_bound() -> None:
    """A setting added later gets bounds too: a huge interval overflows a timedelta, a huge
    limit is a typo."""
    fields = _numeric_fields()
    assert len(fields) >= 25
    for where, info in fields:
        lower = [m for m in info.metadata if isinstance(m, annotated_types.Ge | annotated_types.Gt)]
        upper = [m for m in info.metadata if isinstance(m, annotated_types.Le | annotated_types.Lt)]
        assert lower and upper, f"{where} has no lower or no upper bound"


# ------------------------------------------------------------------- a login in clear text


def test_a_login_over_a_connection_without_tls_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[smtp]\nsecurity = "none"\nusername = "shop"\n')
    message = config_error(path, {"FOLLOWUP_SMTP_PASSWORD": "hunter2"})

    assert message.startswith(f'{path}: [smtp] username is set with [smtp] security = "none"')
    assert "clear text" in message
    assert "[smtp] allow_cleartext_auth = true" in message
    assert "hunter2" not in message


def test_a_login_without_tls_from_the_environment_names_the_variables() -> None:
    message = config_error(
        REPOSITORY_CONFIG, {"FOLLOWUP_SMTP_SECURITY": "none", "FOLLOWUP_SMTP_USERNAME": "shop"}
    )
    assert message.startswith(
        f"{REPOSITORY_CONFIG}: [smtp] username (from FOLLOWUP_SMTP_USERNAME) is set with "
        '[smtp] security (from FOLLOWUP_SMTP_SECURITY) = "none"'
    )


def test_a_login_without_tls_is_taken_when_the_operator_says_it_is_on_purpose(
    tmp_path: Path,
) -> None:
    text = '[smtp]\nsecurity = "none"\nusername = "shop"\nallow_cleartext_auth = true\n'
    smtp = load_settings(write_config(tmp_path, text), {}).smtp
    assert (smtp.security, smtp.username, smtp.allow_cleartext_auth) == ("none", "shop", True)
    from_env = load_settings(
        REPOSITORY_CONFIG,
        {
            "FOLLOWUP_SMTP_SECURITY": "none",
            "FOLLOWUP_SMTP_USERNAME": "shop",
            "FOLLOWUP_SMTP_ALLOW_CLEARTEXT_AUTH": "true",
        },
    )
    assert from_env.smtp.allow_cleartext_auth


@pytest.mark.parametrize(
    "env",
    [
        {"FOLLOWUP_SMTP_SECURITY": "none"},  # a relay on the loopback, no login: the usual
        {"FOLLOWUP_SMTP_SECURITY": "starttls", "FOLLOWUP_SMTP_USERNAME": "shop"},
        {"FOLLOWUP_SMTP_SECURITY": "tls", "FOLLOWUP_SMTP_USERNAME": "shop"},
    ],
)
def test_no_login_or_a_login_over_tls_needs_no_permission(env: dict[str, str]) -> None:
    assert not load_settings(REPOSITORY_CONFIG, env).smtp.allow_cleartext_auth


# ------------------------------------------------------------------- bounds of the calendars


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("lateness_hours = 1_000_000", "lateness_hours"),
        ("lateness_hours = -1", "lateness_hours"),
        ("priority = 10_000_000_000", "priority"),
    ],
)
def test_an_absurd_number_in_a_calendar_names_the_file_line_and_key(
    tmp_path: Path, line: str, key: str
) -> None:
    """A lateness of a million hours would overflow the planner's dates."""
    (tmp_path / "cal.toml").write_text(
        f'[occasions.x]\nkind = "yearly"\ndate = "birthday"\n{line}\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        read_calendars(tmp_path, date(2026, 11, 23))
    assert str(caught.value).startswith(f"{tmp_path / 'cal.toml'}:4: [occasions.x] {key}: must be")
