"""Sending while the daemon re-plans a large shop: in its own thread, or in a worker process,
every client or only those whose data changed.

    .venv/bin/python bench/replan.py --clients 200000 --messages 20000 --changed 1000

Builds bench/deliver.py's shop of --clients clients (a thank-you each, planned; not timed), then,
on a fresh copy for each mode, dispatches --messages of them into smtp-sink from one process
(`dispatch`, 4 connections, batches of 500, as the daemon sends) while that process re-plans
every client, as the daemon does every `[schedule] plan_interval_seconds`:
- alone: no plan running (the reference);
- thread: `plan` in a thread of the sending process, as the daemon plans a shop below
  `planning.LARGE_SHOP_CLIENTS`;
- worker: `plan(in_workers=True)`, one worker process, as the daemon plans from
  `planning.LARGE_SHOP_CLIENTS` on;
- changed: `plan(only=clients_to_replan(rt))` in a thread, as the daemon plans between its plans
  of every client, after --changed clients had a column the planner reads changed (their tags).
The plan starts 2 s before the sending (a worker process has started by then). Prints the
sending rate, how long the plan took, and for what share of the sending time it ran.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deliver  # noqa: E402
from sqlalchemy import update  # noqa: E402

from followup.delivery.dispatcher import dispatch  # noqa: E402
from followup.planning.plan import clients_to_replan, plan  # noqa: E402
from followup.runtime import Clock, Runtime  # noqa: E402
from followup.storage import tables  # noqa: E402

MODES = ("alone", "thread", "worker", "changed")


def sending_rate(
    folder: Path, port: int, messages: int, mode: str, changed: int
) -> tuple[float, float, float]:
    """Messages per second sent while planning in `mode`, the plan's seconds (0 when alone)
    and the share of the sending time during which the plan ran."""
    rt = Runtime.open(deliver.shop_settings(folder, deliver.sink_env(port)))
    plan_ended = 0.0
    if mode == "changed":
        c = tables.clients
        with rt.engine.begin() as conn:
            conn.execute(update(c).where(c.c.id <= changed).values(tags="bench"))

    def replan() -> None:
        nonlocal plan_ended
        if mode == "changed":
            report = plan(rt, deliver.NOW, only=clients_to_replan(rt))
            if report.clients != changed:
                raise RuntimeError(f"planned {report.clients} changed clients of {changed}")
        else:
            plan(rt, deliver.NOW, in_workers=mode == "worker")
        plan_ended = time.perf_counter()

    planner = threading.Thread(target=replan)
    plan_began = time.perf_counter()
    try:
        if mode != "alone":
            planner.start()
            time.sleep(2)
        began = time.perf_counter()
        clock = Clock.starting_at(deliver.NOW)
        report = asyncio.run(dispatch(rt, clock, limit=messages))
        ended = time.perf_counter()
    finally:
        if mode != "alone":
            planner.join()
        rt.engine.dispose()
    if report.sent != messages:
        raise RuntimeError(f"sent {report.sent} of {messages}")
    if mode == "alone":
        return messages / (ended - began), 0.0, 0.0
    overlap = (min(plan_ended, ended) - began) / (ended - began)
    return messages / (ended - began), plan_ended - plan_began, max(overlap, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--changed", type=int, default=1_000, help="clients changed (changed)")
    args = parser.parse_args()
    if args.messages > args.clients:
        parser.error("--messages must not exceed --clients")
    deliver.ensure_postfix()
    port = deliver.free_port()
    sink = deliver.start_sink(port)
    figures: dict[str, tuple[float, float, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as built, tempfile.TemporaryDirectory() as work:
            shop = deliver.shop_file(Path(built), args.clients)
            for mode in MODES:
                with deliver.fresh_copy(shop, Path(work)) as copy:
                    figures[mode] = sending_rate(copy, port, args.messages, mode, args.changed)
    finally:
        sink.terminate()
        sink.wait()
    print(deliver.machine())
    for mode in MODES:
        rate, plan_seconds, overlap = figures[mode]
        which = {
            "thread": f"{args.clients:,} clients in a thread",
            "worker": f"{args.clients:,} clients in a worker",
            "changed": f"the {args.changed:,} changed clients of {args.clients:,} in a thread",
        }
        plan = (
            f"re-planning {which[mode]} ({plan_seconds:.2f} s; it ran "
            f"for {100 * overlap:.0f}% of the sending time)"
            if mode != "alone"
            else "no plan running"
        )
        print(f"{mode}: {args.messages:,} messages sent at {rate:,.0f}/s, {plan}")


if __name__ == "__main__":
    main()
