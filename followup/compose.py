"""From a ledger row and the facts about its client to a message ready to send, or a reason
not to send it. Used by the dispatcher and, unchanged, by the dry-run: same rules everywhere."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Row, select

from followup import calendars, care, store, tokens
from followup.config import Settings
from followup.errors import ConfigError
from followup.models import ClientStatus, TouchStatus
from followup.planner import message_id
from followup.render import (
    DkimSigner,
    Envelope,
    Templates,
    build_mime,
    choose_variant,
    variants_for,
)

_EPHEMERAL_KEY = secrets.token_urlsafe(32)
UNSUBSCRIBE = "unsubscribe"
SURVEY = "survey"


def signing_key(settings: Settings, *, sending: bool) -> str:
    """FOLLOWUP_SECRET_KEY. Real delivery refuses to start without it; the capture mode and
    the dry-run use a throw-away key, so their links work only while this process lives."""
    if settings.secret_key:
        return settings.secret_key
    if sending and settings.delivery.mode == "smtp":
        raise ConfigError(
            "FOLLOWUP_SECRET_KEY is not set: it signs the unsubscribe link in every message "
            "(set it to a long random string, e.g. `python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`)"
        )
    return _EPHEMERAL_KEY


_SIGNERS: dict[tuple[str, str, str], DkimSigner] = {}


def dkim_signer(settings: Settings) -> DkimSigner | None:
    """The DKIM signer of these settings (the key is read once), or None when DKIM is off."""
    dkim = settings.dkim
    if not dkim.enabled:
        return None
    if not dkim.domain or not dkim.selector or not dkim.key_file:
        raise ConfigError("[dkim] enabled needs domain, selector and key_file")
    key = (dkim.domain, dkim.selector, str(settings.path(dkim.key_file)))
    if key not in _SIGNERS:
        _SIGNERS[key] = DkimSigner(dkim.domain, dkim.selector, settings.path(dkim.key_file))
    return _SIGNERS[key]


@dataclass(frozen=True, slots=True)
class Facts:
    """What composing one touch needs to know, read in one query."""

    client_id: int
    client_external_id: str
    email: str
    first_name: str
    last_name: str
    locale: str
    timezone: str
    country: str
    tier: str
    tags: str
    status: str
    rep_id: int | None
    rep_name: str | None
    rep_email: str | None
    rep_signature: str | None
    purchase_external_id: str | None
    purchase_status: str | None
    product: str | None
    amount_minor: int | None
    currency: str | None
    purchased_at: datetime | None
    birthday_year: int | None = None


def facts_query() -> Any:
    """The columns of Facts, in its order (so that a row's first values make one)."""
    c, r, p = store.clients, store.reps, store.purchases
    return (
        select(
            c.c.id.label("client_id"),
            c.c.external_id.label("client_external_id"),
            c.c.email,
            c.c.first_name,
            c.c.last_name,
            c.c.locale,
            c.c.timezone,
            c.c.country,
            c.c.tier,
            c.c.tags,
            c.c.status,
            r.c.id.label("rep_id"),
            r.c.name.label("rep_name"),
            r.c.email.label("rep_email"),
            r.c.signature.label("rep_signature"),
            p.c.external_id.label("purchase_external_id"),
            p.c.status.label("purchase_status"),
            p.c.product,
            p.c.amount_minor,
            p.c.currency,
            p.c.purchased_at,
            c.c.birthday_year,
        )
        .select_from(c)
        # A rep who left (inactive) signs nothing: the business signs until the clients are
        # reassigned (`followup reassign`).
        .outerjoin(r, (r.c.id == c.c.rep_id) & r.c.active.is_(True))
    )


def load_facts(conn: Connection, client_id: int, purchase_id: int | None) -> Facts | None:
    p = store.purchases
    query = facts_query().outerjoin(p, p.c.id == purchase_id).where(store.clients.c.id == client_id)
    row: Row[Any] | None = conn.execute(query).first()
    return None if row is None else Facts(**row._mapping)


class Skip(Exception):
    """The touch must not go out; the message is the reason recorded in the ledger."""


def check_audience(conn: Connection, facts: Facts) -> None:
    """Send-time rules: an opt-out or a bounce stops every later marketing touch."""
    check_audience_with(facts, store.suppressed(conn, facts.email))


def check_audience_with(facts: Facts, suppression: str | None) -> None:
    """`check_audience` with the address's suppression (or None) already read."""
    if facts.status != ClientStatus.ACTIVE.value:
        raise Skip(f"client is {facts.status}")
    reason = suppression
    if reason is not None:
        raise Skip(f"suppressed ({reason})")
    if facts.purchase_status is not None and facts.purchase_status != "paid":
        # The purchase was refunded or disputed after the touch was planned.
        raise Skip(f"purchase is {facts.purchase_status}")


#: Touches whose variant the client has (or may have) seen.
SEEN = (TouchStatus.SENT.value, TouchStatus.SENDING.value, TouchStatus.UNCERTAIN.value)


def previous_variant(conn: Connection, client_id: int, touch_id: int | None = None) -> str | None:
    """The variant of the client's latest touch that went (or may have gone) out, other than
    `touch_id`: the next message must look different."""
    t = store.touches
    query = (
        select(t.c.variant)
        .where(t.c.client_id == client_id, t.c.status.in_(SEEN), t.c.variant.is_not(None))
        .order_by(t.c.updated_at.desc(), t.c.id.desc())
        .limit(1)
    )
    if touch_id is not None:
        query = query.where(t.c.id != touch_id)
    found = conn.execute(query).scalar()
    return None if found is None else str(found)


def touch_key(client_id: int, campaign: str, occurrence: date) -> str:
    return f"{client_id}/{campaign}/{occurrence.isoformat()}"


def survey_token(key: str, client_id: int, campaign: str, occurrence: date) -> str:
    """Signed, per touch: `<client id>-<YYYYMMDD>-<campaign>.<signature>` (purpose "survey")."""
    return tokens.make(key, SURVEY, f"{client_id}-{_yyyymmdd(occurrence)}-{campaign}")


@functools.lru_cache(maxsize=4096, typed=True)
def _yyyymmdd(day: date) -> str:
    """`day` as %Y%m%d, kept per date: strftime costs more than signing the token."""
    return f"{day:%Y%m%d}"


def humanise(campaign: str) -> str:
    """thank_you -> "Thank you": the occasion's name until the calendars give a better one."""
    words = campaign.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


@dataclass(frozen=True, slots=True)
class Composed:
    subject: str
    text: str
    html: str
    mime: bytes
    message_id: str
    locale: str
    variant: str
    rep_id: int | None
    from_email: str
    to: str


def compose(
    settings: Settings,
    templates: Templates,
    facts: Facts,
    *,
    campaign: str,
    template: str,
    occurrence: date,
    send_at: datetime,
    key: str,
    occasion: Mapping[str, Any] | None = None,
    variant: str | None = None,
    previous_variant: str | None = None,
    client: Mapping[str, Any] | None = None,
) -> Composed:
    """Render one touch. Raises RenderError (template file and line) on a broken template.

    `occasion` is merged over the defaults (campaign, kind "after_purchase", name from the
    campaign, date, years None). `variant` forces a design (previews, retries); otherwise one
    is chosen from the touch key, never `previous_variant` (the client's last design), among
    the designs reserved to the client's tier if the message has any. `client` adds facts
    (tier, purchases, total_spent, ...) to the template's `client`."""
    extra = dict(client or {})
    tier = str(extra.get("tier", facts.tier))
    # Kept per name: ZoneInfo's own cache holds only 8 zones strongly, so with more zones in
    # the queue it read the tz file again for 9,055 of bench/render.py's 20,000 (12 zones).
    zone = calendars.zone(facts.timezone)
    local_send_at = send_at.astimezone(zone)
    from_name, from_email = settings.sender.default_from
    if facts.rep_email:
        from_name, from_email = facts.rep_name or from_name, facts.rep_email
    token = tokens.make(key, UNSUBSCRIBE, facts.client_id)
    public_url = settings.http.public_url.rstrip("/")
    unsubscribe_url = f"{public_url}/unsubscribe/{token}"
    survey = quote(survey_token(key, facts.client_id, campaign, occurrence), safe="")
    if variant is None:
        names = variants_for(templates.variants(template), tier)
        variant = choose_variant(
            names, touch_key(facts.client_id, campaign, occurrence), previous_variant
        )
    context: dict[str, Any] = {
        "client": {
            "id": facts.client_external_id,
            "first_name": facts.first_name,
            "last_name": facts.last_name,
            "full_name": f"{facts.first_name} {facts.last_name}".strip(),
            "email": facts.email,
            "locale": facts.locale,
            "country": facts.country,
            "tags": care.tag_list(facts.tags),
            **extra,
            "tier": tier,
        },
        "rep": {
            "name": from_name,
            "first_name": from_name.split(" ")[0],
            "email": from_email,
            "signature": facts.rep_signature or from_name,
        },
        "business": {"name": settings.sender.business_name, "domain": settings.sender.domain},
        "occasion": {
            "campaign": campaign,
            "kind": "after_purchase",
            "name": humanise(campaign),
            "date": occurrence,
            "years": None,
            **(occasion or {}),
        },
        "links": {"unsubscribe": unsubscribe_url, "survey": f"{public_url}/survey/{survey}"},
        "send_at": local_send_at,
    }
    if facts.purchase_external_id is not None and facts.purchased_at is not None:
        purchased_at = facts.purchased_at.astimezone(zone)
        context["purchase"] = {
            "id": facts.purchase_external_id,
            "product": facts.product,
            "amount": facts.amount_minor,
            "currency": facts.currency,
            "purchased_at": purchased_at,
            "date": purchased_at.date(),
        }
    parts = templates.render(template, facts.locale, context, variant)
    mid = message_id(facts.client_id, campaign, occurrence, settings.sender.domain)
    envelope = Envelope(
        from_name=from_name,
        from_email=from_email,
        to_name=f"{facts.first_name} {facts.last_name}".strip(),
        to_email=facts.email,
        message_id=mid,
        date=local_send_at,
        unsubscribe_url=unsubscribe_url,
        unsubscribe_mailto=settings.sender.unsubscribe_mailto,
    )
    mime = build_mime(parts, envelope)
    signer = dkim_signer(settings)
    if signer is not None:
        mime = signer.sign(mime)
    return Composed(
        subject=parts.subject,
        text=parts.text,
        html=parts.html,
        mime=mime,
        message_id=mid,
        locale=parts.locale,
        variant=parts.variant,
        rep_id=facts.rep_id,
        from_email=from_email,
        to=facts.email,
    )
