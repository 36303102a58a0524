"""A circuit breaker per SMTP server: pure state, the clock passed in.

A server that does not answer (the connection refused or dropped before the message data, no
greeting within [smtp] timeout) costs each touch the whole timeout on its own; one that drops
the connection after the message data makes each touch uncertain. The breaker counts such
failures: after `[smtp] breaker_failures` in a row, and at once after an uncertain outcome,
it opens, and the dispatcher stops claiming until it reopens (`[smtp] breaker_backoff_seconds`,
doubled at each trip without a success in between, at most `breaker_backoff_max_seconds`).
Once the backoff has passed the breaker is half-open: one message goes alone (a probe); its
success closes the breaker, its failure opens it again for longer.

It starts closed: a healthy server pays nothing for it. Any reply of the server (a 2yz, a
refusal) is a sign of life and resets the count.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from followup.config.settings import Settings, SmtpSettings
from followup.domain.outcomes import Delivery, Outcome


class BreakerState(enum.StrEnum):
    #: Messages go out.
    CLOSED = "closed"
    #: Nothing goes out until `until`.
    OPEN = "open"
    #: The backoff has passed: one message goes alone, and decides.
    HALF_OPEN = "half-open"


class Sign(enum.StrEnum):
    """What one SMTP outcome says about the server."""

    #: The server answered (a message taken or refused): it works.
    ALIVE = "alive"
    #: No reply before the message data: connection refused, no greeting, dropped.
    SILENT = "silent"
    #: No reply after the message data: the server may have the message (uncertain).
    LOST = "lost"


def sign_of(delivery: Delivery) -> Sign:
    """A retry without a reply code is a connection or greeting failure (a reply without a
    code, aiosmtplib's malformed one, counts as none); an uncertain outcome is a loss after
    the data; anything else is an answer."""
    if delivery.outcome is Outcome.UNCERTAIN:
        return Sign.LOST
    if delivery.outcome is Outcome.RETRY and delivery.code is None:
        return Sign.SILENT
    return Sign.ALIVE


@dataclass(frozen=True, slots=True)
class Change:
    """The breaker opened or closed (the caller logs it)."""

    state: BreakerState
    until: datetime | None
    reason: str


class Breaker:
    """The breaker of one SMTP server (`server`, host:port)."""

    def __init__(
        self, server: str, failures: int, backoff_seconds: float, backoff_max_seconds: float
    ) -> None:
        self.server = server
        self.failures = failures
        self.backoff = timedelta(seconds=backoff_seconds)
        self.backoff_max = timedelta(seconds=max(backoff_max_seconds, backoff_seconds))
        #: Failures in a row since the last sign of life.
        self.in_a_row = 0
        #: Trips since the last sign of life (the backoff doubles with each).
        self.trips = 0
        #: While open (or half-open): when it reopens, and why it opened.
        self.until: datetime | None = None
        self.reason: str | None = None

    @classmethod
    def from_settings(cls, smtp: SmtpSettings, server: str | None = None) -> Breaker:
        """The breaker of [smtp]'s server (or of `server`, e.g. the capture sink)."""
        return cls(
            server or f"{smtp.host}:{smtp.port}",
            smtp.breaker_failures,
            smtp.breaker_backoff_seconds,
            smtp.breaker_backoff_max_seconds,
        )

    @classmethod
    def for_delivery(cls, settings: Settings) -> Breaker:
        """The breaker of the server a dispatch sends to: [smtp]'s, or the capture sink."""
        capture = settings.delivery.mode == "capture"
        return cls.from_settings(settings.smtp, "capture" if capture else None)

    def state(self, now: datetime) -> BreakerState:
        if self.until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.until else BreakerState.HALF_OPEN

    def record(self, delivery: Delivery, now: datetime) -> Change | None:
        """One SMTP outcome at `now`. Outcomes of sends already in flight when the breaker
        opened change nothing: they belong to the same trip."""
        state = self.state(now)
        if state is BreakerState.OPEN:
            return None
        sign = sign_of(delivery)
        if sign is Sign.ALIVE:
            self.in_a_row = 0
            self.trips = 0
            if state is BreakerState.HALF_OPEN:
                self.until = self.reason = None
                return Change(BreakerState.CLOSED, None, "the server answered")
            return None
        self.in_a_row += 1
        if sign is Sign.LOST:
            return self._open(now, f"no reply after the message data: {delivery.reply}")
        if state is BreakerState.HALF_OPEN or self.in_a_row >= self.failures:
            return self._open(
                now, f"{self.in_a_row} connection failure(s) in a row: {delivery.reply}"
            )
        return None

    def refused(self, now: datetime, reason: str) -> Change:
        """The server refused this client's setup (a relay, login, TLS, sender or policy
        refusal: followup.delivery.replies): every message would be refused the same way until
        an operator fixes the setting, so a caller that runs often (the daemon) waits the
        backoff before it claims again, instead of claiming and giving back the queue at every
        run."""
        return self._open(now, f"refused: {reason}")

    def _open(self, now: datetime, reason: str) -> Change:
        self.trips += 1
        delay = min(self.backoff * 2 ** min(self.trips - 1, 32), self.backoff_max)
        self.until = now + delay
        self.reason = reason[:300]
        self.in_a_row = 0
        return Change(BreakerState.OPEN, self.until, self.reason)

    def snapshot(self, now: datetime) -> dict[str, Any]:
        """For /healthz and `followup status`."""
        return {
            "server": self.server,
            "state": self.state(now).value,
            "until": None if self.until is None else self.until.isoformat(),
            "reason": self.reason,
            "trips": self.trips,
        }
