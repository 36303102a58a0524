"""Previews: one message rendered for a built-in sample client or a real one, nothing sent.

Used by `followup preview`, `followup templates check` (every message, locale and variant with
the sample clients) and the studio. Previews sign their links with a throw-away key, so an
unsubscribe or survey link in a preview never acts on anyone.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from followup.config.settings import Settings
from followup.domain.clients import Recipient
from followup.domain.locales import language
from followup.messages import compose
from followup.messages.templates import Templates

#: Links in previews are signed with this key: they verify nowhere else.
PREVIEW_KEY = secrets.token_urlsafe(32)
SEND_TIME = time(10, 0)


def _sample(**values: Any) -> Recipient:
    base: dict[str, Any] = {
        "client_id": 0,
        "client_external_id": "sample",
        "email": "sample@example.com",
        "first_name": "Sample",
        "last_name": "Client",
        "locale": "en-US",
        "timezone": "America/New_York",
        "country": "US",
        "tier": "gold",
        "tags": "vip",
        "status": "active",
        "rep_id": None,
        "rep_name": "Joe Girard",
        "rep_email": "joe@example.com",
        "rep_signature": "Joe Girard\nYour salesman at Girard Motors",
        "purchase_external_id": "sample-purchase",
        "purchase_status": "paid",
        "product": "Roadster",
        "amount_minor": 3_250_000,
        "currency": "USD",
        "purchased_at": datetime(2026, 1, 1, 15, 0, tzinfo=UTC),
    }
    base.update(values)
    return Recipient(**base)


#: The built-in sample clients, one per shipped language; their ids are not real clients'.
SAMPLES: dict[str, Recipient] = {
    "sample-en": _sample(
        client_external_id="sample-en",
        email="alex.morgan@example.com",
        first_name="Alex",
        last_name="Morgan",
    ),
    "sample-fr": _sample(
        client_external_id="sample-fr",
        email="zoe.lefevre@example.fr",
        first_name="Zoé",
        last_name="Lefèvre",
        locale="fr-FR",
        timezone="Europe/Paris",
        country="FR",
        rep_name="Marc Girard",
        rep_email="marc@example.com",
        rep_signature="Marc Girard\nVotre conseiller chez Girard Motors",
        product="Citadine",
        amount_minor=1_890_000,
        currency="EUR",
    ),
}

#: What kind of occasion each shipped message is for, its sample name per language, how long
#: after the purchase it goes out (after-purchase messages) and sample years (yearly ones).
_OCCASIONS: dict[str, dict[str, Any]] = {
    "thank_you": {"kind": "after_purchase", "days": 2},
    "service_reminder": {"kind": "after_purchase", "days": 180},
    "survey": {"kind": "after_purchase", "days": 14},
    "birthday": {
        "kind": "yearly",
        "names": {"en": "Birthday", "fr": "Anniversaire"},
        "years": 41,
    },
    "anniversary": {
        "kind": "yearly",
        "names": {"en": "Purchase anniversary", "fr": "Anniversaire d'achat"},
        "years": 3,
    },
    "new_year": {"kind": "holiday", "names": {"en": "New Year's Day", "fr": "Jour de l'an"}},
    "holiday": {"kind": "holiday", "names": {"en": "Christmas Day", "fr": "Noël"}},
}


def sample_for(locale: str) -> Recipient:
    """The sample client of `locale`'s language (else the English one), with that locale."""
    facts = SAMPLES.get(f"sample-{language(locale)}", SAMPLES["sample-en"])
    return facts._replace(locale=locale)


def occasion_for(message: str, locale: str, on: date) -> tuple[dict[str, Any], int | None]:
    """A sample occasion for `message` on `on`, and for after-purchase messages how many days
    after the purchase it goes out (None: the message has no purchase)."""
    info = _OCCASIONS.get(message, {"kind": "after_purchase", "days": 2})
    names: dict[str, str] = info.get("names", {})
    occasion: dict[str, Any] = {
        "campaign": message,
        "kind": info["kind"],
        "name": names.get(language(locale), names.get("en", compose.humanise(message))),
        "date": on,
        "years": info.get("years"),
    }
    days = info.get("days") if info["kind"] == "after_purchase" else None
    return occasion, days


@dataclass(frozen=True, slots=True)
class Preview:
    message: str
    client: str
    occasion: dict[str, Any]
    composed: compose.Composed


def render(
    settings: Settings,
    templates: Templates,
    message: str,
    facts: Recipient,
    *,
    on: date,
    variant: str | None = None,
) -> Preview:
    """Compose `message` for `facts` on day `on` (10:00 in the client's zone). Raises
    RenderError with the template's file and line."""
    occasion, days = occasion_for(message, facts.locale, on)
    zone = ZoneInfo(facts.timezone)
    if days is None:
        facts = facts._replace(
            purchase_external_id=None,
            purchase_status=None,
            product=None,
            amount_minor=None,
            currency=None,
            purchased_at=None,
        )
    elif facts.client_id == 0 or facts.purchased_at is None:
        # A sample purchase, `days` before the occasion, at 15:00 in the client's zone.
        bought = datetime.combine(on - timedelta(days=days), time(15, 0), zone)
        facts = facts._replace(
            purchase_external_id=facts.purchase_external_id or "sample-purchase",
            purchase_status="paid",
            product=facts.product or "Roadster",
            amount_minor=facts.amount_minor or 3_250_000,
            currency=facts.currency or "USD",
            purchased_at=bought.astimezone(UTC),
        )
    composed = compose.compose(
        settings,
        templates,
        facts,
        campaign=message,
        template=message,
        occurrence=on,
        send_at=datetime.combine(on, SEND_TIME, zone),
        key=PREVIEW_KEY,
        occasion=occasion,
        variant=variant,
    )
    return Preview(message, facts.client_external_id, occasion, composed)


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", value)[:60] or "x"


def write(preview: Preview, folder: Path) -> tuple[Path, Path]:
    """The HTML part and the whole message (.eml) in `folder` (owner-only: client data)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    composed = preview.composed
    stem = "-".join(
        _slug(x) for x in (preview.message, composed.locale, composed.variant, preview.client)
    )
    paths = (folder / f"{stem}.html", folder / f"{stem}.eml")
    for path, data in zip(paths, (composed.html.encode(), composed.mime), strict=True):
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return paths
