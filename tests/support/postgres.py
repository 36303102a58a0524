"""PostgreSQL for the tests that need a real server: FOLLOWUP_TEST_POSTGRES_URL names it;
without it those tests skip with NO_POSTGRES as the reason.

Each test gets a database of its own, made empty from template1 and dropped after it. A
DROP DATABASE makes the server write a checkpoint (seconds on a busy machine): the test does
not wait for it. The drops go to a thread of their own (`dropper`), and the end of the
session waits for the last one (tests/conftest.py: pytest_sessionfinish)."""

from __future__ import annotations

import os
import queue
import secrets
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("FOLLOWUP_TEST_POSTGRES_URL", "")
NO_POSTGRES = "FOLLOWUP_TEST_POSTGRES_URL is not set (PostgreSQL tests need a real server)"

_admin: Engine | None = None


def admin_engine() -> Engine:
    """One engine on the server's maintenance database for the whole process (its pool keeps
    the connection that creates and drops the tests' databases)."""
    global _admin
    if _admin is None:
        _admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    return _admin


class Dropper:
    """Drops databases on a thread of its own, one after the other; wait() returns once every
    database handed over is dropped, with the errors met on the way."""

    def __init__(self) -> None:
        self._names: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._errors: list[str] = []

    def drop(self, name: str) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drop-databases", daemon=True)
            self._thread.start()
        self._names.put(name)

    def _run(self) -> None:
        while (name := self._names.get()) is not None:
            try:
                with admin_engine().connect() as conn:
                    # FORCE: a connection the test left open (a killed process's) is ended.
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except Exception as exc:  # reported by wait(), at the end of the session
                self._errors.append(f"DROP DATABASE {name}: {exc}")

    def wait(self) -> list[str]:
        if self._thread is not None:
            self._names.put(None)
            self._thread.join()
            self._thread = None
        if _admin is not None:
            _admin.dispose()
        errors, self._errors = self._errors, []
        return errors


dropper = Dropper()


def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards; a fixture yields
    from it. Skips the test when no server is configured."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    name = f"followup_test_{secrets.token_hex(6)}"
    with admin_engine().connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dropper.drop(name)
