"""config.toml -> typed settings.

Every key can be overridden by an environment variable FOLLOWUP_<SECTION>_<KEY>
(FOLLOWUP_DATABASE_URL, FOLLOWUP_SMTP_PORT, FOLLOWUP_CAMPAIGNS_THANK_YOU_LATENESS_HOURS, ...).
Secrets are read from the environment only: a secret written in config.toml is refused,
with a message that says where it belongs. Every error names the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import time
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
)

from followup.config.base import DAY, HOUR, YEAR_DAYS
from followup.config.base import Section as _Section
from followup.config.clients import DefaultsSettings, TierSettings
from followup.config.imports import ImportSettings
from followup.config.values import parse_delay, parse_time, parse_weekdays, parse_window
from followup.domain.limits import Limits
from followup.domain.occasions import Window
from followup.errors import ConfigError

#: Keys that must never be written in a file: (section, key) -> environment variable.
SECRETS: dict[tuple[str, str], str] = {
    ("smtp", "password"): "FOLLOWUP_SMTP_PASSWORD",
    ("http", "secret_key"): "FOLLOWUP_SECRET_KEY",
    ("sender", "secret_key"): "FOLLOWUP_SECRET_KEY",
}


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/followup.db"
    #: Seconds a sending lease lasts; a touch still "sending" after it is uncertain.
    lease_seconds: int = Field(default=300, ge=10, le=DAY)


class DeliverySettings(_Section):
    #: "capture": an in-process SMTP sink writes every message to capture_dir (a maildir);
    #: nothing leaves the machine. "smtp": deliver through the [smtp] server.
    mode: Literal["capture", "smtp"] = "capture"
    capture_dir: str = "var/outbox"
    batch_size: int = Field(default=200, ge=1, le=10_000)
    #: Messages a connection holds handed to the mailer ahead of sending them; each hand-off
    #: transaction tops up every connection of the process. After a crash, up to this many
    #: per connection may be reported uncertain without having been sent.
    group_size: int = Field(default=8, ge=1, le=500)
    #: Processes `followup send` and `followup run` deliver from (each renders on its own core
    #: with its own pool of connections).
    processes: int = Field(default=1, ge=1, le=64)
    max_attempts: int = Field(default=8, ge=1, le=100)
    retry_base_seconds: float = Field(default=60.0, gt=0, le=DAY)
    #: A touch whose template does not render is held and tried again after this long.
    hold_seconds: float = Field(default=60.0, gt=0, le=DAY)


#: The smallest rate_per_second that is not 0 (no limit).
MIN_RATE_PER_SECOND = 0.001


class SmtpSettings(_Section):
    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    timeout: float = Field(default=30.0, gt=0, le=HOUR)
    pool_size: int = Field(default=1, ge=1, le=64)
    ca_file: str = ""
    #: 0 means no limit. Per second: paced by a token bucket; per hour and per day: counted in
    #: the ledger, so they hold across restarts and several processes.
    rate_per_second: float = Field(default=0.0, ge=0, le=100_000)
    rate_per_hour: int = Field(default=0, ge=0, le=100_000_000)
    rate_per_day: int = Field(default=0, ge=0, le=1_000_000_000)
    #: RFC 2920: MAIL, RCPT and DATA in one write when the server offers PIPELINING.
    pipelining: bool = True
    #: With security = "none", a username is refused (the password would cross the network in
    #: clear text) unless this says it is on purpose, e.g. a relay on the loopback; then every
    #: start logs config.cleartext_auth.
    allow_cleartext_auth: bool = False

    @field_validator("rate_per_second")
    @classmethod
    def _a_rate_or_none(cls, value: float) -> float:
        """Below one message in 1,000 s, a "limit" would hold the queue for good."""
        if 0 < value < MIN_RATE_PER_SECOND:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_RATE_PER_SECOND}")
        return value

    #: The circuit breaker (followup.delivery.breaker): after this many connection or greeting
    #: failures in a row (or one loss after the message data) the run stops for a backoff,
    #: doubled at each trip, at most breaker_backoff_max_seconds.
    breaker_failures: int = Field(default=3, ge=1, le=1000)
    breaker_backoff_seconds: float = Field(default=60.0, gt=0, le=86400)
    breaker_backoff_max_seconds: float = Field(default=1800.0, gt=0, le=7 * 86400)


#: An address as it goes between < and > in MAIL FROM and RCPT TO, and in a From header beside
#: its name: something, one @ or more, something; no spaces, controls or angle brackets.
PLAIN_ADDRESS = re.compile(r"[^\s<>\x00-\x1f\x7f]+@[^\s<>\x00-\x1f\x7f]+")
_PLAIN_DOMAIN = re.compile(r"[^\s<>@\x00-\x1f\x7f]+")


class SenderSettings(_Section):
    business_name: str = "Our shop"
    domain: str = "example.com"
    default_locale: str = "en"
    #: Used when a client has no rep; default "hello@<domain>" and the business name.
    from_email: str = ""
    from_name: str = ""
    #: Envelope sender (where bounces go); default "bounces@<domain>".
    return_path: str = ""
    #: mailto: address for List-Unsubscribe, next to the https one-click link.
    unsubscribe_mailto: str = ""

    @field_validator("return_path", "from_email")
    @classmethod
    def _plain_address(cls, value: str) -> str:
        """Refused here rather than when the first message goes out (a pipelined run stops
        on an envelope sender it cannot write between angle brackets)."""
        value = value.strip()
        if value and not PLAIN_ADDRESS.fullmatch(value):
            raise ValueError(
                "must be a bare address such as bounces@example.com "
                "(no name, no angle brackets, no spaces)"
            )
        return value

    @field_validator("domain")
    @classmethod
    def _plain_domain(cls, value: str) -> str:
        """The domain of the default addresses (hello@, bounces@) and of Message-IDs."""
        value = value.strip()
        if not _PLAIN_DOMAIN.fullmatch(value):
            raise ValueError("must be a bare domain such as example.com (no @, no spaces)")
        return value

    @property
    def default_from(self) -> tuple[str, str]:
        return (self.from_name or self.business_name, self.from_email or f"hello@{self.domain}")

    @property
    def envelope_from(self) -> str:
        return self.return_path or f"bounces@{self.domain}"


class DkimSettings(_Section):
    """DKIM signing by followup. Sign at the MTA instead when it relays for other senders too
    (docs/architecture.md); never both."""

    enabled: bool = False
    domain: str = ""
    selector: str = ""
    #: PEM file of the RSA private key (relative to this file); keep it readable by the owner.
    key_file: str = ""


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=1, le=65535)
    #: Base URL that clients reach, used in unsubscribe links.
    public_url: str = "http://127.0.0.1:8025"


class ScheduleSettings(_Section):
    #: `followup daemon`: how often it plans the clients whose data changed (an import, an
    #: erasure, a bounce), ...
    plan_interval_seconds: int = Field(default=300, ge=1, le=DAY)
    #: ... and how often it plans every client, which also moves the horizon on (sooner when
    #: the horizon is shorter than the plan interval).
    full_plan_interval_seconds: int = Field(default=3600, ge=1, le=7 * DAY)
    dispatch_interval_seconds: int = Field(default=5, ge=1, le=HOUR)
    #: How far ahead `followup plan` creates touches.
    plan_horizon_days: int = Field(default=2, ge=0, le=YEAR_DAYS)
    #: Processes that plan in parallel, each a range of clients (1: in the calling process,
    #: but the daemon plans a shop of app.LARGE_SHOP_CLIENTS or more in one worker process).
    plan_processes: int = Field(default=1, ge=1, le=64)
    #: `followup daemon`: the hourly housekeeping (expired leases, touches too late).
    housekeeping_interval_seconds: int = Field(default=3600, ge=1, le=DAY)
    #: On SIGTERM, how long sends in flight may take to finish before the daemon exits.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=HOUR)


class LogSettings(_Section):
    #: "plain": one line per event, key=value fields; "json": one JSON object per line.
    format: Literal["plain", "json"] = "plain"
    #: For `followup daemon` (other commands log warnings unless given -v).
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class TemplateSettings(_Section):
    """[templates]: the limits each message's templates run under (docs/templates.md)."""

    #: Wall-clock seconds one message (subject, text and HTML) may take to render.
    render_seconds: float = Field(default=1.0, gt=0, le=3600, allow_inf_nan=False)
    #: Characters one message may output, its three parts together.
    max_output_chars: int = Field(default=1_000_000, ge=1_000, le=100_000_000)
    #: Characters of one string (items of one list) a template may build.
    max_string_chars: int = Field(default=1_000_000, ge=1_000, le=100_000_000)
    #: Loop iterations of one message, all its loops together.
    max_loop_iterations: int = Field(default=100_000, ge=1, le=100_000_000)
    #: Macros calling macros, recursive loops and includes nested in one another.
    max_depth: int = Field(default=32, ge=2, le=200)
    #: Decimal digits of one number a template computes.
    max_number_digits: int = Field(default=4_300, ge=20, le=100_000)

    def limits(self) -> Limits:
        return Limits(**self.model_dump())


