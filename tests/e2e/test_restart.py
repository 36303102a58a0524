"""A restart after a crash, with the real `followup` executable against a real SMTP server: a
`followup send` killed with SIGKILL, and a new one started at once on the same host, which
delivers what the dead run had claimed but not handed to its mailer without waiting for the
dead run's lease (300 s), on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from followup import owners
from followup.importing.demo import write_bulk_shop
from tests.support.executable import EXECUTABLE, followup
from tests.support.smtp import SmtpServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(owners.this_start() == owners.UNKNOWN, reason="needs Linux's /proc"),
]

TOUCHES = 120
START = datetime.fromisoformat("2027-01-08T16:00:00+00:00")


def touches(url: str) -> dict[int, tuple[str, str | None, str | None]]:
    """Every touch: (status, Message-ID, lease owner)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("select id, status, message_id, lease_owner from touches"))
            return {row[0]: (row[1], row[2], row[3]) for row in rows}
    finally:
        engine.dispose()


def test_a_sigkilled_runs_touches_move_again_at_once_when_a_new_run_starts(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str
) -> None:
    env = {
        "FOLLOWUP_DATABASE_URL": database_url,
        "FOLLOWUP_NOW": START.isoformat(),
    }
    followup(tmp_path, "init", env=env)
    write_bulk_shop(tmp_path, TOUCHES, date(2027, 1, 6), zones=("Europe/London",))
    followup(tmp_path, "db", "upgrade", env=env)
    for kind in ("reps", "clients", "purchases"):
        followup(tmp_path, "import", kind, str(tmp_path / f"{kind}.csv"), "--strict", env=env)
    followup(tmp_path, "plan", env=env)
    assert {status for status, _, _ in touches(database_url).values()} == {"planned"}

    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
    environment.update(
        {
            **env,
            "FOLLOWUP_DELIVERY_MODE": "smtp",
            "FOLLOWUP_SMTP_HOST": smtp_server.host,
            "FOLLOWUP_SMTP_PORT": str(smtp_server.port),
            "FOLLOWUP_SMTP_SECURITY": "none",
            "FOLLOWUP_SMTP_POOL_SIZE": "1",
            "FOLLOWUP_SECRET_KEY": "restart-test",
            "FOLLOWUP_DATABASE_LEASE_SECONDS": "300",
            "FOLLOWUP_DELIVERY_BATCH_SIZE": str(TOUCHES),
        }
    )
    # A slow server: the run is killed in the middle of its batch.
    smtp_server.handler.data_delay = 0.05
    first = subprocess.Popen(
        [str(EXECUTABLE), "send", "--once"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert smtp_server.handler.wait_received(3, 60), "the first run sent nothing"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    left = {
        touch_id: (message_id, owner)
        for touch_id, (status, message_id, owner) in touches(database_url).items()
        if status == "sending"
    }
    unsent = {touch_id for touch_id, (message_id, _) in left.items() if message_id is None}
    handed = set(left) - unsent
    assert unsent, "the killed run had handed every touch to its mailer"
    (dead,) = {owner for _, owner in left.values()}
    assert dead is not None and dead.split(":")[1] == str(first.pid)

    # At once, at the same clock: the dead run's lease has 300 s to go on every clock.
    smtp_server.handler.data_delay = 0.0
    second = subprocess.run(
        [str(EXECUTABLE), "-v", "send", "--once"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr
    assert f"event=owner.gone owner={dead}" in second.stderr
    after = touches(database_url)
    assert {after[touch_id][0] for touch_id in unsent} == {"sent"}
    # Handed to the mailer when the run died: the server may have them, so never resent.
    assert {after[touch_id][0] for touch_id in handed} <= {"uncertain"}
    assert "sending" not in {status for status, _, _ in after.values()}
    ids = smtp_server.handler.message_ids()
    assert len(ids) == len(set(ids)), "a Message-ID was received twice"
    assert {after[touch_id][1] for touch_id in unsent} <= set(ids)
