"""What the daemon must re-plan. Each client's plan version is the sum of two counters that the
database itself raises: clients.plan_version, when a column of the client that the planner
reads changes, and purchase_versions.version, when one of the client's purchases is added,
changed or deleted. planned_clients holds the sum each client was last planned at. The daemon
re-plans every few minutes only the clients whose sum has moved, and every client only from
time to time.

Triggers, not the code, raise the counters: every INSERT, UPDATE or DELETE (an import, an
erasure, a bounce, the business's own SQL) is seen. An update that leaves those columns as they
were (a nightly import of the same file) changes nothing. The purchases' counter has its own
table so that an import of purchases locks none of the clients' rows (a bounce or an
unsubscribe would wait for the import to commit) and rewrites no client row.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# The columns the planner reads (app._client_chunks, app.client_stats), at this revision.
_CLIENT = (
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
_PURCHASE = ("client_id", "purchased_at", "status", "product", "amount_minor", "currency")


def _row(prefix: str, columns: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"{prefix}.{column}" for column in columns) + ")"


def _changed(columns: tuple[str, ...], distinct: str, old: str = "OLD", new: str = "NEW") -> str:
    """Whether any of `columns` changed, NULLs compared as values: SQLite's IS NOT takes row
    values (since 3.15), PostgreSQL's IS DISTINCT FROM does."""
    return f"{_row(old, columns)} {distinct} {_row(new, columns)}"


# Built from this file's constants only: no outside value goes into the SQL below.
_CLIENT_CHANGED = {
    "sqlite": _changed(_CLIENT, "IS NOT"),
    "pg": _changed(_CLIENT, "IS DISTINCT FROM"),
}
_PURCHASE_CHANGED = {
    "sqlite": _changed(_PURCHASE, "IS NOT"),
    # Rows of a statement's transition tables (see below).
    "pg": _changed(_PURCHASE, "IS DISTINCT FROM", "o", "n"),
}
_RAISE = "ON CONFLICT (client_id) DO UPDATE SET version = purchase_versions.version + 1"


def _sqlite_raise(client: str, condition: str = "") -> str:
    """SQLite: raise the purchases' counter of the client `client` (OLD. or NEW.client_id)."""
    where = f"WHERE {condition}" if condition else "WHERE 1"
    return (
        f"INSERT INTO purchase_versions (client_id, version) SELECT {client}, 1 {where} {_RAISE};"
    )


_SQLITE = [
    # OF the columns: an UPDATE of other columns alone (a name, the e-mail) does not fire it.
    f"""CREATE TRIGGER tr_clients_plan_version AFTER UPDATE OF {", ".join(_CLIENT)} ON clients
    WHEN {_CLIENT_CHANGED["sqlite"]}
    BEGIN UPDATE clients SET plan_version = plan_version + 1 WHERE id = NEW.id; END""",  # noqa: S608
    f"""CREATE TRIGGER tr_purchases_insert_plan_version AFTER INSERT ON purchases
    BEGIN {_sqlite_raise("NEW.client_id")} END""",
    f"""CREATE TRIGGER tr_purchases_update_plan_version AFTER UPDATE ON purchases
    WHEN {_PURCHASE_CHANGED["sqlite"]}
    BEGIN {_sqlite_raise("NEW.client_id")}
    {_sqlite_raise("OLD.client_id", "OLD.client_id IS NOT NEW.client_id")} END""",
    f"""CREATE TRIGGER tr_purchases_delete_plan_version AFTER DELETE ON purchases
    BEGIN {_sqlite_raise("OLD.client_id")} END""",
]

_POSTGRESQL = [
    """CREATE FUNCTION followup_client_plan_version() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.plan_version := OLD.plan_version + 1;
        RETURN NEW;
    END $$""",
    f"""CREATE TRIGGER tr_clients_plan_version BEFORE UPDATE ON clients FOR EACH ROW
    WHEN (NEW.plan_version = OLD.plan_version AND {_CLIENT_CHANGED["pg"]})
    EXECUTE FUNCTION followup_client_plan_version()""",
    # Purchases: one statement for each statement (a batch of an import), from its transition
    # table, not one for each row; each client once (ON CONFLICT may touch a row only once), in
    # id order (two imports at once take the counters' locks in the same order).
    f"""CREATE FUNCTION followup_purchases_plan_version() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO purchase_versions (client_id, version)
        SELECT DISTINCT client_id, 1 FROM purchase_rows ORDER BY client_id {_RAISE};
        RETURN NULL;
    END $$""",  # noqa: S608
    """CREATE TRIGGER tr_purchases_insert_plan_version AFTER INSERT ON purchases
    REFERENCING NEW TABLE AS purchase_rows FOR EACH STATEMENT
    EXECUTE FUNCTION followup_purchases_plan_version()""",
    """CREATE TRIGGER tr_purchases_delete_plan_version AFTER DELETE ON purchases
    REFERENCING OLD TABLE AS purchase_rows FOR EACH STATEMENT
    EXECUTE FUNCTION followup_purchases_plan_version()""",
    f"""CREATE FUNCTION followup_purchases_changed_plan_version() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO purchase_versions (client_id, version)
        SELECT DISTINCT unnest(ARRAY[o.client_id, n.client_id]), 1
        FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
        WHERE {_PURCHASE_CHANGED["pg"]}
        ORDER BY 1 {_RAISE};
        RETURN NULL;
    END $$""",  # noqa: S608
    """CREATE TRIGGER tr_purchases_update_plan_version AFTER UPDATE ON purchases
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION followup_purchases_changed_plan_version()""",
]


def upgrade() -> None:
    # Every client existing now is new to the daemon: version 1, planned at none.
    op.add_column(
        "clients",
        sa.Column("plan_version", sa.Integer(), nullable=False, server_default="1"),
    )
    op.create_table(
        "purchase_versions",
        sa.Column("client_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client_id"),
    )
    op.create_table(
        "planned_clients",
        sa.Column("client_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client_id"),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in _POSTGRESQL if postgres else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table in (
            ("tr_purchases_update_plan_version", "purchases"),
            ("tr_purchases_delete_plan_version", "purchases"),
            ("tr_purchases_insert_plan_version", "purchases"),
            ("tr_clients_plan_version", "clients"),
        ):
            op.execute(f"DROP TRIGGER {trigger} ON {table}")
        for function in (
            "followup_purchases_changed_plan_version",
            "followup_purchases_plan_version",
            "followup_client_plan_version",
        ):
            op.execute(f"DROP FUNCTION {function}()")
    else:
        for name in (
            "tr_clients_plan_version",
            "tr_purchases_insert_plan_version",
            "tr_purchases_update_plan_version",
            "tr_purchases_delete_plan_version",
        ):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("planned_clients")
    op.drop_table("purchase_versions")
    # SQLite's own DROP COLUMN (3.35 and later): a batch copy of the table would drop a table
    # that purchases and touches refer to.
    op.drop_column("clients", "plan_version")
