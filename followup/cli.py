"""The `followup` command: thin commands over followup.app. Errors go to stderr, exit status 1
(2 for usage). Every command's --help ends with an example."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from followup import (
    __version__,
    app,
    demo,
    dryrun_output,
    importer,
    lint,
    logs,
    people,
    preview,
    store,
)
from followup.config import Settings, default_config_path, load_settings
from followup.errors import FollowupError, RenderError
from followup.render import Templates

cli = typer.Typer(
    name="followup",
    help="followup: the after-sales follow-up engine. Plans, renders and sends thank-you and "
    "greeting e-mails to every client, at a good local hour, never twice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_cli = typer.Typer(help="Database schema commands.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
templates_cli = typer.Typer(help="Check the message templates.", no_args_is_help=True)
cli.add_typer(templates_cli, name="templates")

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., object])


class _State:
    config: Path | None = None
    now: datetime | None = None
    settings: Settings | None = None
    verbose: int = 0
    log_json: bool = False


state = _State()


def example(*lines: str) -> str:
    return "Example:\n\n" + "\n".join(f"  {line}" for line in lines)


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(1)


def settings() -> Settings:
    if state.settings is None:
        path = state.config if state.config is not None else default_config_path()
        state.settings = load_settings(path)
        if state.settings.log.format == "json" and not state.log_json:
            state.log_json = True
            logs.configure(_log_level(), json_lines=True)
    return state.settings


def _log_level(daemon: bool = False) -> int:
    """-v and -vv win; otherwise the daemon logs at [log] level, other commands warnings."""
    if state.verbose:
        return logging.INFO if state.verbose == 1 else logging.DEBUG
    if daemon and state.settings is not None:
        return logs.level_named(state.settings.log.level)
    return logging.WARNING


def now() -> datetime:
    return state.now if state.now is not None else datetime.now(UTC)


def clock() -> app.Clock:
    """Real time, or from FOLLOWUP_NOW / --now on as time passes."""
    return app.Clock.starting_at(state.now)


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
        out.print(f"followup {__version__}")
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
            hidden=True,
            help="Pretend the time is this ISO 8601 instant (testing, simulations).",
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
    logs.configure(_log_level(), log_json)


# ----------------------------------------------------------------------------- setup


SKELETON = Path(__file__).parent / "skeleton"


@cli.command(epilog=example("followup init shop && cd shop && followup demo"))
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the files.")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Create config.toml, templates/ and calendars/ with working examples."""
    directory.mkdir(parents=True, exist_ok=True)
    created = []
    for name in ("config.toml", "templates", "calendars"):
        source, target = SKELETON / name, directory / name
        if target.exists() and not force:
            err.print(f"kept existing {target}")
            continue
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)
        created.append(str(target))
    for path in created:
        out.print(f"created {path}")
    out.print("next: `followup demo` loads a demo shop, `followup run` plans and delivers.")


@db_cli.command(
    "upgrade",
    epilog=example(
        "followup db upgrade",
        "FOLLOWUP_DATABASE_URL=postgresql+psycopg://u@db/followup followup db upgrade",
    ),
)
def db_upgrade() -> None:
    """Create the database or migrate it to this version's schema (safe to repeat)."""
    rt = app.Runtime.open(settings(), create=True)
    before = store.current_revision(rt.engine)
    store.upgrade(rt.engine)
    after = store.current_revision(rt.engine)
    out.print(f"database at revision {after}" + ("" if before == after else f" (was {before})"))


@cli.command("demo", epilog=example("followup demo && followup run"))
def demo_command(
    clients: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many clients.")] = 240,
    today: Annotated[str | None, typer.Option(help="Shop's 'today' (YYYY-MM-DD).")] = None,
) -> None:
    """Load a demo shop: reps, clients in en and fr, two years of purchases."""
    rt = app.Runtime.open(settings(), create=True)
    store.upgrade(rt.engine)
    day = _parse_day(today, "--today") if today else now().date()
    folder = settings().path("var/demo")
    paths = demo.write_csvs(folder, day, clients=clients)
    for kind in (importer.Kind.REPS, importer.Kind.CLIENTS, importer.Kind.PURCHASES):
        report = _import_with_progress(rt, kind, paths[kind.value], strict=True)
        out.print(f"{kind.value:>9}: {report.imported} imported from {paths[kind.value]}")
        if report.errors:
            for error in report.errors[:5]:
                err.print(str(error))
            fail(f"the demo's {kind.value}.csv did not import cleanly")
    out.print(
        "demo shop loaded. next: `followup run` plans and delivers what is due now; "
        "`followup run --dry-run --on DATE` shows any day."
    )


