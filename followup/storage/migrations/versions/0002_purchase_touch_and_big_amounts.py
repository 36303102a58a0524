"""One after-purchase touch per purchase; amounts in minor units as 64-bit integers.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.alter_column(
            "amount_minor",
            existing_type=sa.Integer(),
            type_=sa.BigInteger(),
            existing_nullable=False,
        )
    with op.batch_alter_table("touches", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_touches_purchase", ["campaign", "purchase_id"])


def downgrade() -> None:
    with op.batch_alter_table("touches", schema=None) as batch_op:
        batch_op.drop_constraint("uq_touches_purchase", type_="unique")
    with op.batch_alter_table("purchases", schema=None) as batch_op:
        batch_op.alter_column(
            "amount_minor",
            existing_type=sa.BigInteger(),
            type_=sa.Integer(),
            existing_nullable=False,
        )
