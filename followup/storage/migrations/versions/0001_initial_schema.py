"""initial schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "planner_watermarks",
        sa.Column("campaign", sa.String(length=64), nullable=False),
        sa.Column("planned_until", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("campaign"),
    )
    op.create_table(
        "reps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", AutoString(length=128), nullable=False),
        sa.Column("name", AutoString(length=256), nullable=False),
        sa.Column("email", AutoString(length=320), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    op.create_table(
        "suppressions",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("reason", AutoString(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("email"),
    )
    op.create_table(
        "clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", AutoString(length=128), nullable=False),
        sa.Column("email", AutoString(length=320), nullable=False),
        sa.Column("first_name", AutoString(length=256), nullable=False),
        sa.Column("last_name", AutoString(length=256), nullable=False),
        sa.Column("locale", AutoString(length=35), nullable=False),
        sa.Column("timezone", AutoString(length=64), nullable=False),
        sa.Column("country", AutoString(length=2), nullable=False),
        sa.Column("birthday_month", sa.Integer(), nullable=True),
        sa.Column("birthday_day", sa.Integer(), nullable=True),
        sa.Column("birthday_year", sa.Integer(), nullable=True),
        sa.Column("rep_id", sa.Integer(), nullable=True),
        sa.Column("tier", AutoString(length=64), nullable=False),
        sa.Column("tags", AutoString(length=1024), nullable=False),
        sa.Column("status", AutoString(length=32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rep_id"],
            ["reps.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clients_rep_id"), ["rep_id"], unique=False)

    op.create_table(
        "purchases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", AutoString(length=128), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("purchased_at", UTCDateTime(), nullable=False),
        sa.Column("product", AutoString(length=512), nullable=False),
        sa.Column("amount_minor", sa.Integer(), nullable=False),
        sa.Column("currency", AutoString(length=3), nullable=False),
        sa.Column("status", AutoString(length=16), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_purchases_client_id"), ["client_id"], unique=False)
        batch_op.create_index("ix_purchases_purchased_at", ["purchased_at"], unique=False)

    op.create_table(
        "touches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("campaign", AutoString(length=64), nullable=False),
        sa.Column("occurrence", sa.Date(), nullable=False),
        sa.Column("status", AutoString(length=16), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("template", AutoString(length=128), nullable=False),
        sa.Column("purchase_id", sa.Integer(), nullable=True),
        sa.Column("locale", AutoString(length=35), nullable=True),
        sa.Column("variant", AutoString(length=64), nullable=True),
        sa.Column("rep_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", AutoString(length=128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("message_id", AutoString(length=255), nullable=True),
        sa.Column("smtp_reply", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.id"],
        ),
        sa.ForeignKeyConstraint(
            ["purchase_id"],
            ["purchases.id"],
        ),
        sa.ForeignKeyConstraint(
            ["rep_id"],
            ["reps.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_id", "campaign", "occurrence", name="uq_touches_key"),
    )
    with op.batch_alter_table("touches", schema=None) as batch_op:
        batch_op.create_index("ix_touches_due", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "touch_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("touch_id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("from_status", AutoString(length=16), nullable=True),
        sa.Column("to_status", AutoString(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["touch_id"],
            ["touches.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("touch_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_touch_events_touch_id"), ["touch_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("touch_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_touch_events_touch_id"))

    op.drop_table("touch_events")
    with op.batch_alter_table("touches", schema=None) as batch_op:
        batch_op.drop_index("ix_touches_due")

    op.drop_table("touches")
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.drop_index("ix_purchases_purchased_at")
        batch_op.drop_index(batch_op.f("ix_purchases_client_id"))

    op.drop_table("purchases")
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clients_rep_id"))

    op.drop_table("clients")
    op.drop_table("suppressions")
    op.drop_table("reps")
    op.drop_table("planner_watermarks")
