"""The studio: a local web page where marketers see every message, locale and variant rendered
for a sample or a real client, with template errors inline (file and line), refreshed by
itself when a file under templates/ is saved.

Standard library only (http.server in a thread). It binds 127.0.0.1, answers only requests
addressed to that host (no DNS rebinding to client data), and never sends mail: it renders
with the same code as a send and stops there; links are signed with a throw-away key.

The page polls /api/version (a digest of every file's name, size and mtime under templates/)
and renders again when it changes.
"""

from __future__ import annotations

import hashlib
import html
import json
import threading
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from followup.config.settings import Settings
from followup.domain.clients import Recipient
from followup.errors import FollowupError, RenderError
from followup.messages import preview
from followup.messages.templates import Templates
from followup.storage import people
from followup.storage.engine import open_engine, sqlite_path

HOST = "127.0.0.1"


def _page() -> bytes:
    return resources.files("followup.service").joinpath("studio.html").read_bytes()


class Studio:
    """What the pages show: the catalogue of messages and one rendering at a time."""

    def __init__(self, settings: Settings, today: date) -> None:
        self.settings = settings
        self.root = settings.path(settings.templates_dir)
        self.today = today
        self._lock = threading.Lock()
        self._version = ""
        self._templates = self._new_templates()
        self._engine: Engine | None = None

    def _new_templates(self) -> Templates:
        return Templates(
            self.root,
            self.settings.sender.default_locale,
            auto_reload=True,
            limits=self.settings.templates.limits(),
        )

    def version(self) -> str:
        """A digest of every file under templates/: changes when any file is saved, added,
        renamed or removed."""
        digest = hashlib.sha256()
        if self.root.is_dir():
            for path in sorted(self.root.rglob("*")):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if path.is_file():
                    name = path.relative_to(self.root).as_posix()
                    digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:16]

    def templates(self) -> Templates:
        """The environment, compiled afresh when any file changed since the last request."""
        with self._lock:
            version = self.version()
            if version != self._version:
                self._templates = self._new_templates()
                self._version = version
            return self._templates

    def catalog(self) -> dict[str, Any]:
        templates = self.templates()
        messages: list[dict[str, Any]] = []
        problems = [_error_json(e) for e in templates.compile_all()] if self.root.is_dir() else []
        names = templates.messages() if self.root.is_dir() else []
        for name in names:
            try:
                variants = [
                    {"name": v.name, "label": v.label, "accent": v.colours["accent"]}
                    for v in templates.variants(name)
                ]
            except RenderError as exc:
                problems.append(_error_json(exc))
                variants = []
            messages.append(
                {"name": name, "locales": templates.locales(name), "variants": variants}
            )
        return {
            "version": self._version,
            "templates": str(self.root),
            "messages": messages,
            "samples": sorted(preview.SAMPLES),
            "problems": problems,
        }

    def _facts(self, client: str, locale: str) -> Recipient:
        if not client or client in preview.SAMPLES:
            return preview.SAMPLES.get(client) or preview.sample_for(locale)
        if self._engine is None:
            path = sqlite_path(self.settings.database_url)
            if path is not None and not path.exists():
                raise FollowupError(f"no database at {path}: only the sample clients are known")
            self._engine = open_engine(self.settings.database_url, create_dir=False)
        return people.preview_client(self._engine, client)

    def render(self, query: dict[str, str]) -> tuple[dict[str, Any], str]:
        """JSON for the page, and the HTML part (or an error page)."""
        message = query.get("message", "")
        locale = query.get("locale", "") or "en"
        variant = query.get("variant") or None
        templates = self.templates()
        try:
            day = date.fromisoformat(query["on"]) if query.get("on") else self.today
            if message not in templates.messages():
                raise FollowupError(f"no message {message!r} in {self.root}")
            facts = self._facts(query.get("client", ""), locale)
            facts = facts._replace(locale=locale)
            shown = preview.render(
                self.settings, templates, message, facts, on=day, variant=variant
            )
        except (FollowupError, ValueError, SQLAlchemyError) as exc:
            error = _error_json(exc)
            return {"version": self._version, "error": error}, _error_page(error)
        composed = shown.composed
        data = {
            "version": self._version,
            "error": None,
            "client": shown.client,
            "subject": composed.subject,
            "text": composed.text,
            "locale": composed.locale,
            "variant": composed.variant,
            "from": composed.from_email,
            "occasion": {k: str(v) for k, v in shown.occasion.items()},
        }
        return data, composed.html

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _error_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, RenderError):
        return {"file": exc.file, "line": exc.line, "message": exc.detail, "text": str(exc)}
    return {"file": None, "line": None, "message": str(exc), "text": str(exc)}


def _error_page(error: dict[str, Any]) -> str:
    return (
        '<!doctype html><meta charset="utf-8"><body style="font-family:sans-serif;'
        'color:#8a1c1c;margin:2rem"><h2>This message does not render</h2>'
        f"<pre>{html.escape(str(error['text']))}</pre></body>"
    )


class _Handler(BaseHTTPRequestHandler):
    server: StudioServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests carry client ids; nothing is logged."""

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any) -> None:
        body = json.dumps(data, ensure_ascii=False).encode()
        self._send(HTTPStatus.OK, body, "application/json; charset=utf-8")

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost"):
            self._send(HTTPStatus.FORBIDDEN, b"studio answers on 127.0.0.1 only", "text/plain")
            return
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        studio = self.server.studio
        if url.path == "/":
            self._send(HTTPStatus.OK, _page(), "text/html; charset=utf-8")
        elif url.path == "/api/version":
            self._json({"version": studio.version()})
        elif url.path == "/api/catalog":
            self._json(studio.catalog())
        elif url.path == "/api/render":
            self._json(studio.render(query)[0])
        elif url.path == "/message.html":
            page = studio.render(query)[1]
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")


class StudioServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, studio: Studio, port: int) -> None:
        self.studio = studio
        super().__init__((HOST, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


def serve(settings: Settings, today: date, port: int) -> StudioServer:
    """A studio server bound to 127.0.0.1:`port` (0: any free port), not yet serving."""
    return StudioServer(Studio(settings, today), port)
