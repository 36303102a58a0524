"""The public Python API: what a shop's own code calls to drive followup, and what the
`followup` command calls. Each function checks its own preconditions (the configuration, the
database's schema) and raises a FollowupError that says what to fix.

    import followup

    rt = followup.open("config.toml")
    followup.import_csv(rt, "clients", "clients.csv")
    followup.plan(rt)
    print(followup.dry_run(rt, date(2027, 1, 1)).messages)
    followup.send(rt)

Times are aware datetimes; `now` defaults to the real time, and may be moved (simulations,
tests) as FOLLOWUP_NOW moves the command's clock. docs/api.md describes every name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path

from followup.config.checks import ConfigCheck, ConfigWarning, config_warnings, log_warnings
from followup.config.checks import check_config as _check_config
from followup.config.settings import Settings, default_config_path, load_settings
from followup.delivery.breaker import Breaker
from followup.delivery.dispatcher import dispatch, dispatch_in_processes
from followup.delivery.report import DispatchReport, DispatchStopped
from followup.domain.statuses import Consent
from followup.dryrun.run import DryRun, DryRunEntry
from followup.dryrun.run import dry_run as _dry_run
from followup.errors import FollowupError
from followup.importing.fields import FieldError, parse_text
from followup.importing.importer import ImportReport, Kind
from followup.importing.importer import import_csv as _import_csv
from followup.importing.presets import profile_for
from followup.planning.plan import PlanReport
from followup.planning.plan import plan as _plan
from followup.processes import Interrupt
from followup.runtime import Clock, Runtime
from followup.service import privacy
from followup.service.privacy import ErasureReport
from followup.service.reports import ClientHistory, Status
from followup.service.reports import history as _history
from followup.service.reports import status as _status
from followup.service.retry import Retry
from followup.service.retry import retry as _retry
from followup.storage import people, schema
from followup.storage.people import ConsentChange, Unsuppression

__all__ = [
    "Breaker",
    "ClientHistory",
    "Clock",
    "ConfigCheck",
    "ConfigWarning",
    "ConsentChange",
    "DispatchReport",
    "DispatchStopped",
    "DryRun",
    "DryRunEntry",
    "ErasureReport",
    "ImportReport",
    "PlanReport",
    "Retry",
    "Runtime",
    "Settings",
    "Status",
    "Unsuppression",
    "check_config",
    "dispatch",
    "dry_run",
    "erase_client",
    "history",
    "import_csv",
    "open",
    "plan",
    "retry",
    "send",
    "set_consent",
    "status",
    "unsuppress",
    "upgrade",
]


def open(
    config: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    create: bool = False,
) -> Runtime:
    """One followup installation: the settings of `config` (default: FOLLOWUP_CONFIG, else
    ./config.toml) with the FOLLOWUP_* overrides of `env` (default: the process's
    environment), its database, templates and calendar. With `create`, a SQLite database
    that does not exist yet is created (then `upgrade` it). The configuration's warnings
    (`check_config`) are logged."""
    env = os.environ if env is None else env
    path = Path(config) if config is not None else default_config_path(env)
    settings = load_settings(path, env)
    log_warnings(config_warnings(settings, env))
    return Runtime.open(settings, create=create)


def check_config(
    config: Path | str | None = None, *, env: Mapping[str, str] | None = None
) -> ConfigCheck:
    """Everything wrong with a configuration, without opening its database: the errors of
    `config` (default: FOLLOWUP_CONFIG, else ./config.toml), of the FOLLOWUP_* overrides of
    `env` (default: the process's environment) and of the calendars, all at once instead of
    the first one raised; and the warnings (a FOLLOWUP_* variable that is no setting, a
    login in clear text allowed on purpose)."""
    env = os.environ if env is None else env
    path = Path(config) if config is not None else default_config_path(env)
    return _check_config(path, env)


def upgrade(rt: Runtime) -> tuple[str | None, str | None]:
    """Create the database's schema or migrate it to this version's; safe to repeat. Returns
    the revisions before and after."""
    before = schema.current_revision(rt.engine)
    schema.upgrade(rt.engine)
    return before, schema.current_revision(rt.engine)


def import_csv(
    rt: Runtime,
    kind: Kind | str,
    path: Path | str,
    *,
    now: datetime | None = None,
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    preset: str | None = None,
    decimal: str | None = None,
    explain: bool = False,
) -> ImportReport:
    """Import reps, clients or purchases from a CSV file: each row is upserted by its id (the
    report counts it new, updated or unchanged: an unchanged row is not written) or rejected
    with file, line, column and reason; with `strict`, one rejected row means nothing is
    written. `progress` is told the bytes read. `encoding` is a Python codec name (default
    UTF-8; a byte order mark decides by itself), `delimiter` one character (default: sniffed
    from the header); a wrong name is a ValueError, and a byte not in the encoding an error
    that writes nothing. A client's zone and locale that the file leaves out are inferred from
    the country (`[defaults]`).

    `preset` names the file's layout: "shopify", "woocommerce", or "config" (the settings'
    [import.KIND] mapping); None is followup's own columns. `decimal` is the file's decimal
    mark ("." or ","). With `explain`, nothing is written: the report says what would be."""
    schema.check_ready(rt.engine)
    kind = Kind(kind)
    profile = None
    if preset is not None or decimal is not None or explain:
        profile = profile_for(kind, preset, rt.settings.imports, decimal)
    return _import_csv(
        rt.engine,
        kind,
        Path(path),
        now=now or datetime.now(UTC),
        strict=strict,
        progress=progress,
        encoding=encoding,
        delimiter=delimiter,
        defaults=rt.territory_defaults,
        profile=profile,
        explain=explain,
    )


def plan(
    rt: Runtime,
    now: datetime | None = None,
    until: datetime | None = None,
    *,
    processes: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> PlanReport:
    """Plan every client's touches due up to `until` (default: [schedule] plan_horizon_days
    from now). Idempotent: planning twice plans nothing new. `progress` is told the clients
    planned."""
    return _plan(rt, now or datetime.now(UTC), until, progress=progress, processes=processes)


def send(
    rt: Runtime,
    now: datetime | None = None,
    *,
    processes: int | None = None,
    resend_uncertain: bool = False,
    interrupt: Interrupt | None = None,
    breaker: Breaker | None = None,
) -> DispatchReport:
    """Deliver what is due now, until nothing is: claim, decide, compose, send, record; the
    clock starts at `now` (default: the real time) and runs on. From `processes` processes
    (default: [delivery] processes). With `resend_uncertain`, the
    touches whose fate a crash left unknown are sent again first (a client may get a message
    twice: the operator's decision). With an entered `interrupt` (followup.processes), SIGTERM
    and SIGINT stop the run as they stop the daemon. For an event loop of your own, await
    `dispatch`. Raises DispatchStopped, with the report, when the SMTP server refuses this
    client's setup (relay, login, sender, policy): the touches not sent stay in the queue.
    Refuses (RenderError, naming file and line) when a template an enabled campaign needs
    does not compile; a template that fails while rendering holds its touches instead.
    `breaker` (`Breaker.for_delivery(rt.settings)`), kept across calls, holds the SMTP
    server's circuit breaker and its backoff from one call to the next (one process)."""
    rt.check_templates()
    count = processes or rt.settings.delivery.processes
    clock = Clock.starting_at(now)
    return dispatch_in_processes(
        rt, clock, count, resend_uncertain=resend_uncertain, interrupt=interrupt, breaker=breaker
    )


def retry(
    rt: Runtime,
    now: datetime | None = None,
    *,
    campaign: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
) -> Retry:
    """Send failed touches again: those of `campaign`, whose reason holds `reason` (any
    case), that failed at or after `since` and before `until`. They go back to the queue,
    due at `now`, with a day to go out (the next `send` takes them); with `dry_run` they are
    only listed. Only failed touches move, never a sent or uncertain one."""
    return _retry(
        rt,
        now or datetime.now(UTC),
        campaign=campaign,
        reason=reason,
        since=since,
        until=until,
        dry_run=dry_run,
    )


def dry_run(rt: Runtime, on: date | None = None, now: datetime | None = None) -> DryRun:
    """Everything that would go out on day `on` (each client's local date; default: today),
    decided and composed as a real run does, as of `now`: messages, touches waiting for a
    later day, and skipped touches with the reason the ledger records. Writes nothing to the
    database and sends nothing."""
    now = now or datetime.now(UTC)
    return _dry_run(rt, on or now.date(), now)


def status(rt: Runtime, now: datetime | None = None) -> Status:
    """The ledger: touches by status, the queue, the last runs, failed and uncertain touches."""
    return _status(rt, now or datetime.now(UTC))


def history(rt: Runtime, client: str, now: datetime | None = None) -> ClientHistory | None:
    """Every touch of one client (by id, or else e-mail) with each change of status; the
    client's zone and locale (and which were inferred from the country) and their tier as of
    `now`, with the spend it counted."""
    return _history(rt, client, now)


def unsuppress(
    rt: Runtime, email: str, now: datetime | None = None, *, reason: str = "unsuppressed"
) -> Unsuppression:
    """Take an address off the suppression list and put the clients it had bounced back to
    active, with `reason` in their history (an erased client's hash stays)."""
    return people.unsuppress(rt.engine, email, now or datetime.now(UTC), reason)


def set_consent(
    rt: Runtime,
    client: str,
    consent: Consent | str,
    *,
    source: str = "operator",
    at: datetime | None = None,
    now: datetime | None = None,
) -> ConsentChange:
    """Set one client's (by id, or else e-mail) marketing consent: yes, no or unknown, who
    said so (`source`, up to 128 characters) and when (`at`, default `now`), recorded in the
    client's history. Marketing touches already planned are decided with it when due
    (docs/consent.md)."""
    now = now or datetime.now(UTC)
    at = at or now
    try:
        state = Consent(str(consent).strip().lower())
    except ValueError:
        raise FollowupError(f"consent {consent!r} is not yes, no or unknown") from None
    try:
        source = parse_text(source, "source", 128)
    except FieldError as exc:
        raise FollowupError(f"source {exc.reason}") from None
    if at.tzinfo is None or at > now:
        raise FollowupError(f"consent date {at.isoformat()} must be aware and not in the future")
    return people.set_consent(rt.engine, client, state, source, at, now)


def erase_client(
    rt: Runtime,
    client: str,
    now: datetime | None = None,
    *,
    dry_runs: Path | str | None = None,
    vacuum: bool = True,
) -> ErasureReport:
    """Erase one client (by id, or else e-mail) for good: their data and the dates of their
    touches in the database, the capture maildir's copies of their messages, the dry-run
    folders under `dry_runs` that list them; then, with `vacuum`, the database rewritten
    without the deleted bytes. The keyed hash of the address stays on the suppression list."""
    folder = None if dry_runs is None else Path(dry_runs)
    return privacy.erase(rt, client, now or datetime.now(UTC), dry_runs=folder, vacuum=vacuum)
