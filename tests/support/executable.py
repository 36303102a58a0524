"""The installed `followup` executable, run as a user would: in a folder, with the environment
of the test run less its FOLLOWUP_ variables, and the clock set to NOW."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXECUTABLE = Path(sys.executable).parent / "followup"
# A fixed "now" for the whole shop: Monday 23 November 2026, 18:00 UTC.
NOW = "2026-11-23T18:00:00+00:00"


def followup(
    cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWUP_")}
    environment.update({"FOLLOWUP_NOW": NOW, "COLUMNS": "200", **(env or {})})
    result = subprocess.run(
        [str(EXECUTABLE), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"followup {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result
