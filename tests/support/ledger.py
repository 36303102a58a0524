"""Rows straight into the ledger, for the storage tests: a client, and a thank-you touch."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from followup.domain.touches import NewTouch
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.dialects import ledger_for

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


def add_client(rt: Runtime, external_id: str = "C1", email: str = "ann@example.com") -> int:
    """An active client (Ann Lee, New York) inserted or updated; its id."""
    with rt.engine.begin() as conn:
        ledger_for(conn).upsert(
            conn,
            tables.clients,
            [
                {
                    "external_id": external_id,
                    "email": email,
                    "first_name": "Ann",
                    "last_name": "Lee",
                    "locale": "en-US",
                    "timezone": "America/New_York",
                    "country": "US",
                    "status": "active",
                    "tier": "",
                    "tags": "",
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
            key="external_id",
        )
        return ledger_for(conn).id_map(conn, tables.clients, [external_id])[external_id]


def client_row(n: int) -> dict[str, Any]:
    """The columns of client c<n> (London) that an upsert needs."""
    return {
        "external_id": f"c{n}",
        "email": f"c{n}@example.com",
        "first_name": "A",
        "last_name": "B",
        "locale": "en",
        "timezone": "Europe/London",
        "country": "GB",
        "created_at": NOW,
        "updated_at": NOW,
    }


def new_touch(client_id: int, occurrence: date = date(2027, 1, 8), due: datetime = NOW) -> NewTouch:
    """A thank-you due at `due`, for three days."""
    return NewTouch(
        client_id=client_id,
        campaign="thank_you",
        occurrence=occurrence,
        due_at=due,
        not_after=due + timedelta(days=3),
        template="thank_you",
    )
