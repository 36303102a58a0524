"""Lease owners: which of them are gone, told from real processes of this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from followup import owners
from tests.support.owners import owner_of

pytestmark = pytest.mark.skipif(
    owners.this_start() == owners.UNKNOWN, reason="needs /proc (Linux) to tell a process's start"
)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this machine, ended after the test."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdin is not None
        process.stdin.close()


def test_an_owner_is_host_pid_start_and_a_random_token() -> None:
    first, second = owners.owner_id(), owners.owner_id()
    host, pid, start, token = first.split(":")
    assert (host, int(pid), start) == (owners.host_name(), os.getpid(), owners.this_start())
    assert len(token) == 6 and first != second
    assert len(first) <= owners.MAX_LENGTH


def test_this_process_and_a_live_one_are_not_gone(child: subprocess.Popen[bytes]) -> None:
    mine, theirs = owners.owner_id(), owner_of(child.pid)
    assert owners.gone([mine, theirs]) == set()


def test_a_killed_process_is_gone_reaped_or_not(child: subprocess.Popen[bytes]) -> None:
    owner = owner_of(child.pid)
    child.send_signal(signal.SIGKILL)
    # Not reaped yet: a zombie holds the pid, and is gone all the same.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert owners.gone([owner]) == {owner}
    child.wait()
    assert owners.gone([owner]) == {owner}


def test_a_pid_used_again_by_another_process_is_gone(child: subprocess.Popen[bytes]) -> None:
    """The pid is alive, but since another start time: not the owner's process."""
    real = owners.start_ticks(child.pid)
    assert real is not None
    other = owner_of(child.pid, ticks=str(int(real) + 1))
    assert owners.gone([other]) == {other}


def test_an_owner_of_another_boot_waits_for_its_lease() -> None:
    """Another boot id under the same host name and pid namespace: this machine before a
    reboot, or another machine with the same name (VMs cloned from one image share both the
    name and the initial pid namespace's number). It may be a live daemon elsewhere: never
    settled here, its lease expires as before."""
    _, namespace, ticks = owners.this_start().split(".")
    owner = f"{owners.host_name()}:{os.getpid()}:000000000000.{namespace}.{ticks}:abc123"
    assert owners.gone([owner]) == set()


def test_owners_that_cannot_be_checked_are_never_gone(child: subprocess.Popen[bytes]) -> None:
    """Another host, another pid namespace (a container sharing the host name), an owner of
    followup's older form or with an unknown start, a test's name: their leases expire as
    before, even when the pid means nothing here."""
    elsewhere = owner_of(child.pid, host="elsewhere")
    child.kill()
    child.wait()
    boot, _, ticks = owners.this_start().split(".")
    here = owners.host_name()
    unchecked = [
        elsewhere,
        f"{here}:{child.pid}:{boot}.1.{ticks}:abc123",
        f"{here}:{child.pid}:abc123",
        f"{here}:{child.pid}:-:abc123",
        f"{here}:0:{owners.this_start()}:abc123",
        "crashed",
    ]
    assert owners.gone(unchecked) == set()
