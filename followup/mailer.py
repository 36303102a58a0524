"""The SMTP boundary: an aiosmtplib client, the reply classification, and the capture sink.

The capture sink is an in-process SMTP server (aiosmtpd) on loopback that writes every
message it receives into a maildir: the demo-safe delivery mode. followup talks real SMTP to it,
so a captured run exercises the same code as a production run, and no mail leaves the machine.
"""

from __future__ import annotations

import asyncio
import enum
import mailbox
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP as SMTPProtocol

from followup.config import SmtpSettings
from followup.errors import FollowupError


class SmtpSetupError(FollowupError):
    """The server cannot be used at all (untrusted certificate, login refused): retrying
    each message would not help, so the run stops and says what to fix. Raised before any
    message data is sent."""


class Outcome(enum.StrEnum):
    SENT = "sent"
    #: 4xx, timeouts, dropped connections: try again later.
    RETRY = "retry"
    #: 5xx refusing the recipient: fail the touch and suppress the address.
    BOUNCED = "bounced"
    #: any other permanent refusal.
    FAILED = "failed"
    #: the message data was sent but no reply came: the server may have accepted it.
    UNCERTAIN = "uncertain"


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    code: int | None
    reply: str


def classify_code(code: int, reply: str, *, recipient: bool) -> Delivery:
    """RFC 5321 section 4.2.1: 2yz done, 4yz transient, 5yz permanent."""
    if 200 <= code < 300:
        return Delivery(Outcome.SENT, code, reply)
    if 400 <= code < 500:
        return Delivery(Outcome.RETRY, code, reply)
    return Delivery(Outcome.BOUNCED if recipient else Outcome.FAILED, code, reply)


class TokenBucket:
    """At most `rate` events per second on average, with bursts of up to `burst`.

    Pure: the caller passes the time; `take` answers how long to wait before the event.
    """

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.last: float | None = None

    def take(self, now: float) -> float:
        """Reserve one token at `now`; returns the seconds to wait until it is available."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class SmtpMailer:
    """One connection of the pool, opened on first use and reopened when the server drops it."""

    def __init__(
        self,
        settings: SmtpSettings,
        password: str = "",
        *,
        host: str | None = None,
        port: int | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.settings = settings
        self.password = password
        self.host = host or settings.host
        self.port = port or settings.port
        self._client: aiosmtplib.SMTP | None = None
        self._bucket = bucket

    @classmethod
    def pool(
        cls,
        settings: SmtpSettings,
        password: str = "",
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> list[SmtpMailer]:
        """`pool_size` connections to one server, sharing its per-second rate limit; the pool
        size is also the number of messages in flight at once."""
        rate = settings.rate_per_second
        bucket = TokenBucket(rate) if rate > 0 else None
        return [
            cls(settings, password, host=host, port=port, bucket=bucket)
            for _ in range(settings.pool_size)
        ]

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.settings.ca_file or None)
        return context

    async def _connect(self) -> aiosmtplib.SMTP:
        security = self.settings.security
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.settings.timeout,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            tls_context=self._tls_context() if security != "none" else None,
        )
        where = f"{self.host}:{self.port}"
        try:
            await client.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            if exc.code >= 500:
                raise SmtpSetupError(
                    f"SMTP server {where} refuses service: {exc.code} {exc.message}"
                ) from exc
            raise
        except aiosmtplib.SMTPConnectError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise SmtpSetupError(
                    f"SMTP server {where}: its TLS certificate is not trusted "
                    f"({cause.verify_message}); give the CA that signed it in [smtp] ca_file"
                ) from exc
            raise
        except ssl.SSLCertVerificationError as exc:
            raise SmtpSetupError(
                f"SMTP server {where}: its TLS certificate is not trusted "
                f"({exc.verify_message}); give the CA that signed it in [smtp] ca_file"
            ) from exc
        if self.settings.username:
            try:
                await client.login(self.settings.username, self.password)
            except aiosmtplib.SMTPAuthenticationError as exc:
                client.close()
                raise SmtpSetupError(
                    f"SMTP server {where} refused the login of [smtp] username "
                    f"{self.settings.username!r}: {exc.code} {exc.message} "
                    "(the password comes from FOLLOWUP_SMTP_PASSWORD)"
                ) from exc
            except aiosmtplib.SMTPException as exc:
                client.close()
                raise SmtpSetupError(f"SMTP server {where}: cannot log in: {exc}") from exc
        return client

    async def send(self, sender: str, recipient: str, message: bytes) -> Delivery:
        """One SMTP transaction, step by step, because what may be retried depends on the step:
        a failure before the message data is sent is safe to retry; a lost connection or a
        timeout after it is not (the server may have accepted the message): uncertain."""
        if self._bucket is not None:
            wait = self._bucket.take(asyncio.get_running_loop().time())
            if wait > 0:
                await asyncio.sleep(wait)
        try:
            if self._client is None or not self._client.is_connected:
                self._client = await self._connect()
            client = self._client
            await client.mail(sender)
        except aiosmtplib.SMTPResponseException as exc:
            if isinstance(exc, aiosmtplib.SMTPServerDisconnected) or exc.code < 500:
                await self._drop_or_reset(exc)
                return Delivery(Outcome.RETRY, exc.code if exc.code > 0 else None, exc.message)
            await self._reset()
            # RFC 5321 section 4.2.1: a 5yz to MAIL FROM refuses the sender, not this client:
            # every message would fail the same way, so the run stops.
            raise SmtpSetupError(
                f"SMTP server {self.host}:{self.port} refused the sender {sender!r}: "
                f"{exc.code} {exc.message} (check [sender] return_path and the server's policy)"
            ) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            return Delivery(Outcome.RETRY, None, f"{type(exc).__name__}: {exc}")
        try:
            await client.rcpt(recipient)
        except aiosmtplib.SMTPResponseException as exc:
            if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
                await self.close()
                return Delivery(Outcome.RETRY, None, f"disconnected: {exc}")
            await self._reset()
            return classify_code(exc.code, exc.message, recipient=True)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            return Delivery(Outcome.RETRY, None, f"{type(exc).__name__}: {exc}")
        try:
            response = await client.data(message)
        except aiosmtplib.SMTPResponseException as exc:
            if not isinstance(exc, aiosmtplib.SMTPServerDisconnected) and exc.code >= 400:
                # The server answered: it did not take the message.
                await self._reset()
                return classify_code(exc.code, exc.message, recipient=False)
            await self.close()
            return Delivery(Outcome.UNCERTAIN, None, f"connection lost during DATA: {exc}")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            return Delivery(
                Outcome.UNCERTAIN,
                None,
                f"no reply to the message data: {type(exc).__name__}: {exc}",
            )
        return Delivery(Outcome.SENT, response.code, response.message)

    async def _drop_or_reset(self, exc: Exception) -> None:
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
            await self.close()
        else:
            await self._reset()

    async def _reset(self) -> None:
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.rset()
            except aiosmtplib.SMTPException:
                await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class _MaildirHandler:
    def __init__(self, directory: Path) -> None:
        # The folder's parent may not exist yet (var/ is created with a SQLite database only).
        directory.parent.mkdir(parents=True, exist_ok=True)
        self.maildir = mailbox.Maildir(directory, create=True)
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        self.maildir.add(data if isinstance(data, bytes) else data.encode())
        self.received += 1
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