class PolitenessSettings(_Section):
    """The frequency cap and quiet hours, for every client (local time)."""

    #: At most this many capped touches per client in any rolling `per_days` days.
    max_touches: int = Field(default=1, ge=1, le=100)
    per_days: int = Field(default=3, ge=0, le=YEAR_DAYS)
    #: No message goes out in these local hours ("" for none).
    quiet_hours: str = "21:00-08:00"

    @field_validator("quiet_hours")
    @classmethod
    def _parse_quiet(cls, value: str) -> str:
        if value.strip():
            parse_window(value)
        return value.strip()

    @property
    def quiet(self) -> Window | None:
        return parse_window(self.quiet_hours) if self.quiet_hours else None


class ConsentSettings(_Section):
    """[consent]: what a marketing occasion needs (docs/consent.md). Service occasions
    (thank-you, survey, service reminder) never need consent; an unsubscribe stops all."""

    #: "soft-opt-in": a client whose consent is unknown may get marketing (an existing
    #: customer: GDPR/PECR's soft opt-in, CAN-SPAM's opt-out); "opt-in": only with consent
    #: "yes", or within implied_months of a paid purchase (CASL).
    marketing: Literal["soft-opt-in", "opt-in"] = "soft-opt-in"
    #: Under opt-in: months after a paid purchase during which consent is implied (CASL: 24);
    #: 0: never implied.
    implied_months: int = Field(default=24, ge=0, le=1200)


