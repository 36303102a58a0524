"""followup: the after-sales follow-up engine.

Its public Python API is below (followup.api; docs/api.md): open an installation, import,
plan, send, dry-run, read the ledger. Everything else in the package is private: its names
may change in any release.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("followup")
except PackageNotFoundError:  # a copy of the source tree, not installed
    __version__ = "unknown"

from followup.api import (
    ClientHistory,
    Clock,
    DispatchReport,
    DryRun,
    DryRunEntry,
    ImportReport,
    PlanReport,
    Retry,
    Runtime,
    Settings,
    Status,
    dispatch,
    dry_run,
    history,
    import_csv,
    open,
    plan,
    retry,
    send,
    status,
    upgrade,
)
from followup.delivery.smtp import SmtpSetupError
from followup.errors import (
    ConfigError,
    DatabaseNotReady,
    FollowupError,
    RenderError,
)

__all__ = [
    "ClientHistory",
    "Clock",
    "ConfigError",
    "DatabaseNotReady",
    "DispatchReport",
    "DryRun",
    "DryRunEntry",
    "FollowupError",
    "ImportReport",
    "PlanReport",
    "RenderError",
    "Retry",
    "Runtime",
    "Settings",
    "SmtpSetupError",
    "Status",
    "__version__",
    "dispatch",
    "dry_run",
    "history",
    "import_csv",
    "open",
    "plan",
    "retry",
    "send",
    "status",
    "upgrade",
]
