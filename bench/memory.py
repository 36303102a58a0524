"""Peak memory of the daemon over a day of N touches, delivered into Postfix's smtp-sink.

    .venv/bin/python bench/memory.py --clients 100000

Generates a shop where each of N clients bought on 2027-01-06 (bench/generate.py), starts
smtp-sink (bench/deliver.py installs Postfix when needed) and the real `followup daemon` with
its clock at 2027-01-08 19:00 UTC: the daemon plans the day (a thank-you per client, and the
calendar's other occasions of those days) and delivers over 4 connections. The daemon's peak
RSS (VmHWM from /proc) is sampled until every thank-you is sent, then it is stopped with
SIGTERM. A shop of app.LARGE_SHOP_CLIENTS or more is planned in worker processes: their peaks,
and the most the daemon and they held together, are printed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deliver  # noqa: E402
import generate  # noqa: E402

from followup.storage import tables  # noqa: E402
from followup.storage.engine import open_engine, reader  # noqa: E402
from followup.storage.schema import upgrade  # noqa: E402

EXECUTABLE = Path(sys.executable).parent / "followup"


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's peak (VmHWM) or current (VmRSS) resident memory; 0 once it has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """The worker processes `pid` started (the daemon plans a large shop in one), without
    multiprocessing's resource tracker (about 13 MB, it outlives the workers)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return [child for child in found if "resource_tracker" not in command_line(child)]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    args = parser.parse_args()
    deliver.ensure_postfix()
    port = deliver.free_port()
    sink = deliver.start_sink(port)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        engine = open_engine(url)
        upgrade(engine)
        generate.generate(
            engine, args.clients, purchased_on=datetime(2027, 1, 6, 12, 0, tzinfo=UTC)
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
        env.update(
            {
                "FOLLOWUP_NOW": "2027-01-08T19:00:00+00:00",
                # Every zone's thank-you is due by then; let the late ones go out at once.
                "FOLLOWUP_POLITENESS_QUIET_HOURS": "",
                "FOLLOWUP_CAMPAIGNS_THANK_YOU_WINDOW": "00:00-00:00",
                "FOLLOWUP_DATABASE_URL": url,
                **deliver.sink_env(port),
                "FOLLOWUP_SECRET_KEY": "bench",
                "FOLLOWUP_HTTP_PORT": str(deliver.free_port()),
                "FOLLOWUP_SCHEDULE_DISPATCH_INTERVAL_SECONDS": "1",
            }
        )
        began = time.perf_counter()
        daemon = subprocess.Popen(
            [str(EXECUTABLE), "--config", str(ROOT / "config.toml"), "daemon"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        peak, sent, waiting = 0.0, 0, 1
        workers: dict[int, float] = {}  # worker process -> its peak RSS
        together = 0.0  # the daemon's and its workers' RSS at one time, at most
        t = tables.touches
        counted = 0.0
        try:
            while daemon.poll() is None:
                peak = max(peak, rss_mb(daemon.pid))
                now = rss_mb(daemon.pid, "VmRSS")
                for child in children(daemon.pid):
                    workers[child] = max(workers.get(child, 0.0), rss_mb(child))
                    now += rss_mb(child, "VmRSS")
                together = max(together, now)
                # VmHWM is the high-water mark: read it often. Counting the ledger scans
                # every row: every 5 s only, so that the poller takes little of the CPU.
                time.sleep(0.5)
                if time.perf_counter() - counted < 5:
                    continue
                counted = time.perf_counter()
                with reader(engine) as conn:
                    counts = dict(
                        conn.execute(
                            select(t.c.status, func.count())
                            .where(t.c.campaign == "thank_you")
                            .group_by(t.c.status)
                        ).all()
                    )
                sent = int(counts.get("sent", 0))
                waiting = sum(int(counts.get(s, 0)) for s in ("planned", "sending", "retry"))
                if sent and not waiting:
                    break
        finally:
            seconds = time.perf_counter() - began
            peak = max(peak, rss_mb(daemon.pid)) if daemon.poll() is None else peak
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
            sink.terminate()
            sink.wait()
            engine.dispose()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"daemon: {args.clients} clients, {sent} touches sent in {seconds:.0f} s "
        f"({sent / seconds:,.0f}/s, planning included); peak RSS {peak:.0f} MB"
    )
    if workers:
        print(
            f"its {len(workers)} worker process(es) (planning): peak RSS "
            f"{max(workers.values()):.0f} MB the largest; the daemon and its workers together "
            f"{together:.0f} MB at most (sampled every 0.5 s)"
        )


if __name__ == "__main__":
    main()
