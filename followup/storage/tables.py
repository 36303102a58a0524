"""The tables. Every datetime is time-zone aware and stored as UTC (sqlmodel's UTCDateTime);
local time exists only at the edges (planner, templates).

The ledger (`touches`) is unique on (client, campaign, occurrence): the database, not the code,
keeps an occasion from being planned twice. Every change of a touch's status is kept in
`touch_events`, so "what happened to client X" always has a full answer.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Column, Index, Integer, String, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from followup.domain.statuses import ClientStatus, PurchaseStatus, TouchStatus

#: The condition of ix_touches_sent, written as the queries that use it must write it (a
#: partial index serves a query whose WHERE holds the very same term, not a bound value).
SENT_PREDICATE = f"status = '{TouchStatus.SENT.value}'"


class Rep(SQLModel, table=True):
    __tablename__ = "reps"

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=128, unique=True)
    name: str = Field(max_length=256)
    email: str = Field(max_length=320)
    signature: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    active: bool = True
    updated_at: datetime


class Client(SQLModel, table=True):
    __tablename__ = "clients"
    #: Purchases naming their client by e-mail look clients up by lower-cased address
    #: (migration 0010).
    __table_args__ = (Index("ix_clients_email_lower", text("lower(email)")),)

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=128, unique=True)
    email: str = Field(max_length=320)
    first_name: str = Field(max_length=256)
    last_name: str = Field(max_length=256)
    locale: str = Field(max_length=35)
    timezone: str = Field(max_length=64)
    country: str = Field(max_length=2)
    #: Month and day always; year when known. 29 February is kept as such.
    birthday_month: int | None = None
    birthday_day: int | None = None
    birthday_year: int | None = None
    rep_id: int | None = Field(default=None, foreign_key="reps.id", index=True)
    tier: str = Field(default="", max_length=64)
    tags: str = Field(default="", max_length=1024)
    status: str = Field(default=ClientStatus.ACTIVE.value, max_length=32)
    #: yes, no or unknown (domain.statuses.Consent); with who said so and when (migration 0009).
    marketing_consent: str = Field(
        default="unknown",
        sa_column=Column(String(8), nullable=False, server_default="unknown"),
    )
    consent_source: str | None = Field(default=None, max_length=128)
    consent_at: datetime | None = None
    #: The rep's external id as the import file last gave it: an import moves the client to
    #: another rep only when this changes, so that a `reassign` survives the nightly import.
    file_rep: str | None = Field(default=None, max_length=128)
    #: The columns inferred rather than given ("timezone,locale"), comma-separated.
    inferred: str = Field(
        default="", sa_column=Column(String(64), nullable=False, server_default="")
    )
    created_at: datetime
    updated_at: datetime
    #: Raised by the database's own trigger (migration 0007) whenever a column of the client
    #: that the planner reads changes; with PurchaseVersion.version, the client's plan version
    #: (see PlannedClient).
    plan_version: int = Field(
        default=1,
        sa_column=Column(Integer, nullable=False, server_default="1"),
    )


class Purchase(SQLModel, table=True):
    __tablename__ = "purchases"
    __table_args__ = (Index("ix_purchases_purchased_at", "purchased_at"),)

    id: int | None = Field(default=None, primary_key=True)
    external_id: str = Field(max_length=128, unique=True)
    client_id: int = Field(foreign_key="clients.id", index=True)
    purchased_at: datetime
    product: str = Field(max_length=512)
    #: Amount in the currency's minor unit (cents), so that no float ever touches money.
    amount_minor: int = Field(sa_column=Column(BigInteger, nullable=False))
    currency: str = Field(max_length=3)
    status: str = Field(default=PurchaseStatus.PAID.value, max_length=16)
    updated_at: datetime


class PurchaseVersion(SQLModel, table=True):
    """Per client, a counter that the database's triggers raise (migration 0007) whenever one
    of the client's purchases is added, changed or deleted. Its own table: an import of
    purchases locks and rewrites none of the clients' rows."""

    __tablename__ = "purchase_versions"

    client_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    version: int


class PlannedClient(SQLModel, table=True):
    """The client's plan version (clients.plan_version + purchase_versions.version) that a
    plan last read: the daemon re-plans, between its plans of every client, only the clients
    whose version has moved since (app.changed). Both counters only rise, so their sum does."""

    __tablename__ = "planned_clients"

    client_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    plan_version: int


