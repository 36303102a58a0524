"""PostgreSQL for the tests that need a real server: FOLLOWUP_TEST_POSTGRES_URL names it;
without it those tests skip with NO_POSTGRES as the reason."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_URL = os.environ.get("FOLLOWUP_TEST_POSTGRES_URL", "")
NO_POSTGRES = "FOLLOWUP_TEST_POSTGRES_URL is not set (PostgreSQL tests need a real server)"


def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards; a fixture yields
    from it. Skips the test when no server is configured."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    name = f"followup_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
