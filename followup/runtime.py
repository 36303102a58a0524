"""The composition root: one followup installation (settings, database, templates,
calendar) as every command and job opens it, the clock they share, and the records of runs."""

from __future__ import annotations

import functools
import os
import socket
import time as monotonic_time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from followup import owners
from followup.config.calendars import load_calendar
from followup.config.settings import Settings
from followup.domain import care, planner
from followup.domain.consent import ConsentRule, Mode
from followup.domain.decision import Rules
from followup.domain.occasions import Calendar
from followup.domain.outcomes import RetryPolicy
from followup.domain.territories import TerritoryDefaults
from followup.errors import DatabaseNotReady, RenderError
from followup.logs import log_event
from followup.messages.templates import Templates, stamp
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
    #: The stamp of templates/ when `templates` was built (see `reload_templates`).
    templates_stamp: tuple[int, int, int] = (0, 0, 0)

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
        folder = settings.path(settings.templates_dir)
        built = stamp(folder)
        templates = Templates(
            folder, settings.sender.default_locale, limits=settings.templates.limits()
        )
        return cls(settings, engine, templates, calendar, built)

    def reload_templates(self) -> bool:
        """Build the templates again when a file under templates/ changed since they were
        built (a cheap stamp: count, latest mtime, total size), so that a long-running process
        (the daemon) renders what the marketers saved without a restart. True when rebuilt."""
        now = stamp(self.templates.root)
        if now == self.templates_stamp:
            return False
        self.templates = Templates(
            self.templates.root,
            self.templates.default_locale,
            limits=self.settings.templates.limits(),
        )
        self.templates_stamp = now
        log_event("templates.reloaded", files=now[0])
        return True

    def check_templates(self) -> None:
        """Refuse to send when a template that an enabled campaign needs (its message's files,
        and the shared layouts and partials) does not compile: raises a RenderError naming
        each file and line. Errors while rendering (a misspelt variable) hold the touches
        instead, until the file is fixed."""
        needed = {campaign.template for campaign in self.calendar.enabled}
        errors = self.templates.compile_all(needed)
        if errors:
            listed = "\n".join(f"  {error}" for error in errors)
            first = errors[0]
            raise RenderError(
                f"{len(errors)} template(s) do not compile; nothing was sent. Fix them "
                f"(`followup templates check`) and start again:\n{listed}",
                file=first.file,
                line=first.line,
                detail=first.detail,
            )

    @functools.cached_property
    def ledger(self) -> Ledger:
        """The ledger's statements for this database."""
        return ledger_for(self.engine)

    @functools.cached_property
    def rules(self) -> Rules:
        """What the send-time decision reads from the configuration."""
        return Rules(self.calendar, self.politeness, self.tier_rules, self.consent_rule)

    @functools.cached_property
    def consent_rule(self) -> ConsentRule:
        """[consent]: what a marketing occasion needs."""
        c = self.settings.consent
        return ConsentRule(Mode(c.marketing), c.implied_months)

    @functools.cached_property
    def tier_rules(self) -> care.TierRules:
        t = self.settings.tiers
        return care.TierRules.of(
            t.currency,
            t.vip_min_total,
            t.vip_min_totals,
            t.rates,
            vip_min_purchases=t.vip_min_purchases,
            new_within=timedelta(days=t.new_within_days),
            lapsed_after=timedelta(days=t.lapsed_after_days),
        )

    @functools.cached_property
    def territory_defaults(self) -> TerritoryDefaults:
        """[defaults]: a client's zone and locale when the import file gives none."""
        d = self.settings.defaults
        locale = d.locale or self.settings.sender.default_locale
        return TerritoryDefaults(d.timezones, d.locales, d.timezone, locale)

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
    """A new lease owner for a run (`followup.owners`): its host, process and start time,
    so that a later process on this host can tell when it is gone."""
    return owners.owner_id()
