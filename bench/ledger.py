"""Delivery speed early and late in a big day: the same ledger with none or most touches sent.

    .venv/bin/python bench/ledger.py --clients 1000000 --sent 900000 --messages 10000

Builds bench/deliver.py's shop of --clients clients (a thank-you each, planned, not timed)
once, then, in turns (--rounds), on a fresh copy of it each time:
- early: dispatches --messages touches with nothing sent yet (the whole day waiting);
- late: first marks --sent touches sent as the dispatcher leaves them (variant, Message-ID,
  reply, and two history rows each), then dispatches --messages touches.
Each dispatch is `dispatch` from one process over `[smtp] pool_size` 4 into smtp-sink, in
batches of 500, as bench/memory.py's daemon sends. A dispatcher whose per-batch queries grow
with the ledger is slower late than early. With --rate-limits, `[smtp] rate_per_hour` and
`rate_per_day` are set high enough never to stop it: the dispatcher counts the touches sent
within each before every batch.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deliver  # noqa: E402

from followup.config import load_settings  # noqa: E402
from followup.delivery.dispatcher import dispatch  # noqa: E402
from followup.runtime import Clock, Runtime  # noqa: E402

VARIANTS = ("terracotta", "sage", "harbour")


def mark_sent(db: Path, count: int) -> None:
    """The first `count` touches in claim order, as the dispatcher leaves them once sent."""
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TEMP TABLE done AS SELECT id FROM touches WHERE status = 'planned' "
        "ORDER BY next_attempt_at, id LIMIT ?",
        (count,),
    )
    con.execute(
        "UPDATE touches SET status = 'sent', attempts = 1, "
        f"variant = CASE id % 3 WHEN 0 THEN '{VARIANTS[0]}' WHEN 1 THEN '{VARIANTS[1]}' "
        f"ELSE '{VARIANTS[2]}' END, "
        "message_id = '<' || id || '.bench@example.com>', "
        "smtp_reply = '250 2.0.0 Ok: queued as ABCDEF', locale = 'en-GB', rep_id = 1 + id % 20, "
        "updated_at = '2027-01-08 19:05:00.000000' WHERE id IN (SELECT id FROM done)"
    )
    for at, old, new, detail in (
        ("19:05:00", "planned", "sending", "claimed by bench:1:abcdef"),
        ("19:05:01", "sending", "sent", "250 2.0.0 Ok: queued as ABCDEF"),
    ):
        con.execute(
            "INSERT INTO touch_events (touch_id, at, from_status, to_status, detail) "
            "SELECT id, ?, ?, ?, ? FROM done",
            (f"2027-01-08 {at}.000000", old, new, detail),
        )
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def dispatch_rate(folder: Path, port: int, messages: int, rate_limits: bool = False) -> float:
    env = {
        "FOLLOWUP_DATABASE_URL": f"sqlite:///{folder / 'followup.db'}",
        "FOLLOWUP_SECRET_KEY": "bench",
        "FOLLOWUP_POLITENESS_QUIET_HOURS": "",
        "FOLLOWUP_CAMPAIGNS_THANK_YOU_WINDOW": "00:00-00:00",
        **deliver.sink_env(port),
    }
    if rate_limits:
        # Limits that never bind, but are counted in the ledger before each batch.
        env["FOLLOWUP_SMTP_RATE_PER_HOUR"] = env["FOLLOWUP_SMTP_RATE_PER_DAY"] = "100000000"
    rt = Runtime.open(load_settings(ROOT / "config.toml", env))
    try:
        began = time.perf_counter()
        clock = Clock.starting_at(deliver.NOW)
        report = asyncio.run(dispatch(rt, clock, limit=messages))
        seconds = time.perf_counter() - began
    finally:
        rt.engine.dispose()
    if report.sent != messages:
        raise RuntimeError(f"sent {report.sent} of {messages}")
    return messages / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200_000)
    parser.add_argument("--sent", type=int, default=180_000)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--rate-limits",
        action="store_true",
        help="with [smtp] rate_per_hour and rate_per_day set (never reached, but counted)",
    )
    args = parser.parse_args()
    if args.sent + args.messages > args.clients:
        parser.error("--sent + --messages must not exceed --clients")
    deliver.ensure_postfix()
    port = deliver.free_port()
    sink = deliver.start_sink(port)
    figures: dict[str, list[float]] = {"early": [], "late": []}
    try:
        with tempfile.TemporaryDirectory() as built, tempfile.TemporaryDirectory() as work:
            shop = deliver.shop_file(Path(built), args.clients)
            for _ in range(args.rounds):
                for phase in ("early", "late"):
                    with deliver.fresh_copy(shop, Path(work)) as copy:
                        if phase == "late":
                            mark_sent(copy / "followup.db", args.sent)
                        figures[phase].append(
                            dispatch_rate(copy, port, args.messages, args.rate_limits)
                        )
    finally:
        sink.terminate()
        sink.wait()
    print(deliver.machine())
    for phase, label in (("early", "nothing sent yet"), ("late", f"{args.sent:,} sent")):
        rates = ", ".join(f"{rate:,.0f}" for rate in figures[phase])
        print(
            f"{phase}: {args.messages:,} of {args.clients:,} thank-yous, {label}: {rates} "
            "messages/s (1 process, 4 connections"
            f"{', hourly and daily limits counted' if args.rate_limits else ''})"
        )


if __name__ == "__main__":
    main()
