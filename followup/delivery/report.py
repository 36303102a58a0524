"""What a dispatch run reports (counts by outcome), and the hooks its caller gives it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from followup.domain.outcomes import Delivery


@dataclass
class DispatchReport:
    sent: int = 0
    retry: int = 0
    failed: int = 0
    skipped: int = 0
    uncertain: int = 0
    too_late: int = 0
    held: int = 0
    requeued: int = 0
    rate_limited: bool = False
    capture_dir: Path | None = None

    def add(self, other: DispatchReport) -> None:
        """Adds the counts of another process's run."""
        counts = ("sent", "retry", "failed", "skipped", "uncertain", "too_late", "requeued", "held")
        for name in counts:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rate_limited = self.rate_limited or other.rate_limited
        self.capture_dir = self.capture_dir or other.capture_dir


@dataclass(frozen=True, slots=True)
class Hooks:
    """When the run must stop claiming, and who sees each SMTP outcome (metrics)."""

    should_stop: Callable[[], bool]
    on_delivery: Callable[[Delivery, float], None] | None
