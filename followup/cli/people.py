"""Clients and reps: `followup reassign`, `suppress`, `unsuppress`, `consent` and `client
export|erase` (data protection), over followup/storage/people.py and the API."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from followup import api
from followup.cli.app import cli, err, example, fail, now, out, parse_instant, settings
from followup.importing import fields, suppressions
from followup.logs import log_event
from followup.runtime import Runtime
from followup.storage import people

client_cli = typer.Typer(help="Data protection: export or erase one client.", no_args_is_help=True)
cli.add_typer(client_cli, name="client")


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
    rt = Runtime.open(settings())
    result = people.reassign(rt.engine, from_rep, to_rep, now(), retire=retire)
    for rep, count in result.moved.items():
        out.print(f"{count} client(s) of {from_rep} now with {rep}")
    if retire:
        out.print(f"{from_rep} is now inactive")
    log_event("reps.reassigned", clients=result.total)


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
            addresses.append(fields.parse_email(email))
        except fields.FieldError as exc:
            problems.append(f"{email!r}: {exc.reason}")
    if file is not None:
        found, errors = suppressions.read_suppression_list(file)
        addresses.extend(found)
        problems.extend(errors)
    if problems:
        for problem in problems:
            err.print(f"error: {problem}", highlight=False, markup=False)
        fail(f"{len(problems)} bad address(es); nothing was suppressed")
    if not addresses:
        raise typer.BadParameter("give addresses or --file", param_hint="EMAILS")
    rt = Runtime.open(settings())
    added = people.suppress(rt.engine, addresses, reason, now())
    out.print(f"{added} address(es) added to the suppression list ({len(addresses)} given)")


@cli.command(
    epilog=example(
        "followup unsuppress ann@example.com",
        'followup unsuppress ann@example.com --reason "relay refusal taken for a bounce"',
    )
)
def unsuppress(
    email: Annotated[str, typer.Argument(help="The address.")],
    reason: Annotated[
        str, typer.Option(help="Why (kept in the client's history).")
    ] = "unsuppressed by the operator",
) -> None:
    """Allow mail to an address again, and put the clients it had bounced back to active
    (recorded in their history). An erased client's address stays suppressed; an unsubscribed
    client stays unsubscribed."""
    rt = Runtime.open(settings())
    done = api.unsuppress(rt, email, now(), reason=reason)
    if not done.removed and not done.reactivated:
        fail(f"{email} is not on the suppression list and bounced no client")
    if done.removed:
        out.print(f"{email} removed from the suppression list")
    if done.reactivated:
        out.print(f"{done.reactivated} bounced client(s) with this address are active again")
    log_event("client.unsuppressed", listed=done.removed, reactivated=done.reactivated)


@cli.command(
    epilog=example(
        "followup consent C0042 no",
        'followup consent C0042 yes --source "signed form at the counter" --at 2026-11-03',
        "followup consent ann@example.com unknown",
    )
)
def consent(
    client: Annotated[str, typer.Argument(help="The client's id or e-mail address.")],
    state: Annotated[str, typer.Argument(metavar="yes|no|unknown", help="The consent.")],
    source: Annotated[
        str, typer.Option(help="Who said so (kept with the consent and in the history).")
    ] = "operator",
    at: Annotated[
        str | None,
        typer.Option(help="When it was given: a date or an ISO 8601 instant (UTC without offset)."),
    ] = None,
) -> None:
    """Set a client's marketing consent: greetings and other marketing occasions need what
    [consent] asks for (docs/consent.md); thank-yous and service messages never do."""
    if state.strip().lower() not in ("yes", "no", "unknown"):
        raise typer.BadParameter(f"{state!r} is not yes, no or unknown", param_hint="STATE")
    given = None if at is None else parse_instant(at, "--at")
    rt = Runtime.open(settings())
    change = api.set_consent(rt, client, state, source=source, at=given, now=now())
    out.print(
        f"client {change.client}: marketing consent {change.before} -> {change.consent}",
        highlight=False,
        markup=False,
    )
    log_event("client.consent", consent=change.consent)


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
    rt = Runtime.open(settings())
    data = people.export_client(rt.engine, client)
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if out_file is None:
        sys.stdout.write(text)
        return
    fd = os.open(out_file, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    err.print(f"wrote {out_file}")


@client_cli.command(
    "erase",
    epilog=example(
        "followup client erase C0042 --yes",
        "followup client erase ann@example.com --yes --dry-runs previews",
        "followup client erase C0042 --yes --no-vacuum",
    ),
)
def client_erase(
    client: Annotated[str, typer.Argument(help="The client's id or e-mail address.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    dry_runs: Annotated[
        Path,
        typer.Option(
            "--dry-runs", help="Where the dry-run folders are (their folders naming the client go)."
        ),
    ] = Path("dry-run"),
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum/--no-vacuum",
            help="Rewrite the database afterwards so no deleted byte remains (slow on a huge "
            "database: then --no-vacuum, and `followup db vacuum` later).",
        ),
    ] = True,
) -> None:
    """Remove a client's personal data for good: from the database (the ledger keeps anonymous
    touches: campaign, status, year), the capture maildir and the dry-run folders. The
    address's keyed hash stays on the suppression list so a later import never mails it."""
    if not yes and not typer.confirm(f"Erase client {client} for good?"):
        fail("nothing erased")
    rt = Runtime.open(settings())
    report = api.erase_client(rt, client, now(), dry_runs=dry_runs, vacuum=vacuum)
    erased = report.erasure
    out.print(
        f"erased: {erased.purchases_removed} purchase(s) removed, "
        f"{erased.touches_kept} anonymous touch(es) kept, "
        f"{report.captured_removed} captured message(s) and "
        f"{len(report.dry_runs_removed)} dry-run folder(s) removed; {report.vacuum}"
    )