# ----------------------------------------------------------------------------- import


def _import_with_progress(
    rt: app.Runtime, kind: importer.Kind, path: Path, *, strict: bool
) -> importer.ImportReport:
    size = path.stat().st_size if path.exists() else 0
    show = err.is_terminal and size > 256 * 1024
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
        transient=True,
    )
    with progress:
        task = progress.add_task(f"importing {path.name}", total=size)
        return importer.import_csv(
            rt.engine,
            kind,
            path,
            now=now(),
            strict=strict,
            progress=lambda n: progress.advance(task, n),
        )


@cli.command(
    "import",
    epilog=example(
        "followup import reps reps.csv",
        "followup import clients clients.csv --strict",
        "followup import purchases purchases.csv",
    ),
)
def import_command(
    kind: Annotated[importer.Kind, typer.Argument(help="What the file holds.")],
    file: Annotated[Path, typer.Argument(help="UTF-8 CSV file with a header row.")],
    strict: Annotated[bool, typer.Option(help="Write nothing if any row is rejected.")] = False,
) -> None:
    """Import reps, clients or purchases from CSV; rows are upserted by their id.

    Every rejected row is reported with file, line, column and reason. Exit status is 1 when
    any row was rejected (the good rows are stored unless --strict).
    """
    rt = app.Runtime.open(settings())
    store.check_ready(rt.engine)
    try:
        report = _import_with_progress(rt, kind, file, strict=strict)
    except importer.HeaderError as exc:
        fail(str(exc))
    for error in report.errors:
        err.print(str(error), highlight=False, markup=False)
    if strict and report.errors:
        fail(f"{report.rejected_rows} row(s) rejected and --strict: nothing was imported")
    updated = report.imported - report.created
    out.print(
        f"{file.name}: {report.imported} imported ({report.created} new, {updated} updated),"
        f" {report.rejected_rows} rejected"
    )
    if report.errors:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- the main job


def _parse_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint=option
        ) from None


@cli.command(
    epilog=example(
        "followup plan", "followup plan --until 2027-01-31", "followup plan --processes 2"
    )
)
def plan(
    until: Annotated[
        str | None,
        typer.Option(
            help="Plan touches due up to this date (UTC end "
            "of day); default: [schedule] plan_horizon_days."
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Plan in this many processes (default: [schedule] plan_processes).",
        ),
    ] = None,
) -> None:
    """Plan touches up to a horizon. Idempotent: planning twice plans nothing new."""
    horizon = None
    if until is not None:
        horizon = datetime.combine(_parse_day(until, "--until") + timedelta(days=1), time(), UTC)
    rt = app.Runtime.open(settings())
    report = _plan_with_progress(rt, horizon, processes)
    out.print(
        f"planned {report.planned} touch(es) for {report.clients} client(s), "
        f"{report.skipped} recorded as skipped (too late or capped)"
    )


def _plan_with_progress(
    rt: app.Runtime, horizon: datetime | None, processes: int | None = None
) -> app.PlanReport:
    """Plans with a progress bar over the clients on a terminal (large shops)."""
    total = app.client_count(rt)
    progress = Progress(
        TextColumn("planning"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} clients"),
        TimeRemainingColumn(),
        console=err,
        disable=not (err.is_terminal and total > 20_000),
        transient=True,
    )
    with progress:
        task = progress.add_task("planning", total=total)
        return app.plan(
            rt, now(), horizon, progress=lambda n: progress.advance(task, n), processes=processes
        )


def _send(
    rt: app.Runtime, *, resend_uncertain: bool = False, processes: int | None = None
) -> app.DispatchReport:
    count = processes or rt.settings.delivery.processes
    return app.dispatch_in_processes(rt, clock(), count, resend_uncertain=resend_uncertain)


def _print_dispatch(report: app.DispatchReport) -> None:
    out.print(
        f"sent {report.sent}, retry later {report.retry}, failed {report.failed}, "
        f"skipped {report.skipped}, too late {report.too_late}, uncertain {report.uncertain}"
    )


