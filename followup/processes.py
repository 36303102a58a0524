"""Worker processes: planning and dispatch use several cores (rendering and planning are
Python CPU work), started by fork where that is safe, else spawned."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from types import FrameType, TracebackType
from typing import Any

from sqlalchemy import Engine

from followup import logs
from followup.logs import log_event

_heap_frozen = False

#: Allocations between collections of the youngest generation (Python's default: 700). Each
#: collection walks the young objects still alive (a batch's rows, messages in flight), so
#: fewer collections cost fewer instructions a dispatched message (bench/RESULTS.md); cyclic
#: garbage waits a little longer to be freed.
YOUNG_COLLECTION_THRESHOLD = 20_000


def freeze_startup_heap() -> None:
    """Once per process, before a long run: what is alive now (modules, compiled templates,
    settings: about 100,000 objects) leaves the cyclic garbage collector's generations, whose
    full collections walked it all again and again (gc.freeze; bench/RESULTS.md has the
    cost). Garbage is collected first, so none is kept; objects made later are
    collected as before, the youngest every YOUNG_COLLECTION_THRESHOLD allocations. In a
    parent, before fork, it also keeps the children from copying the pages those objects
    are on."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


#: Imports under few_collections: (how many run now, the threshold to restore, whether the
#: first of them froze the heap). Several threads may import at once (the library's users).
_collections_lock = threading.Lock()
_collections: list[Any] = [0, None, False]


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """During a bulk import: Python's cycle collector ran every 700 new objects and, as each
    batch's rows died old, over the whole heap: a quarter of an import (bench/RESULTS.md).
    The objects from before it leave the generations (gc.freeze, unless the process froze its
    heap already: freeze_startup_heap's stays) and the youngest generation is collected every
    50,000 new objects: cycles are still collected, memory stays bounded. Nested or
    concurrent imports share one such period: the first in sets it, the last out restores."""
    with _collections_lock:
        if _collections[0] == 0:
            threshold = gc.get_threshold()
            froze = gc.get_freeze_count() == 0
            if froze:
                gc.freeze()
            _collections[1:] = [threshold, froze]
            gc.set_threshold(max(threshold[0], 50_000), *threshold[1:])
        _collections[0] += 1
    try:
        yield
    finally:
        with _collections_lock:
            _collections[0] -= 1
            if _collections[0] == 0:
                gc.set_threshold(*_collections[1])
                if _collections[2]:
                    gc.unfreeze()


@contextlib.contextmanager
def process_pool(
    engine: Engine,
    processes: int,
    *,
    ignore_interrupt: bool = False,
    interrupt: Interrupt | None = None,
) -> Iterator[ProcessPoolExecutor]:
    """`processes` worker processes (planning, dispatch), started by `start_method`. With
    `ignore_interrupt`, they ignore SIGINT: a Ctrl-C at a terminal goes to the whole process
    group, and the daemon, which handles it as a request to stop, stops its workers itself.
    With an `interrupt`, the workers' own Interrupt (`Interrupt.of_worker`) follows it: a
    stop requested here is requested there, and SIGTERM does not end a worker."""
    method = start_method(engine)
    if method == "fork":
        # A forked process must not share the parent's pooled database connections.
        engine.dispose()
    log_event("processes.start", processes=processes, method=method)
    context = multiprocessing.get_context(method)
    shared = None if interrupt is None else context.Value("i", interrupt.count)
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=context,
        initializer=_worker_start,
        initargs=(logs.current(), ignore_interrupt, shared),
    ) as pool:
        if interrupt is None or shared is None:
            yield pool
            return
        with interrupt.forward_to(pool, shared):
            yield pool


#: In a worker process of a pool with an Interrupt: how many stops its parent requested.
_parent_requests: Any = None


def _worker_start(
    configured: tuple[int, bool] | None, ignore_interrupt: bool, parent_requests: Any
) -> None:
    """A worker logs as the command that started it (spawned ones start unconfigured). A
    forked one drops the handlers its parent had (an Interrupt would forward signals to its
    siblings): SIGTERM ends it, unless its parent stops it through an Interrupt; then SIGTERM
    only wakes it (a worker killed while it waits for work could hold the pool's queue lock,
    and its siblings would wait for it forever)."""
    global _parent_requests
    _parent_requests = parent_requests
    signal.signal(signal.SIGTERM, signal.SIG_DFL if parent_requests is None else signal.SIG_IGN)
    if ignore_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if configured is not None:
        logs.configure(*configured)


