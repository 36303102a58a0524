"""Lease owners of real processes of this machine, for the tests of settling gone owners."""

from __future__ import annotations

import subprocess
import sys

from followup import owners


def owner_of(pid: int, *, ticks: str | None = None, host: str | None = None) -> str:
    """The owner a process `pid` of this machine would write (its start time as /proc says,
    unless `ticks` is given)."""
    boot, namespace, _ = owners.this_start().split(".")
    found = owners.start_ticks(pid) if ticks is None else ticks
    assert found, f"process {pid} has no start time"
    return f"{host or owners.host_name()}:{pid}:{boot}.{namespace}.{found}:abc123"


def dead_owner() -> str:
    """The owner of a process of this machine that has exited (killed and reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        return owner_of(process.pid)
    finally:
        process.kill()
        process.wait()
