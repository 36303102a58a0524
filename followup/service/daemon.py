"""`followup daemon`: plan and dispatch forever, serve the HTTP app, stop cleanly.

The scheduler sits behind a small seam (`Scheduler`, implemented over APScheduler 3.x's
AsyncIOScheduler with its memory job store), so APScheduler 4 can replace it later. It holds
only code-defined jobs; everything durable is in our own tables. Several daemons coordinate
through the database (leases, SKIP LOCKED, unique touch keys), never through APScheduler,
whose 3.x job stores must not be shared between processes.

Stopping (SIGTERM or SIGINT): no new run starts and no more touches are claimed; the sends in
flight finish, up to [schedule] shutdown_grace_seconds; the touches this process still holds
are released (or, if handed to the SMTP server without an answer, recorded uncertain); exit 0.
A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from followup import processes
from followup.delivery.breaker import Breaker
from followup.delivery.dispatcher import dispatch, log_breaker
from followup.delivery.report import DispatchStopped
from followup.errors import FollowupError
from followup.logs import log, log_event
from followup.messages import compose
from followup.planning import plan as planning
from followup.runtime import Runtime, owner_id, record_run
from followup.service import web
from followup.service.metrics import Metrics
from followup.storage.engine import sqlite_path
from followup.storage.schema import check_ready

Job = Callable[[], Awaitable[None]]
#: What a job's work returns when the daemon's stop cut it short.
STOPPED = "stopped"


class Scheduler(Protocol):
    """What the daemon needs from a scheduler: a few periodic jobs, each at most one at a time,
    missed runs coalesced into one."""

    def every(self, name: str, seconds: float, job: Job) -> None:
        """Run `job` now, then every `seconds`."""

    def start(self) -> None: ...

    def pause(self) -> None:
        """Start no more runs; the running ones go on."""

    def shutdown(self) -> None:
        """Stop; runs still going are cancelled."""


class ApScheduler3:
    """The seam over APScheduler 3.x (AsyncIOScheduler, memory job store, asyncio executor)."""

    def __init__(self) -> None:
        self._scheduler = AsyncIOScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": AsyncIOExecutor()},
            # One run of each job at a time; runs missed while the loop was busy (or the
            # machine suspended) are coalesced into one, not replayed one by one.
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=UTC,
        )

    def every(self, name: str, seconds: float, job: Job) -> None:
        self._scheduler.add_job(
            job,
            IntervalTrigger(seconds=seconds, timezone=UTC),
            id=name,
            name=name,
            next_run_time=datetime.now(UTC),
            # A run late by up to one interval still happens (coalesced); later than that it is
            # dropped, and the next one comes at its time.
            misfire_grace_time=max(int(seconds), 1),
            replace_existing=True,
        )

    def start(self) -> None:
        self._scheduler.start()

    def pause(self) -> None:
        self._scheduler.pause()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)


@contextlib.contextmanager
def single_instance(rt: Runtime) -> Iterator[None]:
    """SQLite: one daemon per database file, held by an exclusive lock on
    `<db file>.daemon.lock` for the daemon's life. PostgreSQL: any number."""
    path = sqlite_path(rt.settings.database_url)
    if path is None:
        yield
        return
    lock_path = path.with_name(path.name + ".daemon.lock")
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FollowupError(
                f"another followup daemon is running on {path}: SQLite allows one daemon per "
                "database file (use PostgreSQL to run several)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


class Daemon:
    def __init__(
        self,
        rt: Runtime,
        clock: Callable[[], datetime],
        scheduler: Callable[[], Scheduler] = ApScheduler3,
    ) -> None:
        self.rt = rt
        self.clock = clock
        self.make_scheduler = scheduler
        self.owner = owner_id()
        self.metrics = Metrics(rt.engine, clock)
        #: Kept across dispatch runs, so that its backoff holds (followup.delivery.breaker).
        self.breaker = Breaker.for_delivery(rt.settings)
        self.metrics.watch_breaker(self.breaker)
        self.last: dict[str, str | None] = {"plan": None, "dispatch": None, "housekeeping": None}
        self.port = 0
        self._stopping = False
        self._stop: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._running: set[asyncio.Task[Any]] = set()
        #: When the last plan of every client ran, and its horizon.
        self._full_plan: tuple[datetime, datetime] | None = None

    # ------------------------------------------------------------------------- jobs

    async def _job(self, kind: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run one job: track it for shutdown, record its outcome, never let it raise."""
        if self._stopping:
            return
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        started, started_at = time.monotonic(), self.clock()
        counter = {"plan": self.metrics.plan_runs, "dispatch": self.metrics.dispatch_runs}
        try:
            if await work() == STOPPED:
                return  # cut short by the stop: neither a run nor an error
        except Exception as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            log.error(
                f"{kind}.error",
                extra={
                    "event": f"{kind}.error",
                    "fields": {"error": f"{type(exc).__name__}: {first_line}"[:300]},
                },
            )
            if kind in counter:
                counter[kind].labels("error").inc()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    record_run,
                    self.rt,
                    kind,
                    started_at,
                    started,
                    f"{type(exc).__name__}: {first_line}"[:500],
                    owner=self.owner,
                    outcome="error",
                )
        else:
            self.last[kind] = self.clock().isoformat()
            if kind in counter:
                counter[kind].labels("ok").inc()
            gauge = {"plan": self.metrics.last_plan, "dispatch": self.metrics.last_dispatch}
            if kind in gauge:
                gauge[kind].set_to_current_time()
        finally:
            self._running.discard(task)

    def full_plan_due(self, now: datetime) -> bool:
        """Whether this plan must read every client: at start, every full_plan_interval, and
        before the next plan would pass the horizon of the last one (the clients that did not
        change have their touches up to there). Otherwise, only the changed clients."""
        if self._full_plan is None:
            return True
        at, until = self._full_plan
        schedule = self.rt.settings.schedule
        return (
            # A clock set back (after a wrong clock, or a resumed machine): the last plan of
            # every client was made from a time that has not come yet.
            now < at
            or now - at >= timedelta(seconds=schedule.full_plan_interval_seconds)
            or now + timedelta(seconds=schedule.plan_interval_seconds) > until
        )

    async def plan(self) -> None:
        async def work() -> str:
            # Planning is synchronous database work: off the event loop. A large shop is
            # planned in worker processes: in a thread, the re-plan of every client held the
            # interpreter the dispatcher sends with (bench/replan.py). Between plans of every
            # client, only those whose data changed are planned (bench/replan.py --changed).
            now = self.clock()
            until = now + timedelta(days=self.rt.settings.schedule.plan_horizon_days)

            def plan_now() -> planning.PlanReport:
                if not self.full_plan_due(now):
                    stale = planning.clients_to_replan(self.rt)
                    if len(stale) < planning.LARGE_SHOP_CLIENTS:
                        return planning.plan(self.rt, now, until, only=stale)
                    # As many as a large shop (a nightly import): every client, in workers.
                report = planning.plan(
                    self.rt,
                    now,
                    until,
                    in_workers=planning.plans_in_workers(self.rt),
                    should_stop=lambda: self._stopping,
                )
                self._full_plan = (now, until)
                return report

            try:
                report = await asyncio.to_thread(plan_now)
            except (planning.PlanStopped, BrokenProcessPool) as exc:
                if not self._stopping:
                    raise
                # Stopping: the workers were terminated (or a signal to the whole process
                # group reached them first). What they inserted stays; the next plan goes on.
                log_event("plan.stopped", reason=type(exc).__name__)
                return STOPPED
            return f"planned={report.planned}"

        await self._job("plan", work)

    async def dispatch(self) -> None:
        async def work() -> str:
            try:
                report = await dispatch(
                    self.rt,
                    self.clock,
                    owner=self.owner,
                    should_stop=lambda: self._stopping,
                    on_delivery=self.metrics.delivered,
                    on_report=self.metrics.dispatched,
                    breaker=self.breaker,
                )
            except DispatchStopped as stop:
                # The server refuses this client's setup: say so as an error, and wait the
                # breaker's backoff before claiming again. The run's record (outcome
                # "stopped", with its counts) was written by the run.
                log.error(
                    "dispatch.error",
                    extra={"event": "dispatch.error", "fields": {"error": str(stop)[:300]}},
                )
                log_breaker(
                    self.breaker, self.breaker.refused(self.clock(), str(stop.report.stopped))
                )
                return STOPPED
            return f"sent={report.sent}"

        await self._job("dispatch", work)

    async def housekeeping(self) -> None:
        async def work() -> str:
            return await asyncio.to_thread(self._housekeeping)

        await self._job("housekeeping", work)

    def _housekeeping(self) -> str:
        started, now = time.monotonic(), self.clock()
        with self.rt.engine.begin() as conn:
            uncertain = self.rt.ledger.expire_leases(conn, now)
            too_late = self.rt.ledger.skip_too_late(conn, now)
        detail = f"uncertain={uncertain} too_late={too_late}"
        log_event("housekeeping.done", uncertain=uncertain, too_late=too_late)
        record_run(self.rt, "housekeeping", now, started, detail, owner=self.owner)
        return detail

    # ------------------------------------------------------------------------- life

    def instance(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "stopping": self._stopping,
            "smtp_breaker": self.breaker.snapshot(self.clock()),
            **{f"last_{kind}": at for kind, at in self.last.items()},
        }

    def request_stop(self, signum: int | None = None) -> None:
        assert self._stop is not None and self._hurry is not None
        if self._stopping:
            self._hurry.set()
            return
        self._stopping = True
        name = signal.Signals(signum).name if signum else "request"
        log_event("daemon.stopping", signal=name, running=len(self._running))
        self._stop.set()

    async def run(self) -> None:
        settings = self.rt.settings
        self._stop, self._hurry = asyncio.Event(), asyncio.Event()
        await asyncio.to_thread(check_ready, self.rt.engine)
        # Never start sending a campaign whose templates do not compile (file and line named).
        await asyncio.to_thread(self.rt.check_templates)
        key = compose.signing_key(settings, sending=True)
        routes = web.WebApp(self.rt.engine, self.clock, key, self.metrics, self.instance)
        server = await web.serve(routes, settings.http.host, settings.http.port)
        self.port = int(server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        scheduler = self.make_scheduler()
        schedule = settings.schedule
        scheduler.every("plan", schedule.plan_interval_seconds, self.plan)
        scheduler.every("dispatch", schedule.dispatch_interval_seconds, self.dispatch)
        scheduler.every("housekeeping", schedule.housekeeping_interval_seconds, self.housekeeping)
        scheduler.start()
        log_event(
            "daemon.started",
            owner=self.owner,
            http=f"{settings.http.host}:{self.port}",
            database=self.rt.engine.dialect.name,
            now=self.clock().isoformat(),
        )
        try:
            await self._stop.wait()
            scheduler.pause()
            await self._drain(settings.schedule.shutdown_grace_seconds)
        finally:
            scheduler.shutdown()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            server.close()
            await server.wait_closed()
        released, uncertain = await asyncio.to_thread(self._settle)
        log_event("daemon.stopped", owner=self.owner, released=released, uncertain=uncertain)

    async def _drain(self, grace: float) -> None:
        """Let the running jobs finish (dispatch stops claiming at once) up to the deadline."""
        assert self._hurry is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            while (running := {t for t in self._running if not t.done()}) and not hurry.done():
                left = deadline - loop.time()
                if left <= 0:
                    break
                await asyncio.wait(
                    {*running, hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            hurry.cancel()
        late = {task for task in self._running if not task.done()}
        if late:
            log_event("daemon.cancelling", running=len(late), grace_seconds=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _settle(self) -> tuple[int, int]:
        with self.rt.engine.begin() as conn:
            return self.rt.ledger.settle_owner(conn, self.owner, self.clock())


def run(rt: Runtime, clock: Callable[[], datetime]) -> None:
    """`followup daemon`: runs until SIGTERM or SIGINT."""
    with single_instance(rt):
        processes.freeze_startup_heap()
        asyncio.run(Daemon(rt, clock).run())
