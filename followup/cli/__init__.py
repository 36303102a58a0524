"""The `followup` command (followup/cli/main.py puts it together)."""

from followup.cli.main import main

__all__ = ["main"]
