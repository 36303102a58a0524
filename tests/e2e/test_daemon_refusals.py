"""End to end (issue 20, acceptance 1, in the daemon): a relay that refuses to relay for this
client stops each dispatch run without bouncing anyone; the daemon logs the error, waits the
circuit breaker's backoff before it claims again (instead of claiming and giving back the queue
at every run), says so in /healthz, and once the relay is fixed sends every touch once. The
installed executable against a real refusing SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from tests.e2e.test_daemon import (
    T0,
    Daemon,
    http,
    import_shop,
    make_shop,
    received_at_least,
    smtp_env,
    sqlite_rows,
    statuses,
    wait_for,
)
from tests.support.ports import ReservedPorts
from tests.support.refusals import RefusingHandler, refusing_server
from tests.support.smtp import SmtpServer

pytestmark = pytest.mark.e2e

DAY = date(2027, 1, 6)  # thank-yous due at T0


@pytest.fixture
def relay() -> Iterator[SmtpServer]:
    with refusing_server() as server:
        yield server


def test_a_relay_that_refuses_stops_the_daemon_s_runs_and_bounces_nobody(
    tmp_path: Path, relay: SmtpServer, reserved_ports: ReservedPorts
) -> None:
    handler = relay.handler
    assert isinstance(handler, RefusingHandler)
    handler.rcpt_reply = "554 5.7.1 <client0@example.com>: Relay access denied"
    make_shop(tmp_path, [DAY] * 4)
    env = smtp_env(relay, reserved_ports, T0, FOLLOWUP_SMTP_BREAKER_BACKOFF_SECONDS="3")
    import_shop(tmp_path, env)
    daemon = Daemon(tmp_path, env)
    try:
        wait_for(lambda: "event=dispatch.error" in daemon.log, "the daemon's dispatch.error")
        assert "refuses to relay for this client" in daemon.log
        assert "[smtp] host" in daemon.log
        assert "client0@example.com" not in daemon.log, "no address in the logs"
        assert "event=smtp.breaker_open" in daemon.log

        def degraded() -> bool:
            state = json.loads(http("GET", daemon.url("/healthz"))[1])
            breaker = state["instance"].get("smtp_breaker") or {}
            return bool(state["status"] == "degraded" and breaker.get("state") == "open")

        wait_for(degraded, "/healthz degraded with the breaker open")
        # Nobody bounced or suppressed; the touches wait in the queue with no attempt spent.
        assert handler.received == []
        assert sqlite_rows(tmp_path, "select count(*) from suppressions") == [(0,)]
        assert sqlite_rows(tmp_path, "select distinct status from clients") == [("active",)]
        assert statuses(tmp_path) == {"planned": 4}

        # The relay is fixed: after the backoff, a probe, then the rest, each once.
        handler.rcpt_reply = None
        received_at_least(relay, 4, "the 4 thank-yous once the relay is fixed")
        wait_for(lambda: statuses(tmp_path) == {"sent": 4}, "4 sent touches")
        assert sorted(m.rcpt_tos[0] for m in handler.received) == [
            f"client{n}@example.com" for n in range(4)
        ]
        assert "event=smtp.breaker_closed" in daemon.log
        assert daemon.stop() == 0
    finally:
        daemon.kill()
