"""The circuit breaker against real faulty SMTP servers (tests/support/faulty.py): one that
never greets, one that drops the connection after the message data, one that never answers
it. The breaker opens after [smtp] breaker_failures (at once after a loss after the data),
the rest of the queue waits, and the report, the logs, the run record, `status`, /healthz and
/metrics say the same as the ledger."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from followup import api
from followup.config import Settings
from followup.delivery.breaker import Breaker, BreakerState
from followup.delivery.dispatcher import dispatch
from followup.delivery.report import DispatchReport
from followup.runtime import Runtime
from followup.service.metrics import Metrics
from followup.service.reports import status
from followup.service.web import Request, WebApp
from followup.storage.overview import last_runs, touch_counts
from tests.support.faulty import FaultyServer, Mode, faulty_server
from tests.support.settings import make_settings
from tests.support.shop import NOW, seed_greetings
from tests.support.smtp import SmtpServer

OpenRuntime = Callable[[Settings], Runtime]
TOUCHES = 12
FAILURES = 3
BACKOFF = 60.0


@pytest.fixture(params=["never_greet", "drop_after_data", "hang_after_data"])
def faulty(request: pytest.FixtureRequest) -> Iterator[FaultyServer]:
    mode: Mode = request.param
    with faulty_server(mode) as server:
        yield server


def greeted(
    tmp_path: Path,
    database_url: str,
    server: FaultyServer,
    open_runtime: OpenRuntime,
    pool_size: int = 1,
) -> Runtime:
    """TOUCHES clients, each with a New Year greeting due now, sent to `server` with a short
    timeout."""
    settings = make_settings(
        tmp_path,
        database_url,
        politeness={"quiet_hours": ""},
        campaigns={"new_year_window": "00:00-00:00"},
        delivery={"mode": "smtp"},
        smtp={
            "host": server.host,
            "port": server.port,
            "security": "none",
            "timeout": 0.3,
            "pool_size": pool_size,
            "breaker_failures": FAILURES,
            "breaker_backoff_seconds": BACKOFF,
            "breaker_backoff_max_seconds": 4 * BACKOFF,
        },
    )
    rt = open_runtime(settings)
    seed_greetings(rt, tmp_path, TOUCHES)
    return rt


def counts(rt: Runtime) -> dict[str, int]:
    with rt.engine.connect() as conn:
        return touch_counts(conn)


def send(rt: Runtime, now: datetime, breaker: Breaker | None = None) -> DispatchReport:
    return asyncio.run(dispatch(rt, lambda: now, rng=random.Random(1), breaker=breaker))


def breaker_of(rt: Runtime) -> Breaker:
    return Breaker.from_settings(rt.settings.smtp)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [
        getattr(record, "fields", {})
        for record in caplog.records
        if getattr(record, "event", None) == name
    ]


def test_each_faulty_server_opens_the_breaker_and_the_rest_of_the_queue_waits(
    tmp_path: Path,
    database_url: str,
    faulty: FaultyServer,
    open_runtime: OpenRuntime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rt = greeted(tmp_path, database_url, faulty, open_runtime)
    breaker = breaker_of(rt)
    with caplog.at_level(logging.INFO, logger="followup"):
        report = send(rt, NOW, breaker)
    ledger = counts(rt)
    assert report.breaker_until == NOW + timedelta(seconds=BACKOFF)
    assert "sending" not in ledger
    if faulty.mode == "never_greet":
        # N connection failures in a row, each retried later; nothing reached the server.
        assert ledger == {"retry": FAILURES, "planned": TOUCHES - FAILURES}
        assert faulty.received == []
    else:
        # One loss after the data, and the breaker stops the run: one touch uncertain, and it
        # is the one the server got.
        assert ledger == {"uncertain": 1, "planned": TOUCHES - 1}
        assert len(faulty.received) == 1
    # The report, the log event and the run record say what the ledger holds.
    assert report.sent == 0 and report.retry == ledger.get("retry", 0)
    assert report.retry + report.failed + report.uncertain == TOUCHES - ledger["planned"]
    (opened,) = events(caplog, "smtp.breaker_open")
    assert opened["server"] == breaker.server
    assert opened["until"] == (NOW + timedelta(seconds=BACKOFF)).isoformat()
    (done,) = events(caplog, "dispatch.done")
    assert done["retry"] == report.retry and done["sent"] == 0
    assert done["breaker_until"] == opened["until"]
    with rt.engine.connect() as conn:
        run = last_runs(conn)["dispatch"]
    assert run["outcome"] == "breaker_open"
    assert f"retry={report.retry}" in run["detail"]
    # `followup status` says so until the breaker reopens.
    shown = status(rt, NOW + timedelta(seconds=1)).smtp_breaker
    assert shown is not None and shown["until"] == NOW + timedelta(seconds=BACKOFF)
    assert status(rt, NOW + timedelta(seconds=BACKOFF)).smtp_breaker is None


def test_a_kept_breaker_claims_nothing_while_open_then_probes_with_one_message(
    tmp_path: Path, database_url: str, open_runtime: OpenRuntime
) -> None:
    """As the daemon keeps it across runs: while open, nothing is claimed; after the backoff
    one message goes alone, and its loss opens the breaker again for twice as long. With two
    pooled connections, at most one more touch is uncertain per trip."""
    with faulty_server("drop_after_data") as server:
        rt = greeted(tmp_path, database_url, server, open_runtime, pool_size=2)
        breaker = breaker_of(rt)
        first = send(rt, NOW, breaker)
        assert first.breaker_until == NOW + timedelta(seconds=BACKOFF)
        # Both connections may have had a message in flight when the first loss came.
        lost = counts(rt)["uncertain"]
        assert 1 <= lost <= 2 and len(server.received) == lost
        connections = server.connections
        still_open = send(rt, NOW + timedelta(seconds=BACKOFF / 2), breaker)
        assert still_open.breaker_until == NOW + timedelta(seconds=BACKOFF)
        assert server.connections == connections, "an open breaker connects to nothing"
        assert counts(rt)["uncertain"] == lost
        later = NOW + timedelta(seconds=BACKOFF)
        assert breaker.state(later) is BreakerState.HALF_OPEN
        probe = send(rt, later, breaker)
        assert counts(rt) == {"uncertain": lost + 1, "planned": TOUCHES - lost - 1}
        assert probe.breaker_until == later + timedelta(seconds=2 * BACKOFF)
        assert len(server.received) == lost + 1


def test_a_probe_that_succeeds_closes_the_breaker_and_the_queue_goes_out(
    tmp_path: Path,
    database_url: str,
    open_runtime: OpenRuntime,
    smtp_server: SmtpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with faulty_server("never_greet") as server:
        rt = greeted(tmp_path, database_url, server, open_runtime)
        breaker = breaker_of(rt)
        send(rt, NOW, breaker)
    # The relay answers again (here: the recording server, on the same database).
    fixed = rt.settings.smtp.model_copy(update={"host": smtp_server.host, "port": smtp_server.port})
    rt = open_runtime(rt.settings.model_copy(update={"smtp": fixed}))
    later = NOW + timedelta(seconds=BACKOFF)
    with caplog.at_level(logging.INFO, logger="followup"):
        report = send(rt, later, breaker)
    assert events(caplog, "smtp.breaker_closed") == [{"server": breaker.server}]
    assert breaker.state(later) is BreakerState.CLOSED
    # Every planned touch went out, and the retries whose backoff had passed.
    after = counts(rt)
    assert set(after) <= {"sent", "retry"} and after["sent"] == report.sent
    assert report.sent >= TOUCHES - FAILURES and report.sent + report.retry <= TOUCHES


def test_healthz_is_degraded_and_the_metric_is_1_while_the_breaker_is_open(
    tmp_path: Path, database_url: str, open_runtime: OpenRuntime
) -> None:
    with faulty_server("never_greet") as server:
        rt = greeted(tmp_path, database_url, server, open_runtime)
        breaker = breaker_of(rt)
        now = [NOW]
        metrics = Metrics(rt.engine, lambda: now[0])
        metrics.watch_breaker(breaker)
        app = WebApp(
            rt.engine,
            lambda: now[0],
            "key",
            metrics,
            lambda: {"smtp_breaker": breaker.snapshot(now[0])},
        )

        def health() -> tuple[int, dict[str, object]]:
            response = asyncio.run(app(Request("GET", "/healthz", {})))
            return response.status, json.loads(response.body)

        def gauge() -> str:
            exposed = metrics.exposition().decode()
            (line,) = [x for x in exposed.splitlines() if x.startswith("followup_smtp_breaker")]
            return line

        assert health()[1]["status"] == "ok"
        assert gauge() == f'followup_smtp_breaker_open{{server="{breaker.server}"}} 0.0'
        send(rt, NOW, breaker)
        code, body = health()
        assert code == 200 and body["status"] == "degraded"
        snapshot = body["instance"]["smtp_breaker"]  # type: ignore[index]
        assert snapshot["state"] == "open"
        assert snapshot["until"] == (NOW + timedelta(seconds=BACKOFF)).isoformat()
        assert gauge().endswith(" 1.0")


def test_send_keeps_its_breaker_from_one_call_to_the_next(
    tmp_path: Path, database_url: str, open_runtime: OpenRuntime
) -> None:
    """`followup send` without --once keeps one breaker across its runs, as the daemon does
    (api.send(..., breaker=...)): a run within the backoff connects to nothing, and the probe
    after it, lost too, doubles the backoff."""
    with faulty_server("drop_after_data") as server:
        rt = greeted(tmp_path, database_url, server, open_runtime)
        breaker = Breaker.for_delivery(rt.settings)
        first = api.send(rt, NOW, processes=1, breaker=breaker)
        assert first.breaker_until is not None
        assert counts(rt)["uncertain"] == 1 and len(server.received) == 1
        connections = server.connections
        again = api.send(rt, NOW + timedelta(seconds=BACKOFF / 2), processes=1, breaker=breaker)
        assert again.breaker_until == first.breaker_until
        assert server.connections == connections, "an open breaker connects to nothing"
        probe = api.send(rt, first.breaker_until, processes=1, breaker=breaker)
        assert counts(rt) == {"uncertain": 2, "planned": TOUCHES - 2}
        assert probe.breaker_until is not None
        doubled = probe.breaker_until - first.breaker_until
        assert timedelta(seconds=2 * BACKOFF) <= doubled < timedelta(seconds=2 * BACKOFF + 30)
