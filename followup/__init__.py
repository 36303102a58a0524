"""followup: the after-sales follow-up engine.

Its public Python API is below (followup.api; docs/api.md): open an installation, import,
plan, send, dry-run, read the ledger, set a client's consent, unsuppress and erase a client.
Everything else in the package is private: its names may change in any release.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("followup")
except PackageNotFoundError:  # a copy of the source tree, not installed
    __version__ = "unknown"

from followup.api import (
    Breaker,
    ClientHistory,
    Clock,
    ConfigCheck,
    ConfigWarning,
    ConsentChange,
    DispatchReport,
    DispatchStopped,
    DryRun,
    DryRunEntry,
    ErasureReport,
    ImportReport,
    PlanReport,
    Retry,
    Runtime,
    Settings,
    Status,
    Unsuppression,
    check_config,
    dispatch,
    dry_run,
    erase_client,
    history,
    import_csv,
    open,
    plan,
    retry,
    send,
    set_consent,
    status,
    unsuppress,
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
    "Breaker",
    "ClientHistory",
    "Clock",
    "ConfigCheck",
    "ConfigError",
    "ConfigWarning",
    "ConsentChange",
    "DatabaseNotReady",
    "DispatchReport",
    "DispatchStopped",
    "DryRun",
    "DryRunEntry",
    "ErasureReport",
    "FollowupError",
    "ImportReport",
    "PlanReport",
    "RenderError",
    "Retry",
    "Runtime",
    "Settings",
    "SmtpSetupError",
    "Status",
    "Unsuppression",
    "__version__",
    "check_config",
    "dispatch",
    "dry_run",
    "erase_client",
    "history",
    "import_csv",
    "open",
    "plan",
    "retry",
    "send",
    "set_consent",
    "status",
    "unsuppress",
    "upgrade",
]
