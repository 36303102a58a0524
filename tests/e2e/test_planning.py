"""Planning against a real database: repeated and concurrent planning leave one ledger."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from followup.storage import tables
from tests.support.executable import EXECUTABLE, NOW, followup

pytestmark = pytest.mark.e2e


def _ledger(url: str) -> list[tuple[object, ...]]:
    """The ledger without its surrogate ids: what planning decided, client by external id."""
    engine = create_engine(url)
    t, c = tables.touches, tables.clients
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    c.c.external_id,
                    t.c.campaign,
                    t.c.occurrence,
                    t.c.status,
                    t.c.due_at,
                    t.c.not_after,
                    t.c.template,
                    t.c.occasion,
                    t.c.reason,
                ).join(c, c.c.id == t.c.client_id)
            ).all()
    finally:
        engine.dispose()
    return sorted(tuple(row) for row in rows)


def _shop(folder: Path, url: str) -> dict[str, str]:
    """A demo shop in `url`, its config in `folder`; returns the environment to run it."""
    env = {"FOLLOWUP_DATABASE_URL": url}
    followup(folder, "init", env=env)
    followup(folder, "demo", "--today", "2026-11-23", env=env)
    return env


def test_planning_twice_leaves_the_ledger_of_planning_once(tmp_path: Path) -> None:
    once, twice = tmp_path / "once", tmp_path / "twice"
    once.mkdir()
    twice.mkdir()
    env_once = _shop(once, f"sqlite:///{once / 'f.db'}")
    env_twice = _shop(twice, f"sqlite:///{twice / 'f.db'}")
    followup(once, "plan", "--until", "2027-03-01", env=env_once)
    followup(twice, "plan", "--until", "2027-03-01", env=env_twice)
    second = followup(twice, "plan", "--until", "2027-03-01", env=env_twice)
    assert "planned 0 touch(es)" in second.stdout

    ledger = _ledger(env_once["FOLLOWUP_DATABASE_URL"])
    assert ledger == _ledger(env_twice["FOLLOWUP_DATABASE_URL"])
    # The demo year up to March has thank-yous, birthdays, New Year, Washington's Birthday...
    campaigns = {row[1] for row in ledger}
    assert {"thank_you", "birthday", "new_year", "washingtons_birthday"} <= campaigns
    assert any(row[3] == "skipped" and str(row[8]).startswith("capped: ") for row in ledger)


def test_planning_in_several_processes_leaves_the_ledger_of_one(tmp_path: Path) -> None:
    one, split = tmp_path / "one", tmp_path / "split"
    one.mkdir()
    split.mkdir()
    env_one = _shop(one, f"sqlite:///{one / 'f.db'}")
    env_split = _shop(split, f"sqlite:///{split / 'f.db'}")
    followup(one, "plan", "--until", "2027-03-01", env=env_one)
    result = followup(split, "plan", "--until", "2027-03-01", "--processes", "3", env=env_split)
    assert "for 240 client(s)" in result.stdout
    assert _ledger(env_one["FOLLOWUP_DATABASE_URL"]) == _ledger(env_split["FOLLOWUP_DATABASE_URL"])


@pytest.mark.postgres
def test_two_planners_at_once_on_postgresql_leave_the_ledger_of_one(
    tmp_path: Path, postgres_url: str, postgres_url_2: str
) -> None:
    other = postgres_url_2
    once, racing = tmp_path / "once", tmp_path / "racing"
    once.mkdir()
    racing.mkdir()
    env_once = _shop(once, postgres_url)
    env_racing = _shop(racing, other)
    followup(once, "plan", "--until", "2027-03-01", env=env_once)

    # Two processes plan the same horizon at the same time, then a third pass finds nothing.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
    environment.update({"FOLLOWUP_NOW": NOW, **env_racing})
    runs = [
        subprocess.Popen(
            [str(EXECUTABLE), "plan", "--until", "2027-03-01"],
            cwd=racing,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    again = followup(racing, "plan", "--until", "2027-03-01", env=env_racing)
    assert "planned 0 touch(es)" in again.stdout

    assert _ledger(postgres_url) == _ledger(other)