class CampaignSettings(_Section):
    """Operator overrides of one occasion of calendars/ ([campaigns.NAME] in config.toml)."""

    enabled: bool | None = None
    template: str | None = None
    priority: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    #: Local wall-clock time in the client's zone.
    send_time: time | None = None
    #: How late a missed touch may still go out, in hours after its due time.
    lateness_hours: int | None = Field(default=None, ge=0, le=YEAR_DAYS * 24)
    capped: bool | None = None
    #: "service" or "marketing" (docs/consent.md).
    purpose: Literal["service", "marketing"] | None = None
    #: After-purchase occasions: the delay ("2 days", "6 months").
    after: str | None = None
    audience: str | None = None
    window: str | None = None
    weekdays: str | None = None

    @field_validator("send_time", mode="before")
    @classmethod
    def _parse_time(cls, value: Any) -> Any:
        return parse_time(value) if isinstance(value, str) else value

    @field_validator("after")
    @classmethod
    def _parse_after(cls, value: str | None) -> str | None:
        if value is not None:
            parse_delay(value)
        return value

    @field_validator("window")
    @classmethod
    def _parse_window(cls, value: str | None) -> str | None:
        if value is not None:
            parse_window(value)
        return value

    @field_validator("weekdays")
    @classmethod
    def _parse_weekdays(cls, value: str | None) -> str | None:
        if value is not None:
            parse_weekdays(value)
        return value

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    delivery: DeliverySettings = DeliverySettings()
    smtp: SmtpSettings = SmtpSettings()
    sender: SenderSettings = SenderSettings()
    http: HttpSettings = HttpSettings()
    dkim: DkimSettings = DkimSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    politeness: PolitenessSettings = PolitenessSettings()
    tiers: TierSettings = TierSettings()
    defaults: DefaultsSettings = DefaultsSettings()
    templates: TemplateSettings = TemplateSettings()
    consent: ConsentSettings = ConsentSettings()
    #: Overrides of calendars/ occasions by name.
    campaigns: dict[str, CampaignSettings] = Field(default_factory=dict)
    log: LogSettings = LogSettings()
    #: [import.reps], [import.clients], [import.purchases]: the user's column mappings
    #: (config/imports.py; not overridden by the environment).
    imports: ImportSettings = Field(default_factory=ImportSettings, alias="import")

    @field_validator("campaigns")
    @classmethod
    def _campaign_names(cls, value: dict[str, CampaignSettings]) -> dict[str, CampaignSettings]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(
                    f"campaign name {name!r} must be 1-64 lower-case letters, digits or _"
                )
        return value

    templates_dir: str = "templates"
    calendars_dir: str = "calendars"

    #: Directory that relative paths are resolved against (the config file's folder).
    base_dir: Path = Path()
    #: Secrets, from the environment only.
    smtp_password: str = ""
    secret_key: str = ""

    def path(self, value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path made absolute."""
        url = self.database.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            rest = url[len(prefix) :]
            if rest and rest != ":memory:":
                return prefix + str(self.path(rest))
        return url


_TOP_LEVEL_KEYS = {"templates_dir", "calendars_dir"}
_SECTIONS: dict[str, type[_Section]] = {
    "database": DatabaseSettings,
    "delivery": DeliverySettings,
    "smtp": SmtpSettings,
    "sender": SenderSettings,
    "http": HttpSettings,
    "dkim": DkimSettings,
    "schedule": ScheduleSettings,
    "politeness": PolitenessSettings,
    "tiers": TierSettings,
    "defaults": DefaultsSettings,
    "templates": TemplateSettings,
    "consent": ConsentSettings,
    "log": LogSettings,
}


def _env_name(*parts: str) -> str:
    return "FOLLOWUP_" + "_".join(p.upper().replace("-", "_") for p in parts)


def setting_variables() -> dict[str, str]:
    """Every FOLLOWUP_<SECTION>_<KEY> variable -> the key it overrides ("[smtp] port"); the
    campaigns' (FOLLOWUP_CAMPAIGNS_<NAME>_<KEY>) are not listed, their names are open."""
    variables = {
        _env_name(section, key): f"[{section}] {key}"
        for section, model in _SECTIONS.items()
        for key in model.model_fields
    }
    variables.update({_env_name(key): key for key in _TOP_LEVEL_KEYS})
    return variables


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], origin: dict[str, str]) -> None:
    """Overlay FOLLOWUP_<SECTION>_<KEY> variables on the parsed file, recording the origin."""
    for section, model in _SECTIONS.items():
        for key in model.model_fields:
            name = _env_name(section, key)
            if name in env:
                raw.setdefault(section, {})
                if not isinstance(raw[section], dict):
                    continue
                raw[section][key] = env[name]
                origin[f"{section}.{key}"] = name
    for key in _TOP_LEVEL_KEYS:
        name = _env_name(key)
        if name in env:
            raw[key] = env[name]
            origin[key] = name
    # FOLLOWUP_CAMPAIGNS_<NAME>_<KEY>: the occasion's name is what lies between.
    keys = sorted(CampaignSettings.model_fields, key=len, reverse=True)
    for variable, value in env.items():
        if not variable.startswith("FOLLOWUP_CAMPAIGNS_"):
            continue
        rest = variable.removeprefix("FOLLOWUP_CAMPAIGNS_")
        for key in keys:
            suffix = "_" + key.upper()
            if rest.endswith(suffix) and len(rest) > len(suffix):
                campaign = rest[: -len(suffix)].lower()
                campaigns = raw.setdefault("campaigns", {})
                if isinstance(campaigns, dict):
                    values = campaigns.setdefault(campaign, {})
                    if isinstance(values, dict):
                        values[key] = value
                        origin[f"campaigns.{campaign}.{key}"] = variable
                break


