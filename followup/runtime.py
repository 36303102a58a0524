"""The composition root: one followup installation (settings, database, templates,
calendar) as every command and job opens it, the clock they share, and the records of runs."""

from __future__ import annotations

import functools
import os
import random
import socket
import time as monotonic_time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from followup.config.calendars import load_calendar
from followup.config.settings import Settings
from followup.domain import care, planner
from followup.domain.decision import Rules
from followup.domain.occasions import Calendar
from followup.domain.outcomes import RetryPolicy
from followup.errors import DatabaseNotReady
from followup.messages.templates import Templates
from followup.storage.dialects import ledger_for
from followup.storage.engine import open_engine, sqlite_path
from followup.storage.ledger import Ledger


@dataclass
class Runtime:
    """Settings, database, templates and calendar of one followup installation."""

    settings: Settings
    engine: Engine
    templates: Templates
    calendar: Calendar

    @classmethod
    def open(cls, settings: Settings, *, create: bool = False) -> Runtime:
        calendar = load_calendar(settings)
        url = settings.database_url
        if not create:
            path = sqlite_path(url)
            if path is not None and not path.exists():
                raise DatabaseNotReady(
                    f"no database at {path}; run `followup db upgrade` (or `followup demo`)"
                )
        engine = open_engine(url, create_dir=create)
        templates = Templates(
            settings.path(settings.templates_dir),
            settings.sender.default_locale,
            limits=settings.templates.limits(),
        )
        return cls(settings, engine, templates, calendar)

    @functools.cached_property
    def ledger(self) -> Ledger:
        """The ledger's statements for this database."""
        return ledger_for(self.engine)

    @functools.cached_property
    def rules(self) -> Rules:
        """What the send-time decision reads from the configuration."""
        return Rules(self.calendar, self.politeness, self.tier_rules)

    @functools.cached_property
    def tier_rules(self) -> care.TierRules:
        t = self.settings.tiers
        return care.TierRules(
            vip_min_total_minor=t.vip_min_total * 100,
            vip_min_purchases=t.vip_min_purchases,
            new_within=timedelta(days=t.new_within_days),
            lapsed_after=timedelta(days=t.lapsed_after_days),
        )

    @functools.cached_property
    def retry_policy(self) -> RetryPolicy:
        d = self.settings.delivery
        return RetryPolicy(d.max_attempts, d.retry_base_seconds)

    @functools.cached_property
    def politeness(self) -> planner.Politeness:
        """Built once (the settings are frozen): the dispatcher asks for every touch."""
        p = self.settings.politeness
        return planner.Politeness(p.max_touches, timedelta(days=p.per_days), p.quiet)


@dataclass(frozen=True, slots=True)
class Clock:
    """Real time shifted by `offset` (FOLLOWUP_NOW): a clock that can go to another process."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @classmethod
    def starting_at(cls, start: datetime | None) -> Clock:
        return cls() if start is None else cls(start - datetime.now(UTC))


def record_run(
    rt: Runtime,
    kind: str,
    now: datetime,
    started: float,
    detail: str,
    *,
    owner: str | None = None,
    outcome: str = "ok",
) -> None:
    """Keep the last run of `kind` for `followup status` and /healthz; `started` is a
    time.monotonic() reading taken when the run began, `now` the clock's time then."""
    finished = now + timedelta(seconds=monotonic_time.monotonic() - started)
    with rt.engine.begin() as conn:
        rt.ledger.record_run(conn, kind, owner or process_id(), now, finished, outcome, detail)


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_id() -> str:
    return f"{process_id()}:{random.randrange(16**6):06x}"
