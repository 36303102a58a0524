"""A recipient and a thank-you composed for it, without a database: what the rendering tests
and the DKIM tests sign and take apart."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from followup.config import Settings
from followup.domain.clients import Recipient
from followup.messages import compose
from followup.messages.templates import Templates

#: make_settings' secret key.
SECRET = "test-secret-key"
OCCURRENCE = date(2026, 11, 5)
SEND_AT = datetime(2026, 11, 7, 15, 0, tzinfo=UTC)


def sample_recipient(**changes: Any) -> Recipient:
    """Eve Lee, a gold client in New York, and her purchase; `changes` replace fields."""
    values: dict[str, Any] = {
        "client_id": 42,
        "client_external_id": "C42",
        "email": "eve@client.example",
        "first_name": "Eve",
        "last_name": "Lee",
        "locale": "en-US",
        "timezone": "America/New_York",
        "country": "US",
        "tier": "gold",
        "tags": "vip, early",
        "status": "active",
        "rep_id": 3,
        "rep_name": "Marc Girard",
        "rep_email": "marc@girard.example",
        "rep_signature": "Marc Girard\nGirard Motors",
        "purchase_external_id": "P9",
        "purchase_status": "paid",
        "product": "roadster",
        "amount_minor": 123456,
        "currency": "EUR",
        "purchased_at": datetime(2026, 11, 5, 15, 0, tzinfo=UTC),
    }
    values.update(changes)
    return Recipient(**values)


def compose_thank_you(
    settings: Settings, templates: Templates, facts: Recipient
) -> compose.Composed:
    return compose.compose(
        settings,
        templates,
        facts,
        campaign="thank_you",
        template="thank_you",
        occurrence=OCCURRENCE,
        send_at=SEND_AT,
        key=SECRET,
    )
