"""Getting a shop in: `followup init`, `db upgrade`, `db vacuum`, `demo` and `import`."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from followup import api
from followup.cli.app import cli, err, example, fail, now, out, parse_day, settings
from followup.importing import demo, importer, profiles, reader
from followup.runtime import Runtime
from followup.service import privacy
from followup.storage import schema

SKELETON = Path(__file__).parent.parent / "skeleton"

db_cli = typer.Typer(help="Database commands: schema, free space.", no_args_is_help=True)
cli.add_typer(db_cli, name="db")


@cli.command(epilog=example("followup init shop && cd shop && followup demo"))
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the files.")] = Path("."),
    force: Annotated[
        bool, typer.Option(help="Overwrite existing files (never an existing database).")
    ] = False,
) -> None:
    """Create config.toml, templates/ and calendars/ with working examples, and the database
    that config.toml names (var/followup.db by default), ready for the other commands."""
    for path in _copy_skeleton(directory, force):
        out.print(f"created {path}")
    _create_database(directory)
    out.print("next: `followup demo` loads a demo shop, `followup run` plans and delivers.")


def _copy_skeleton(directory: Path, force: bool) -> list[str]:
    """Copies the shipped config.toml, templates/ and calendars/ into `directory`; an
    existing one is kept unless `force`. Returns what it wrote."""
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
    return created


def _create_database(directory: Path) -> None:
    """`followup db upgrade` with the config.toml of `directory`, for a database without a
    schema yet: one that already has a schema is kept as it is (even with --force)."""
    rt = api.open(directory / "config.toml", create=True)
    try:
        url = rt.engine.url
        where = url.render_as_string(hide_password=True)
        if url.get_backend_name() == "sqlite" and url.database:
            where = _shown(Path(url.database), directory)
        revision = schema.current_revision(rt.engine)
        if revision is not None:
            err.print(f"kept existing database {where} (at revision {revision})")
            return
        _, after = api.upgrade(rt)
        out.print(f"created {where} (database at revision {after})")
    finally:
        rt.engine.dispose()


def _shown(path: Path, directory: Path) -> str:
    """A path under `directory` as the other files are shown: from `directory` as given."""
    try:
        return str(directory / path.relative_to(directory.resolve()))
    except ValueError:
        return str(path)


@db_cli.command(
    "upgrade",
    epilog=example(
        "followup db upgrade",
        "FOLLOWUP_DATABASE_URL=postgresql+psycopg://u@db/followup followup db upgrade",
    ),
)
def db_upgrade() -> None:
    """Create the database or migrate it to this version's schema (safe to repeat)."""
    before, after = api.upgrade(Runtime.open(settings(), create=True))
    out.print(f"database at revision {after}" + ("" if before == after else f" (was {before})"))


@db_cli.command(
    "vacuum",
    epilog=example("followup db vacuum", "followup client erase C0042 --yes --no-vacuum"),
)
def db_vacuum() -> None:
    """Rewrite the database without its free space, so that no deleted byte remains (SQLite:
    VACUUM and the WAL truncated; PostgreSQL: VACUUM (FULL) of the tables an erasure writes)."""
    out.print(privacy.vacuum(Runtime.open(settings())))


@cli.command("demo", epilog=example("followup demo && followup run"))
def demo_command(
    clients: Annotated[int, typer.Option(min=1, max=1_000_000, help="How many clients.")] = 240,
    today: Annotated[str | None, typer.Option(help="Shop's 'today' (YYYY-MM-DD).")] = None,
) -> None:
    """Load a demo shop: reps, clients in en and fr, two years of purchases."""
    rt = Runtime.open(settings(), create=True)
    api.upgrade(rt)
    day = parse_day(today, "--today") if today else now().date()
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


def _import_with_progress(
    rt: Runtime,
    kind: importer.Kind,
    path: Path,
    *,
    strict: bool,
    encoding: str | None = None,
    delimiter: str | None = None,
    preset: str | None = None,
    decimal: str | None = None,
    explain: bool = False,
) -> api.ImportReport:
    """Imports with a progress bar over the file's bytes on a terminal (large files)."""
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
        return api.import_csv(
            rt,
            kind,
            path,
            now=now(),
            strict=strict,
            progress=lambda n: progress.advance(task, n),
            encoding=encoding,
            delimiter=delimiter,
            preset=preset,
            decimal=decimal,
            explain=explain,
        )