#: How often a plan in worker processes checks whether it should stop, and how long a
#: terminated worker may take to exit before it is killed.
STOP_POLL_SECONDS = 0.5

TERMINATE_WAIT_SECONDS = 5.0


def terminate(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate the pool's worker processes (SIGTERM): a
    worker in the middle of a range stops at once, its last chunk's transaction rolled back."""
    # The executor keeps no public list of its processes, and forgets them at shutdown.
    processes = list((pool._processes or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(TERMINATE_WAIT_SECONDS)
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def start_method(engine: Engine) -> str:
    """How worker processes start: forked on Linux when this process runs no other thread and
    holds no database connection (they start at once, with followup already imported, instead
    of importing it again for most of a second each), else spawned afresh (other systems, a
    thread that a fork would leave half-way such as a progress bar's, or a connection in use
    that a child must not inherit)."""
    in_use: int = engine.pool.checkedout()  # type: ignore[attr-defined]
    if sys.platform == "linux" and threading.active_count() == 1 and in_use == 0:
        return "fork"
    return "spawn"


class Interrupt:
    """SIGTERM and SIGINT taken as the daemon takes them, for `followup send` and `run`: the
    first asks the work to stop claiming (`requested`), a second to skip the grace period
    (`hurried`). Entered in the main thread, it replaces the handlers of `signals` and puts
    the previous ones back on exit. The worker processes of a pool given to `forward_to` get
    SIGTERM from it (a worker stops as its parent does); event loops waiting on `wait` wake.

    The handler only counts and wakes (it may run between any two bytecodes of the main
    thread): whoever sees `requested` logs it."""

    def __init__(
        self,
        signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
        *,
        parent: Any = None,
    ) -> None:
        self.signals = signals
        self._count = 0
        self.signum: int | None = None
        #: In a worker process: its parent's count of requests (a shared value).
        self._parent = parent
        self._previous: dict[signal.Signals, Any] = {}
        self._pools: list[tuple[ProcessPoolExecutor, Any]] = []
        self._wakers: list[Callable[[], None]] = []

    @classmethod
    def of_worker(cls) -> Interrupt:
        """In a worker process of a pool started with an Interrupt: the parent's requests,
        SIGTERM waking its loops. Elsewhere: SIGTERM alone."""
        if _parent_requests is None:
            return cls((signal.SIGTERM,))
        return cls((signal.SIGTERM,), parent=_parent_requests)

    @property
    def count(self) -> int:
        return self._count if self._parent is None else int(self._parent.value)

    @property
    def requested(self) -> bool:
        return self.count > 0

    @property
    def hurried(self) -> bool:
        return self.count > 1

    @property
    def name(self) -> str:
        return "request" if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def request(self, signum: int | None = None) -> None:
        """What a signal does (tests and callers may ask the same without one). In a worker
        following its parent, a signal only wakes: the parent counts."""
        if self._parent is None:
            self._count += 1
            self.signum = signum if signum is not None else self.signum
        elif self.signum is None:
            self.signum = signal.SIGTERM
        for pool, shared in self._pools:
            shared.value = self._count
            # Then the signal wakes the workers' loops. The executor keeps no public list of
            # its processes.
            for process in list((pool._processes or {}).values()):
                if process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGTERM)
        for wake in list(self._wakers):
            wake()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signum)

    @contextlib.contextmanager
    def forward_to(self, pool: ProcessPoolExecutor, shared: Any) -> Iterator[None]:
        """Within the block, requests go to the pool's workers too: counted in `shared`, which
        their Interrupt (`of_worker`) reads."""
        entry = (pool, shared)
        self._pools.append(entry)
        try:
            yield
        finally:
            self._pools.remove(entry)

    @contextlib.contextmanager
    def waking(self, event: asyncio.Event) -> Iterator[None]:
        """Sets `event` (on its running loop) at each signal while the block runs."""
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(event.set)

        self._wakers.append(wake)
        try:
            yield
        finally:
            self._wakers.remove(wake)

    async def wait(self, seconds: float) -> None:
        """Sleeps `seconds`, or less when a signal comes (or came)."""
        event = asyncio.Event()
        with self.waking(event):
            if not self.requested:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), seconds)
