"""The marketers' commands: `followup templates check`, `preview` and `studio`. None sends."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from followup.cli.app import cli, err, example, fail, now, out, parse_day, settings
from followup.domain.clients import Recipient
from followup.errors import RenderError
from followup.messages import lint, preview
from followup.messages.templates import Templates
from followup.runtime import Runtime
from followup.service import studio
from followup.storage import people

templates_cli = typer.Typer(help="Check the message templates.", no_args_is_help=True)
cli.add_typer(templates_cli, name="templates")


def _templates() -> Templates:
    s = settings()
    return Templates(s.path(s.templates_dir), s.sender.default_locale, limits=s.templates.limits())


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
    day = parse_day(on, "--on") if on else now().date()
    templates = _templates()
    if template not in templates.messages():
        fail(
            f"no message {template!r} in {templates.root} (known: "
            f"{', '.join(templates.messages())})"
        )
    facts = _recipient(client, locale)
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


def _recipient(client: str | None, locale: str | None) -> Recipient:
    """A real client of the database, or a sample one; in `locale` if given."""
    if client is None:
        facts = preview.sample_for(locale or "en-US")
    else:
        rt = Runtime.open(settings())
        facts = people.preview_client(rt.engine, client)
        rt.engine.dispose()
    return facts if locale is None else facts._replace(locale=locale)


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
