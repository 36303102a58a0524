"""From a touch and its recipient to a message ready to send: the template's context, the
rendered parts, the MIME bytes with their Message-ID and signed links. Used, unchanged, by the
dispatcher, the dry-run, previews and the studio; what may go out is decided before
(followup.domain.decision)."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from urllib.parse import quote

from followup.config.settings import Settings
from followup.domain import care, tokens
from followup.domain.clients import Recipient
from followup.domain.occasions import zone
from followup.domain.touches import message_id, touch_key
from followup.errors import ConfigError
from followup.messages.mime import DkimSigner, Envelope, build_mime
from followup.messages.templates import Templates
from followup.messages.variants import choose_variant, variants_for

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


def survey_token(key: str, client_id: int, campaign: str, occurrence: date) -> str:
    """Signed, per touch: `<client id>-<YYYYMMDD>-<campaign>.<signature>` (purpose "survey")."""
    return tokens.make(key, SURVEY, f"{client_id}-{_yyyymmdd(occurrence)}-{campaign}")


@functools.lru_cache(maxsize=4096, typed=True)
def _yyyymmdd(day: date) -> str:
    """`day` as %Y%m%d, kept per date: strftime costs more than signing the token."""
    return f"{day:%Y%m%d}"


def designs(templates: Templates, template: str, kept: str | None) -> frozenset[str]:
    """The names of `template`'s designs today, for the decision to check that `kept` (an
    earlier attempt's design) still exists; none asked when nothing is kept, none found when
    the message's variants file is broken (composing then fails that touch with the file's
    error, whatever the error)."""
    if kept is None:
        return frozenset()
    try:
        return frozenset(variant.name for variant in templates.variants(template))
    except Exception:
        return frozenset()


def design(
    templates: Templates, template: str, tier: str, key_of_touch: str, previous: str | None
) -> str:
    """The design a touch gets when it keeps none: one of those for the client's tier, chosen
    from the touch key, never `previous` (the client's last). Raises RenderError on a broken
    variants file."""
    names = variants_for(templates.variants(template), tier)
    return choose_variant(names, key_of_touch, previous)


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
    recipient: Recipient,
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
    tier = str(extra.get("tier", recipient.tier))
    # Kept per name (occasions.zone): ZoneInfo's own cache holds only 8 zones strongly, so
    # with more zones in the queue it read tz files again and again (bench/RESULTS.md).
    local_send_at = send_at.astimezone(zone(recipient.timezone))
    sender = _signer(settings, recipient)
    links = _links(settings, key, recipient.client_id, campaign, occurrence)
    if variant is None:
        key_of_touch = touch_key(recipient.client_id, campaign, occurrence)
        variant = design(templates, template, tier, key_of_touch, previous_variant)
    context = _context(settings, recipient, {**extra, "tier": tier}, sender, links, local_send_at)
    context["occasion"] = {
        "campaign": campaign,
        "kind": "after_purchase",
        "name": humanise(campaign),
        "date": occurrence,
        "years": None,
        **(occasion or {}),
    }
    parts = templates.render(template, recipient.locale, context, variant)
    mid = message_id(recipient.client_id, campaign, occurrence, settings.sender.domain)
    envelope = Envelope(
        from_name=sender[0],
        from_email=sender[1],
        to_name=f"{recipient.first_name} {recipient.last_name}".strip(),
        to_email=recipient.email,
        message_id=mid,
        date=local_send_at,
        unsubscribe_url=links["unsubscribe"],
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
        rep_id=recipient.rep_id,
        from_email=sender[1],
        to=recipient.email,
    )


def _signer(settings: Settings, recipient: Recipient) -> tuple[str, str]:
    """(name, address) the message is from: the client's rep, else the business."""
    from_name, from_email = settings.sender.default_from
    if recipient.rep_email:
        return recipient.rep_name or from_name, recipient.rep_email
    return from_name, from_email


def _links(
    settings: Settings, key: str, client_id: int, campaign: str, occurrence: date
) -> dict[str, str]:
    """The message's signed links: unsubscribe (per client) and survey (per touch)."""
    public_url = settings.http.public_url.rstrip("/")
    token = tokens.make(key, UNSUBSCRIBE, client_id)
    survey = quote(survey_token(key, client_id, campaign, occurrence), safe="")
    return {
        "unsubscribe": f"{public_url}/unsubscribe/{token}",
        "survey": f"{public_url}/survey/{survey}",
    }


def _context(
    settings: Settings,
    recipient: Recipient,
    client: dict[str, Any],
    sender: tuple[str, str],
    links: dict[str, str],
    local_send_at: datetime,
) -> dict[str, Any]:
    """What the templates see, but the occasion: the client, the rep who signs, the
    business, the links, the send time and the touch's purchase (if it has one)."""
    from_name, from_email = sender
    context: dict[str, Any] = {
        "client": {
            "id": recipient.client_external_id,
            "first_name": recipient.first_name,
            "last_name": recipient.last_name,
            "full_name": f"{recipient.first_name} {recipient.last_name}".strip(),
            "email": recipient.email,
            "locale": recipient.locale,
            "country": recipient.country,
            "tags": care.tag_list(recipient.tags),
            **client,
        },
        "rep": {
            "name": from_name,
            "first_name": from_name.split(" ")[0],
            "email": from_email,
            "signature": recipient.rep_signature or from_name,
        },
        "business": {"name": settings.sender.business_name, "domain": settings.sender.domain},
        "links": links,
        "send_at": local_send_at,
    }
    if recipient.purchase_external_id is not None and recipient.purchased_at is not None:
        purchased_at = recipient.purchased_at.astimezone(local_send_at.tzinfo)
        context["purchase"] = {
            "id": recipient.purchase_external_id,
            "product": recipient.product,
            "amount": recipient.amount_minor,
            "currency": recipient.currency,
            "purchased_at": purchased_at,
            "date": purchased_at.date(),
        }
    return context
