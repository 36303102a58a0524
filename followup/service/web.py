"""The HTTP boundary of `followup daemon`: GET /healthz, GET /metrics, GET and POST
/unsubscribe/<token> (RFC 8058 one-click), GET and POST /survey/<token> (a satisfaction score).

A deliberately small HTTP/1.1 server on asyncio streams (one request per connection, bounded
sizes and timeouts): four routes do not justify a web framework and its dependencies. Put a
reverse proxy (TLS, access logs) in front of it when the links are public. Database work runs
in worker threads, so a slow query never stalls the scheduler or the other requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import html
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from followup.domain import tokens
from followup.logs import log_event
from followup.messages import compose
from followup.service.metrics import Metrics
from followup.storage import overview, people
from followup.storage.dialects import ledger_for
from followup.storage.engine import reader
from followup.storage.schema import current_revision, head_revision

log = logging.getLogger("followup")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Awaitable[Response]]


async def _read_request(reader: asyncio.StreamReader) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(413, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "transfer-encoding" in headers:
        raise HttpError(411, "send a Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise HttpError(400, "bad Content-Length")
    length = int(length_text)
    if length > MAX_BODY:
        raise HttpError(413, "request body too large")
    if length:
        body = await reader.readexactly(length)
    path = target.split("?", 1)[0]
    return Request(method.upper(), path, headers, body)


def _encode(response: Response) -> bytes:
    reason = REASONS.get(response.status, "")
    headers = {
        "Content-Type": response.content_type,
        "Content-Length": str(len(response.body)),
        "Connection": "close",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        **response.headers,
    }
    head = f"HTTP/1.1 {response.status} {reason}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode("latin-1") + response.body


async def serve(handler: Handler, host: str, port: int) -> asyncio.Server:
    """Start serving `handler` on host:port; the caller closes the returned server."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    request = await _read_request(reader)
                response = await handler(request)
            except HttpError as exc:
                response = Response(exc.status, f"{exc}\n".encode())
            except TimeoutError:
                response = Response(408, b"request timeout\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except Exception:
                log.exception("http handler failed", extra={"event": "http.error"})
                response = Response(500, b"internal error\n")
            writer.write(_encode(response))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(connection, host, port, limit=MAX_HEAD)


# ----------------------------------------------------------------------------- the routes

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font:inherit;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1>{content}</body></html>
"""

# The confirmation page posts the same body as a one-click mail client (RFC 8058 section 3.1).
_FORM = """<p>Click the button to stop receiving these messages.</p>
<form method="post" action="{action}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button>
</form>"""

_SURVEY_FORM = """<p>How satisfied are you, from 1 (not at all) to 5 (very)?</p>
<form method="post" action="{action}">
<button type="submit" name="score" value="1">1</button>
<button type="submit" name="score" value="2">2</button>
<button type="submit" name="score" value="3">3</button>
<button type="submit" name="score" value="4">4</button>
<button type="submit" name="score" value="5">5</button>
</form>"""


def _survey_subject(subject: str | None) -> tuple[int, date, str] | None:
    """(client id, occurrence, campaign) from a verified survey token's subject."""
    if subject is None:
        return None
    client, _, rest = subject.partition("-")
    day, _, campaign = rest.partition("-")
    if not client.isdigit() or len(day) != 8 or not day.isdigit() or not campaign:
        return None
    try:
        occurrence = date(int(day[:4]), int(day[4:6]), int(day[6:]))
    except ValueError:
        return None
    return int(client), occurrence, campaign


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    # The token is in the URL: never send it to another site.
    "Referrer-Policy": "no-referrer",
}


def _page(status: int, title: str, content: str) -> Response:
    body = _PAGE.format(title=html.escape(title), content=content).encode()
    return Response(status, body, "text/html; charset=utf-8", dict(_PAGE_HEADERS))