@cli.command(
    epilog=example(
        "followup send --once",
        "followup send --once --resend-uncertain",
        "followup send --once --processes 2",
    )
)
def send(
    once: Annotated[bool, typer.Option("--once", help="Send what is due now, then exit.")] = False,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            min=1,
            max=64,
            help="Send from this many processes at once (default: [delivery] processes).",
        ),
    ] = None,
    resend_uncertain: Annotated[
        bool,
        typer.Option(
            "--resend-uncertain",
            help="First send again the touches left uncertain by a crash (the server may "
            "have accepted them: a client may get the message twice).",
        ),
    ] = False,
) -> None:
    """Dispatch what is due now. Without --once, keep dispatching until interrupted."""
    rt = app.Runtime.open(settings())
    while True:
        report = _send(rt, resend_uncertain=resend_uncertain, processes=processes)
        resend_uncertain = False
        if report.requeued:
            out.print(f"{report.requeued} uncertain touch(es) sent again")
        _print_dispatch(report)
        if once:
            return
        try:
            asyncio.run(asyncio.sleep(settings().schedule.dispatch_interval_seconds))
        except KeyboardInterrupt:
            return


@cli.command(
    epilog=example(
        "followup run",
        "followup run --dry-run --on 2027-12-24 --out xmas",
        "followup run --dry-run --on 2027-01-01 --json | jq '.messages[].to'",
    )
)
def run(
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Send nothing, write nothing to the database: show what would go out."
        ),
    ] = False,
    on: Annotated[
        str | None,
        typer.Option(
            help="With --dry-run: the day (YYYY-MM-DD), each client's local date; default today."
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="With --dry-run: folder for the "
            ".eml files, index.html and manifest.json "
            "(default dry-run/DATE).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the manifest as JSON on stdout.")
    ] = False,
) -> None:
    """The main job: plan, then send what is due now. With --dry-run: what would go out on a day."""
    if not dry_run and (on or out_dir or as_json):
        raise typer.BadParameter("--on, --out and --json go with --dry-run")
    day = _parse_day(on, "--on") if on else now().date()
    rt = app.Runtime.open(settings())
    if not dry_run:
        planned = app.plan(rt, now())
        out.print(f"planned {planned.planned} new touch(es)")
        report = _send(rt)
        _print_dispatch(report)
        if report.capture_dir is not None:
            _show_capture(report)
        return
    result = app.dry_run(rt, day, now())
    folder = out_dir or Path("dry-run") / day.isoformat()
    manifest_path = dryrun_output.write(result, folder)
    if as_json:
        sys.stdout.write(json.dumps(dryrun_output.manifest(result), indent=2, ensure_ascii=False))
        sys.stdout.write("\n")
        return
    table = Table(title=f"What would go out on {day} (nothing was sent)")
    for column in ("local time", "client", "campaign", "locale", "subject"):
        table.add_column(column)
    for entry in result.messages[:50]:
        local = dryrun_output.entry_json(entry)["send_at_local"]
        table.add_row(local, entry.client, entry.campaign, entry.locale or "", entry.subject or "")
    out.print(table)
    if len(result.messages) > 50:
        out.print(f"... and {len(result.messages) - 50} more")
    out.print(
        f"{len(result.messages)} message(s), {len(result.skipped)} skipped; "
        f"written to {folder}/ (open {folder / 'index.html'}; manifest: {manifest_path})"
    )


def _show_capture(report: app.DispatchReport) -> None:
    assert report.capture_dir is not None
    folder = report.capture_dir / "new"
    files = sorted(folder.glob("*"), key=lambda p: p.stat().st_mtime) if folder.exists() else []
    out.print(
        f"delivery mode is capture: nothing left this machine. {len(files)} message(s) "
        f"are in the maildir {report.capture_dir} (one file each in {folder}/; "
        f"`mutt -f {report.capture_dir}` reads it)."
    )
    if report.sent and files:
        import email
        from email.policy import default

        sample = files[-1]
        message = email.message_from_bytes(sample.read_bytes(), policy=default)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        out.rule(f"one of them: {sample}")
        for header in ("From", "To", "Subject", "Date", "Message-ID"):
            out.print(f"{header}: {message[header]}", highlight=False, markup=False, soft_wrap=True)
        out.print()
        out.print(text.strip(), highlight=False, markup=False, soft_wrap=True)
        out.rule()


# ----------------------------------------------------------------------------- operations
# followup daemon, status, history: the operator's commands (docs/operations.md).


