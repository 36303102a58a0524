"""The `followup` command: thin commands over the core API. Errors go to stderr, exit status 1
(2 for usage). Every command's --help ends with its examples.

This module puts the command together: the app and its global options (app.py), then the
commands, whose modules register themselves on the app in this order (the order of
`followup --help`), and `main()`, the console script, which turns the errors a user can fix
into one line on stderr."""

from __future__ import annotations

import sys

from sqlalchemy.exc import SQLAlchemyError

from followup.cli.app import cli, err
from followup.errors import FollowupError

# Each module registers its commands on the app when it is imported: the order of these
# imports is the order of `followup --help` (the groups, db, templates, client and config,
# come last).
# isort: off
from followup.cli import setup, sending, operations, marketing, people, configuration

# isort: on

__all__ = ["COMMANDS", "cli", "main"]

#: The modules of the commands, in the order `followup --help` lists them.
COMMANDS = (setup, sending, operations, marketing, people, configuration)


def _short(exc: BaseException) -> str:
    """One line for an error the user can fix: the exception, then its causes."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 3:
        text = str(current).splitlines()[0] if str(current) else type(current).__name__
        if isinstance(current, SQLAlchemyError):
            text = str(getattr(current, "orig", None) or text).splitlines()[0]
        if text not in parts:
            parts.append(text)
        current = current.__cause__
    return ": ".join(parts)


def main() -> None:
    """Console-script entry point: errors go to stderr as one line, exit status 1."""
    try:
        cli(standalone_mode=True)
    except FollowupError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except SQLAlchemyError as exc:
        err.print(f"error: database: {_short(exc)}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except (OSError, UnicodeError) as exc:
        err.print(f"error: {_short(exc)}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
