"""The daemon's HTTP app in-process, over a real SQLite ledger and a real socket: the one-click
unsubscribe (RFC 8058), forged tokens, /healthz, /metrics, and the small HTTP parser."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from followup.config import Settings
from followup.domain import tokens
from followup.messages import compose
from followup.planning.plan import plan
from followup.runtime import Runtime
from followup.service import web
from followup.service.metrics import Metrics
from followup.storage import overview, tables
from tests.support.settings import make_settings
from tests.support.shop import NOW, seed

KEY = "test-secret-key"


@pytest.fixture
def rt(tmp_path: Path, open_runtime: Callable[[Settings], Runtime]) -> Runtime:
    runtime = open_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}"))
    seed(runtime, tmp_path)
    return runtime


def routes(rt: Runtime) -> web.WebApp:
    clock = lambda: NOW  # noqa: E731
    return web.WebApp(rt.engine, clock, KEY, Metrics(rt.engine, clock), lambda: {"owner": "t"})


def call(rt: Runtime, request: web.Request) -> web.Response:
    async def go() -> web.Response:
        try:
            return await routes(rt)(request)
        except web.HttpError as exc:
            return web.Response(exc.status, str(exc).encode())

    return asyncio.run(go())


def client(rt: Runtime, external_id: str) -> tuple[int, str, str]:
    c = tables.clients
    with rt.engine.connect() as conn:
        row = conn.execute(
            select(c.c.id, c.c.email, c.c.status).where(c.c.external_id == external_id)
        ).one()
    return int(row.id), str(row.email), str(row.status)


def suppressed(rt: Runtime, email: str) -> str | None:
    with rt.engine.connect() as conn:
        return overview.suppressed(conn, email)


FORM = {"content-type": "application/x-www-form-urlencoded"}
ONE_CLICK = b"List-Unsubscribe=One-Click"


def post(token: str, body: bytes = ONE_CLICK, headers: dict[str, str] = FORM) -> web.Request:
    return web.Request("POST", f"/unsubscribe/{token}", headers, body)


def test_one_click_post_unsubscribes_once_and_a_second_post_is_harmless(rt: Runtime) -> None:
    client_id, email, _ = client(rt, "c1")
    token = tokens.make(KEY, compose.UNSUBSCRIBE, client_id)
    first = call(rt, post(token))
    assert first.status == 200
    assert suppressed(rt, email) == "unsubscribed"
    assert client(rt, "c1")[2] == "unsubscribed"
    second = call(rt, post(token))
    assert second.status == 200
    assert client(rt, "c1")[2] == "unsubscribed"
    # The other clients are untouched.
    assert client(rt, "c2")[2] == "active"
    # The unsubscribe is the client's "no" to marketing, with its source and time.
    assert consent(rt, "c1") == ("no", "unsubscribe", NOW)
    assert consent(rt, "c2") == ("unknown", None, None)


def consent(rt: Runtime, external_id: str) -> tuple[Any, ...]:
    c = tables.clients
    with rt.engine.connect() as conn:
        return tuple(
            conn.execute(
                select(c.c.marketing_consent, c.c.consent_source, c.c.consent_at).where(
                    c.c.external_id == external_id
                )
            ).one()
        )


def test_get_shows_a_form_that_posts_and_changes_nothing(rt: Runtime) -> None:
    client_id, email, _ = client(rt, "c2")
    token = tokens.make(KEY, compose.UNSUBSCRIBE, client_id)
    page = call(rt, web.Request("GET", f"/unsubscribe/{token}", {}))
    assert page.status == 200
    text = page.body.decode()
    assert re.search(r'<form method="post" action="/unsubscribe/[^"]+">', text)
    assert 'name="List-Unsubscribe" value="One-Click"' in text
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert suppressed(rt, email) is None
    assert client(rt, "c2")[2] == "active"


def test_multipart_one_click_body_is_accepted(rt: Runtime) -> None:
    """RFC 8058's own example posts multipart/form-data."""
    client_id, email, _ = client(rt, "c3")
    token = tokens.make(KEY, compose.UNSUBSCRIBE, client_id)
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        b"One-Click\r\n--XyZ--\r\n"
    )
    response = call(rt, post(token, body, {"content-type": "multipart/form-data; boundary=XyZ"}))
    assert response.status == 200
    assert suppressed(rt, email) == "unsubscribed"


@pytest.mark.parametrize(
    "alter",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: "9" + t,  # subject changed, signature kept
        lambda t: t.split(".")[0],  # no signature
        lambda t: tokens.make("another-key", compose.UNSUBSCRIBE, t.split(".")[0]),
        lambda t: tokens.make(KEY, "another-purpose", t.split(".")[0]),
        lambda t: "",
    ],
)
def test_a_forged_or_altered_token_answers_4xx_and_changes_nothing(
    rt: Runtime, alter: Callable[[str], str]
) -> None:
    client_id, email, _ = client(rt, "c1")
    forged = alter(tokens.make(KEY, compose.UNSUBSCRIBE, client_id))
    for request in (post(forged), web.Request("GET", f"/unsubscribe/{forged}", {})):
        response = call(rt, request)
        assert 400 <= response.status < 500
    assert suppressed(rt, email) is None
    assert client(rt, "c1")[2] == "active"


def test_a_post_without_the_one_click_body_changes_nothing(rt: Runtime) -> None:
    client_id, email, _ = client(rt, "c1")
    token = tokens.make(KEY, compose.UNSUBSCRIBE, client_id)
    assert call(rt, post(token, b"")).status == 400
    assert call(rt, post(token, b"List-Unsubscribe=Maybe")).status == 400
    assert suppressed(rt, email) is None


