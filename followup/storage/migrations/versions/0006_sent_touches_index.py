"""A partial index of the touches sent, by time: the hourly and daily sending limits count the
touches sent within their window without reading every touch ever sent.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# As followup.models.SENT_PREDICATE at this revision (a migration does not follow later code).
_SENT = "status = 'sent'"


def upgrade() -> None:
    op.create_index(
        "ix_touches_sent",
        "touches",
        ["status", "updated_at"],
        unique=False,
        sqlite_where=sa.text(_SENT),
        postgresql_where=sa.text(_SENT),
    )


def downgrade() -> None:
    op.drop_index("ix_touches_sent", table_name="touches")
