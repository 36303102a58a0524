"""The schema: Alembic migrations (`followup db upgrade`), and the check every command makes
that the database is at this version's schema."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect

from followup.errors import DatabaseNotReady
from followup.storage.engine import reader

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _script_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _alembic_config(conn: Connection) -> Any:
    config = _script_config()
    config.attributes["connection"] = conn
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration up to `revision` (followup db upgrade)."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with reader(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


@functools.cache
def head_revision() -> str:
    """The newest migration shipped with this version (read once per process)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_script_config()).get_current_head()
    assert head is not None
    return str(head)


def check_ready(engine: Engine) -> None:
    """Refuse to work on a database that is missing or behind this version's schema."""
    revision = current_revision(engine)
    if revision is None:
        raise DatabaseNotReady(
            "the database has no followup schema yet; run `followup db upgrade` "
            "(or `followup demo`, which does it)"
        )
    if revision != head_revision():
        raise DatabaseNotReady(
            f"the database schema is at revision {revision}, this followup needs "
            f"{head_revision()}; run `followup db upgrade`"
        )


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())
