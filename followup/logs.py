"""Structured logs: one event name per line plus key=value fields (or JSON).

Never log a client's e-mail address or name at INFO: log ids (touch, client id, campaign).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class EventFormatter(logging.Formatter):
    def __init__(self, json_lines: bool = False) -> None:
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None) or record.getMessage()
        fields: dict[str, Any] = dict(getattr(record, "fields", {}) or {})
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        if self.json_lines:
            data = {"ts": stamp, "level": record.levelname.lower(), "event": event, **fields}
            if record.exc_info:
                data["exc"] = self.formatException(record.exc_info)
            return json.dumps(data, ensure_ascii=False, default=str)
        parts = [stamp, record.levelname.lower(), f"event={_quote(event)}"]
        parts += [f"{key}={_quote(value)}" for key, value in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _QuietScheduler(logging.Filter):
    """APScheduler warns when a run is skipped because the previous one still runs: expected
    for dispatch, whose running instance already loops until nothing is due."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


def level_named(name: str) -> int:
    return logging.getLevelNamesMapping().get(name.upper(), logging.INFO)


def configure(level: int = logging.WARNING, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(json_lines))
    root = logging.getLogger("followup")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # The scheduler's own warnings and errors (a job that raised, a run missed) go through
    # the same handler, as events named after their logger.
    scheduler = logging.getLogger("apscheduler")
    scheduler_handler = logging.StreamHandler(sys.stderr)
    scheduler_handler.setFormatter(EventFormatter(json_lines))
    scheduler_handler.addFilter(_QuietScheduler())
    scheduler.handlers[:] = [scheduler_handler]
    scheduler.setLevel(max(level, logging.WARNING))
    scheduler.propagate = False


def current() -> tuple[int, bool] | None:
    """What `configure` set in this process (level, JSON lines), or None when it was not
    called: worker processes configure their logging the same way."""
    root = logging.getLogger("followup")
    for handler in root.handlers:
        if isinstance(handler.formatter, EventFormatter):
            return root.level, handler.formatter.json_lines
    return None


log = logging.getLogger("followup")


def log_event(event: str, **fields: object) -> None:
    """One event name per line plus fields; never a client's address or name."""
    log.info(event, extra={"event": event, "fields": fields})
