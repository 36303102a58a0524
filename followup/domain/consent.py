"""Consent by purpose: whether a touch may go to a client, as the law reads it
(docs/consent.md). Pure: the clock is an argument.

Every occasion has a purpose. A `service` message (a thank-you, a satisfaction survey, a
service reminder) follows a purchase and needs no marketing consent. A `marketing` message
(greetings, holidays, birthdays, anniversaries) needs the consent `[consent]` asks for:

- the client said `no`: never;
- the client said `yes`: always;
- `unknown`: under `soft-opt-in` (the existing-customer exemption of PECR and the ePrivacy
  directive, and CAN-SPAM's opt-out) yes: every client is taken for the shop's customer
  (docs/consent.md asks that leads be imported with a state); under `opt-in` (CASL) only
  within the implied-consent period after the client's last paid purchase.

An unsubscribe or a bounce stops every message, whatever its purpose (the client's status and
the suppression list, followup.domain.care and followup.domain.decision).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from dateutil.relativedelta import relativedelta

from followup.domain.statuses import Consent

#: The reason the ledger records for a marketing touch the client did not consent to.
NO_CONSENT = "no marketing consent"


class Purpose(enum.StrEnum):
    SERVICE = "service"
    MARKETING = "marketing"


class Mode(enum.StrEnum):
    """`[consent] marketing`: what an `unknown` consent allows."""

    #: Clients who bought may get marketing until they say no (GDPR/PECR soft opt-in for
    #: existing customers, CAN-SPAM's opt-out).
    SOFT_OPT_IN = "soft-opt-in"
    #: Marketing needs a `yes`, or a paid purchase within the implied-consent period (CASL).
    OPT_IN = "opt-in"


#: The occasion kinds whose default purpose is service: they follow a purchase. Every other
#: kind (yearly client dates, holidays, rules, .ics events) is marketing unless the calendar
#: says `purpose = "service"`.
SERVICE_KINDS = frozenset({"after_purchase"})


def default_purpose(kind: str) -> Purpose:
    """An occasion's purpose when its calendar does not give one."""
    return Purpose.SERVICE if kind in SERVICE_KINDS else Purpose.MARKETING


@dataclass(frozen=True, slots=True)
class ConsentRule:
    """`[consent]` of config.toml."""

    mode: Mode = Mode.SOFT_OPT_IN
    #: Under opt-in: how long after a paid purchase an `unknown` consent is implied (CASL:
    #: 24 months); 0: never.
    implied_months: int = 24


#: The default: soft opt-in, and 24 months of implied consent should `mode` become opt-in.
DEFAULT_RULE = ConsentRule()


def marketing_allowed(
    consent: str, last_paid_purchase: datetime | None, rule: ConsentRule, at: datetime
) -> bool:
    """Whether a marketing message may go to a client with this consent at `at`."""
    if consent == Consent.YES.value:
        return True
    if consent == Consent.NO.value:
        return False
    if rule.mode is Mode.SOFT_OPT_IN:
        return True
    if last_paid_purchase is None or rule.implied_months <= 0:
        return False
    return at < last_paid_purchase + relativedelta(months=rule.implied_months)


def refusal(
    purpose: Purpose,
    consent: str,
    last_paid_purchase: datetime | None,
    rule: ConsentRule,
    at: datetime,
) -> str | None:
    """Why a touch of this purpose must not go to the client at `at` (NO_CONSENT), or None.
    A service message is never stopped by consent."""
    if purpose is Purpose.SERVICE:
        return None
    if marketing_allowed(consent, last_paid_purchase, rule, at):
        return None
    return NO_CONSENT