def test_a_bounced_client_stays_bounced_after_unsubscribing(rt: Runtime) -> None:
    client_id, email, _ = client(rt, "c1")
    with rt.engine.begin() as conn:
        conn.execute(
            tables.clients.update().where(tables.clients.c.id == client_id).values(status="bounced")
        )
    assert call(rt, post(tokens.make(KEY, compose.UNSUBSCRIBE, client_id))).status == 200
    assert client(rt, "c1")[2] == "bounced"
    assert suppressed(rt, email) == "unsubscribed"


def test_healthz_reports_the_database_schema_and_last_runs(rt: Runtime) -> None:
    plan(rt, NOW)
    response = call(rt, web.Request("GET", "/healthz", {}))
    assert response.status == 200
    data = json.loads(response.body)
    assert data["status"] == "ok" and data["database"] and data["schema_at_head"]
    assert data["last_plan"]["outcome"] == "ok"
    assert data["last_dispatch"] is None
    assert data["instance"] == {"owner": "t"}


def test_metrics_read_the_ledger_at_scrape_time(rt: Runtime) -> None:
    plan(rt, NOW)
    text = call(rt, web.Request("GET", "/metrics", {})).body.decode()
    assert 'followup_touches{campaign="thank_you",status="planned"} 3.0' in text
    assert "followup_queue_depth 3.0" in text
    assert "followup_queue_due 3.0" in text
    assert "followup_database_up 1.0" in text


def test_unknown_paths_and_methods(rt: Runtime) -> None:
    assert call(rt, web.Request("GET", "/nope", {})).status == 404
    assert call(rt, web.Request("POST", "/healthz", {})).status == 405
    assert call(rt, web.Request("DELETE", "/unsubscribe/x.y", {})).status == 405


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


def test_the_server_parses_requests_and_refuses_malformed_ones(rt: Runtime) -> None:
    client_id, email, _ = client(rt, "c2")
    token = tokens.make(KEY, compose.UNSUBSCRIBE, client_id)

    async def go() -> list[bytes]:
        server = await web.serve(routes(rt), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return [
                await _raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
                await _raw(port, b"nonsense\r\n\r\n"),
                await _raw(
                    port,
                    b"POST /unsubscribe/x HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
                ),
                await _raw(
                    port,
                    b"POST /unsubscribe/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                ),
                await _raw(
                    port,
                    f"POST /unsubscribe/{token} HTTP/1.1\r\nContent-Type: "
                    f"application/x-www-form-urlencoded\r\nContent-Length: {len(ONE_CLICK)}"
                    "\r\n\r\n".encode()
                    + ONE_CLICK,
                ),
            ]
        finally:
            server.close()
            await server.wait_closed()

    health, bad, huge, chunked, unsubscribed = asyncio.run(go())
    assert health.startswith(b"HTTP/1.1 200 ") and b"application/json" in health
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert huge.startswith(b"HTTP/1.1 413 ")
    assert chunked.startswith(b"HTTP/1.1 411 ")
    assert unsubscribed.startswith(b"HTTP/1.1 200 ")
    assert suppressed(rt, email) == "unsubscribed"


def test_unsubscribe_time_comes_from_the_clock(rt: Runtime) -> None:
    client_id, email, _ = client(rt, "c1")
    call(rt, post(tokens.make(KEY, compose.UNSUBSCRIBE, client_id)))
    with rt.engine.connect() as conn:
        at = conn.execute(
            select(tables.suppressions.c.created_at).where(tables.suppressions.c.email == email)
        ).scalar_one()
    assert at == NOW == datetime(2027, 1, 8, 16, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- survey


def test_the_survey_link_records_a_score_that_history_shows(rt: Runtime) -> None:
    from followup.service import reports

    plan(rt, NOW)
    t = tables.touches
    with rt.engine.connect() as conn:
        touch = conn.execute(select(t).where(t.c.client_id == client(rt, "c2")[0])).one()
    token = compose.survey_token(KEY, touch.client_id, touch.campaign, touch.occurrence)
    page = call(rt, web.Request("GET", f"/survey/{token}", {}))
    assert page.status == 200
    assert page.body.decode().count('name="score"') == 5
    assert reports.history(rt, "c2").touches[0].survey_score is None  # type: ignore[union-attr]

    answer = call(rt, web.Request("POST", f"/survey/{token}", FORM, b"score=4"))
    assert answer.status == 200
    found = reports.history(rt, "c2")
    assert found is not None
    assert [x.survey_score for x in found.touches] == [4]
    # A second answer replaces the first.
    assert call(rt, web.Request("POST", f"/survey/{token}", FORM, b"score=5")).status == 200
    again = reports.history(rt, "c2")
    assert again is not None
    assert [x.survey_score for x in again.touches] == [5]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/survey/1-20270106-thank_you.forged", b"score=4", 400),
        ("/survey/{token}", b"score=9", 400),
        ("/survey/{token}", b"", 400),
        ("/survey/{other}", b"score=3", 404),
    ],
)
def test_survey_answers_need_a_valid_link_and_score(
    rt: Runtime, path: str, body: bytes, status: int
) -> None:
    from datetime import date

    plan(rt, NOW)
    client_id = client(rt, "c1")[0]
    token = compose.survey_token(KEY, client_id, "thank_you", date(2027, 1, 6))
    other = compose.survey_token(KEY, client_id, "thank_you", date(2026, 1, 6))
    request = web.Request("POST", path.format(token=token, other=other), FORM, body)
    assert call(rt, request).status == status
    with rt.engine.connect() as conn:
        assert conn.execute(select(tables.survey_answers)).all() == []
