"""Who holds a lease: the owner of a claim names its host and process, so that a process
starting on the same host can tell that the owner is gone (killed, crashed) and settle its
touches at once instead of waiting for the lease to run out.

An owner is `host:pid:start:token`. `start` says which process had that pid: on Linux
`<boot id>.<pid namespace>.<start time>` (the boot, the pid namespace the pid means something
in, and the process's start time in clock ticks since boot, from /proc/<pid>/stat), so that a
pid used again by another process, after a reboot or in another container that shares the
host name, is never mistaken for the owner; `-` where that cannot be read. `token` is random:
two runs of one process have different owners.

An owner is gone only when that is certain: same host, same boot and pid namespace, and no
process with that pid and start time (or a zombie in its place). An owner on another host,
of another boot, in another pid namespace, of an older form or whose start is unknown is alive
as far as this process can tell: its leases expire as before. Another boot is not taken as
"this machine before a reboot": two machines can share a host name (VMs cloned from one image)
and the initial pid namespace's number, and a live daemon's touches must never be settled by
another machine; the boot id, random at every boot, is what tells machines apart here.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

UNKNOWN = "-"
#: The lease_owner column's length.
MAX_LENGTH = 128
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Owner:
    """An owner's parts, as written in the ledger."""

    host: str
    pid: int
    boot: str
    namespace: str
    ticks: str

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The parts of `text`, or None for an owner of another form (an older followup, a
        test's name)."""
        parts = text.split(":")
        if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) <= 0:
            return None
        start = parts[2].split(".")
        if len(start) != 3:
            return None
        return cls(parts[0], int(parts[1]), *start)


def host_name() -> str:
    # The rest of an owner takes at most about 60 characters.
    return socket.gethostname().replace(":", "_")[:63]


def boot_id() -> str:
    """This boot of the machine (Linux), else UNKNOWN."""
    try:
        text = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text(encoding="ascii")
    except OSError:
        return UNKNOWN
    return text.strip().replace("-", "")[:12] or UNKNOWN


def pid_namespace() -> str:
    """The pid namespace this process sees pids in (Linux), else UNKNOWN."""
    try:
        return str(os.stat(_PROC / "self" / "ns" / "pid").st_ino)
    except OSError:
        return UNKNOWN


def start_ticks(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat), "" for a zombie
    (it has exited, its parent has not reaped it yet), None when there is no such file."""
    try:
        text = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = text[text.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    state, ticks = fields[0], fields[19]
    return "" if state in ("Z", "X") else ticks


def this_start() -> str:
    """The `start` part of this process's owners."""
    ticks = start_ticks(os.getpid())
    if ticks is None or boot_id() == UNKNOWN or pid_namespace() == UNKNOWN:
        return UNKNOWN
    return f"{boot_id()}.{pid_namespace()}.{ticks}"


def owner_id() -> str:
    """A new owner for a run of this process: `host:pid:start:token`."""
    token = f"{random.randrange(16**6):06x}"
    return f"{host_name()}:{os.getpid()}:{this_start()}:{token}"[:MAX_LENGTH]


def gone(owners: Iterable[str]) -> set[str]:
    """Those of `owners` whose process is certainly gone: on this host, boot and pid
    namespace, with no process of that pid and start time alive."""
    here = this_start()
    if here == UNKNOWN:
        return set()
    host, boot, namespace, _ = host_name(), *here.split(".")
    found = set()
    for text in owners:
        owner = Owner.parse(text)
        if owner is None or (owner.host, owner.boot, owner.namespace) != (host, boot, namespace):
            continue
        if _dead(owner.pid, owner.ticks):
            found.add(text)
    return found


def _dead(pid: int, ticks: str) -> bool:
    if pid == os.getpid():
        return ticks != start_ticks(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: alive, its start time still tells whether it is ours
    now = start_ticks(pid)
    # None: /proc hides it (hidepid) although it exists: it may be the owner.
    return now is not None and now != ticks
