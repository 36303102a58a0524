"""An index on the clients' lower-cased address: purchases that name their client by e-mail
(a Shopify or WooCommerce orders export) look up each batch's addresses in it, where without
it every batch read the whole clients table (a million clients, three million order lines: six
thousand full reads). `followup history ADDRESS`, `unsuppress` and the erasure's look-ups by
address use it too.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_clients_email_lower", "clients", [sa.text("lower(email)")])


def downgrade() -> None:
    op.drop_index("ix_clients_email_lower", table_name="clients")
