"""The `followup` Typer app and what its commands share: the global options and their state
(the configuration, the clock, the logs), the two consoles, `example()` for every command's
--help and `fail()` for its errors. The commands register themselves on `cli` in the modules
beside this one; followup/cli/main.py puts them together and runs them."""

from __future__ import annotations

import logging
import os
from datetime import UTC, date, datetime
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from followup import logs
from followup.config import Settings, default_config_path, load_settings
from followup.config.checks import config_warnings, log_warnings
from followup.runtime import Clock

cli = typer.Typer(
    name="followup",
    help="followup: the after-sales follow-up engine. Plans, renders and sends thank-you and "
    "greeting e-mails to every client, at a good local hour, never twice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

out = Console()
err = Console(stderr=True)


class _State:
    config: Path | None = None
    now: datetime | None = None
    settings: Settings | None = None
    verbose: int = 0
    log_json: bool = False


state = _State()


def example(*lines: str) -> str:
    """The epilog of a command's --help: its examples, one a line. Click rewraps an epilog's
    paragraphs unless the paragraph starts with a line holding only its \\b marker."""
    return "Example:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(1)


def settings() -> Settings:
    """The configuration of --config (or FOLLOWUP_CONFIG, else ./config.toml), read once;
    its warnings logged (`followup config check` lists them)."""
    if state.settings is None:
        path = state.config if state.config is not None else default_config_path()
        state.settings = load_settings(path)
        if state.settings.log.format == "json" and not state.log_json:
            state.log_json = True
            logs.configure(log_level(), json_lines=True)
        log_warnings(config_warnings(state.settings, os.environ))
    return state.settings


def log_level(daemon: bool = False) -> int:
    """-v and -vv win; otherwise the daemon logs at [log] level, other commands warnings."""
    if state.verbose:
        return logging.INFO if state.verbose == 1 else logging.DEBUG
    if daemon and state.settings is not None:
        return logs.level_named(state.settings.log.level)
    return logging.WARNING


def now() -> datetime:
    """The instant of --now / FOLLOWUP_NOW, else the real time."""
    return state.now if state.now is not None else datetime.now(UTC)


def clock() -> Clock:
    """Real time, or from FOLLOWUP_NOW / --now on as time passes."""
    return Clock.starting_at(state.now)


def parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint=option
        ) from None


def parse_instant(value: str, option: str) -> datetime:
    """An option's ISO 8601 date (midnight) or instant, UTC when it has no offset."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or date-time", param_hint=option
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _version(value: bool) -> None:
    if value:
        out.print(f"followup {installed_version('followup')}")
        raise typer.Exit()


@cli.callback()
def main_options(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="FOLLOWUP_CONFIG",
            help="Configuration file (default ./config.toml).",
        ),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, help="More logs on stderr (-v: info, -vv: debug)."
        ),
    ] = 0,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as JSON lines.")] = False,
    now_option: Annotated[
        str | None,
        typer.Option(
            "--now",
            envvar="FOLLOWUP_NOW",
            metavar="<instant>",
            help="Pretend the time is this ISO 8601 instant (e.g. 2027-01-01T06:00:00Z; UTC "
            "when it has no offset); the clock then runs on from there. For rehearsals, "
            "simulations and tests.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    state.config = config
    state.now = _parse_now(now_option)
    state.settings = None
    state.verbose, state.log_json = verbose, log_json
    logs.configure(log_level(), log_json)
