"""Complete messages per second on one core, against bare Jinja2 rendering of the same templates.

    .venv/bin/python bench/render.py --messages 20000

Complete: followup's compose() as the dispatcher calls it for each touch: context, variant
choice, sandboxed Jinja2 rendering of subject, text and HTML in the client's language (Babel
dates and money), CSS inlined (css-inline), signed unsubscribe and survey links, and the MIME
bytes (multipart/alternative, CRLF, List-Unsubscribe). One message per client: the thank-you
for the client's latest purchase, for --messages different clients of bench/generate.py's shop
(7 markets in English and French, 20 reps, 4 products in EUR or USD, about 3 purchases each),
with the client's facts (tier, purchases, total spent) and the occasion the dispatcher adds,
and a send time a second apart. The shop, the facts and those values are read and computed
beforehand (not timed: they are the dispatcher's send-time checks, which bench/deliver.py
times). Bare: the same three templates rendered by a plain jinja2.Environment with the very
values compose() rendered each message with, nothing else (no sandbox, no inlining, no links,
no MIME). Both run in this process, pinned to one core when the OS allows it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import generate  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from followup.config import load_settings  # noqa: E402
from followup.domain import care, occasions  # noqa: E402
from followup.domain.clients import Recipient  # noqa: E402
from followup.domain.decision import occasion_context  # noqa: E402
from followup.domain.touches import DueTouch  # noqa: E402
from followup.messages import compose  # noqa: E402
from followup.messages.templates import Templates  # noqa: E402
from followup.runtime import Runtime  # noqa: E402
from followup.storage import queries, tables  # noqa: E402
from followup.storage.engine import reader  # noqa: E402
from followup.storage.schema import upgrade  # noqa: E402

SEND_AT = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)

#: Per message: the client's facts, the occurrence, `client` and `occasion` (as the dispatcher
#: adds them), and the send time (a different second each, as the dispatcher's clock gives).
Job = tuple[Recipient, date, dict[str, Any], dict[str, Any], datetime]


def _local_date(instant: datetime, zone: ZoneInfo) -> date:
    return instant.astimezone(zone).date()


def jobs(rt: Runtime, messages: int) -> list[Job]:
    """`messages` clients' thank-yous: per client, the facts of its latest purchase, the
    purchase's date (the occurrence), and the `client` and `occasion` values the dispatcher
    adds. Clients the dispatcher would skip (an unpaid or disputed purchase) are left out."""
    clients = messages + messages // 4 + 10
    generate.generate(rt.engine, clients)
    c, p = tables.clients, tables.purchases
    latest = (
        select(p.c.client_id, func.max(p.c.id).label("purchase_id"))
        .group_by(p.c.client_id)
        .subquery()
    )
    names = list(Recipient._fields)
    campaign = rt.calendar["thank_you"]
    found: list[Job] = []
    with reader(rt.engine) as conn:
        stats = queries.client_stats(conn, 1, clients)
        query = (
            queries.recipient_query()
            .join(latest, latest.c.client_id == c.c.id)
            .join(p, p.c.id == latest.c.purchase_id)
            .order_by(c.c.id)
        )
        for row in conn.execute(query):
            values = row._mapping
            facts = Recipient(**{n: values[n] for n in names})
            assert facts.purchased_at is not None
            occurrence = facts.purchased_at.date()
            client_stats = stats[facts.client_id]
            if care.exclusion(facts.status, client_stats, campaign.exclude) is not None:
                continue
            tier = care.tier(client_stats, SEND_AT, rt.tier_rules, facts.tier)
            zone = occasions.zone(facts.timezone)
            client = care.client_context(client_stats, tier, partial(_local_date, zone=zone))
            touch = DueTouch(
                0,
                facts.client_id,
                "thank_you",
                occurrence,
                "thank_you",
                None,
                SEND_AT,
                None,
                1,
                SEND_AT,
                None,
            )
            occasion = occasion_context(campaign, touch, facts, client_stats)
            send_at = SEND_AT + timedelta(seconds=len(found))
            found.append((facts, occurrence, client, occasion, send_at))
            if len(found) == messages:
                break
    return found


def composer(
    folder: Path, messages: int
) -> tuple[Callable[[Job], compose.Composed], list[Job], Templates]:
    """compose() as the dispatcher calls it for a thank-you, the jobs of `messages` clients
    (a shop in `folder`, read beforehand) and the templates it renders."""
    settings = load_settings(
        ROOT / "config.toml",
        {
            "FOLLOWUP_SECRET_KEY": "bench",
            "FOLLOWUP_DATABASE_URL": f"sqlite:///{folder}/render.db",
            # The same checks of the clock, but under valgrind (bench/instructions.py), 50 to
            # 100 times slower, a message must not run out of its 1 s.
            "FOLLOWUP_TEMPLATES_RENDER_SECONDS": "3600",
        },
    )
    rt = Runtime.open(settings, create=True)
    upgrade(rt.engine)
    work = jobs(rt, messages)
    rt.engine.dispose()
    templates = rt.templates

    def thank_you(job: Job) -> compose.Composed:
        facts, occurrence, client, occasion, send_at = job
        return compose.compose(
            settings,
            templates,
            facts,
            campaign="thank_you",
            template="thank_you",
            occurrence=occurrence,
            send_at=send_at,
            key="bench",
            occasion=occasion,
            client=client,
        )

    return thank_you, work, templates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    with tempfile.TemporaryDirectory() as folder:
        thank_you, work, templates = composer(Path(folder), args.messages)

    # Warm up: compile every template once, as a long-running dispatcher has (one message per
    # market: each language has its own files).
    for job in work[: len(generate.MARKETS)]:
        thank_you(job)

    began = time.perf_counter()
    size = 0
    for job in work:
        size += len(thank_you(job).mime)
    complete = time.perf_counter() - began

    # Bare Jinja2: the same templates with the very values compose() rendered them with
    # (captured in a second, untimed pass).
    import jinja2

    captured: list[tuple[str, dict[str, object]]] = []
    original = templates._render_one

    def capture(name: str, values: dict[str, object]) -> str:
        captured.append((name, dict(values)))
        return original(name, values)

    templates._render_one = capture  # type: ignore[method-assign]
    for job in work:
        thank_you(job)
    templates._render_one = original  # type: ignore[method-assign]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROOT / "templates"), autoescape=True)
    env.filters.update(templates.env.filters)
    env.globals.update(templates.env.globals)
    compiled = [(env.get_template(name), values) for name, values in captured]
    began = time.perf_counter()
    for template, values in compiled:
        template.render(values)
    bare = time.perf_counter() - began

    messages = len(work)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; one core"
    )
    print(
        f"complete: {messages} messages to {messages} different clients in {complete:.2f} s = "
        f"{messages / complete:,.0f} messages/s (average {size / messages:,.0f} bytes)"
    )
    print(
        f"bare Jinja2: {len(captured)} parts ({len(captured) / messages:.0f} per message) in "
        f"{bare:.2f} s = {messages / bare:,.0f} messages/s"
    )
    print(f"complete messages take {complete / bare:.1f}x bare rendering")


if __name__ == "__main__":
    main()
