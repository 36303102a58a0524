"""The daemon in-process, against a real (slow) SMTP server: what a stop does to the touches in
flight when the grace period is shorter than the SMTP server's answer, and the scheduler seam."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from followup import app, daemon, store
from followup.config import Settings
from tests.conftest import SmtpServer, free_port, make_settings
from tests.test_dispatch import NOW, seed


def statuses(rt: app.Runtime) -> dict[str, int]:
    with rt.engine.connect() as conn:
        return store.touch_counts(conn)


def test_a_send_cut_off_by_the_deadline_is_uncertain_and_the_rest_go_back_to_the_queue(
    tmp_path: Path,
    smtp_server: SmtpServer,
    open_runtime: Callable[[Settings], app.Runtime],
) -> None:
    # The server keeps each message but answers it only after a long while.
    smtp_server.handler.data_delay = 4.0
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'followup.db'}",
        delivery={"mode": "smtp"},
        smtp={"host": smtp_server.host, "port": smtp_server.port, "security": "none"},
        http={"port": free_port()},
        schedule={"shutdown_grace_seconds": 0.5, "dispatch_interval_seconds": 1},
    )
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    worker = daemon.Daemon(rt, lambda: NOW)

    async def scenario() -> None:
        running = asyncio.create_task(worker.run())
        while not smtp_server.handler.received:
            assert not running.done(), running
            await asyncio.sleep(0.05)
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
        self.calls: list[str] = []
        self.started = asyncio.Event()

    def every(self, name: str, seconds: float, job: daemon.Job) -> None:
        self.jobs[name] = seconds

    def start(self) -> None:
        self.calls.append("start")
        self.started.set()

    def pause(self) -> None:
        self.calls.append("pause")

    def shutdown(self) -> None:
        self.calls.append("shutdown")


def test_the_daemon_asks_its_scheduler_for_three_jobs_and_stops_it(
    tmp_path: Path, open_runtime: Callable[[Settings], app.Runtime]
) -> None:
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'followup.db'}",
        http={"port": free_port()},
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
