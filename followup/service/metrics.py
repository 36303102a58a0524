"""Prometheus metrics of `followup daemon` (prometheus-client), served at GET /metrics.

Two kinds: what this process saw (send latency, SMTP errors, runs: counters and a histogram
kept in memory), and what the ledger holds (touches by status and campaign, queue depth: read
from the database at scrape time with a cheap GROUP BY, so every instance reports the same,
true figures and nothing drifts across restarts). docs/operations.md explains each one; a
test checks that every metric exported here is documented there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from followup.delivery.breaker import Breaker, BreakerState
from followup.delivery.report import DispatchReport
from followup.domain.outcomes import Delivery, Outcome
from followup.domain.statuses import TouchStatus
from followup.storage import overview
from followup.storage.engine import reader

HELD = TouchStatus.HELD.value

# The *_created series double every counter for little use here.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: SMTP transactions take milliseconds on a local relay and seconds on a distant provider.
SEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LedgerCollector(Collector):
    """Gauges read from the ledger at each scrape."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "followup_touches",
                "Touches in the ledger, by status and campaign.",
                labels=["status", "campaign"],
            ),
            GaugeMetricFamily(
                "followup_queue_depth", "Touches waiting to be sent (planned, retry or held)."
            ),
            GaugeMetricFamily(
                "followup_queue_due", "Touches waiting whose time has come (due now)."
            ),
            GaugeMetricFamily(
                "followup_touches_held",
                "Touches held on a template error: they go out once the template is fixed.",
            ),
            GaugeMetricFamily(
                "followup_database_up", "1 when the last scrape could read the ledger, else 0."
            ),
        )

    def describe(self) -> Iterator[Metric]:
        # Without this, registering the collector would query the database.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        touches, depth, due, held, up = self._families()
        try:
            with reader(self.engine) as conn:
                counts = overview.touch_counts_by_campaign(conn)
                waiting, due_now = overview.queue_depth(conn, self.clock())
        except SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        for (status, campaign), count in sorted(counts.items()):
            touches.add_metric([status, campaign], count)
        depth.add_metric([], waiting)
        due.add_metric([], due_now)
        held.add_metric([], sum(n for (status, _), n in counts.items() if status == HELD))
        up.add_metric([], 1)
        yield from (touches, depth, due, held, up)


class Metrics:
    """The metrics of one daemon process, in a registry of its own."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.send_seconds = Histogram(
            "followup_send_seconds",
            "Seconds per SMTP transaction (MAIL, RCPT, DATA), whatever its outcome.",
            buckets=SEND_BUCKETS,
            registry=registry,
        )
        self.deliveries = Counter(
            "followup_deliveries",
            "SMTP transactions by outcome: sent, retry, bounced, failed, uncertain.",
            ["outcome"],
            registry=registry,
        )
        self.smtp_errors = Counter(
            "followup_smtp_errors",
            "SMTP transactions that did not end in 2xx, by reply code ('none': no reply, "
            "e.g. a dropped connection or a timeout).",
            ["code"],
            registry=registry,
        )
        self.dispatch_touches = Counter(
            "followup_dispatch_touches",
            "Touches dispatch runs settled, by what became of them (the dispatch summary's "
            "counts): sent, retry, failed, bounced, held, skipped, too_late, uncertain.",
            ["status"],
            registry=registry,
        )
        self.dispatch_stops = Counter(
            "followup_dispatch_stops",
            "Dispatch runs stopped because the SMTP server refuses this client's setup "
            "(relay, login, TLS, sender, policy): see the dispatch.stopped log event.",
            registry=registry,
        )
        self.plan_runs = Counter(
            "followup_plan_runs",
            "Plan runs by outcome (ok, error).",
            ["outcome"],
            registry=registry,
        )
        self.dispatch_runs = Counter(
            "followup_dispatch_runs",
            "Dispatch runs by outcome (ok, error).",
            ["outcome"],
            registry=registry,
        )
        self.last_plan = Gauge(
            "followup_last_plan_timestamp_seconds",
            "Unix time at which this process last finished a plan run successfully.",
            registry=registry,
        )
        self.last_dispatch = Gauge(
            "followup_last_dispatch_timestamp_seconds",
            "Unix time at which this process last finished a dispatch run successfully.",
            registry=registry,
        )
        self.breaker_open = Gauge(
            "followup_smtp_breaker_open",
            "1 while the circuit breaker of the SMTP server stops sending (open or half-open), "
            "else 0.",
            ["server"],
            registry=registry,
        )
        self.clock = clock
        registry.register(LedgerCollector(engine, clock))

    def watch_breaker(self, breaker: Breaker) -> None:
        """The breaker's state, read at each scrape."""
        self.breaker_open.labels(breaker.server).set_function(
            lambda: float(breaker.state(self.clock()) is not BreakerState.CLOSED)
        )

    def delivered(self, delivery: Delivery, seconds: float) -> None:
        """Called by the dispatcher after each SMTP transaction."""
        self.send_seconds.observe(seconds)
        self.deliveries.labels(delivery.outcome.value).inc()
        if delivery.outcome is not Outcome.SENT:
            code = str(delivery.code) if delivery.code else "none"
            self.smtp_errors.labels(code).inc()

    def dispatched(self, report: DispatchReport) -> None:
        """Called by the daemon after each dispatch run, stopped or not."""
        for status, count in report.counts().items():
            if count:
                self.dispatch_touches.labels(status).inc(count)
        if report.stopped is not None:
            self.dispatch_stops.inc()

    def exposition(self) -> bytes:
        """The Prometheus text format (reads the ledger: call it off the event loop)."""
        return generate_latest(self.registry)
