"""Checks of the marketers' files, for `followup templates check` (pre-commit, CI) and the
studio: each problem names a file (and a line when there is one) and says what is wrong.

`check()` runs every check; each check is a function returning a list of Problems, so a new
one (e.g. per-campaign audience expressions) is one more function in `CHECKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from followup.config.calendars import load_calendar
from followup.config.settings import Settings
from followup.config.values import line_of
from followup.errors import ConfigError, RenderError
from followup.messages import preview
from followup.messages.templates import Templates

#: The day the samples are rendered on: any day works; a fixed one keeps reports stable.
SAMPLE_DAY = date(2027, 1, 1)


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    message: str
    #: What was being rendered when it happened (message/locale/variant), if anything.
    context: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}" + (f" (rendering {self.context})" if self.context else "")


@dataclass
class Report:
    problems: list[Problem]
    #: How many (message, locale, variant) renderings were tried.
    rendered: int = 0


def _problem(error: RenderError, context: str = "") -> Problem:
    if error.file:
        return Problem(error.file, error.line, error.detail, context)
    file, _, rest = str(error).partition(": ")
    return Problem(file, None, rest or str(error), context)


def check_templates(settings: Settings, templates: Templates) -> Report:
    """Compile every template file, then render every message x locale x variant with the
    sample client of that locale's language. One problem per distinct (file, line, message)."""
    report = Report([])
    seen: set[tuple[str, int | None, str]] = set()

    def add(problem: Problem) -> None:
        key = (problem.file, problem.line, problem.message)
        if key not in seen:
            seen.add(key)
            report.problems.append(problem)

    if not templates.root.is_dir():
        add(Problem(str(templates.root), None, "the templates folder does not exist"))
        return report
    for error in templates.compile_all():
        add(_problem(error))
    for message in templates.messages():
        try:
            variants = templates.variants(message)
        except RenderError as error:
            add(_problem(error))
            continue
        locales = templates.locales(message)
        if templates.default_locale not in locales:
            add(
                Problem(
                    f"{templates.root.name}/{message}",
                    None,
                    f"no {templates.default_locale}/ folder: clients whose language has no "
                    f"templates would get nothing (the default locale is "
                    f"{templates.default_locale})",
                )
            )
        for locale in locales:
            facts = preview.sample_for(locale)
            for variant in variants:
                report.rendered += 1
                try:
                    preview.render(
                        settings, templates, message, facts, on=SAMPLE_DAY, variant=variant.name
                    )
                except RenderError as error:
                    add(_problem(error, f"{message}/{locale}, variant {variant.name}"))
    return report


def check_campaigns(settings: Settings, templates: Templates) -> Report:
    """The calendars load, and every enabled campaign names a message that exists."""
    try:
        calendar = load_calendar(settings)
    except ConfigError as error:
        file, _, rest = str(error).partition(": ")
        path, _, number = file.partition(":")
        found = int(number) if number.isdigit() else None
        return Report([Problem(path, found, rest or str(error))])
    problems = []
    messages = set(templates.messages()) if templates.root.is_dir() else set()
    for campaign in calendar.enabled:
        if campaign.template not in messages:
            source = Path(campaign.source)
            line: int | None
            if campaign.name in settings.campaigns and settings.campaigns[campaign.name].template:
                file, line = "config.toml", None
                where = f"[campaigns.{campaign.name}] template"
            else:
                text = source.read_text(encoding="utf-8") if source.is_file() else ""
                file = str(source)
                line = line_of(text, f"occasions.{campaign.name}", "template")
                where = f"[occasions.{campaign.name}] template"
            problems.append(
                Problem(
                    file,
                    line,
                    f"{where}: no message {campaign.template!r} in {templates.root}",
                )
            )
    return Report(problems)


CHECKS: list[Callable[[Settings, Templates], Report]] = [check_templates, check_campaigns]


def check(settings: Settings, templates: Templates) -> Report:
    """Every check; an empty `problems` list means the files are fit to ship."""
    total = Report([])
    for run in CHECKS:
        report = run(settings, templates)
        total.problems.extend(report.problems)
        total.rendered += report.rendered
    return total
