"""End-to-end delivery into Postfix's smtp-sink, against smtp-source (ceiling) and a naive
smtplib loop (floor).

    .venv/bin/python bench/deliver.py --messages 20000 --connections 4

Installs Debian's postfix package (for smtp-sink and smtp-source) when they are missing, starts
smtp-sink on a free loopback port, then measures on the same sink:

1. followup: a shop of --messages clients from bench/generate.py (7 markets with their zones
   and languages, 20 reps), each with a purchase two days before, in a temporary SQLite
   database, planned beforehand (not timed): a thank-you per client. They are sent by
   followup's dispatcher (claim, render, send, record) with `[smtp] pool_size` = --connections:
   messages per second from the first claim to the last record.
2. ceiling: smtp-source (Postfix's C load generator) sending the same number of messages of the
   same size over the same number of parallel sessions, each kept open from one message to the
   next (`-d`) as followup keeps its connections. For comparison with the figures of earlier
   series, smtp-source's default is also measured: a new session for every message.
3. floors, for --naive messages (default 2,000):
   - naive dispatcher: the same job done the naive way, on a shop of its own (the same
     generator): for each due
     touch, read it and its client (one query each), compose it with followup's own compose()
     (so rendering costs the same), send it with smtplib over a new connection, mark it sent
     and commit;
   - naive send: smtplib, one new connection per message of the same size, nothing else.

With --processes N, followup's dispatch runs in N processes (`followup send --processes N`,
dispatch_in_processes), each with --connections connections; process start-up is timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import generate  # noqa: E402
from sqlalchemy import select  # noqa: E402

from followup.config import Settings, load_settings  # noqa: E402
from followup.config.calendars import load_calendar  # noqa: E402
from followup.delivery.dispatcher import dispatch_in_processes  # noqa: E402
from followup.messages import compose  # noqa: E402
from followup.planning.plan import plan  # noqa: E402
from followup.runtime import Clock, Runtime  # noqa: E402
from followup.storage import tables  # noqa: E402
from followup.storage.engine import reader  # noqa: E402
from followup.storage.overview import touch_counts  # noqa: E402
from followup.storage.queries import recipient_facts  # noqa: E402
from followup.storage.schema import upgrade  # noqa: E402

NOW = datetime(2027, 1, 8, 19, 0, tzinfo=UTC)
SINK = "/usr/sbin/smtp-sink"
SOURCE = "/usr/sbin/smtp-source"


def ensure_postfix() -> None:
    if Path(SINK).exists() and Path(SOURCE).exists():
        return
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=False,
    )
    apt_install("postfix")


def apt_install(package: str) -> None:
    """Installs a Debian package (the benches' tools), without questions."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", package],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = subprocess.Popen([SINK, "-u", "nobody", f"127.0.0.1:{port}", "1024"])
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return sink
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


#: Each generated client bought at this instant: its thank-you is due two days later, at 10:00
#: in its own zone, all of them by NOW.
PURCHASED = datetime(2027, 1, 6, 12, 0, tzinfo=UTC)


def shop_runtime(folder: Path, messages: int, env: dict[str, str]) -> Runtime:
    """bench/generate.py's shop of `messages` clients (7 markets, their zones and languages,
    20 reps), each with one purchase at PURCHASED, in a new database, planned at NOW: a
    thank-you each (the other campaigns are off)."""
    rt = Runtime.open(shop_settings(folder, env), create=True)
    upgrade(rt.engine)
    generate.generate(rt.engine, messages, purchased_on=PURCHASED)
    plan(rt, NOW)
    return rt


def shop_file(folder: Path, messages: int) -> Path:
    """shop_runtime's shop in `folder`, its write-ahead log folded into the file: the one file
    to copy for each run (bench/ledger.py, bench/replan.py)."""
    shop_runtime(folder, messages, {}).engine.dispose()
    con = sqlite3.connect(folder / "followup.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return folder / "followup.db"


@contextmanager
def fresh_copy(shop: Path, work: Path) -> Iterator[Path]:
    """A copy of the shop file `shop` in the folder `work`, for one run; emptied afterwards."""
    shutil.copy(shop, work / "followup.db")
    try:
        yield work
    finally:
        for leftover in work.iterdir():
            leftover.unlink()


def shop_settings(folder: Path, env: dict[str, str]) -> Settings:
    """The settings of the shop in `folder` (see shop_runtime)."""
    env = {
        "FOLLOWUP_DATABASE_URL": f"sqlite:///{folder / 'followup.db'}",
        "FOLLOWUP_SECRET_KEY": "bench",
        # NOW is night somewhere: let every zone's thank-you go out at once.
        "FOLLOWUP_POLITENESS_QUIET_HOURS": "",
        "FOLLOWUP_CAMPAIGNS_THANK_YOU_WINDOW": "00:00-00:00",
        **env,
    }
    # Only the thank-you: one message per client.
    calendar = load_calendar(load_settings(ROOT / "config.toml", env)).campaigns
    for campaign in calendar:
        if campaign.name != "thank_you":
            env[f"FOLLOWUP_CAMPAIGNS_{campaign.name.upper()}_ENABLED"] = "false"
    return load_settings(ROOT / "config.toml", env)


def sink_env(port: int, connections: int = 4) -> dict[str, str]:
    """The settings that deliver into smtp-sink on `port`: batches of 500, `connections`
    connections, no TLS (the other benches use them too)."""
    return {
        "FOLLOWUP_DELIVERY_MODE": "smtp",
        "FOLLOWUP_DELIVERY_BATCH_SIZE": "500",
        "FOLLOWUP_SMTP_HOST": "127.0.0.1",
        "FOLLOWUP_SMTP_PORT": str(port),
        "FOLLOWUP_SMTP_SECURITY": "none",
        "FOLLOWUP_SMTP_POOL_SIZE": str(connections),
    }


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; smtp-sink on 127.0.0.1"
    )


def followup_rate(
    port: int, messages: int, connections: int, folder: Path, processes: int = 1
) -> tuple[float, int]:
    """followup's dispatch of a shop of `messages` clients: messages per second and how many."""
    rt = shop_runtime(folder, messages, sink_env(port, connections))
    with reader(rt.engine) as conn:
        due = touch_counts(conn).get("planned", 0)
    began = time.perf_counter()
    report = dispatch_in_processes(rt, Clock.starting_at(NOW), processes)
    seconds = time.perf_counter() - began
    if report.sent != due:
        raise RuntimeError(f"sent {report.sent} of {due}")
    rt.engine.dispose()
    return report.sent / seconds, report.sent


def smtp_source_rate(
    port: int, messages: int, connections: int, size: int, *, keep_open: bool = True
) -> float:
    """smtp-source's rate into the sink: `connections` parallel sessions, each sending its
    messages over one connection (`-d`) or, with keep_open=False, one connection each."""
    began = time.perf_counter()
    subprocess.run(
        [
            SOURCE,
            *(["-d"] if keep_open else []),
            "-s",
            str(connections),
            "-m",
            str(messages),
            "-l",
            str(size),
            "-f",
            "bounces@example.com",
            "-t",
            "client@example.com",
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return messages / (time.perf_counter() - began)


def naive_dispatch_rate(port: int, messages: int, folder: Path) -> float:
    """The same job the naive way: a query per touch and per client, compose(), one SMTP
    connection per message, a commit per message."""
    rt = shop_runtime(folder, messages, {})
    settings = rt.settings
    t = tables.touches
    with reader(rt.engine) as conn:
        ids = [row.id for row in conn.execute(select(t.c.id).where(t.c.status == "planned"))]
    sender = settings.sender.envelope_from
    began = time.perf_counter()
    for touch_id in ids:
        with rt.engine.begin() as conn:
            touch = conn.execute(select(t).where(t.c.id == touch_id)).one()
            facts = recipient_facts(conn, [(touch.client_id, touch.purchase_id)]).recipients[0]
            message = compose.compose(
                settings,
                rt.templates,
                facts,
                campaign=touch.campaign,
                template=touch.template,
                occurrence=touch.occurrence,
                send_at=NOW,
                key="bench",
            )
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                smtp.sendmail(sender, [message.to], message.mime)
            conn.execute(
                t.update()
                .where(t.c.id == touch_id)
                .values(status="sent", message_id=message.message_id, updated_at=NOW)
            )
    seconds = time.perf_counter() - began
    rt.engine.dispose()
    return len(ids) / seconds


def naive_rate(port: int, messages: int, size: int) -> float:
    body = ("Subject: hello\r\n\r\n" + "x" * 76 + "\r\n") * max(1, size // 78)
    began = time.perf_counter()
    for n in range(messages):
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail("bounces@example.com", [f"client{n}@example.com"], body)
    return messages / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=4, help="per process")
    parser.add_argument("--processes", type=int, default=1, help="followup send processes")
    parser.add_argument("--naive", type=int, default=2_000)
    parser.add_argument("--size", type=int, default=3_300, help="bytes per message (ceiling)")
    args = parser.parse_args()
    ensure_postfix()
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as folder:
            ours, sent = followup_rate(
                port, args.messages, args.connections, Path(folder), args.processes
            )
        sessions = args.connections * args.processes
        ceiling = smtp_source_rate(port, args.messages, sessions, args.size)
        reconnecting = smtp_source_rate(port, args.messages, sessions, args.size, keep_open=False)
        with tempfile.TemporaryDirectory() as folder:
            naive_dispatch = naive_dispatch_rate(port, args.naive, Path(folder))
        floor = naive_rate(port, args.naive, args.size)
    finally:
        sink.terminate()
        sink.wait()
    print(machine())
    print(
        f"followup: {sent} messages to {args.messages} clients, {args.processes} process(es) with "
        f"{args.connections} connection(s) each: "
        f"{ours:,.0f} messages/s"
    )
    print(
        f"ceiling (smtp-source -d: same count, size and sessions, each kept open): "
        f"{ceiling:,.0f} messages/s"
    )
    print(
        f"smtp-source without -d (a new session for every message, as in series before "
        f"2026-11-29): {reconnecting:,.0f} messages/s"
    )
    print(
        f"floor 1 (naive dispatcher: a query per touch and client, compose, smtplib with a "
        f"connection per message, a commit per message; {args.naive} messages): "
        f"{naive_dispatch:,.0f}/s"
    )
    print(
        f"floor 2 (naive send: smtplib, a connection per message, nothing else; "
        f"{args.naive} messages): {floor:,.0f}/s"
    )
    print(
        f"followup is {ours / naive_dispatch:.1f}x the naive dispatcher, "
        f"{ours / floor:.1f}x the naive send loop and {100 * ours / ceiling:.0f}% of smtp-source"
    )


if __name__ == "__main__":
    main()
