"""The capture sink: an in-process SMTP server (aiosmtpd) on loopback that writes every message
it receives into a maildir, the demo-safe delivery mode. followup talks real SMTP to it, so a
captured run exercises the same code as a production run, and no mail leaves the machine."""

from __future__ import annotations

import asyncio
import mailbox
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPProtocol


class _MaildirHandler:
    def __init__(self, directory: Path) -> None:
        # The folder's parent may not exist yet (var/ is created with a SQLite database only).
        directory.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(directory, create=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        self.maildir.add(data if isinstance(data, bytes) else data.encode())
        return "250 OK captured"


class CaptureSink:
    """An SMTP server on 127.0.0.1 (a free port) that writes into a maildir."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.handler = _MaildirHandler(directory)
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CaptureSink:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTPProtocol(
                self.handler, hostname="followup-capture", ident="followup capture"
            ),
            host="127.0.0.1",
            port=0,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