def _describe(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2:
        return f"[{'.'.join(parts[:-1])}] {parts[-1]}"
    return parts[0] if parts else "(top level)"


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read a config file (or only defaults when path is None) and the environment."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "defaults"
    base_dir = Path.cwd()
    if path is not None:
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: no such configuration file (run `followup init` to create one, "
                "or pass --config)"
            ) from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base_dir = path.resolve().parent
    for (section, key), variable in SECRETS.items():
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(
                f"{source}: [{section}] {key} is a secret and is not read from a file; "
                f"remove it and set the environment variable {variable} instead"
            )
    if "campaigns" in raw and not isinstance(raw["campaigns"], dict):
        raise ConfigError(f"{source}: [campaigns] must be a table of campaigns")
    origin: dict[str, str] = {}
    _apply_env(raw, env, origin)
    for forbidden in ("base_dir", "smtp_password", "secret_key"):
        if forbidden in raw:
            raise ConfigError(f"{source}: unknown key {forbidden!r}")
    try:
        settings = Settings.model_validate(
            {
                **raw,
                "base_dir": base_dir,
                "smtp_password": env.get("FOLLOWUP_SMTP_PASSWORD", ""),
                "secret_key": env.get("FOLLOWUP_SECRET_KEY", ""),
            }
        )
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            dotted = ".".join(str(p) for p in loc)
            where = _describe(loc)
            if dotted in origin:
                where += f" (from {origin[dotted]})"
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            else:
                message = error["msg"]
                if "input" in error and not isinstance(error["input"], dict):
                    message += f", got {error['input']!r}"
            lines.append(f"{source}: {where}: {message}")
        raise ConfigError("\n".join(lines)) from None
    _refuse_cleartext_auth(settings.smtp, source, origin)
    return settings


def _refuse_cleartext_auth(smtp: SmtpSettings, source: str, origin: dict[str, str]) -> None:
    """AUTH PLAIN and LOGIN carry the password in base64, that is in clear text: over a
    connection without TLS, anyone on the path reads it. Refused unless the operator says
    it is on purpose (a relay on the loopback); load_settings' callers warn then."""
    if smtp.security != "none" or not smtp.username or smtp.allow_cleartext_auth:
        return

    def key(name: str) -> str:
        variable = origin.get(f"smtp.{name}")
        return f"[smtp] {name}" + (f" (from {variable})" if variable else "")

    raise ConfigError(
        f'{source}: {key("username")} is set with {key("security")} = "none": the password '
        'would cross the network in clear text. Use security = "starttls" or "tls", or, '
        "if this is on purpose (a relay on the loopback), set [smtp] allow_cleartext_auth = true"
    )


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("FOLLOWUP_CONFIG", "config.toml"))
