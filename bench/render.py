"""Complete messages per second on one core, against bare Jinja2 rendering of the same templates.

    .venv/bin/python bench/render.py --messages 5000

Complete: followup's compose() as the dispatcher calls it for each touch: context, variant
choice, sandboxed Jinja2 rendering of subject, text and HTML in the client's language (Babel
dates and money), CSS inlined (css-inline), signed unsubscribe and survey links, and the MIME
bytes (multipart/alternative, CRLF, List-Unsubscribe). The messages cycle over the shipped
thank-you in en and fr with varied clients. Bare: the same three templates rendered by a plain
jinja2.Environment with the same context, nothing else (no sandbox, no inlining, no MIME).
Both run in this process, pinned to one core when the OS allows it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from followup import compose, preview  # noqa: E402
from followup.config import load_settings  # noqa: E402
from followup.render import Templates  # noqa: E402

SEND_AT = datetime(2027, 1, 8, 15, 0, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    settings = load_settings(ROOT / "config.toml", {"FOLLOWUP_SECRET_KEY": "bench"})
    templates = Templates(ROOT / "templates", settings.sender.default_locale)
    samples = [preview.sample_for(locale) for locale in ("en-US", "fr")]

    def thank_you(facts: compose.Facts, occurrence: date) -> compose.Composed:
        return compose.compose(
            settings,
            templates,
            facts,
            campaign="thank_you",
            template="thank_you",
            occurrence=occurrence,
            send_at=SEND_AT,
            key="bench",
        )

    # Warm up (compile every template once, as a long-running dispatcher has), and keep the
    # values each part was rendered with, for the bare Jinja2 run below.
    captured: list[tuple[str, dict[str, object]]] = []
    original = templates._render_one

    def capture(name: str, values: dict[str, object]) -> str:
        captured.append((name, dict(values)))
        return original(name, values)

    templates._render_one = capture  # type: ignore[method-assign]
    for facts in samples:
        thank_you(facts, date(2027, 1, 6))
    templates._render_one = original  # type: ignore[method-assign]

    began = time.perf_counter()
    size = 0
    for n in range(args.messages):
        size += len(thank_you(samples[n % 2], date.fromordinal(738000 + n)).mime)
    complete = time.perf_counter() - began

    # Bare Jinja2: the same templates with the very values compose() rendered them with.
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"), autoescape=True)
    env.filters.update(templates.env.filters)
    env.globals.update(templates.env.globals)
    per_message = [captured[0:3], captured[3:6]]
    compiled = [
        [(env.get_template(name), values) for name, values in parts] for parts in per_message
    ]
    began = time.perf_counter()
    for n in range(args.messages):
        for template, values in compiled[n % 2]:
            template.render(values)
    bare = time.perf_counter() - began

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; one core"
    )
    print(
        f"complete: {args.messages} messages in {complete:.2f} s = "
        f"{args.messages / complete:,.0f} messages/s (average {size / args.messages:,.0f} bytes)"
    )
    print(
        f"bare Jinja2: {args.messages} x 3 parts in {bare:.2f} s = "
        f"{args.messages / bare:,.0f} messages/s"
    )
    print(f"complete messages take {complete / bare:.1f}x bare rendering")


if __name__ == "__main__":
    main()
