"""`followup config check`: the configuration's errors and warnings, before a start finds
them."""

from __future__ import annotations

from typing import Annotated

import typer

from followup import api
from followup.cli.app import cli, err, example, fail, out, state

config_cli = typer.Typer(help="Configuration commands.", no_args_is_help=True)
cli.add_typer(config_cli, name="config")


@config_cli.command(
    "check",
    epilog=example(
        "followup config check",
        "followup --config /etc/followup/config.toml config check --strict",
        "FOLLOWUP_SMTP_PORT=2525 followup config check",
    ),
)
def check(
    strict: Annotated[
        bool, typer.Option(help="Exit 1 on warnings too (CI, deployment scripts).")
    ] = False,
) -> None:
    """Read config.toml, its FOLLOWUP_<SECTION>_<KEY> overrides and calendars/ as every command
    does, without opening the database; print every error and warning.

    Warnings: a FOLLOWUP_* environment variable that is no setting (with the one it probably
    meant), a login in clear text allowed by [smtp] allow_cleartext_auth. Exit status 1 on
    any error, and on any warning with --strict.
    """
    result = api.check_config(state.config)
    for warning in result.warnings:
        err.print(f"warning: {warning.message}", highlight=False, markup=False, soft_wrap=True)
    for error in result.errors:
        err.print(f"error: {error}", highlight=False, markup=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)
    if strict and result.warnings:
        fail(f"{result.source}: {len(result.warnings)} warning(s), and --strict")
    out.print(
        f"{result.source}: ok ({len(result.warnings)} warning(s))", highlight=False, markup=False
    )