class Touch(SQLModel, table=True):
    """One message for one client, campaign and occurrence: the ledger row."""

    __tablename__ = "touches"
    __table_args__ = (
        UniqueConstraint("client_id", "campaign", "occurrence", name="uq_touches_key"),
        # One after-purchase touch per purchase and campaign, even if the client's zone (and so
        # the purchase's local date) changes later. NULLs are distinct: other campaigns pass.
        UniqueConstraint("campaign", "purchase_id", name="uq_touches_purchase"),
        Index("ix_touches_due", "status", "next_attempt_at"),
        # The hourly and daily sending limits count the touches sent since a time: a partial
        # index holds only those (one entry each, added as it is sent), so counting reads the
        # window's entries instead of every touch ever sent, and only the index: it holds the
        # status too (the ledger's sent_since).
        Index(
            "ix_touches_sent",
            "status",
            "updated_at",
            sqlite_where=text(SENT_PREDICATE),
            postgresql_where=text(SENT_PREDICATE),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="clients.id")
    campaign: str = Field(max_length=64)
    occurrence: date
    status: str = Field(default=TouchStatus.PLANNED.value, max_length=16)
    due_at: datetime
    #: After this instant the touch is too late to go out.
    not_after: datetime
    next_attempt_at: datetime
    template: str = Field(max_length=128)
    #: The occasion's name as planned, in the client's language ("Jour de l'an").
    occasion: str | None = Field(default=None, max_length=256)
    purchase_id: int | None = Field(default=None, foreign_key="purchases.id")
    locale: str | None = Field(default=None, max_length=35)
    variant: str | None = Field(default=None, max_length=64)
    rep_id: int | None = Field(default=None, foreign_key="reps.id")
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_expires_at: datetime | None = None
    message_id: str | None = Field(default=None, max_length=255)
    smtp_reply: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime
    updated_at: datetime


class TouchEvent(SQLModel, table=True):
    """A touch's history: one row per change of status."""

    __tablename__ = "touch_events"

    id: int | None = Field(default=None, primary_key=True)
    touch_id: int = Field(foreign_key="touches.id", index=True)
    at: datetime
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Suppression(SQLModel, table=True):
    """An address that must never be mailed again for marketing."""

    __tablename__ = "suppressions"

    #: Lower-cased address.
    email: str = Field(sa_column=Column(String(320), primary_key=True))
    reason: str = Field(max_length=32)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime


class Installation(SQLModel, table=True):
    """This installation's own secrets, one row (id 1), made by migration 0008: the key of the
    suppression list's keyed hashes. Its own key, not FOLLOWUP_SECRET_KEY, which an operator
    may rotate: a rotated key would lose every erased client's suppression."""

    __tablename__ = "installation"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    #: 32 random bytes, hexadecimal.
    address_key: str = Field(max_length=64)
    created_at: datetime


class ClientEvent(SQLModel, table=True):
    """A client's history beyond their touches: an operator's action on the client (put back
    to mailable by `followup unsuppress`, erased), with the reason given."""

    __tablename__ = "client_events"

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(foreign_key="clients.id", index=True)
    at: datetime
    kind: str = Field(max_length=32)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class SurveyAnswer(SQLModel, table=True):
    """A client's satisfaction score (1-5) from the link in a survey message."""

    __tablename__ = "survey_answers"

    touch_id: int = Field(foreign_key="touches.id", primary_key=True)
    client_id: int = Field(foreign_key="clients.id", index=True)
    score: int
    answered_at: datetime


class PlannerWatermark(SQLModel, table=True):
    """Up to which instant each campaign has been planned; after downtime, the occurrences
    between the watermark and the lateness limit are recorded as skipped "too late"."""

    __tablename__ = "planner_watermarks"

    campaign: str = Field(sa_column=Column(String(64), primary_key=True))
    planned_until: datetime


class Run(SQLModel, table=True):
    """The last run of each periodic job (plan, dispatch, housekeeping), by any instance:
    what `followup status` and /healthz report as "last plan" and "last dispatch"."""

    __tablename__ = "runs"

    kind: str = Field(sa_column=Column(String(32), primary_key=True))
    owner: str = Field(max_length=128)
    started_at: datetime
    finished_at: datetime
    #: "ok" or "error".
    outcome: str = Field(max_length=16)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


# The tables as SQLAlchemy Core sees them: what the statements of this package are written over.
reps = SQLModel.metadata.tables["reps"]
clients = SQLModel.metadata.tables["clients"]
purchases = SQLModel.metadata.tables["purchases"]
touches = SQLModel.metadata.tables["touches"]
touch_events = SQLModel.metadata.tables["touch_events"]
suppressions = SQLModel.metadata.tables["suppressions"]
watermarks = SQLModel.metadata.tables["planner_watermarks"]
survey_answers = SQLModel.metadata.tables["survey_answers"]
runs = SQLModel.metadata.tables["runs"]
planned_clients = SQLModel.metadata.tables["planned_clients"]
purchase_versions = SQLModel.metadata.tables["purchase_versions"]
installation = SQLModel.metadata.tables["installation"]
client_events = SQLModel.metadata.tables["client_events"]
