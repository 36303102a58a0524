"""Issue 20: rendering runs off the event loop; templates are rebuilt when templates/ changes;
sending refuses a template that does not compile; `retry` moves failed touches only. On
SQLite and PostgreSQL, against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import random
import shutil
import threading
from collections.abc import Callable
from datetime import timedelta
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from followup import api
from followup.config import Settings
from followup.delivery.dispatcher import dispatch
from followup.errors import RenderError
from followup.messages import compose
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.storage import tables
from tests.support.settings import ROOT, make_settings
from tests.support.shop import NOW, seed
from tests.support.smtp import SmtpServer

OpenRuntime = Callable[[Settings], Runtime]
#: How long a test waits for what must happen (nothing is timed).
WAIT = 30.0


def smtp_runtime(
    tmp_path: Path, database_url: str, server: SmtpServer, open_runtime: OpenRuntime
) -> Runtime:
    """A seeded, planned runtime over a copy of the templates, sending to `server`."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    settings = make_settings(
        tmp_path,
        database_url,
        delivery={"mode": "smtp"},
        smtp={"host": server.host, "port": server.port, "security": "none"},
    ).model_copy(update={"templates_dir": str(templates)})
    rt = open_runtime(settings)
    seed(rt, tmp_path)
    plan(rt, NOW)
    return rt


def statuses(rt: Runtime) -> dict[str, str]:
    t, c = tables.touches, tables.clients
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(c.c.external_id, t.c.status).join(c, c.c.id == t.c.client_id)
        ).all()
    return {str(row.external_id): str(row.status) for row in rows}


