"""What a dispatch run reports (counts by outcome), and the hooks its caller gives it.

The counts are the ledger's truth for the run: each touch the run settled is counted once, by
the status it reached, except that `bounced` counts again those of the failed that bounced, and
a touch skipped as too late is counted in `too_late`, not in `skipped`. The CLI summary, the
`dispatch.done` log event, the run record and the metrics all read `counts()`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from followup.delivery.smtp import SmtpSetupError
from followup.domain.outcomes import Delivery

#: The counts of a run, in the order they are shown, and how the CLI summary names them.
COUNTS = {
    "sent": "sent",
    "retry": "retry later",
    "failed": "failed",
    "bounced": "bounced",
    "held": "held",
    "skipped": "skipped",
    "too_late": "too late",
    "uncertain": "uncertain",
}


@dataclass
class DispatchReport:
    #: Accepted by the server (ledger: sent).
    sent: int = 0
    #: Refused for now, tried again later (ledger: retry).
    retry: int = 0
    #: Failed for good: refused, bounced, too many attempts (ledger: failed). A template error
    #: holds the touch instead (`held`).
    failed: int = 0
    #: Of the failed, those refused as a recipient (5.1.x, 5.2.x): the address suppressed.
    bounced: int = 0
    #: Waiting for their template to be fixed (ledger: held).
    held: int = 0
    #: Not sent at send time, with a reason (ledger: skipped).
    skipped: int = 0
    #: Past their lateness (ledger: skipped, "too late"; not in `skipped`).
    too_late: int = 0
    #: The server may have them: no reply after the message data, or a lease lost by a dead
    #: run (ledger: uncertain).
    uncertain: int = 0
    #: Uncertain touches sent again (--resend-uncertain).
    requeued: int = 0
    #: Claimed but never given to the mailer, back in the queue when the run stopped.
    released: int = 0
    rate_limited: bool = False
    capture_dir: Path | None = None
    #: The SMTP server's circuit breaker opened: nothing more is sent before this time.
    breaker_until: datetime | None = None
    #: The signal that stopped the run (SIGTERM, SIGINT), if one did.
    signal: str | None = None
    #: Why the run stopped before the queue was done (the server refuses this client's
    #: setup), naming the setting to check; None when it did not.
    stopped: str | None = None

    def counts(self) -> dict[str, int]:
        """The touches this run settled, by what became of them (COUNTS' order)."""
        return {name: int(getattr(self, name)) for name in COUNTS}

    def summary(self) -> str:
        """The counts as the CLI prints them: "sent 3, retry later 0, failed 1 (bounced 1),
        ..."."""
        counts = self.counts()
        bounced = counts.pop("bounced")
        parts = [f"{COUNTS[name]} {count}" for name, count in counts.items()]
        parts[list(counts).index("failed")] += f" (bounced {bounced})"
        return ", ".join(parts)

    def detail(self) -> str:
        """The counts as the run record keeps them: "sent=3 retry=0 ...", and the stop."""
        text = " ".join(f"{name}={count}" for name, count in self.counts().items())
        if self.stopped is not None:
            text += f" released={self.released} stopped: {self.stopped}"
        return text

    def add(self, other: DispatchReport) -> None:
        """Adds the counts of another process's run."""
        for name in (*COUNTS, "requeued", "released"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rate_limited = self.rate_limited or other.rate_limited
        self.capture_dir = self.capture_dir or other.capture_dir
        if other.breaker_until is not None:
            self.breaker_until = max(self.breaker_until or other.breaker_until, other.breaker_until)
        self.stopped = self.stopped or other.stopped
        self.signal = self.signal or other.signal


class DispatchStopped(SmtpSetupError):
    """A dispatch run stopped because the SMTP server refuses this client's setup (a relay,
    login, TLS, sender or policy refusal): nobody was bounced, the touches not sent are back
    in the queue. Its message is the reason and the setting to check; `report` holds what
    the run did before it stopped."""

    def __init__(self, report: DispatchReport) -> None:
        super().__init__(
            f"{report.stopped}; nobody was bounced or suppressed, and the touches not sent "
            "stay in the queue"
        )
        self.report = report

    def __reduce__(self) -> tuple[type[DispatchStopped], tuple[DispatchReport]]:
        # Raised in a worker process: rebuilt from its report, not from its message.
        return type(self), (self.report,)


@dataclass(frozen=True, slots=True)
class Hooks:
    """When the run must stop claiming, and who sees each SMTP outcome (metrics)."""

    should_stop: Callable[[], bool]
    on_delivery: Callable[[Delivery, float], None] | None
