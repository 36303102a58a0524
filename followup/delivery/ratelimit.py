"""Per-second rate limits of the SMTP connections. The hourly and daily limits are counted in
the ledger (followup.delivery.dispatcher), so that they hold across restarts and processes."""

from __future__ import annotations


class TokenBucket:
    """At most `rate` events per second on average, with bursts of up to `burst`.

    Pure: the caller passes the time; `take` answers how long to wait before the event.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.last: float | None = None

    def take(self, now: float) -> float:
        """Reserve one token at `now`; returns the seconds to wait until it is available."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
