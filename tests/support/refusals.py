"""A recording SMTP server (aiosmtpd) that refuses as misconfigured relays do, and one that
drops the connection after the message data: what the reply table and the counts are tested
against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.support.smtp import LoopbackController, RecordingHandler, SmtpServer


@dataclass
class RefusingHandler(RecordingHandler):
    """A RecordingHandler that answers `rcpt_reply` to every RCPT TO once it accepted
    `accept_first` (e.g. "554 5.7.1 Relay access denied"), and drops the connection
    after the message data of the recipients in `drop_after_data` (it keeps the message, as
    a server that crashed after queueing it)."""

    rcpt_reply: str | None = None
    accept_first: int = 0
    drop_after_data: set[str] = field(default_factory=set)
    accepted: int = 0

    async def handle_RCPT(
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        with self.lock:
            refuse = self.rcpt_reply is not None and self.accepted >= self.accept_first
            self.accepted += not refuse
        if refuse:
            assert self.rcpt_reply is not None
            return self.rcpt_reply
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if set(envelope.rcpt_tos) & self.drop_after_data:
            server.transport.close()
        return reply


@contextmanager
def refusing_server(pipelining: bool = True) -> Iterator[SmtpServer]:
    """A RefusingHandler on loopback, offering PIPELINING or not (step by step)."""
    handler = RefusingHandler(pipelining=pipelining)
    controller = LoopbackController(handler)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, handler)
    finally:
        controller.stop()
