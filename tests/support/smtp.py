"""A real SMTP server for the tests: aiosmtpd on loopback, recording what it accepts, with
replies, dropped connections and delays given in advance."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller


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

    received: list[Received] = field(default_factory=list, repr=False)
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
    #: Notified (it shares `lock`) when a message is received, and by wake().
    arrived: threading.Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Short, for Hypothesis's reports of a failing example: not every message's bytes."""
        printer.text(f"RecordingHandler(<{len(self.received)} received>)")

    def wait_received(
        self, count: int, timeout: float, unless: Callable[[], bool] = lambda: False
    ) -> bool:
        """Waits until `count` messages were received in all, or `unless()` is true (whoever
        changes what it reads calls wake()): False if neither came within `timeout` seconds."""
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.received) >= count or unless(), timeout)

    def wake(self) -> None:
        """Has wait_received look at its `unless` again."""
        with self.arrived:
            self.arrived.notify_all()

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
            self.arrived.notify_all()
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


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler


class LoopbackController(Controller):
    """aiosmtpd's threaded Controller on 127.0.0.1, on the port its server binds (port 0), read
    back as `port` once started: no number is chosen before the bind, so no other process
    can take it in between. Keyword arguments go to Controller (ssl_context) and to the SMTP
    server (tls_context, authenticator...)."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=0, **kwargs)

    def _create_server(self) -> Coroutine[Any, Any, asyncio.AbstractServer]:
        return self._bind()

    async def _bind(self) -> asyncio.AbstractServer:
        server = await self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
        )
        # Read by start() (which connects to it) once the server is up: set before that.
        self.port = int(server.sockets[0].getsockname()[1])
        return server
