"""What the ledger says, for people and scripts: `followup status` (the queue, the last runs,
what failed or is uncertain) and `followup history CLIENT` (every touch of one client with
its history). Reads only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from followup.domain import care
from followup.domain.clients import ClientStats
from followup.domain.statuses import TouchStatus
from followup.runtime import Runtime
from followup.storage import overview
from followup.storage.engine import reader
from followup.storage.queries import client_stats
from followup.storage.schema import check_ready

FAILED, UNCERTAIN, HELD = TouchStatus.FAILED, TouchStatus.UNCERTAIN, TouchStatus.HELD
#: How many failed, uncertain and held touches `status` lists (the counts are always
#: complete).
LISTED = 20


@dataclass
class TouchLine:
    touch: int
    client: str
    campaign: str
    occurrence: date
    status: str
    updated_at: datetime
    reason: str | None


@dataclass
class Status:
    now: datetime
    counts: dict[str, int]
    waiting: int
    due_now: int
    runs: dict[str, dict[str, Any]]
    failed: list[TouchLine] = field(default_factory=list)
    uncertain: list[TouchLine] = field(default_factory=list)
    #: The SMTP server's circuit breaker when the last dispatch run left it open: when it
    #: reopens, and who saw it (None: closed, or not known).
    smtp_breaker: dict[str, Any] | None = None
    #: Held on a template error (the reason names the file and line): they go out once it is
    #: fixed.
    held: list[TouchLine] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(asdict(self))
        return data


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def status(rt: Runtime, now: datetime) -> Status:
    check_ready(rt.engine)
    with reader(rt.engine) as conn:
        counts = overview.touch_counts(conn)
        waiting, due = overview.queue_depth(conn, now)
        runs = overview.last_runs(conn)
        return Status(
            now=now,
            counts=counts,
            waiting=waiting,
            due_now=due,
            runs=runs,
            failed=[TouchLine(*row) for row in overview.latest_touches(conn, FAILED, LISTED)],
            uncertain=[TouchLine(*row) for row in overview.latest_touches(conn, UNCERTAIN, LISTED)],
            smtp_breaker=breaker_of(runs.get("dispatch"), now),
            held=[TouchLine(*row) for row in overview.latest_touches(conn, HELD, LISTED)],
        )


def breaker_of(run: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
    """The breaker as the last dispatch run recorded it (outcome "breaker_open", its detail
    naming `breaker_until=`), while that time has not come."""
    if run is None or run["outcome"] != "breaker_open":
        return None
    for word in str(run["detail"] or "").split():
        name, _, value = word.partition("=")
        if name == "breaker_until":
            until = datetime.fromisoformat(value)
            if until > now:
                return {"state": "open", "until": until, "owner": run["owner"]}
    return None


@dataclass
class Event:
    at: datetime
    from_status: str | None
    to_status: str
    detail: str | None


@dataclass
class TouchHistory:
    touch: int
    campaign: str
    occurrence: date
    status: str
    due_at: datetime
    template: str
    locale: str | None
    variant: str | None
    rep: str | None
    message_id: str | None
    smtp_reply: str | None
    reason: str | None
    attempts: int
    events: list[Event]
    #: The satisfaction score (1-5) the client gave through this touch's survey link.
    survey_score: int | None = None


@dataclass
class ClientEventLine:
    """An operator's action on the client: "unsuppressed" (with the reason given), "erased",
    "consent" (before -> after, with its source and date)."""

    at: datetime
    kind: str
    detail: str | None


@dataclass
class Spending:
    """What the client's paid purchases count for their tier ([tiers], docs/clients.md)."""

    tier: str
    #: Paid spend per currency, in each currency's minor units.
    spent: dict[str, int]
    #: What counts toward vip_min_total, in minor units of `currency`.
    counted: int
    currency: str
    #: Currencies of `spent` with neither a rate nor a threshold of their own.
    not_counted: list[str]


@dataclass
class ClientHistory:
    client: str
    email: str
    status: str
    suppressed: str | None
    touches: list[TouchHistory]
    events: list[ClientEventLine] = field(default_factory=list)
    timezone: str = ""
    locale: str = ""
    country: str = ""
    #: The columns inferred from the country rather than given by the import file.
    inferred: list[str] = field(default_factory=list)
    spending: Spending | None = None
    #: Marketing consent (yes, no, unknown), who said so and when (docs/consent.md).
    consent: str = "unknown"
    consent_source: str | None = None
    consent_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(asdict(self))
        return data


def history(rt: Runtime, client: str, now: datetime | None = None) -> ClientHistory | None:
    """Every touch of the client whose external id (or, failing that, e-mail) is `client`,
    with their zone and locale (and which were inferred) and their tier as of `now`
    (default: the real time)."""
    check_ready(rt.engine)
    now = now or datetime.now(UTC)
    with reader(rt.engine) as conn:
        found = overview.client_by_id_or_email(conn, client)
        if found is None:
            return None
        rows = overview.touches_of_client(conn, found.id)
        events = overview.history_of(conn, [row.id for row in rows])
        scores = overview.survey_scores(conn, found.id)
        suppressed = overview.suppressed(conn, found.email)
        touches = [
            TouchHistory(
                touch=row.id,
                campaign=row.campaign,
                occurrence=row.occurrence,
                status=row.status,
                due_at=row.due_at,
                template=row.template,
                locale=row.locale,
                variant=row.variant,
                rep=row.rep_external_id,
                message_id=row.message_id,
                smtp_reply=row.smtp_reply,
                reason=row.reason,
                attempts=row.attempts,
                events=[Event(*event) for event in events[row.id]],
                survey_score=scores.get(row.id),
            )
            for row in rows
        ]
        return ClientHistory(
            client=found.external_id,
            email=found.email,
            status=found.status,
            suppressed=suppressed,
            touches=touches,
            events=[ClientEventLine(*e) for e in overview.client_events_of(conn, found.id)],
            timezone=found.timezone,
            locale=found.locale,
            country=found.country,
            inferred=[column for column in found.inferred.split(",") if column],
            spending=_spending(rt, found.tier, client_stats(conn, 0, 0, [found.id]), found.id, now),
            consent=found.marketing_consent,
            consent_source=found.consent_source,
            consent_at=found.consent_at,
        )


def _spending(
    rt: Runtime, assigned: str, stats: dict[int, ClientStats], client_id: int, now: datetime
) -> Spending:
    facts = stats.get(client_id, ClientStats())
    rules = rt.tier_rules
    return Spending(
        tier=care.tier(facts, now, rules, assigned),
        spent=dict(facts.spent),
        counted=care.counted_total(facts, rules),
        currency=rules.currency,
        not_counted=list(care.not_counted(facts, rules)),
    )
