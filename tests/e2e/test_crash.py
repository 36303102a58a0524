"""Crash test: `followup send` is killed with SIGKILL at random moments, then restarted until
done. No Message-ID may reach the server twice, and no touch may be left planned or sending."""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from followup.importing.demo import write_bulk_shop
from tests.support.executable import EXECUTABLE, followup
from tests.support.smtp import RecordingHandler, SmtpServer

pytestmark = pytest.mark.e2e

TOUCHES = 1000
KILLS = 12
START = datetime.fromisoformat("2027-01-08T16:00:00+00:00")
ZONES = ("Europe/London", "Europe/Paris", "America/New_York", "Asia/Tokyo")


def statuses(folder: Path) -> dict[str, int]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return dict(conn.execute("select status, count(*) from touches group by status"))


@contextlib.contextmanager
def woken_on_exit(process: subprocess.Popen[bytes], handler: RecordingHandler) -> Iterator[None]:
    """Within the block, the exit of `process` wakes the handler's wait_received. A thread
    waits for it on a pidfd (readable once the process has exited; it leaves the reaping to
    Popen, so poll() and the kill below see the process as they would without it)."""
    pidfd = os.pidfd_open(process.pid)
    stop_r, stop_w = os.pipe()

    def watch() -> None:
        ready, _, _ = select.select([pidfd, stop_r], [], [])
        if pidfd in ready:
            handler.wake()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield
    finally:
        os.write(stop_w, b"x")
        watcher.join()
        for fd in (pidfd, stop_r, stop_w):
            os.close(fd)


def test_sigkill_at_random_moments_never_sends_twice_nor_loses_a_touch(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    rng = random.Random(os.environ.get("FOLLOWUP_CRASH_SEED", "5"))
    followup(tmp_path, "init")
    write_bulk_shop(
        tmp_path, TOUCHES, date(2027, 1, 6), zones=ZONES, locales=("en-GB", "fr"), country="FR"
    )
    followup(tmp_path, "db", "upgrade")
    for kind in ("reps", "clients", "purchases"):
        followup(tmp_path, "import", kind, str(tmp_path / f"{kind}.csv"), "--strict")
    followup(tmp_path, "plan", env={"FOLLOWUP_NOW": START.isoformat()})
    assert statuses(tmp_path) == {"planned": TOUCHES}

    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
    env.update(
        {
            "FOLLOWUP_DELIVERY_MODE": "smtp",
            "FOLLOWUP_SMTP_HOST": smtp_server.host,
            "FOLLOWUP_SMTP_PORT": str(smtp_server.port),
            "FOLLOWUP_SMTP_SECURITY": "none",
            "FOLLOWUP_SECRET_KEY": "crash-test",
            "FOLLOWUP_DATABASE_LEASE_SECONDS": "10",
            "FOLLOWUP_DELIVERY_BATCH_SIZE": "25",
        }
    )
    received = smtp_server.handler.received
    kills = 0
    for round_number in range(KILLS + 20):
        # Each run starts an hour later on the business clock (FOLLOWUP_NOW). A killed run's
        # touches are settled by the next run because its process is gone from this host
        # (followup.owners), not because its lease ran out: leases use the machine's clock.
        now = START + timedelta(hours=round_number)
        env["FOLLOWUP_NOW"] = now.isoformat()
        before = len(received)
        process = subprocess.Popen(
            [str(EXECUTABLE), "send", "--once"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if kills < KILLS:
            target = before + rng.randint(1, 60)
            # Until the server has the target-th message, unless the sender ends first.
            with woken_on_exit(process, smtp_server.handler):
                exited = lambda sender=process: sender.poll() is not None  # noqa: E731
                progress = smtp_server.handler.wait_received(target, 60, exited)
            assert progress, "the sender made no progress"
            # Land somewhere inside a transaction: between claim, send and record.
            time.sleep(rng.uniform(0, 0.02))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        _, stderr = process.communicate(timeout=120)
        if process.returncode == 0 and kills >= KILLS:
            counts = statuses(tmp_path)
            if not counts.get("planned") and not counts.get("retry") and not counts.get("sending"):
                break
        else:
            assert process.returncode in (0, -signal.SIGKILL), stderr.decode()
    assert kills >= 10

    ids = smtp_server.handler.message_ids()
    assert len(ids) == len(set(ids)), "a Message-ID was received twice"
    counts = statuses(tmp_path)
    assert set(counts) <= {"sent", "failed", "skipped", "uncertain"}, counts
    assert sum(counts.values()) == TOUCHES
    with sqlite3.connect(tmp_path / "var" / "followup.db") as conn:
        sent = {r[0] for r in conn.execute("select message_id from touches where status='sent'")}
        uncertain = conn.execute("select count(*) from touches where status='uncertain'").fetchone()
    # Every sent touch reached the server; what else reached it is among the uncertain ones.
    assert sent <= set(ids)
    assert len(set(ids) - sent) <= uncertain[0]
    assert counts.get("sent", 0) + uncertain[0] >= TOUCHES - counts.get("failed", 0)
