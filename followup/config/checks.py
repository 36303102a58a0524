"""A configuration looked over as a whole: its errors (config.toml, the FOLLOWUP_* overrides,
calendars/) and its warnings, the things that work but are probably not what the operator
meant. `followup config check` prints them; every command logs the warnings when it starts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from followup.config.calendars import load_calendar
from followup.config.environment import unknown_variables
from followup.config.settings import Settings, load_settings
from followup.errors import ConfigError
from followup.logs import log


@dataclass(frozen=True)
class ConfigWarning:
    """Something that works but is probably a mistake: the log event that reports it, its
    fields (never a value of the environment: it may be a secret) and a sentence for people."""

    event: str
    message: str
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigCheck:
    """What `followup config check` reports: `errors` (each names the file, the line where
    there is one, and the key), `warnings`, and the settings when there was no error."""

    source: str
    settings: Settings | None
    errors: list[str]
    warnings: list[ConfigWarning]

    @property
    def ok(self) -> bool:
        return not self.errors


def config_warnings(settings: Settings | None, env: Mapping[str, str]) -> list[ConfigWarning]:
    """The warnings about `settings` (None: a configuration that did not load) and `env`."""
    warnings = []
    smtp = settings.smtp if settings is not None else None
    if smtp is not None and smtp.security == "none" and smtp.username and smtp.allow_cleartext_auth:
        warnings.append(
            _warning_event(
                "config.cleartext_auth",
                f'[smtp] allow_cleartext_auth = true: with security = "none", the password of '
                f"[smtp] username goes to {smtp.host}:{smtp.port} in clear text",
                host=smtp.host,
                port=smtp.port,
            )
        )
    for unknown in unknown_variables(env):
        hint = f"; did you mean {unknown.suggestion}?" if unknown.suggestion else ""
        warnings.append(
            _warning_event(
                "config.unknown_variable",
                f"the environment variable {unknown.name} is not a setting of followup and "
                f"is ignored{hint}",
                variable=unknown.name,
                **({"suggestion": unknown.suggestion} if unknown.suggestion else {}),
            )
        )
    return warnings


def _warning_event(event: str, message: str, **fields: object) -> ConfigWarning:
    return ConfigWarning(event, message, fields)


def check_config(path: Path | None, env: Mapping[str, str]) -> ConfigCheck:
    """Load the configuration of `path` (None: the defaults) with the overrides of `env`, and
    the calendars it names; collect the errors instead of raising them."""
    source = str(path) if path is not None else "defaults"
    settings: Settings | None = None
    errors: list[str] = []
    try:
        settings = load_settings(path, env)
        load_calendar(settings)
    except ConfigError as exc:
        errors = str(exc).splitlines()
    return ConfigCheck(
        source,
        settings if not errors else None,
        errors,
        config_warnings(settings, env),
    )


def log_warnings(warnings: list[ConfigWarning]) -> None:
    """Each warning as a log event at WARNING (commands other than the daemon show warnings
    only, so these are seen at every start)."""
    for warning in warnings:
        log.warning(warning.event, extra={"event": warning.event, "fields": dict(warning.fields)})
