"""Writes a dry-run to a folder: one .eml per message, manifest.json, index.html to browse them.

The folder is created readable by its owner only: it holds client data.
"""

from __future__ import annotations

import html
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from followup.dryrun.run import DryRun, DryRunEntry


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", value)[:60] or "x"


def entry_json(entry: DryRunEntry) -> dict[str, Any]:
    local = entry.send_at.astimezone(ZoneInfo(entry.timezone))
    data: dict[str, Any] = {
        "client": entry.client,
        "to": entry.to,
        "campaign": entry.campaign,
        "occasion": entry.occasion,
        "occurrence": entry.occurrence.isoformat(),
        "template": entry.template,
        "locale": entry.locale,
        "variant": entry.variant,
        "tier": entry.tier,
        "send_at_utc": entry.send_at.isoformat(),
        "send_at_local": local.isoformat(),
        "timezone": entry.timezone,
        "inferred": entry.inferred,
        "subject": entry.subject,
        "file": entry.file,
    }
    if entry.status != "sent" or entry.message is None:
        data["status"] = entry.status
    if entry.until is not None:
        data["until_utc"] = entry.until.isoformat()
        data["until_local"] = entry.until.astimezone(ZoneInfo(entry.timezone)).isoformat()
    if entry.reason is not None:
        data["reason"] = entry.reason
    return data


def manifest(run: DryRun) -> dict[str, Any]:
    return {
        "date": run.on.isoformat(),
        "messages": [entry_json(e) for e in run.messages],
        "waiting": [entry_json(e) for e in run.waiting],
        "skipped": [entry_json(e) for e in run.skipped],
    }


def write(run: DryRun, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(out, 0o700)
    for number, entry in enumerate(run.messages, start=1):
        assert entry.message is not None
        name = f"{number:05d}-{_slug(entry.campaign)}-{_slug(entry.client)}.eml"
        path = out / name
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(entry.message.mime)
        html_name = name[:-4] + ".html"
        fd = os.open(out / html_name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(entry.message.html)
        entry.file = name
    data = manifest(run)
    (out / "manifest.json").write_text(
        json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "index.html").write_text(_index(run), encoding="utf-8")
    return out / "manifest.json"


def _index(run: DryRun) -> str:
    rows = []
    for e in run.messages:
        local = e.send_at.astimezone(ZoneInfo(e.timezone)).strftime("%Y-%m-%d %H:%M %z")
        page = (e.file or "")[:-4] + ".html"
        rows.append(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            '<td><a href="{}">{}</a></td><td><a href="{}">.eml</a></td></tr>'.format(
                html.escape(local),
                html.escape(e.client),
                html.escape(e.campaign),
                html.escape(e.locale or ""),
                html.escape(e.variant or ""),
                html.escape(page),
                html.escape(e.subject or ""),
                html.escape(e.file or ""),
            )
        )
    waiting = "".join(
        f"<tr><td>{html.escape(e.client)}</td><td>{html.escape(e.campaign)}</td>"
        f"<td>{html.escape(_local(e.until, e.timezone) if e.until else '')}</td>"
        f"<td>{html.escape(e.reason or '')}</td></tr>"
        for e in run.waiting
    )
    skipped = "".join(
        f"<tr><td>{html.escape(e.client)}</td><td>{html.escape(e.campaign)}</td>"
        f"<td>{html.escape(_status(e))}</td><td>{html.escape(e.reason or '')}</td></tr>"
        for e in run.skipped
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>followup dry-run {run.on}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}
td,th{{padding:.2rem .6rem;text-align:left}}
tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>What would go out on {run.on}</h1>
<p>{len(run.messages)} message(s), {len(run.waiting)} waiting for a later day,
{len(run.skipped)} skipped. Nothing was sent.</p>
<table><tr><th>local time</th><th>client</th><th>campaign</th><th>locale</th>
<th>variant</th><th>subject</th><th></th></tr>
{"".join(rows)}</table>
<h2>Waiting for a later day</h2>
<table><tr><th>client</th><th>campaign</th><th>goes out</th><th>reason</th></tr>{waiting}</table>
<h2>Skipped</h2>
<table><tr><th>client</th><th>campaign</th><th>status</th><th>reason</th></tr>{skipped}</table>
</body></html>
"""


def _local(instant: datetime, timezone: str) -> str:
    return instant.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M %z")


def _status(entry: DryRunEntry) -> str:
    """What happens to a touch that does not go out: what the run does, or what the ledger
    already holds."""
    return {
        "skipped": "skipped",
        "failed": "fails",
        "held": "held (template error)",
        "sent": "sent already",
        "sending": "being sent",
        "uncertain": "uncertain",
    }.get(entry.status, entry.status)
