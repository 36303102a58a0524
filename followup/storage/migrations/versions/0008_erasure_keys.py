"""Erasure that leaves nothing: the installation's own key, the suppression list's erased
addresses re-keyed, and the clients' own history.

- `installation`: one row with 32 random bytes, the key of the suppression list's hashes. Its
  own key rather than FOLLOWUP_SECRET_KEY, which an operator may rotate (every erased
  client's suppression would be lost with it).
- Before this revision an erased client's address was kept as "sha256:" + SHA-256 of the
  lower-cased address, which anyone with a list of candidate addresses can check. Those rows
  become "hmac-sha256:" + HMAC-SHA256(key, that SHA-256 in hexadecimal): the keyed hash is
  computed over the SHA-256, not the address, precisely so that this migration can re-key
  the rows without knowing the addresses (storage/privacy.py computes the same).
- `client_events`: an operator's action on a client (unsuppressed, erased) with the reason.

The downgrade keeps the keyed hashes (a SHA-256 cannot be recovered from them): erased
clients' addresses are then no longer recognised by the older version.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("address_key", AutoString(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    key = secrets.token_bytes(32)
    op.bulk_insert(
        installation, [{"id": 1, "address_key": key.hex(), "created_at": datetime.now(UTC)}]
    )
    op.create_table(
        "client_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("kind", AutoString(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["client_id"], ["clients.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("client_events", schema=None) as batch_op:
        batch_op.create_index("ix_client_events_client_id", ["client_id"], unique=False)

    conn = op.get_bind()
    suppressions = sa.table("suppressions", sa.column("email", sa.String()))
    old = [
        str(email)
        for (email,) in conn.execute(
            sa.select(suppressions.c.email).where(suppressions.c.email.like("sha256:%"))
        )
    ]
    for email in old:
        digest = email.removeprefix("sha256:")
        keyed = "hmac-sha256:" + hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
        conn.execute(
            sa.update(suppressions).where(suppressions.c.email == email).values(email=keyed)
        )


def downgrade() -> None:
    with op.batch_alter_table("client_events", schema=None) as batch_op:
        batch_op.drop_index("ix_client_events_client_id")
    op.drop_table("client_events")
    op.drop_table("installation")
