"""Which clients a campaign greets, and how warmly: client facts from purchases, RFM tiers,
built-in exclusions and per-campaign audience rules. Pure: facts in, decisions out.

Good clients are treasured (tiers, their own designs); clients who do not pay or dispute their
bills, or asked not to be contacted, are not chased, and every exclusion says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.runtime import StrictUndefined

from followup.domain.clients import ClientStats
from followup.domain.money import minor_digits
from followup.domain.sandbox import Sandbox

#: Exclusions a campaign applies unless it lists its own (`exclude = [...]` in calendars/).
EXCLUSIONS = ("unpaid", "disputed")


@dataclass(frozen=True, slots=True)
class TierRules:
    """RFM thresholds ([tiers] in config.toml), amounts in minor units."""

    #: In minor units of `currency`: spend in other currencies counts converted by `rates`.
    vip_min_total_minor: int = 2_000_000
    vip_min_purchases: int = 4
    new_within: timedelta = timedelta(days=90)
    lapsed_after: timedelta = timedelta(days=730)
    #: The reference currency.
    currency: str = "EUR"
    #: A currency's own threshold, in its minor units: its spend alone reaching it is vip.
    vip_min_totals_minor: Mapping[str, int] = field(default_factory=dict, hash=False)
    #: What one minor unit of a currency is worth in minor units of `currency`.
    minor_rates: Mapping[str, Decimal] = field(default_factory=dict, hash=False)

    @classmethod
    def of(
        cls,
        currency: str,
        vip_min_total: int,
        vip_min_totals: Mapping[str, int],
        rates: Mapping[str, float],
        *,
        vip_min_purchases: int = 4,
        new_within: timedelta = timedelta(days=90),
        lapsed_after: timedelta = timedelta(days=730),
    ) -> TierRules:
        """The rules from major units ([tiers] as written): each amount scaled by its own
        currency's decimals (JPY 0, EUR 2, KWD 3), each rate by both currencies'."""
        digits = minor_digits(currency)
        return cls(
            vip_min_total_minor=vip_min_total * 10**digits,
            currency=currency,
            vip_min_totals_minor={c: v * 10 ** minor_digits(c) for c, v in vip_min_totals.items()},
            minor_rates={
                c: Decimal(repr(rate)).scaleb(digits - minor_digits(c))
                for c, rate in rates.items()
                if c != currency
            },
            vip_min_purchases=vip_min_purchases,
            new_within=new_within,
            lapsed_after=lapsed_after,
        )


def counted_total(stats: ClientStats, rules: TierRules) -> int:
    """The client's paid spend in minor units of the reference currency: its own amounts and
    those of the currencies with a rate, converted (rounded down). The currencies with
    neither (not_counted) are left out, never added as if they were the same money."""
    total = 0
    for currency, minor in stats.spent:
        if currency == rules.currency:
            total += minor
        else:
            rate = rules.minor_rates.get(currency)
            if rate is not None:
                total += int(minor * rate)
    return total


def not_counted(stats: ClientStats, rules: TierRules) -> tuple[str, ...]:
    """The currencies of the client's paid spend that no rule counts: neither the reference
    currency, nor with a rate, nor with their own threshold."""
    return tuple(
        currency
        for currency, _ in stats.spent
        if currency != rules.currency
        and currency not in rules.minor_rates
        and currency not in rules.vip_min_totals_minor
    )


def _spent_much(stats: ClientStats, rules: TierRules) -> bool:
    """The money half of vip: a currency's spend reaches its own threshold, or the counted
    total reaches the reference one."""
    for currency, minor in stats.spent:
        threshold = rules.vip_min_totals_minor.get(currency)
        if threshold is not None and minor >= threshold:
            return True
    return counted_total(stats, rules) >= rules.vip_min_total_minor


def tier(stats: ClientStats, now: datetime, rules: TierRules, assigned: str = "") -> str:
    """The client's tier: the one assigned in their data if any, else from recency, frequency
    and monetary value: lapsed (no purchase for a long time), vip (spent or bought much), new
    (first purchase recently), regular. A client with no paid purchase is "new"."""
    if assigned:
        return assigned
    if stats.last_purchase is None or stats.first_purchase is None:
        return "new"
    if now - stats.last_purchase > rules.lapsed_after:
        return "lapsed"
    if stats.purchases >= rules.vip_min_purchases or _spent_much(stats, rules):
        return "vip"
    if now - stats.first_purchase <= rules.new_within:
        return "new"
    return "regular"


def tag_list(tags: str) -> list[str]:
    """A client's tags column ("fleet, newsletter") as a list."""
    return [t.strip() for t in tags.split(",") if t.strip()]


