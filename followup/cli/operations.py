"""The operator's commands (docs/operations.md): `followup daemon`, `status` and `history`."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table

from followup import api, logs
from followup.cli.app import cli, clock, example, fail, log_level, now, out, settings, state
from followup.domain.money import minor_digits
from followup.runtime import Runtime
from followup.service import daemon as daemon_service


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
    config = settings()
    logs.configure(log_level(daemon=True), state.log_json)
    daemon_service.run(Runtime.open(config), clock())


def _when(value: object) -> str:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else "never"


@cli.command(epilog=example("followup status", "followup status --json | jq .due_now"))
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The ledger: touches by status, the queue, the last runs, failed, uncertain and held
    touches (held: their template did not render; the reason names the file and line)."""
    report = api.status(Runtime.open(settings()), now())
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        return
    _print_status(report)


def _print_status(report: api.Status) -> None:
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
    if report.smtp_breaker is not None:
        out.print(
            f"SMTP server not answering: its circuit breaker is open until "
            f"{_when(report.smtp_breaker['until'])} (nothing is sent before then)",
            highlight=False,
            markup=False,
        )
    listed = (("failed", report.failed), ("uncertain", report.uncertain), ("held", report.held))
    for title, lines in listed:
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
    if report.held:
        out.print(
            "held touches wait for their template to be fixed (the reason names the file and "
            "line); they go out once it renders, within their lateness."
        )
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
    found = api.history(Runtime.open(settings()), client, now())
    if found is None:
        fail(f"no client with id or e-mail {client!r}")
    if as_json:
        sys.stdout.write(json.dumps(found.to_json(), indent=2, ensure_ascii=False) + "\n")
        return
    _print_history(found)


def _client_lines(found: api.ClientHistory) -> list[str]:
    """The client's zone and locale, marked when inferred from the country, and the spend
    their tier counts."""
    marks = {
        column: " (inferred from the country)" if column in found.inferred else ""
        for column in ("timezone", "locale")
    }
    lines = [
        f"  country {found.country}, timezone {found.timezone}{marks['timezone']}, "
        f"locale {found.locale}{marks['locale']}"
    ]
    spending = found.spending
    if spending is not None:
        spent = ", ".join(_money(c, minor) for c, minor in spending.spent.items()) or "nothing"
        lines.append(
            f"  tier {spending.tier}; paid {spent}; counted toward vip: "
            f"{_money(spending.currency, spending.counted)}"
        )
        if spending.not_counted:
            lines.append(
                f"  not counted (no [tiers.rates] or [tiers.vip_min_totals]): "
                f"{', '.join(spending.not_counted)}"
            )
    return lines


def _money(currency: str, minor: int) -> str:
    """An amount stored in minor units, in major units: BRL 89,000.00, JPY 12,000."""
    return f"{currency} {Decimal(minor).scaleb(-minor_digits(currency)):,}"


def _print_history(found: api.ClientHistory) -> None:
    suppressed = f", suppressed ({found.suppressed})" if found.suppressed else ""
    out.print(
        f"client {found.client} <{found.email}>: {found.status}{suppressed}; "
        f"{len(found.touches)} touch(es)",
        highlight=False,
        markup=False,
    )
    for line in _client_lines(found):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
    said = [f"from {found.consent_source}"] if found.consent_source else []
    said += [f"on {_when(found.consent_at)}"] if found.consent_at else []
    out.print(
        f"marketing consent: {' '.join([found.consent, *said])}", highlight=False, markup=False
    )
    for action in found.events:
        detail = f": {action.detail}" if action.detail else ""
        out.print(f"{_when(action.at)} {action.kind}{detail}", highlight=False, markup=False)
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