@cli.command(
    "import",
    epilog=example(
        "followup import reps reps.csv",
        "followup import clients clients.csv --strict",
        "followup import purchases purchases.csv",
        "followup import clients clients-excel.csv --encoding cp1252",
        "followup import clients clients.csv --delimiter ';'",
        "followup import clients customers_export.csv --preset shopify",
        "followup import purchases orders_export.csv --preset shopify --explain",
        "followup import purchases crm-sales.csv --preset config --decimal ,",
    ),
)
def import_command(
    kind: Annotated[importer.Kind, typer.Argument(help="What the file holds.")],
    file: Annotated[Path, typer.Argument(help="CSV file with a header row.")],
    strict: Annotated[bool, typer.Option(help="Write nothing if any row is rejected.")] = False,
    encoding: Annotated[
        str | None,
        typer.Option(
            help="The file's encoding, a Python codec name (cp1252, latin-1, ...); default "
            "UTF-8. A byte order mark decides by itself.",
            callback=lambda value: _checked(reader.check_encoding, value),
        ),
    ] = None,
    delimiter: Annotated[
        str | None,
        typer.Option(
            help="The character between cells (or comma, semicolon, tab, pipe); default: "
            "the one of , ; tab | the header line holds most.",
            callback=lambda value: _checked(reader.check_delimiter, value),
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="The file's layout: shopify, woocommerce, or config (config.toml's "
            "[import.KIND] mapping). Default: followup's own columns."
        ),
    ] = None,
    decimal: Annotated[
        str | None,
        typer.Option(help='The file\'s decimal mark in amounts: "." (default) or ",".'),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            help="Show how each column maps and which rows would be rejected; write nothing."
        ),
    ] = False,
) -> None:
    """Import reps, clients or purchases from CSV; rows are upserted by their id.

    Every rejected row is reported with file, line, column and reason. Rows identical to the
    stored ones are counted unchanged and not written; a column the file does not have keeps
    its stored value; a client's rep changes only when the file's rep does (a reassign stays),
    never to a retired rep (a warning). Exit status is 1 when any row was rejected (the good
    rows are stored unless --strict).
    """
    if decimal not in (None, ".", ","):
        raise typer.BadParameter('the decimal mark is "." or ","', param_hint="--decimal")
    rt = Runtime.open(settings())
    try:
        report = _import_with_progress(
            rt,
            kind,
            file,
            strict=strict,
            encoding=encoding,
            delimiter=delimiter,
            preset=preset,
            decimal=decimal,
            explain=explain,
        )
    except importer.HeaderError as exc:
        fail(str(exc))
    if explain:
        _explain(report)
    for error in report.errors:
        err.print(str(error), highlight=False, markup=False)
    for warning in report.warnings:
        err.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    if strict and report.errors and not explain:
        fail(f"{report.rejected_rows} row(s) rejected and --strict: nothing was imported")
    out.print(_summary(report, file, explain=explain), highlight=False)
    if report.errors:
        raise typer.Exit(1)


def _summary(report: api.ImportReport, file: Path, *, explain: bool) -> str:
    inferred = "".join(f", {column} inferred for {n}" for column, n in report.inferred.items())
    would = "would be imported" if explain else "imported"
    return (
        f"{file.name}: {report.imported} {would} ({report.created} new, {report.updated} "
        f"updated, {report.unchanged} unchanged), {report.rejected_rows} rejected{inferred}"
        + (" (--explain: nothing was written)" if explain else "")
    )


def _checked(check: Callable[[str], str], value: str | None) -> str | None:
    """An option's value through `check`; its ValueError is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return check(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _explain(report: api.ImportReport) -> None:
    """--explain: the mapping of the file's columns, before the rows' errors."""
    if report.mapping is None:
        out.print(f"profile: followup's own {report.kind.value} columns", highlight=False)
        return
    for line in profiles.describe(report.mapping, report.not_stored):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
