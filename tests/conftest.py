"""Shared fixtures: databases (SQLite always, PostgreSQL when FOLLOWUP_TEST_POSTGRES_URL is set),
a runtime over the repository's templates, and a real recording SMTP server (aiosmtpd). The
helpers behind them are in tests/support."""

from __future__ import annotations

import compileall
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from followup import processes
from followup.config import Settings
from followup.runtime import Runtime
from followup.storage.engine import sqlite_path
from followup.storage.schema import upgrade
from tests.support.ports import ReservedPorts
from tests.support.postgres import dropper, postgres_database
from tests.support.settings import ROOT, make_settings
from tests.support.smtp import LoopbackController, RecordingHandler, SmtpServer

hypothesis_settings.register_profile("dev", max_examples=60, deadline=None)
hypothesis_settings.register_profile("ci", max_examples=300, deadline=None)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)


def pytest_configure(config: pytest.Config) -> None:
    """The package's bytecode, written once before the tests (and the xdist workers) start:
    where PYTHONDONTWRITEBYTECODE is set, every run of the `followup` executable in the
    end-to-end tests would otherwise compile the whole package again."""
    if not hasattr(config, "workerinput"):
        compileall.compile_dir(ROOT / "followup", quiet=2)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The tests' PostgreSQL databases are dropped in the background: wait for the last."""
    errors = dropper.wait()
    if errors:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("\n".join(errors), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _heap_not_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """dispatch_in_processes freezes its process's heap once (freeze_startup_heap): in the
    test process that would change the garbage collection of every later test, by the order
    they run in. The real executable, in the end-to-end tests, freezes as in production."""
    monkeypatch.setattr(processes, "_heap_frozen", True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    yield from postgres_database()


@pytest.fixture
def postgres_url_2() -> Iterator[str]:
    """A second fresh PostgreSQL database, for tests that compare two ledgers."""
    yield from postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'followup.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a SQLite database migrated to the head revision, made once per process:
    a copy is what the migrations would write (the upgrade that follows finds nothing to do)."""
    folder = tmp_path_factory.mktemp("migrated")
    path = folder / "followup.db"
    rt = Runtime.open(make_settings(folder, f"sqlite:///{path}"), create=True)
    upgrade(rt.engine)
    # The last connection closed checkpoints the WAL into the file and deletes the WAL.
    rt.engine.dispose()
    assert not path.with_name(path.name + "-wal").exists()
    return path.read_bytes()


@pytest.fixture
def open_runtime(migrated_sqlite: bytes) -> Iterator[Callable[[Settings], Runtime]]:
    """Opens runtimes over migrated databases and disposes of their engines afterwards. A
    SQLite database that does not exist yet starts as a copy of `migrated_sqlite`, made with
    the owner-only mode the engine gives a new database file."""
    opened: list[Runtime] = []

    def factory(settings: Settings) -> Runtime:
        path = sqlite_path(settings.database_url)
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(migrated_sqlite)
        rt = Runtime.open(settings, create=True)
        upgrade(rt.engine)
        opened.append(rt)
        return rt

    yield factory
    for rt in opened:
        rt.engine.dispose()


@pytest.fixture
def runtime(settings: Settings, open_runtime: Callable[[Settings], Runtime]) -> Runtime:
    """A migrated database and the repository's templates."""
    return open_runtime(settings)


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on loopback that records every message. It offers
    PIPELINING unless the test is parametrized indirectly with False."""
    handler = RecordingHandler(pipelining=getattr(request, "param", True))
    controller = LoopbackController(handler)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, handler)
    finally:
        controller.stop()


@pytest.fixture
def reserved_ports() -> Iterator[ReservedPorts]:
    """Ports held for servers told their number in advance (the daemon's HTTP port), until
    the end of the test: see tests/support/ports.py."""
    ports = ReservedPorts()
    try:
        yield ports
    finally:
        ports.close()
