"""Where a client's facts come from: marketing consent with its source and date, the rep as the
import file last named it, and which values were inferred rather than given.

- `marketing_consent`: yes, no or unknown (every existing client: unknown). The planner reads
  it (a marketing occasion needs consent, docs/consent.md), so the clients' plan-version
  trigger of 0007 is made again with it among its columns.
- `consent_source`, `consent_at`: who said so (an import file, a webhook, an unsubscribe, an
  operator's command) and when.
- `file_rep`: the rep's external id as the import file last gave it. An import changes the
  client's rep only when this value changes, so that a `reassign` survives the nightly import
  of the same file.
- `inferred`: the client's columns that were not in the file but inferred (from the country or
  from `[defaults]`), comma-separated ("timezone,locale"); empty when all were given.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The clients' columns the planner reads, at 0007 and at this revision.
_BEFORE = (
    "external_id",
    "timezone",
    "country",
    "locale",
    "status",
    "tier",
    "tags",
    "birthday_month",
    "birthday_day",
    "birthday_year",
)
_NOW = (*_BEFORE, "marketing_consent", "consent_at")


def _row(prefix: str, columns: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"{prefix}.{column}" for column in columns) + ")"


def _sqlite(columns: tuple[str, ...]) -> str:
    changed = f"{_row('OLD', columns)} IS NOT {_row('NEW', columns)}"
    # Built from this file's constants only: no outside value goes into the SQL.
    return f"""CREATE TRIGGER tr_clients_plan_version AFTER UPDATE OF {", ".join(columns)}
    ON clients WHEN {changed}
    BEGIN UPDATE clients SET plan_version = plan_version + 1 WHERE id = NEW.id; END"""  # noqa: S608


def _postgresql(columns: tuple[str, ...]) -> str:
    changed = f"{_row('OLD', columns)} IS DISTINCT FROM {_row('NEW', columns)}"
    return f"""CREATE TRIGGER tr_clients_plan_version BEFORE UPDATE ON clients FOR EACH ROW
    WHEN (NEW.plan_version = OLD.plan_version AND {changed})
    EXECUTE FUNCTION followup_client_plan_version()"""


def _trigger(columns: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tr_clients_plan_version ON clients")
        op.execute(_postgresql(columns))
    else:
        op.execute("DROP TRIGGER tr_clients_plan_version")
        op.execute(_sqlite(columns))


def upgrade() -> None:
    # SQLite's own ADD COLUMN: a batch copy of the table would drop a table others refer to.
    op.add_column(
        "clients",
        sa.Column(
            "marketing_consent", AutoString(length=8), nullable=False, server_default="unknown"
        ),
    )
    op.add_column("clients", sa.Column("consent_source", AutoString(length=128), nullable=True))
    op.add_column("clients", sa.Column("consent_at", UTCDateTime(), nullable=True))
    op.add_column("clients", sa.Column("file_rep", AutoString(length=128), nullable=True))
    op.add_column(
        "clients",
        sa.Column("inferred", AutoString(length=64), nullable=False, server_default=""),
    )
    _trigger(_NOW)


def downgrade() -> None:
    _trigger(_BEFORE)
    for column in ("inferred", "file_rep", "consent_at", "consent_source", "marketing_consent"):
        op.drop_column("clients", column)