def client_context(
    stats: ClientStats,
    tier_name: str,
    zone_date: Callable[[datetime], date],
    rules: TierRules,
) -> dict[str, Any]:
    """The facts templates and audience rules see under `client`. `total_spent` is the
    counted spend in minor units of `total_currency` ([tiers] currency, what the vip
    threshold compares); `spent` every currency's own, counted or not."""
    return {
        "tier": tier_name,
        "purchases": stats.purchases,
        "total_spent": counted_total(stats, rules),
        "total_currency": rules.currency,
        "spent": dict(stats.spent),
        "first_purchase": zone_date(stats.first_purchase) if stats.first_purchase else None,
        "last_purchase": zone_date(stats.last_purchase) if stats.last_purchase else None,
        "has_unpaid": stats.has_unpaid,
        "has_disputed": stats.has_disputed,
    }


def exclusion(status: str, stats: ClientStats, exclude: tuple[str, ...]) -> str | None:
    """Why a campaign must not greet this client, or None. A client who is not active
    (unsubscribed, bounced, do-not-contact) is never greeted."""
    if status != "active":
        return f"excluded: client is {status}"
    if "unpaid" in exclude and stats.has_unpaid:
        return "excluded: unpaid purchase"
    if "disputed" in exclude and stats.has_disputed:
        return "excluded: disputed purchase"
    return None


# ----------------------------------------------------------------------------- audience rules


class AudienceError(Exception):
    """An audience rule that does not compile or fails on a client's facts."""


class _RuleSandbox(Sandbox):
    """The templates' sandbox, and rules may not build huge values: `**` is refused and `*`
    only multiplies numbers (a rule runs for every client at every plan); `+` and `%` are
    bounded as in templates."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("the ** operator is not allowed in an audience rule")
        if operator == "*" and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right)
        ):
            raise SecurityError("* only multiplies numbers in an audience rule")
        return super().call_binop(context, operator, left, right)


_ENV = _RuleSandbox(undefined=StrictUndefined)


@lru_cache(maxsize=256)
def compile_rule(rule: str) -> Callable[..., Any]:
    """A sandboxed Jinja2 expression (`client.tier == "vip" and not client.has_unpaid`)."""
    try:
        return _ENV.compile_expression(rule, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise AudienceError(f"audience {rule!r}: {exc.message}") from None


def in_audience(rule: str, client: Mapping[str, Any]) -> bool:
    """Whether a client's facts pass an audience rule; an empty rule takes everyone."""
    if not rule:
        return True
    expression = compile_rule(rule)
    try:
        return bool(expression(client=client))
    except Exception as exc:
        # Whatever a marketer's rule does wrong fails that rule, never the whole plan.
        raise AudienceError(f"audience {rule!r}: {exc}") from None


SAMPLE_CLIENT: dict[str, Any] = {
    "id": "C0001",
    "first_name": "Ann",
    "last_name": "Lee",
    "locale": "en-US",
    "country": "US",
    "timezone": "America/New_York",
    "status": "active",
    "tags": ["newsletter"],
    **client_context(
        ClientStats(3, (("EUR", 3_250_000),), datetime(2024, 5, 1), datetime(2026, 6, 1)),
        "vip",
        lambda instant: instant.date(),
        TierRules(),
    ),
}


def check_rule(rule: str) -> str | None:
    """An audience rule's problem, tried on a sample client, or None if it works."""
    try:
        in_audience(rule, SAMPLE_CLIENT)
    except AudienceError as exc:
        return str(exc)
    return None
