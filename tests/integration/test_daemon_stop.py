"""The daemon in-process, against a real (slow) SMTP server: what a stop does to the touches in
flight when the grace period is shorter than the SMTP server's answer, and the scheduler seam."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from followup.config import Settings
from followup.logs import log
from followup.planning import plan as planning
from followup.planning.plan import plans_in_workers
from followup.runtime import Runtime
from followup.service import daemon
from followup.storage import tables
from followup.storage.overview import last_runs, touch_counts
from tests.support.ports import ReservedPorts
from tests.support.settings import make_settings
from tests.support.shop import NOW, seed
from tests.support.smtp import SmtpServer


@contextlib.contextmanager
def logged(event: str) -> Iterator[asyncio.Event]:
    """An event of the running loop, set when followup logs `event` (from any thread) within
    the block."""
    loop, seen = asyncio.get_running_loop(), asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == event:
                loop.call_soon_threadsafe(seen.set)

    watch = Watch()
    log.addHandler(watch)
    try:
        yield seen
    finally:
        log.removeHandler(watch)


def statuses(rt: Runtime) -> dict[str, int]:
    with rt.engine.connect() as conn:
        return touch_counts(conn)


def test_a_send_cut_off_by_the_deadline_is_uncertain_and_the_rest_go_back_to_the_queue(
    tmp_path: Path,
    smtp_server: SmtpServer,
    open_runtime: Callable[[Settings], Runtime],
    reserved_ports: ReservedPorts,
) -> None:
    # The server keeps each message but answers it only after a long while.
    smtp_server.handler.data_delay = 4.0
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'followup.db'}",
        delivery={"mode": "smtp"},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
        http={"port": reserved_ports.reserve()},
        schedule={"shutdown_grace_seconds": 0.5, "dispatch_interval_seconds": 1},
    )
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    worker = daemon.Daemon(rt, lambda: NOW)

    async def scenario() -> None:
        running = asyncio.create_task(worker.run())
        # Until the server has the first message (its handler says so), unless the daemon
        # ends first.
        handler = smtp_server.handler
        running.add_done_callback(lambda _: handler.wake())
        await asyncio.to_thread(handler.wait_received, 1, 60, running.done)
        assert not running.done(), running
        # The first message is with the server, unanswered; SIGTERM as systemd would.
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(running, timeout=60)

    asyncio.run(scenario())
    assert len(smtp_server.handler.received) == 1
    # The message the server holds may have been accepted: uncertain, never resent on its
    # own; the two never handed over are planned again; nothing is left sending.
    assert statuses(rt) == {"uncertain": 1, "planned": 2}


class FakeScheduler:
    """Records what the daemon asks of its scheduler (the seam APScheduler 4 would fill)."""

    def __init__(self) -> None:
        self.jobs: dict[str, float] = {}
        self.work: dict[str, daemon.Job] = {}
        self.calls: list[str] = []
        self.started = asyncio.Event()

    def every(self, name: str, seconds: float, job: daemon.Job) -> None:
        self.jobs[name] = seconds
        self.work[name] = job

    def start(self) -> None:
        self.calls.append("start")
        self.started.set()

    def pause(self) -> None:
        self.calls.append("pause")

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_the_daemon_asks_its_scheduler_for_three_jobs_and_stops_it(
    tmp_path: Path, open_runtime: Callable[[Settings], Runtime], reserved_ports: ReservedPorts
) -> None:
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'followup.db'}",
        http={"port": reserved_ports.reserve()},
        schedule={"plan_interval_seconds": 60, "dispatch_interval_seconds": 2},
    )
    rt = open_runtime(settings)
    fake = FakeScheduler()
    worker = daemon.Daemon(rt, lambda: NOW, scheduler=lambda: fake)

    async def scenario() -> None:
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(fake.started.wait(), timeout=60)
        worker.request_stop(signal.SIGINT)
        await asyncio.wait_for(running, timeout=60)

    asyncio.run(scenario())
    assert fake.jobs == {"plan": 60, "dispatch": 2, "housekeeping": 3600}
    assert fake.calls == ["start", "pause", "shutdown"]


def seeded(
    tmp_path: Path,
    open_runtime: Callable[[Settings], Runtime],
    ports: ReservedPorts,
    **schedule: object,
) -> Runtime:
    """A runtime on a new SQLite file with the small shop imported (nothing planned)."""
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'followup.db'}",
        http={"port": ports.reserve()},
        schedule=schedule,
    )
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    return rt


def test_the_daemon_plans_a_large_shop_in_a_worker_process_and_a_small_one_itself(
    tmp_path: Path,
    open_runtime: Callable[[Settings], Runtime],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    reserved_ports: ReservedPorts,
) -> None:
    # A re-plan reads every client: for a large shop, in a thread it held the interpreter the
    # dispatcher sends with. "Large" is lowered here to this shop's clients.
    rt = seeded(tmp_path, open_runtime, reserved_ports)

    def plan_once() -> list[dict[str, object]]:
        """A new daemon's plan job (the first plan reads every client): the worker processes
        it started."""
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=log.name):
            asyncio.run(daemon.Daemon(rt, lambda: NOW).plan())
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
        events = [(getattr(r, "event", None), getattr(r, "fields", {})) for r in caplog.records]
        assert "plan.done" in {event for event, _ in events}, events
        return [fields for event, fields in events if event == "processes.start"]

    with rt.engine.connect() as conn:
        clients = conn.execute(select(func.count()).select_from(tables.clients)).scalar_one()
    monkeypatch.setattr(planning, "LARGE_SHOP_CLIENTS", clients + 1)
    assert not plans_in_workers(rt)
    assert plan_once() == []
    planned = statuses(rt)
    assert planned.get("planned", 0) > 0

    monkeypatch.setattr(planning, "LARGE_SHOP_CLIENTS", clients)
    assert plans_in_workers(rt)
    with rt.engine.begin() as conn:
        conn.execute(tables.touch_events.delete())
        conn.execute(tables.touches.delete())
    (started,) = plan_once()
    assert started["processes"] == 1
    assert statuses(rt) == planned, "the worker plans what the daemon planned itself"


def test_a_stop_during_a_plan_in_a_worker_process_terminates_the_worker(
    tmp_path: Path,
    open_runtime: Callable[[Settings], Runtime],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    reserved_ports: ReservedPorts,
) -> None:
    # The worker cannot write (the test holds SQLite's write lock) and would wait for up to
    # 30 s; the daemon is stopped meanwhile: its plan job terminates the worker and ends
    # without an error, and the daemon exits without waiting for the plan.
    rt = seeded(tmp_path, open_runtime, reserved_ports, shutdown_grace_seconds=60)
    monkeypatch.setattr(planning, "LARGE_SHOP_CLIENTS", 1)
    fake = FakeScheduler()
    worker = daemon.Daemon(rt, lambda: NOW, scheduler=lambda: fake)
    lock = sqlite3.connect(tmp_path / "followup.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")

    async def scenario() -> None:
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(fake.started.wait(), timeout=60)
        with logged("processes.start") as started:
            planning = asyncio.create_task(fake.work["plan"]())
            await asyncio.wait_for(started.wait(), timeout=60)  # the plan is in a worker
        assert not planning.done(), "the worker waits for the write lock"
        worker.request_stop(signal.SIGTERM)
        # Well within the grace period: the job did not wait for the plan to end.
        await asyncio.wait_for(planning, timeout=20)
        lock.rollback()  # the daemon settles its leases as it exits
        await asyncio.wait_for(running, timeout=20)

    try:
        with caplog.at_level(logging.INFO, logger=log.name):
            asyncio.run(scenario())
    finally:
        if lock.in_transaction:
            lock.rollback()
        lock.close()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert "processes.start" in events and "plan.stopped" in events, events
    assert "plan.error" not in events and "plan.done" not in events, events
    assert multiprocessing.active_children() == []
    assert statuses(rt) == {}, "nothing was planned"
    with rt.engine.connect() as conn:
        assert last_runs(conn).get("plan") is None, "no plan run recorded"
