"""Writes a dry-run to a folder: one .eml per message, manifest.json, index.html to browse them.

The folder is created readable by its owner only: it holds client data.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from followup.app import DryRun, DryRunEntry


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
        "subject": entry.subject,
        "file": entry.file,
    }
    if entry.reason is not None:
        data["reason"] = entry.reason
    return data


def manifest(run: DryRun) -> dict[str, Any]:
    return {
        "date": run.on.isoformat(),
        "messages": [entry_json(e) for e in run.messages],
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
    skipped = "".join(
        f"<tr><td>{html.escape(e.client)}</td><td>{html.escape(e.campaign)}</td>"
        f"<td>{html.escape(e.reason or '')}</td></tr>"
        for e in run.skipped
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>followup dry-run {run.on}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}
td,th{{padding:.2rem .6rem;text-align:left}}
tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>What would go out on {run.on}</h1>
<p>{len(run.messages)} message(s), {len(run.skipped)} skipped. Nothing was sent.</p>
<table><tr><th>local time</th><th>client</th><th>campaign</th><th>locale</th>
<th>variant</th><th>subject</th><th></th></tr>
{"".join(rows)}</table>
<h2>Skipped</h2>
<table><tr><th>client</th><th>campaign</th><th>reason</th></tr>{skipped}</table>
</body></html>
"""
