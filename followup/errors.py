"""Errors that reach the user. Each says what is wrong and where."""

from __future__ import annotations


class FollowupError(Exception):
    """Base class: the CLI prints these to stderr and exits with status 1."""


class ConfigError(FollowupError):
    """Invalid configuration; the message names the file and the key."""


class DatabaseNotReady(FollowupError):
    """The database has not been created or upgraded to this version's schema."""


class RenderError(FollowupError):
    """A template could not be rendered; the message names the template file and line.

    `file` (relative to the templates folder's parent, e.g. templates/birthday/fr/text.txt),
    `line` and `detail` are also kept apart, for reports (`followup templates check`, the
    studio)."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.detail = detail or message
