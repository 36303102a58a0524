"""The SMTP boundary: an aiosmtplib client, the reply classification, and the capture sink.

The capture sink is an in-process SMTP server (aiosmtpd) on loopback that writes every
message it receives into a maildir: the demo-safe delivery mode. followup talks real SMTP to it,
so a captured run exercises the same code as a production run, and no mail leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import mailbox
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP as SMTPProtocol

from followup.config import PLAIN_ADDRESS, SmtpSettings
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


#: RFC 5321 section 4.5.2: a line of the message data starting with "." gets another one.
_LEADING_DOT = re.compile(rb"(?m)^\.")
_LINE_END = re.compile(rb"\r\n|\r|\n")
#: An SMTP reply line longer than this is a broken server (RFC 5321 allows 512).
_MAX_REPLY_LINE = 8192


def data_block(message: bytes) -> bytes:
    """The message as sent after DATA's 354: CRLF line ends, leading dots doubled, and the
    terminating "." line."""
    block = message
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        block = _LINE_END.sub(b"\r\n", block)
    if block.startswith(b".") or b"\r\n." in block:
        block = _LEADING_DOT.sub(b"..", block)
    if not block.endswith(b"\r\n"):
        block += b"\r\n"
    return block + b".\r\n"


class _Pipeline(asyncio.Protocol):
    """RFC 2920 PIPELINING on a connection that aiosmtplib opened (greeting, EHLO, STARTTLS
    and AUTH done): MAIL FROM, RCPT TO and DATA go out in one write and their three replies
    come back together, then the message data and its reply, with the next message's MAIL,
    RCPT and DATA in the same write when there is one (SmtpMailer.send's `then`): one or two
    round trips a message instead of four, and none of the per-command bookkeeping.
    aiosmtplib reads one reply per command written, so the transport is handed to this
    protocol for the transactions."""

    def __init__(self, transport: asyncio.Transport, timeout: float) -> None:
        self.transport = transport
        self.timeout = timeout
        self.lost: BaseException | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._replies: list[tuple[int, str]] = []
        self._wanted = 0
        self._waiter: asyncio.Future[None] | None = None
        transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._wanted and len(self._buffer) > _MAX_REPLY_LINE:
            # A server talking while no reply is awaited: nothing good can follow.
            self._fail(aiosmtplib.SMTPResponseException(-1, "unexpected data from the server"))
            return
        self._parse()

    def _parse(self) -> None:
        while len(self._replies) < self._wanted:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > _MAX_REPLY_LINE:
                    self._fail(aiosmtplib.SMTPResponseException(-1, "reply line too long"))
                return
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(line) > _MAX_REPLY_LINE or not line[:3].isdigit():
                text = line[:80].decode("utf-8", "replace").strip()
                self._fail(aiosmtplib.SMTPResponseException(-1, f"malformed reply: {text!r}"))
                return
            self._lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
                self._replies.append((int(line[:3]), text))
                self._lines = []
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
            self._waiter.exception()  # retrieved: no "never retrieved" warning
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc or 'closed'}"))

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the server closed the connection"))
        return False

    async def exchange(self, data: bytes, replies: int) -> list[tuple[int, str]]:
        """Write `data` (one or more commands), then wait for `replies` replies. Raises
        SMTPServerDisconnected, SMTPResponseException (garbage) or TimeoutError."""
        if self.lost is not None:
            raise self.lost
        self._replies, self._wanted = [], replies
        if data:
            self.transport.write(data)
        self._parse()
        if self.lost is not None:  # a malformed reply already read
            self._wanted = 0
            raise self.lost
        if len(self._replies) >= replies:
            # Already read (the envelope's replies behind the previous message's): no wait.
            self._wanted = 0
            return self._replies
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._time_out, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # The replies still due would be read as the next command's: never reuse it.
            self._fail(aiosmtplib.SMTPServerDisconnected("cancelled while awaiting a reply"))
            raise
        finally:
            timer.cancel()
            self._waiter, self._wanted = None, 0
        return self._replies

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError("no reply from the SMTP server in time"))
            waiter.exception()
            self.lost = aiosmtplib.SMTPServerDisconnected("timed out")
            self.transport.close()


def _no_reply(exc: BaseException) -> Delivery:
    """The message data went out and no reply came: the server may have accepted it."""
    return Delivery(
        Outcome.UNCERTAIN, None, f"no reply to the message data: {type(exc).__name__}: {exc}"
    )


def _envelope_address(address: str, smtputf8: bool) -> bytes | None:
    """The address as it goes between < and >, or None when it cannot go as it is."""
    # On a pipelined connection a recipient that fails this is failed unsent, an envelope
    # sender stops the run (the configuration refuses such a [sender] return_path before).
    if not PLAIN_ADDRESS.fullmatch(address):
        return None
    if address.isascii():
        return address.encode("ascii")
    return address.encode("utf-8") if smtputf8 else None


class SmtpMailer:
    """One connection of the pool, opened on first use and reopened when the server drops it.

    With `[smtp] pipelining` (the default) and a server that offers PIPELINING, each message
    takes two round trips, or one when its envelope went out behind the previous message's
    data (RFC 2920); otherwise aiosmtplib runs MAIL, RCPT and DATA step by step. The outcome
    of a message is the same either way."""

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
        self._pipe: _Pipeline | None = None
        self._smtputf8 = False
        self._bucket = bucket
        #: (sender, recipient) of the next message, whose envelope (MAIL, RCPT, DATA) went
        #: out behind the last message's data; its replies are read by that message's send.
        #: While it is set, the server may be waiting for that message's data.
        self._ahead: tuple[str, str] | None = None
        #: Whether the last `send` began to write its message data: until it has, the server
        #: cannot have the message, whatever stopped the send (a cancelled task included).
        self.data_written = False

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

    async def send(
        self, sender: str, recipient: str, message: bytes, *, then: tuple[str, str] | None = None
    ) -> Delivery:
        """One SMTP transaction. What may be retried depends on the step: a failure before
        the message data is sent is safe to retry; a lost connection or a timeout after it is
        not (the server may have accepted the message): uncertain.

        `then`, the (sender, recipient) of the message the caller sends next on this
        connection, lets a pipelining connection write that message's MAIL, RCPT and DATA
        behind this one's data (RFC 2920 section 3.1): one round trip a message instead of
        two. If the next call is for another envelope, or none comes, the connection is
        closed without ending the waiting DATA: no message is sent that was not meant."""
        self.data_written = False
        if self._bucket is not None:
            wait = self._bucket.take(asyncio.get_running_loop().time())
            if wait > 0:
                await asyncio.sleep(wait)
        if self._ahead is not None and self._ahead != (sender, recipient):
            await self.close()
        if self._pipe is not None and self._pipe.lost is not None:
            await self.close()
        try:
            if self._client is None or (self._pipe is None and not self._client.is_connected):
                self._client = await self._connect()
                self._pipe = None
                if self.settings.pipelining and self._client.is_ehlo_or_helo_needed:
                    # The EHLO reply says whether the server offers PIPELINING. A server that
                    # knows only HELO gets it from aiosmtplib, step by step.
                    with contextlib.suppress(aiosmtplib.SMTPHeloError):
                        await self._client.ehlo()
                if self.settings.pipelining and self._client.supports_extension("pipelining"):
                    self._smtputf8 = self._client.supports_extension("smtputf8")
                    transport = self._client.transport
                    assert isinstance(transport, asyncio.Transport)
                    self._pipe = _Pipeline(transport, self.settings.timeout)
        except aiosmtplib.SMTPResponseException as exc:
            # Refused at the greeting or EHLO with a 4yz: try again later.
            await self.close()
            return Delivery(Outcome.RETRY, exc.code if exc.code > 0 else None, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            return Delivery(Outcome.RETRY, None, f"{type(exc).__name__}: {exc}")
        if self._pipe is not None:
            return await self._send_pipelined(self._pipe, sender, recipient, message, then)
        client = self._client
        try:
            await client.mail(sender)
        except aiosmtplib.SMTPResponseException as exc:
            if isinstance(exc, aiosmtplib.SMTPServerDisconnected) or exc.code < 500:
                await self._drop_or_reset(exc)
                return Delivery(Outcome.RETRY, exc.code if exc.code > 0 else None, exc.message)
            await self._reset()
            raise self._sender_refused(sender, exc.code, exc.message) from exc
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
            self.data_written = True  # DATA, then the message once the server says 354
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
            return _no_reply(exc)
        return Delivery(Outcome.SENT, response.code, response.message)

    def _sender_refused(self, sender: str, code: int, text: str) -> SmtpSetupError:
        """RFC 5321 section 4.2.1: a 5yz to MAIL FROM refuses the sender, not this client:
        every message would fail the same way, so the run stops."""
        return SmtpSetupError(
            f"SMTP server {self.host}:{self.port} refused the sender {sender!r}: "
            f"{code} {text} (check [sender] return_path and the server's policy)"
        )

    def _envelope(self, sender: str, recipient: str) -> bytes | None:
        """MAIL FROM, RCPT TO and DATA for a pipelined transaction; None when the recipient
        cannot go between angle brackets. A sender that cannot is a setup error (nothing
        is sent)."""
        mail_from = _envelope_address(sender, self._smtputf8)
        if mail_from is None:
            raise SmtpSetupError(
                f"the envelope sender {sender!r} cannot be used in MAIL FROM "
                "(check [sender] return_path)"
            )
        rcpt_to = _envelope_address(recipient, self._smtputf8)
        if rcpt_to is None:
            return None
        utf8 = b"" if (sender + recipient).isascii() else b" SMTPUTF8"
        return b"MAIL FROM:<%s>%s\r\nRCPT TO:<%s>\r\nDATA\r\n" % (mail_from, utf8, rcpt_to)

    async def _send_pipelined(
        self,
        pipe: _Pipeline,
        sender: str,
        recipient: str,
        message: bytes,
        then: tuple[str, str] | None = None,
    ) -> Delivery:
        """`send` over a pipelined connection: same outcomes, same rules about what may be
        retried (nothing once the message data has gone out)."""
        if self._ahead is not None:
            # Its envelope went out behind the previous message's data (send checked that it
            # is this message's): only its replies are read.
            envelope = b""
        else:
            found = self._envelope(sender, recipient)
            if found is None:
                return Delivery(Outcome.FAILED, None, "the address cannot be used in RCPT TO")
            envelope = found
        try:
            envelope_replies = await pipe.exchange(envelope, 3)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Nothing of the message went out: safe to try again.
            await self.close()
            return Delivery(Outcome.RETRY, None, f"{type(exc).__name__}: {exc}")
        self._ahead = None
        (mail_code, mail_text), (rcpt_code, rcpt_text), (data_code, data_text) = envelope_replies
        mail_ok, rcpt_ok = 200 <= mail_code < 300, 200 <= rcpt_code < 300
        # RFC 2920 section 3.1: the server should have refused DATA; end it empty.
        if data_code == 354 and not (mail_ok and rcpt_ok):
            await self._end_empty(pipe)
        if not mail_ok:
            await self._reset_pipe(pipe, mail_code)
            if 500 <= mail_code < 600:
                raise self._sender_refused(sender, mail_code, mail_text)
            return Delivery(Outcome.RETRY, mail_code, mail_text)
        if not rcpt_ok:
            await self._reset_pipe(pipe, rcpt_code)
            if 400 <= rcpt_code < 600:
                return classify_code(rcpt_code, rcpt_text, recipient=True)
            return Delivery(Outcome.RETRY, rcpt_code, f"unexpected reply to RCPT: {rcpt_text}")
        if data_code != 354:
            await self._reset_pipe(pipe, data_code)
            if 400 <= data_code < 600:
                return classify_code(data_code, data_text, recipient=False)
            # Nothing of the message went out, whatever the server says: safe to retry.
            return Delivery(Outcome.RETRY, data_code, f"unexpected reply to DATA: {data_text}")
        following = self._envelope(*then) if then is not None else None
        if following is not None:
            # Written with the data: from here on the server may wait for its message data,
            # so the connection is never ended with QUIT (see close).
            self._ahead = then
        try:
            # Only this message's reply is awaited: its outcome is known as soon as it comes.
            block = data_block(message) + (following or b"")
            self.data_written = True
            ((code, text),) = await pipe.exchange(block, 1)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            return _no_reply(exc)
        if 200 <= code < 300:
            return Delivery(Outcome.SENT, code, text)
        if 400 <= code < 600:
            if self._ahead is None or code == 421:
                await self._reset_pipe(pipe, code)
            # Else the reply ended this transaction and the next one's envelope is on its way:
            # no RSET.
            return classify_code(code, text, recipient=False)
        # Out of the protocol after the message data: the server may have taken it.
        await self.close()
        return Delivery(Outcome.UNCERTAIN, code, f"unexpected reply to the message data: {text}")

    async def _end_empty(self, pipe: _Pipeline) -> None:
        try:
            await pipe.exchange(b".\r\n", 1)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await self.close()

    async def _reset_pipe(self, pipe: _Pipeline, code: int) -> None:
        """After a refusal: RSET, or close when the server is closing (421), when the reply
        was not a refusal (out of the protocol) or when RSET fails."""
        if self._pipe is not pipe:
            return  # already closed
        if code == 421 or pipe.lost is not None or not 400 <= code < 600:
            await self.close()
            return
        try:
            ((reply, _),) = await pipe.exchange(b"RSET\r\n", 1)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await self.close()
            return
        if reply >= 400:
            await self.close()

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
        pipe, self._pipe = self._pipe, None
        ahead, self._ahead = self._ahead, None
        if pipe is not None:
            # With a DATA waiting for the next message's data, QUIT would be taken as data:
            # the connection is closed without ending it (the server drops the transaction).
            if pipe.lost is None and ahead is None:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await asyncio.wait_for(pipe.exchange(b"QUIT\r\n", 1), 5)
            pipe.transport.close()
            return
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
