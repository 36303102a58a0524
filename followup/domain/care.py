"""Which clients a campaign greets, and how warmly: client facts from purchases, RFM tiers,
built-in exclusions and per-campaign audience rules. Pure: facts in, decisions out.

Good clients are treasured (tiers, their own designs); clients who do not pay or dispute their
bills, or asked not to be contacted, are not chased, and every exclusion says why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.runtime import StrictUndefined

from followup.domain.clients import ClientStats
from followup.domain.sandbox import Sandbox

#: Exclusions a campaign applies unless it lists its own (`exclude = [...]` in calendars/).
EXCLUSIONS = ("unpaid", "disputed")


@dataclass(frozen=True, slots=True)
class TierRules:
    """RFM thresholds ([tiers] in config.toml)."""

    vip_min_total_minor: int = 2_000_000
    vip_min_purchases: int = 4
    new_within: timedelta = timedelta(days=90)
    lapsed_after: timedelta = timedelta(days=730)


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
    if (
        stats.total_spent_minor >= rules.vip_min_total_minor
        or stats.purchases >= rules.vip_min_purchases
    ):
        return "vip"
    if now - stats.first_purchase <= rules.new_within:
        return "new"
    return "regular"


def tag_list(tags: str) -> list[str]:
    """A client's tags column ("fleet, newsletter") as a list."""
    return [t.strip() for t in tags.split(",") if t.strip()]


def client_context(
    stats: ClientStats, tier_name: str, zone_date: Callable[[datetime], date]
) -> dict[str, Any]:
    """The facts templates and audience rules see under `client`."""
    return {
        "tier": tier_name,
        "purchases": stats.purchases,
        "total_spent": stats.total_spent_minor,
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
        ClientStats(3, 3_250_000, datetime(2024, 5, 1), datetime(2026, 6, 1)),
        "vip",
        lambda instant: instant.date(),
    ),
}


def check_rule(rule: str) -> str | None:
    """An audience rule's problem, tried on a sample client, or None if it works."""
    try:
        in_audience(rule, SAMPLE_CLIENT)
    except AudienceError as exc:
        return str(exc)
    return None
