"""`followup retry`: failed touches sent again, by campaign, reason or the day they failed,
listed first with a dry-run. Only failed touches move: never one the server may already
hold (sent, sending or uncertain)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from followup.logs import log_event
from followup.runtime import Runtime
from followup.service.reports import TouchLine, jsonable
from followup.storage import overview
from followup.storage.engine import reader
from followup.storage.schema import check_ready


@dataclass
class Retry:
    """The failed touches the filters chose, and how many went back to the queue (none in a
    dry-run)."""

    touches: list[TouchLine]
    retried: int
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(asdict(self))
        return data


def retry(
    rt: Runtime,
    now: datetime,
    *,
    campaign: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
) -> Retry:
    """The failed touches of `campaign` whose reason holds `reason` and that failed at or after
    `since` and before `until`; unless `dry_run`, they go back to the queue (due at `now`),
    in the transaction that read them: what is listed is what moves."""
    check_ready(rt.engine)
    if dry_run:
        with reader(rt.engine) as conn:
            rows = overview.failed_touches(conn, campaign, reason, since, until)
        return Retry([TouchLine(*row) for row in rows], 0, dry_run=True)
    with rt.engine.begin() as conn:
        rows = overview.failed_touches(conn, campaign, reason, since, until)
        retried = rt.ledger.retry_failed(conn, [row.id for row in rows], now)
    if retried:
        log_event("touches.retried", count=retried, campaign=campaign)
    return Retry([TouchLine(*row) for row in rows], retried, dry_run=False)