def one_click_requested(content_type: str, body: bytes) -> bool:
    """RFC 8058 section 3.1: the POST body carries List-Unsubscribe=One-Click, either as
    application/x-www-form-urlencoded or as multipart/form-data."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        parser = email.parser.BytesParser(policy=email.policy.HTTP)
        message = parser.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if name == "List-Unsubscribe" and isinstance(payload, bytes):
                return payload.strip() == b"One-Click"
        return False
    form = parse_qs(body.decode("utf-8", "replace"))
    return "One-Click" in form.get("List-Unsubscribe", [])


class WebApp:
    """The daemon's routes. `instance` tells /healthz what this process last did."""

    def __init__(
        self,
        engine: Engine,
        clock: Callable[[], datetime],
        key: str,
        metrics: Metrics,
        instance: Callable[[], dict[str, Any]],
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.key = key
        self.metrics = metrics
        self.instance = instance

    async def __call__(self, request: Request) -> Response:
        path = request.path
        if path == "/healthz":
            self._allow(request, "GET")
            return await self.healthz()
        if path == "/metrics":
            self._allow(request, "GET")
            body = await asyncio.to_thread(self.metrics.exposition)
            return Response(200, body, CONTENT_TYPE_LATEST)
        if path.startswith("/unsubscribe/"):
            self._allow(request, "GET", "POST")
            return await self.unsubscribe(request, unquote(path.removeprefix("/unsubscribe/")))
        if path.startswith("/survey/"):
            self._allow(request, "GET", "POST")
            return await self.survey(request, unquote(path.removeprefix("/survey/")))
        raise HttpError(404, "not found")

    @staticmethod
    def _allow(request: Request, *methods: str) -> None:
        if request.method not in methods:
            raise HttpError(405, f"use {' or '.join(methods)}")

    def _health(self) -> dict[str, Any]:
        data: dict[str, Any] = {"database": False, "schema_at_head": False}
        try:
            revision = current_revision(self.engine)
            data["database"] = True
            data["schema"] = revision
            data["schema_at_head"] = revision == head_revision()
            with reader(self.engine) as conn:
                runs = overview.last_runs(conn)
                data["held"] = overview.held_count(conn)
        except SQLAlchemyError as exc:
            data["error"] = type(exc).__name__
            runs = {}
        for kind in ("plan", "dispatch", "housekeeping"):
            run = runs.get(kind)
            data[f"last_{kind}"] = (
                None
                if run is None
                else {
                    "finished_at": run["finished_at"].isoformat(),
                    "outcome": run["outcome"],
                    "owner": run["owner"],
                }
            )
        data["instance"] = self.instance()
        return data

    async def healthz(self) -> Response:
        data = await asyncio.to_thread(self._health)
        healthy = bool(data["database"] and data["schema_at_head"])
        data["status"] = "ok" if healthy else "unhealthy"
        breaker = data["instance"].get("smtp_breaker")
        # Degraded: it runs, but does not send everything: the SMTP server does not answer
        # (followup.delivery.breaker), or touches are held on a template error.
        if healthy and (
            (breaker is not None and breaker["state"] != "closed") or bool(data.get("held"))
        ):
            data["status"] = "degraded"
        body = json.dumps(data, indent=2).encode() + b"\n"
        return Response(200 if healthy else 503, body, "application/json")

    async def unsubscribe(self, request: Request, token: str) -> Response:
        subject = tokens.verify(self.key, compose.UNSUBSCRIBE, token)
        if subject is None or not subject.isdigit():
            log_event("unsubscribe.refused", method=request.method)
            return _page(400, "Invalid link", "<p>This unsubscribe link is not valid.</p>")
        client_id = int(subject)
        if request.method == "GET":
            # Never unsubscribe on GET: link scanners and previews fetch links on their own.
            action = html.escape(f"/unsubscribe/{token}", quote=True)
            return _page(200, "Unsubscribe", _FORM.format(action=action))
        if not one_click_requested(request.headers.get("content-type", ""), request.body):
            return _page(
                400, "Invalid request", "<p>The request must carry List-Unsubscribe=One-Click.</p>"
            )
        await asyncio.to_thread(self._unsubscribe, client_id)
        return _page(200, "Unsubscribed", "<p>You will receive no more of these messages.</p>")

    async def survey(self, request: Request, token: str) -> Response:
        """The satisfaction link of a survey message: GET shows five buttons, POST records
        the score (1-5) on the touch. Never on GET: link scanners would answer for the client."""
        subject = tokens.verify(self.key, compose.SURVEY, token)
        parsed = _survey_subject(subject)
        if parsed is None:
            log_event("survey.refused", method=request.method)
            return _page(400, "Invalid link", "<p>This survey link is not valid.</p>")
        if request.method == "GET":
            action = html.escape(f"/survey/{token}", quote=True)
            return _page(200, "How did we do?", _SURVEY_FORM.format(action=action))
        form = parse_qs(request.body.decode("utf-8", "replace"))
        score = (form.get("score") or [""])[0]
        if score not in {"1", "2", "3", "4", "5"}:
            return _page(400, "Invalid answer", "<p>A score is 1 to 5.</p>")
        found = await asyncio.to_thread(self._record_survey, *parsed, int(score))
        if not found:
            return _page(404, "Unknown survey", "<p>This survey is no longer open.</p>")
        return _page(200, "Thank you", "<p>Thank you: your answer helps us do better.</p>")

    def _record_survey(self, client_id: int, occurrence: date, campaign: str, score: int) -> bool:
        with reader(self.engine) as conn:
            touch = overview.touch_by_key(conn, client_id, campaign, occurrence)
        if touch is None:
            return False
        found = people.record_survey(self.engine, int(touch), score, self.clock())
        log_event("survey.answered", touch=int(touch), score=score)
        return found

    def _unsubscribe(self, client_id: int) -> None:
        with self.engine.begin() as conn:
            found = ledger_for(conn).unsubscribe(conn, client_id, self.clock())
        log_event("unsubscribe.done", client_id=client_id, found=found)