@cli.command(
    epilog=example(
        "followup daemon",
        "FOLLOWUP_DATABASE_URL=postgresql+psycopg://u@db/followup followup daemon --log-json",
    )
)
def daemon() -> None:
    """Plan and send forever; serve /healthz, /metrics and the unsubscribe links on [http].

    SIGTERM or SIGINT stops it cleanly: sends in flight finish, the rest go back to the queue,
    exit status 0. On SQLite one daemon per database file; on PostgreSQL any number share the
    work.
    """
    from followup import daemon as daemon_module

    config = settings()
    logs.configure(_log_level(daemon=True), state.log_json)
    rt = app.Runtime.open(config)
    daemon_module.run(rt, clock())


def _when(value: object) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else "never"


@cli.command(epilog=example("followup status", "followup status --json | jq .due_now"))
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The ledger: touches by status, the queue, the last runs, failed and uncertain touches."""
    from followup import reports

    rt = app.Runtime.open(settings())
    report = reports.status(rt, now())
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        return
    table = Table(title="ledger")
    table.add_column("status")
    table.add_column("touches", justify="right")
    for name, count in sorted(report.counts.items()):
        table.add_row(name, str(count))
    table.add_row("due now", str(report.due_now))
    out.print(table)
    out.print(f"queue: {report.waiting} waiting, {report.due_now} due now")
    for kind in ("plan", "dispatch", "housekeeping"):
        run = report.runs.get(kind)
        if run is None:
            out.print(f"last {kind}: never")
        else:
            out.print(
                f"last {kind}: {_when(run['finished_at'])} {run['outcome']} "
                f"({run['detail'] or ''}) by {run['owner']}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    for title, lines in (("failed", report.failed), ("uncertain", report.uncertain)):
        if not lines:
            continue
        listing = Table(title=f"{title} (latest {len(lines)} of {report.counts.get(title, 0)})")
        for column in ("touch", "client", "campaign", "occurrence", "updated", "reason"):
            listing.add_column(column)
        for line in lines:
            listing.add_row(
                str(line.touch),
                line.client,
                line.campaign,
                line.occurrence.isoformat(),
                _when(line.updated_at),
                line.reason or "",
            )
        out.print(listing)
    if report.uncertain:
        out.print(
            "uncertain touches may have reached the client: `followup send --once "
            "--resend-uncertain` sends them again."
        )


@cli.command(
    epilog=example("followup history c42", "followup history ann@example.com --json"),
)
def history(
    client: Annotated[str, typer.Argument(help="The client's id (from your CSV) or e-mail.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the history as JSON.")] = False,
) -> None:
    """Every touch of one client: campaign, occurrence, each change of status with its time,
    template, locale, variant, rep, Message-ID, SMTP reply and reason."""
    from followup import reports

    rt = app.Runtime.open(settings())
    found = reports.history(rt, client)
    if found is None:
        fail(f"no client with id or e-mail {client!r}")
    if as_json:
        sys.stdout.write(json.dumps(found.to_json(), indent=2, ensure_ascii=False) + "\n")
        return
    suppressed = f", suppressed ({found.suppressed})" if found.suppressed else ""
    out.print(
        f"client {found.client} <{found.email}>: {found.status}{suppressed}; "
        f"{len(found.touches)} touch(es)",
        highlight=False,
        markup=False,
    )
    for touch in found.touches:
        table = Table(
            title=f"touch {touch.touch}: {touch.campaign} {touch.occurrence} - {touch.status}",
            title_justify="left",
        )
        table.add_column("at")
        table.add_column("change")
        table.add_column("detail")
        for event in touch.events:
            change = f"{event.from_status or '-'} -> {event.to_status}"
            table.add_row(_when(event.at), change, event.detail or "")
        out.print(table)
        facts = [
            ("due", _when(touch.due_at)),
            ("template", touch.template),
            ("locale", touch.locale),
            ("variant", touch.variant),
            ("rep", touch.rep),
            ("attempts", str(touch.attempts)),
            ("Message-ID", touch.message_id),
            ("SMTP reply", touch.smtp_reply),
            ("reason", touch.reason),
            ("survey score", None if touch.survey_score is None else f"{touch.survey_score}/5"),
        ]
        for name, value in facts:
            if value:
                out.print(f"  {name}: {value}", highlight=False, markup=False, soft_wrap=True)


# ----------------------------------------------------------------------------- templates


def _templates(*, auto_reload: bool = False) -> Templates:
    s = settings()
    return Templates(s.path(s.templates_dir), s.sender.default_locale, auto_reload=auto_reload)


@templates_cli.command(
    "check",
    epilog=example(
        "followup templates check",
        "followup templates check && git commit   # e.g. in a pre-commit hook",
    ),
)
def templates_check() -> None:
    """Compile every template and render every message, locale and variant with the sample
    clients. Each problem is printed with its file and line; exit status 1 if there is any."""
    templates = _templates()
    report = lint.check(settings(), templates)
    for problem in report.problems:
        err.print(str(problem), highlight=False, markup=False, soft_wrap=True)
    if report.problems:
        fail(f"{len(report.problems)} problem(s) in {templates.root}")
    out.print(
        f"{templates.root}: {len(templates.messages())} message(s), "
        f"{report.rendered} rendering(s) (message x locale x variant), no problems",
        highlight=False,
        soft_wrap=True,
    )


@cli.command(
    "preview",
    epilog=example(
        "followup preview birthday",
        "followup preview thank_you --locale fr --variant sage",
        "followup preview holiday --client C0042 --on 2027-12-25 --out /tmp/previews",
    ),
)
def preview_command(
    template: Annotated[str, typer.Argument(help="The message: a folder of templates/.")],
    client: Annotated[
        str | None,
        typer.Option(help="A real client's id (from the database); default: a sample client."),
    ] = None,
    locale: Annotated[
        str | None, typer.Option(help="Render in this locale (default: the client's).")
    ] = None,
    variant: Annotated[
        str | None, typer.Option(help="The design variant (default: one chosen as for a send).")
    ] = None,
    on: Annotated[
        str | None, typer.Option(help="The occasion's day (YYYY-MM-DD); default today.")
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where to write the .html and .eml files.")
    ] = Path("preview"),
) -> None:
    """Render one message and show it: prints the subject and the text part, writes the HTML
    part and the whole message (.eml). Sends nothing; its links are signed with a throw-away
    key."""
    day = _parse_day(on, "--on") if on else now().date()
    templates = _templates()
    if template not in templates.messages():
        fail(
            f"no message {template!r} in {templates.root} (known: "
            f"{', '.join(templates.messages())})"
        )
    if client is None:
        facts = preview.sample_for(locale or "en-US")
    else:
        rt = app.Runtime.open(settings())
        facts = preview.real_client(rt.engine, client)
        rt.engine.dispose()
    if locale is not None:
        facts = dataclasses.replace(facts, locale=locale)
    try:
        shown = preview.render(settings(), templates, template, facts, on=day, variant=variant)
    except RenderError as exc:
        fail(str(exc))
    composed = shown.composed
    html_path, eml_path = preview.write(shown, out_dir)
    out.print(f"Subject: {composed.subject}", highlight=False, markup=False, soft_wrap=True)
    out.print(
        f"(locale {composed.locale}, variant {composed.variant}, client {shown.client})",
        highlight=False,
        markup=False,
    )
    out.print()
    out.print(composed.text.rstrip(), highlight=False, markup=False, soft_wrap=True)
    out.print()
    out.print(f"HTML part: {html_path}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"message:   {eml_path}", highlight=False, markup=False, soft_wrap=True)


@cli.command(
    "studio",
    epilog=example(
        "followup studio", "followup studio --port 9000   # then open the URL it prints"
    ),
)
def studio_command(
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")
    ] = 8026,
) -> None:
    """A live preview page for marketers on 127.0.0.1: every message, locale and variant,
    for a sample or a real client, with template errors inline; it refreshes by itself when
    a file under templates/ is saved. Sends nothing. Ctrl-C stops it."""
    from followup import studio

    server = studio.serve(settings(), now().date(), port)
    out.print(
        f"studio on {server.url} (templates: {settings().path(settings().templates_dir)}); "
        "nothing is ever sent from here. Ctrl-C stops it.",
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.studio.close()


# ----------------------------------------------------------------------------- clients and reps


@cli.command(
    epilog=example(
        "followup reassign --from rep-sam --to rep-lea",
        "followup reassign --from rep-sam --spread --retire",
    )
)
def reassign(
    from_rep: Annotated[str, typer.Option("--from", help="The rep whose clients move (id).")],
    to_rep: Annotated[
        str | None, typer.Option("--to", help="The rep who takes them all over (id).")
    ] = None,
    spread: Annotated[
        bool, typer.Option("--spread", help="Spread them over the other active reps in turn.")
    ] = False,
    retire: Annotated[
        bool, typer.Option("--retire", help="Mark the --from rep inactive afterwards.")
    ] = False,
) -> None:
    """Move a rep's clients to another rep (or spread them): later messages are signed by the
    new rep; messages already sent keep who signed them."""
    if (to_rep is None) == (not spread):
        raise typer.BadParameter("give either --to REP or --spread", param_hint="--to/--spread")
    rt = app.Runtime.open(settings())
    store.check_ready(rt.engine)
    result = people.reassign(rt.engine, from_rep, to_rep, now(), retire=retire)
    for rep, count in result.moved.items():
        out.print(f"{count} client(s) of {from_rep} now with {rep}")
    if retire:
        out.print(f"{from_rep} is now inactive")
    app.log_event("reps.reassigned", clients=result.total)


@cli.command(
    epilog=example(
        "followup suppress ann@example.com",
        "followup suppress --file complaints.csv --reason complained",
    )
)
def suppress(
    emails: Annotated[list[str] | None, typer.Argument(help="Addresses to suppress.")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A CSV file with an email column, or one address per line."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (shown in history and exports).")] = "manual",
) -> None:
    """Never mail these addresses again for marketing (the suppression list)."""
    addresses: list[str] = []
    problems: list[str] = []
    for email in emails or []:
        try:
            addresses.append(importer.parse_email(email))
        except importer.FieldError as exc:
            problems.append(f"{email!r}: {exc.reason}")
    if file is not None:
        found, errors = people.read_suppression_list(file)
        addresses.extend(found)
        problems.extend(errors)
    if problems:
        for problem in problems:
            err.print(f"error: {problem}", highlight=False, markup=False)
        fail(f"{len(problems)} bad address(es); nothing was suppressed")
    if not addresses:
        raise typer.BadParameter("give addresses or --file", param_hint="EMAILS")
    rt = app.Runtime.open(settings())
    store.check_ready(rt.engine)
    added = people.suppress(rt.engine, addresses, reason, now())
    out.print(f"{added} address(es) added to the suppression list ({len(addresses)} given)")


@cli.command(epilog=example("followup unsuppress ann@example.com"))
def unsuppress(email: Annotated[str, typer.Argument(help="The address.")]) -> None:
    """Allow mail to an address again (an erased client's address stays suppressed)."""
    rt = app.Runtime.open(settings())
    store.check_ready(rt.engine)
    if not people.unsuppress(rt.engine, email):
        fail(f"{email} is not on the suppression list")
    out.print(f"{email} removed from the suppression list")


client_cli = typer.Typer(help="Data protection: export or erase one client.", no_args_is_help=True)
cli.add_typer(client_cli, name="client")


@client_cli.command(
    "export",
    epilog=example(
        "followup client export C0042 --out C0042.json", "followup client export ann@example.com"
    ),
)
def client_export(
    client: Annotated[str, typer.Argument(help="The client's id or e-mail address.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write here (owner-only) instead of stdout.")
    ] = None,
) -> None:
    """Everything held about one client, as JSON: data, purchases, touches and history."""
    rt = app.Runtime.open(settings())
    store.check_ready(rt.engine)
    data = people.export_client(rt.engine, client)
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if out_file is None:
        sys.stdout.write(text)
        return
    fd = os.open(out_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    err.print(f"wrote {out_file}")


@client_cli.command("erase", epilog=example("followup client erase C0042 --yes"))
def client_erase(
    client: Annotated[str, typer.Argument(help="The client's id or e-mail address.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a client's personal data for good. The ledger keeps anonymous touches; the
    address's hash stays on the suppression list so a later import never mails it again."""
    if not yes and not typer.confirm(f"Erase client {client} for good?"):
        fail("nothing erased")
    rt = app.Runtime.open(settings())
    store.check_ready(rt.engine)
    erased = people.erase_client(rt.engine, client, now())
    out.print(
        f"erased: {erased.purchases_removed} purchase(s) removed, "
        f"{erased.touches_kept} anonymous touch(es) kept"
    )
    app.log_event("client.erased", client=erased.client_id)


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
