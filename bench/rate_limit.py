"""Measures how closely `[smtp] rate_per_second` is kept over a real run.

    .venv/bin/python bench/rate_limit.py --messages 2000 --rate 200

Plans `--messages` thank-yous in a temporary SQLite database, sends them through followup's
dispatcher to an in-process recording SMTP server on 127.0.0.1 with the given rate limit, and
prints the achieved rate measured from the server's receive times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from followup.config import load_settings
from followup.delivery.dispatcher import dispatch
from followup.importing import importer
from followup.importing.demo import write_bulk_shop
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.storage.schema import upgrade

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2027, 1, 8, 16, 0, tzinfo=UTC)


class Stamps:
    def __init__(self) -> None:
        self.times: list[float] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.times.append(time.monotonic())
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        write_bulk_shop(base, args.messages, date(2027, 1, 6))
        stamps = Stamps()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = Controller(stamps, hostname="127.0.0.1", port=port)
        controller.start()
        try:
            env = dict(os.environ)
            env.update(
                {
                    "FOLLOWUP_DATABASE_URL": f"sqlite:///{base / 'f.db'}",
                    "FOLLOWUP_TEMPLATES_DIR": str(ROOT / "templates"),
                    "FOLLOWUP_DELIVERY_MODE": "smtp",
                    "FOLLOWUP_SMTP_HOST": "127.0.0.1",
                    "FOLLOWUP_SMTP_PORT": str(controller.port),
                    "FOLLOWUP_SMTP_SECURITY": "none",
                    "FOLLOWUP_SMTP_RATE_PER_SECOND": str(args.rate),
                    "FOLLOWUP_SECRET_KEY": "bench",
                }
            )
            rt = Runtime.open(load_settings(ROOT / "config.toml", env), create=True)
            upgrade(rt.engine)
            for kind in ("reps", "clients", "purchases"):
                importer.import_csv(rt.engine, importer.Kind(kind), base / f"{kind}.csv", now=NOW)
            plan(rt, NOW)
            report = asyncio.run(dispatch(rt, lambda: NOW))
        finally:
            controller.stop()
    times = stamps.times
    span = times[-1] - times[0]
    achieved = (len(times) - 1) / span if span > 0 else float("inf")
    print(
        f"command: {sys.executable} bench/rate_limit.py --messages {args.messages} "
        f"--rate {args.rate:g}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}"
    )
    print(
        f"sent {report.sent} messages; limit {args.rate:g}/s; achieved {achieved:.1f}/s "
        f"({(achieved / args.rate - 1) * 100:+.1f}% of the limit) over {span:.2f} s"
    )


if __name__ == "__main__":
    main()
