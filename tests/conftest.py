"""Shared fixtures: databases (SQLite always, PostgreSQL when FOLLOWUP_TEST_POSTGRES_URL is set),
a runtime over the repository's templates, and a real recording SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from followup import app, store
from followup.config import Settings, load_settings

hypothesis_settings.register_profile("dev", max_examples=60, deadline=None)
hypothesis_settings.register_profile("ci", max_examples=300, deadline=None)
hypothesis_settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
)

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("FOLLOWUP_TEST_POSTGRES_URL", "")
NO_POSTGRES = "FOLLOWUP_TEST_POSTGRES_URL is not set (PostgreSQL tests need a real server)"


@pytest.fixture(autouse=True)
def _heap_not_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """dispatch_in_processes freezes its process's heap once (app.freeze_startup_heap): in the
    test process that would change the garbage collection of every later test, by the order
    they run in. The real executable, in the end-to-end tests, freezes as in production."""
    monkeypatch.setattr(app, "_heap_frozen", True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    yield from _postgres_database()


@pytest.fixture
def postgres_url_2() -> Iterator[str]:
    """A second fresh PostgreSQL database, for tests that compare two ledgers."""
    yield from _postgres_database()


def _postgres_database() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    name = f"followup_test_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'followup.db'}"
    return str(request.getfixturevalue("postgres_url"))


def make_settings(tmp_path: Path, database_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings over the repository's templates, with everything written under tmp_path."""
    env = {
        "FOLLOWUP_DATABASE_URL": database_url,
        "FOLLOWUP_TEMPLATES_DIR": str(ROOT / "templates"),
        "FOLLOWUP_CALENDARS_DIR": str(ROOT / "calendars"),
        "FOLLOWUP_DELIVERY_CAPTURE_DIR": str(tmp_path / "outbox"),
        "FOLLOWUP_SECRET_KEY": "test-secret-key",
    }
    for section, values in sections.items():
        for key, value in values.items():
            env[f"FOLLOWUP_{section.upper()}_{key.upper()}"] = str(value)
    return load_settings(ROOT / "config.toml", env)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def open_runtime() -> Iterator[Callable[[Settings], app.Runtime]]:
    """Opens runtimes over migrated databases and disposes of their engines afterwards."""
    opened: list[app.Runtime] = []

    def factory(settings: Settings) -> app.Runtime:
        rt = app.Runtime.open(settings, create=True)
        store.upgrade(rt.engine)
        opened.append(rt)
        return rt

    yield factory
    for rt in opened:
        rt.engine.dispose()


@pytest.fixture
def runtime(settings: Settings, open_runtime: Callable[[Settings], app.Runtime]) -> app.Runtime:
    """A migrated database and the repository's templates."""
    return open_runtime(settings)


# ----------------------------------------------------------------------------- SMTP


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: tuple[str, int] | None = None


@dataclass
class RecordingHandler:
    """Records what it accepts. `replies` maps a recipient to a list of replies to give it,
    one per attempt (e.g. ["451 4.3.0 try later", "250 OK"]); `drop` lists recipients for
    which the server drops the connection once."""

    received: list[Received] = field(default_factory=list)
    replies: dict[str, list[str]] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: A reply to every MAIL FROM instead of 250 (e.g. "550 5.7.1 sender refused").
    mail_reply: str | None = None
    #: Seconds to wait before answering the end of DATA (the message is kept all the same).
    data_delay: float = 0.0
    #: Offer PIPELINING (RFC 2920), as Postfix and the providers do; aiosmtpd reads the
    #: pipelined commands one after the other, as it reads any input.
    pipelining: bool = True

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self.lock:
            if address in self.drop_once:
                self.drop_once.discard(address)
                server.transport.close()
                return "421 4.4.2 closing"
            queue = self.replies.get(address)
            if queue:
                reply = queue.pop(0)
                if not reply.startswith("2"):
                    return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content or envelope.content,
                    tuple(session.peer) if session.peer else None,
                )
            )
        if self.data_delay:
            # The message is kept (queued) before the slow reply, as a real MTA may do.
            await asyncio.sleep(self.data_delay)
        return "250 2.0.0 queued"

    def message_ids(self) -> list[str]:
        import email
        from email.policy import default

        ids = []
        for item in self.received:
            ids.append(str(email.message_from_bytes(item.data, policy=default)["Message-ID"]))
        return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler


@pytest.fixture
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on loopback that records every message. It offers
    PIPELINING unless the test is parametrized indirectly with False."""
    handler = RecordingHandler(pipelining=getattr(request, "param", True))
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, handler)
    finally:
        controller.stop()
