"""The main job: `followup plan`, `send` and `run`, and what the dry-run prints."""

from __future__ import annotations

import asyncio
import email
import json
import sys
from datetime import UTC, date, datetime, time, timedelta
from email.policy import default as email_policy
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from followup import api
from followup.cli.app import cli, clock, err, example, now, out, parse_day, settings, state
from followup.dryrun import output as dryrun_output
from followup.planning import plan as planning
from followup.processes import Interrupt
from followup.runtime import Clock, Runtime


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
        horizon = datetime.combine(parse_day(until, "--until") + timedelta(days=1), time(), UTC)
    report = _plan_with_progress(Runtime.open(settings()), horizon, processes)
    out.print(
        f"planned {report.planned} touch(es) for {report.clients} client(s), "
        f"{report.skipped} recorded as skipped (too late or capped)"
    )


def _plan_with_progress(
    rt: Runtime, horizon: datetime | None, processes: int | None = None
) -> api.PlanReport:
    """Plans with a progress bar over the clients on a terminal (large shops). The clients are
    counted at the first progress, once the plan has checked the database."""
    progress = Progress(
        TextColumn("planning"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} clients"),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )
    task = progress.add_task("planning", total=None, visible=False)
    counted: list[int] = []

    def advance(clients: int) -> None:
        if err.is_terminal and not counted:
            counted.append(planning.client_count(rt))
            progress.update(task, total=counted[0], visible=counted[0] > 20_000)
        progress.advance(task, clients)

    with progress:
        return api.plan(rt, now(), horizon, processes=processes, progress=advance)


def _send(
    rt: Runtime,
    running: Clock,
    interrupt: Interrupt,
    *,
    resend_uncertain: bool = False,
    processes: int | None = None,
    breaker: api.Breaker | None = None,
) -> api.DispatchReport:
    """One api.send: from the time `running` has reached when --now moved the clock."""
    start = None if state.now is None else running()
    try:
        return api.send(
            rt,
            start,
            processes=processes,
            resend_uncertain=resend_uncertain,
            interrupt=interrupt,
            breaker=breaker,
        )
    except api.DispatchStopped as stop:
        # What the run did before the server refused it, then the error (exit status 1).
        _print_dispatch(stop.report)
        raise


def _print_dispatch(report: api.DispatchReport) -> None:
    out.print(report.summary())
    if report.breaker_until is not None:
        out.print(
            "the SMTP server is not answering: sending stopped until "
            f"{report.breaker_until.isoformat(timespec='seconds')} (circuit breaker; "
            "the touches wait in the queue)"
        )
    if report.signal is not None:
        out.print(f"stopped by {report.signal}: the touches not sent wait in the queue")


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
    rt = Runtime.open(settings())
    running = clock()
    # SIGTERM and SIGINT as the daemon takes them: stop claiming, let the sends in flight
    # finish (up to [schedule] shutdown_grace_seconds), give back the rest.
    # The SMTP server's circuit breaker, kept from one run to the next as the daemon keeps
    # it: its backoff doubles at each trip, and after a pause one message goes first.
    breaker = api.Breaker.for_delivery(rt.settings)
    with Interrupt() as interrupt:
        while not interrupt.requested:
            report = _send(
                rt,
                running,
                interrupt,
                resend_uncertain=resend_uncertain,
                processes=processes,
                breaker=breaker,
            )
            resend_uncertain = False
            if report.requeued:
                out.print(f"{report.requeued} uncertain touch(es) sent again")
            _print_dispatch(report)
            if once:
                return
            pause = float(settings().schedule.dispatch_interval_seconds)
            if report.breaker_until is not None:
                # The SMTP server did not answer: its breaker's backoff holds here too.
                pause = max(pause, (report.breaker_until - running()).total_seconds())
            asyncio.run(interrupt.wait(pause))


@cli.command(
    epilog=example(
        'followup retry --campaign new_year --reason "template error" --dry-run',
        'followup retry --campaign new_year --reason "template error"',
        "followup retry --since 2027-01-01 --until 2027-01-02 --dry-run",
    )
)
def retry(
    campaign: Annotated[str | None, typer.Option(help="Only the touches of this campaign.")] = None,
    reason: Annotated[
        str | None,
        typer.Option(help="Only those whose reason contains this text (any case)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only those that failed on or after this day (UTC).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Only those that failed on or before this day (UTC).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List them, change nothing.")] = False,
) -> None:
    """Send failed touches again: they go back to the queue, due now, for the next send (or
    the daemon). Only failed touches move: never a sent or uncertain one."""
    start = None if since is None else datetime.combine(parse_day(since, "--since"), time(), UTC)
    end = None
    if until is not None:
        end = datetime.combine(parse_day(until, "--until") + timedelta(days=1), time(), UTC)
    found = api.retry(
        Runtime.open(settings()),
        now(),
        campaign=campaign,
        reason=reason,
        since=start,
        until=end,
        dry_run=dry_run,
    )
    table = Table(title=f"failed touches ({len(found.touches)})")
    for column in ("touch", "client", "campaign", "occurrence", "failed at", "reason"):
        table.add_column(column)
    for line in found.touches[:LISTED]:
        table.add_row(
            str(line.touch),
            line.client,
            line.campaign,
            line.occurrence.isoformat(),
            line.updated_at.isoformat(timespec="seconds"),
            line.reason or "",
        )
    out.print(table)
    if len(found.touches) > LISTED:
        out.print(f"... and {len(found.touches) - LISTED} more")
    if dry_run:
        out.print(f"{len(found.touches)} failed touch(es) would be sent again (nothing changed)")
    else:
        out.print(f"{found.retried} failed touch(es) back in the queue, due now")


#: How many touches `followup retry` lists (the counts are complete).
LISTED = 50


@cli.command(
    epilog=example(
        "followup run",
        "followup run --dry-run --on 2027-12-24 --out xmas",
        "followup run --dry-run --on 2027-01-01 --json | jq '.messages[].to'",
        "FOLLOWUP_NOW=2027-01-01T06:00:00Z followup run --dry-run",
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
    day = parse_day(on, "--on") if on else now().date()
    rt = Runtime.open(settings())
    if dry_run:
        _dry_run(rt, day, out_dir or Path("dry-run") / day.isoformat(), as_json=as_json)
        return
    planned = api.plan(rt, now())
    out.print(f"planned {planned.planned} new touch(es)")
    with Interrupt() as interrupt:
        report = _send(rt, clock(), interrupt)
    _print_dispatch(report)
    if report.capture_dir is not None:
        _show_capture(report.capture_dir, report.sent)


def _dry_run(rt: Runtime, day: date, folder: Path, *, as_json: bool) -> None:
    """Writes the dry-run of `day` to `folder`, then prints its manifest or a table."""
    result = api.dry_run(rt, day, now())
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
        f"{len(result.messages)} message(s), {len(result.waiting)} waiting for a later day, "
        f"{len(result.skipped)} skipped; "
        f"written to {folder}/ (open {folder / 'index.html'}; manifest: {manifest_path})"
    )


def _show_capture(maildir: Path, sent: int) -> None:
    """Where the capture mode put the messages, and the newest one (the demo's last step)."""
    folder = maildir / "new"
    files = sorted(folder.glob("*"), key=lambda p: p.stat().st_mtime) if folder.exists() else []
    out.print(
        f"delivery mode is capture: nothing left this machine. {len(files)} message(s) "
        f"are in the maildir {maildir} (one file each in {folder}/; "
        f"`mutt -f {maildir}` reads it)."
    )
    if not (sent and files):
        return
    sample = files[-1]
    message = email.message_from_bytes(sample.read_bytes(), policy=email_policy)
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    out.rule(f"one of them: {sample}")
    for header in ("From", "To", "Subject", "Date", "Message-ID"):
        out.print(f"{header}: {message[header]}", highlight=False, markup=False, soft_wrap=True)
    out.print()
    out.print(text.strip(), highlight=False, markup=False, soft_wrap=True)
    out.rule()