def test_messages_are_composed_in_a_worker_thread_while_the_loop_runs_on(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each compose waits until a coroutine of the event loop has answered it: on the loop
    itself it could not be answered (the wait would run out and the test fail)."""
    rt = smtp_runtime(tmp_path, database_url, smtp_server, open_runtime)
    original = compose.compose
    asked, answered = threading.Event(), threading.Event()
    seen: list[tuple[int, bool]] = []

    def composing(*args: Any, **kwargs: Any) -> compose.Composed:
        answered.clear()
        asked.set()
        seen.append((threading.get_ident(), answered.wait(WAIT)))
        return original(*args, **kwargs)

    monkeypatch.setattr(compose, "compose", composing)

    async def answer(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            if await loop.run_in_executor(None, asked.wait, 0.05):
                asked.clear()
                answered.set()

    async def main() -> int:
        stop = asyncio.Event()
        answering = asyncio.create_task(answer(stop))
        try:
            report = await dispatch(rt, lambda: NOW, rng=random.Random(1))
        finally:
            stop.set()
            await answering
        assert all(ident != threading.get_ident() for ident, _ in seen)
        return report.sent

    assert asyncio.run(main()) == 3
    assert len(seen) == 3 and all(ok for _, ok in seen), "the loop answered every compose"
    assert len(smtp_server.handler.received) == 3


def test_templates_are_rebuilt_when_a_file_changes_and_only_then(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = smtp_runtime(tmp_path, database_url, smtp_server, open_runtime)
    built = rt.templates
    assert rt.reload_templates() is False and rt.templates is built
    subject = rt.templates.root / "thank_you" / "en" / "subject.txt"
    subject.write_text("Thanks again, {{ client.first_name }}!\n", encoding="utf-8")
    assert rt.reload_templates() is True and rt.templates is not built
    assert rt.reload_templates() is False
    (rt.templates.root / "thank_you" / "en" / "html.html").unlink()
    assert rt.reload_templates() is True, "a file removed changes the stamp"
    (rt.templates.root / "thank_you" / "en" / "html.html").write_text("<p>Hi</p>\n")
    assert api.send(rt, NOW).sent == 3
    subjects = {
        str(email.message_from_bytes(m.data, policy=default)["Subject"])
        for m in smtp_server.handler.received
    }
    assert "Thanks again, Ann!" in subjects, subjects


def test_sending_refuses_a_needed_template_that_does_not_compile_and_ignores_others(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = smtp_runtime(tmp_path, database_url, smtp_server, open_runtime)
    root = rt.templates.root
    unused = root / "not_a_campaign" / "en"
    unused.mkdir(parents=True)
    (unused / "subject.txt").write_text("{% if %}\n", encoding="utf-8")
    rt.check_templates()  # no enabled campaign uses it
    (root / "_partials" / "en" / "footer.txt").write_text("ok\n{{ x }\n", encoding="utf-8")
    (root / "thank_you" / "fr" / "text.txt").write_text("{% for %}\n", encoding="utf-8")
    rt.reload_templates()
    with pytest.raises(RenderError) as refused:
        api.send(rt, NOW)
    message = str(refused.value)
    assert "templates/_partials/en/footer.txt:2" in message
    assert "templates/thank_you/fr/text.txt:1" in message
    assert "not_a_campaign" not in message
    assert smtp_server.handler.received == []
    assert "sent" not in statuses(rt).values()


def test_retry_moves_failed_touches_by_campaign_reason_and_day_never_others(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer, open_runtime: OpenRuntime
) -> None:
    rt = smtp_runtime(tmp_path, database_url, smtp_server, open_runtime)
    t, c = tables.touches, tables.clients
    failed_at = {"c1": NOW - timedelta(days=2), "c2": NOW - timedelta(days=1)}
    with rt.engine.begin() as conn:
        ids = dict(
            conn.execute(select(c.c.external_id, t.c.id).join(c, c.c.id == t.c.client_id)).all()
        )
        for client, at in failed_at.items():
            conn.execute(
                update(t)
                .where(t.c.id == ids[client])
                .values(status="failed", reason="template error: x 100%", updated_at=at)
            )
        conn.execute(
            update(t)
            .where(t.c.id == ids["c3"])
            .values(status="uncertain", reason="template error: x 100%", updated_at=NOW)
        )

    def retry(**filters: Any) -> list[str]:
        found = api.retry(rt, NOW, dry_run=True, **filters)
        assert found.retried == 0
        return [line.client for line in found.touches]

    assert retry() == ["c1", "c2"], "oldest first, never the uncertain c3"
    assert retry(campaign="thank_you") == ["c1", "c2"]
    assert retry(campaign="birthday") == []
    assert retry(reason="X 100%") == ["c1", "c2"]
    assert retry(reason="x_100") == [], "the reason is text, not a LIKE pattern"
    assert retry(since=NOW - timedelta(days=1)) == ["c2"]
    assert retry(until=NOW - timedelta(days=1)) == ["c1"]
    assert statuses(rt)["c1"] == "failed", "a dry-run changes nothing"

    done = api.retry(rt, NOW, until=NOW - timedelta(days=1))
    assert done.retried == 1 and done.to_json()["touches"][0]["client"] == "c1"
    found = statuses(rt)
    assert (found["c1"], found["c2"], found["c3"]) == ("planned", "failed", "uncertain")
    assert api.send(rt, NOW + timedelta(minutes=1)).sent == 1
    assert [m.rcpt_tos for m in smtp_server.handler.received] == [["ann@example.com"]]
    assert statuses(rt)["c1"] == "sent"


def test_a_stop_asked_while_composing_waits_for_one_message_and_gives_the_rest_back(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: OpenRuntime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM during a group's composing (a slow template): the worker thread finishes the
    message at hand, composes no other; those not composed are back in the queue, not left
    `sending`."""
    rt = smtp_runtime(tmp_path, database_url, smtp_server, open_runtime)
    original = compose.compose
    composed: list[str] = []

    def composing(*args: Any, **kwargs: Any) -> compose.Composed:
        composed.append(str(kwargs["campaign"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(compose, "compose", composing)
    report = asyncio.run(
        dispatch(rt, lambda: NOW, rng=random.Random(1), should_stop=lambda: bool(composed))
    )
    assert len(composed) == 1 and report.sent == 0
    assert "sending" not in statuses(rt).values()
    assert list(statuses(rt).values()).count("planned") >= 3
    assert smtp_server.handler.received == []
