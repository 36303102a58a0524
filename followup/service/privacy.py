"""Erasing a client everywhere followup keeps them (`followup client erase`): the copies of
their messages in the capture maildir, the dry-run folders that list them, the database
(storage/people.py), then the database's free space (storage/privacy.py).

The files go first: they are found by the address and the Message-IDs that the database
still holds. If the erasure stops half-way, running it again finishes it.

A file is overwritten with zeros before it is unlinked. That is as far as a program can go:
on a copy-on-write or journaling file system, an SSD, or in a backup, the old blocks may
remain; an encrypted disk is what protects those.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from followup.logs import log_event
from followup.runtime import Runtime
from followup.storage import people
from followup.storage import privacy as storage_privacy

MAILDIR_PARTS = ("new", "cur", "tmp")


@dataclass
class ErasureReport:
    erasure: people.Erasure
    #: Messages removed from the capture maildir.
    captured_removed: int = 0
    #: Dry-run folders removed whole (a dry-run is a snapshot: run it again).
    dry_runs_removed: list[Path] = field(default_factory=list)
    #: What the database's clean-up did (storage/privacy.py's `vacuum`).
    vacuum: str = ""


def _shred(path: Path) -> None:
    """Overwrite the file with zeros, then unlink it."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.write(b"\0" * size)
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


def _mentions(data: bytes, target: people.ErasureTarget) -> bool:
    lowered = data.lower()
    needles = [target.email.strip().lower(), *(m.lower() for m in target.message_ids)]
    return any(needle.encode() in lowered for needle in needles if needle)


def remove_captured(maildir: Path, target: people.ErasureTarget) -> int:
    """Removes the capture maildir's messages to the client (by address or Message-ID)."""
    removed = 0
    for part in MAILDIR_PARTS:
        folder = maildir / part
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and _mentions(path.read_bytes(), target):
                _shred(path)
                removed += 1
    return removed


def _manifests(root: Path) -> Iterator[Path]:
    if (root / "manifest.json").is_file():
        yield root / "manifest.json"
    if root.is_dir():
        yield from sorted(root.glob("*/manifest.json"))


def _lists(manifest: Any, target: people.ErasureTarget) -> bool:
    address = target.email.strip().lower()
    for kind in ("messages", "waiting", "skipped"):
        for entry in manifest.get(kind, []) if isinstance(manifest, dict) else []:
            if entry.get("client") == target.external_id:
                return True
            if str(entry.get("to") or "").strip().lower() == address:
                return True
    return False


def remove_dry_runs(root: Path, target: people.ErasureTarget) -> list[Path]:
    """Removes, whole, the dry-run folders under `root` (or `root` itself) whose manifest
    lists the client, and any whose manifest is unreadable but whose files name them."""
    removed: list[Path] = []
    for manifest_path in list(_manifests(root)):
        folder = manifest_path.parent
        try:
            listed = _lists(json.loads(manifest_path.read_text(encoding="utf-8")), target)
        except (OSError, ValueError):
            listed = any(
                _mentions(p.read_bytes(), target) for p in folder.rglob("*") if p.is_file()
            )
        if listed:
            for path in folder.rglob("*"):
                if path.is_file():
                    _shred(path)
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


def erase(
    rt: Runtime,
    client: str,
    now: datetime,
    *,
    dry_runs: Path | None = None,
    vacuum: bool = True,
) -> ErasureReport:
    """Erases one client (by external id or e-mail) from the capture maildir, the dry-run
    folders under `dry_runs`, and the database; then, with `vacuum`, rewrites the database
    so that no deleted byte remains (on SQLite the WAL is truncated either way)."""
    target = people.erasure_target(rt.engine, client)
    maildir = rt.settings.path(rt.settings.delivery.capture_dir)
    captured = remove_captured(maildir, target)
    folders = [] if dry_runs is None else remove_dry_runs(dry_runs, target)
    erasure = people.erase_client(rt.engine, target.external_id, now)
    report = ErasureReport(erasure, captured, folders)
    report.vacuum = storage_privacy.vacuum(rt.engine, full=vacuum)
    log_event(
        "client.erased",
        client=erasure.client_id,
        touches_kept=erasure.touches_kept,
        purchases=erasure.purchases_removed,
        captured=captured,
        dry_runs=len(folders),
        vacuumed=vacuum,
    )
    return report


def vacuum(rt: Runtime) -> str:
    """`followup db vacuum`: the database rewritten without its free space."""
    done = storage_privacy.vacuum(rt.engine, full=True)
    log_event("db.vacuumed", result=done)
    return done
