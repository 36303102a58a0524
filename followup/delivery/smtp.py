"""The SMTP boundary's commands: SmtpMailer connects (TLS, AUTH), then sends each message with
aiosmtplib's commands step by step or, when the server offers PIPELINING, pipelined through
followup.delivery.protocol, which alone reads and writes those transactions' bytes. What each
reply means is read from followup.delivery.replies, the same table for both ways."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import aiosmtplib

from followup.config.settings import PLAIN_ADDRESS, SmtpSettings
from followup.delivery import replies
from followup.delivery.protocol import Pipeline, data_block
from followup.delivery.ratelimit import TokenBucket
from followup.domain.outcomes import Delivery, Outcome
from followup.errors import FollowupError


class SmtpSetupError(FollowupError):
    """The server cannot be used at all (untrusted certificate, login refused, a refusal of
    the sender, of relaying or of this client: followup.delivery.replies): retrying each
    message would not help, so the run stops and says what to fix. Raised before any
    message data is sent."""


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
    data (RFC 2920); otherwise aiosmtplib runs MAIL, RCPT and DATA step by step. Both read
    what a reply means from followup.delivery.replies."""

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
        self._pipe: Pipeline | None = None
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
        where = self._server
        try:
            await client.connect()
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
        refused = await self._open()
        if refused is not None:
            return refused
        if self._pipe is not None:
            return await self._send_pipelined(self._pipe, sender, recipient, message, then)
        assert self._client is not None  # _open connected it
        return await self._send_by_step(self._client, sender, recipient, message)

    @property
    def _server(self) -> str:
        return f"{self.host}:{self.port}"

    async def _open(self) -> Delivery | None:
        """Connects when there is no connection to use: None once there is one, else why not
        (a retry). Raises SmtpSetupError when the server cannot be used at all."""
        if self._client is not None and (self._pipe is not None or self._client.is_connected):
            return None
        try:
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
                self._pipe = Pipeline(transport, self.settings.timeout)
        except aiosmtplib.SMTPConnectResponseError as exc:
            refusal = self._settle(
                replies.greeting(exc.code, exc.message, server=self._server), exc
            )
        except aiosmtplib.SMTPResponseException as exc:
            refusal = replies.opening(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            refusal = replies.connection_lost(exc, data_written=False)
        else:
            return None
        await self.close()
        return refusal

    @staticmethod
    def _settle(
        verdict: Delivery | replies.StopRun, cause: BaseException | None = None
    ) -> Delivery:
        """The Delivery of a verdict; a StopRun is raised as SmtpSetupError."""
        if isinstance(verdict, replies.StopRun):
            if cause is None:
                raise SmtpSetupError(verdict.reason)
            raise SmtpSetupError(verdict.reason) from cause
        return verdict

    async def _send_by_step(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes
    ) -> Delivery:
        """`send` with aiosmtplib's MAIL, RCPT and DATA, one round trip each. aiosmtplib
        raises a reply it does not take as a refusal; replies says what it means."""
        try:
            await client.mail(sender)
        except aiosmtplib.SMTPResponseException as exc:
            verdict = replies.mail_from(
                exc.code, exc.message, server=self._server, sender=sender, stepwise=True
            )
            if verdict is not None:
                await self._reset()
                return self._settle(verdict, exc)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            return replies.connection_lost(exc, data_written=False)
        try:
            await client.rcpt(recipient)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refused = replies.rcpt_to(exc.code, exc.message, server=self._server, sender=sender)
            if refused is not None:
                await self._reset()
                return self._settle(refused, exc)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # A malformed reply included: no reply, as on a pipelined connection.
            await self.close()
            return replies.connection_lost(exc, data_written=False)
        try:
            self.data_written = True  # DATA, then the message once the server says 354
            response = await client.data(message)
        except aiosmtplib.SMTPResponseException as exc:
            refused = replies.data_stepwise(exc.code, exc.message)
            if refused.outcome is Outcome.UNCERTAIN:
                await self.close()  # the reply is out of the protocol: no RSET
            else:
                await self._reset()
            return refused
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self.close()
            return replies.connection_lost(exc, data_written=True)
        return replies.message_data(response.code, response.message)

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
        pipe: Pipeline,
        sender: str,
        recipient: str,
        message: bytes,
        then: tuple[str, str] | None = None,
    ) -> Delivery:
        """`send` over a pipelined connection: the envelope's three replies, then the
        message data, with the next message's envelope behind it when there is one."""
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
            mail, rcpt, data = await pipe.exchange(envelope, 3)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Nothing of the message went out: safe to try again.
            await self.close()
            return replies.connection_lost(exc, data_written=False)
        self._ahead = None
        refusal = replies.envelope(mail, rcpt, data, server=self._server, sender=sender)
        if refusal is not None:
            if refusal.data_waiting:
                await self._end_empty(pipe)
            await self._reset_pipe(pipe, refusal.code)
            return self._settle(refusal.verdict)
        return await self._send_data(pipe, message, then)

    async def _send_data(
        self, pipe: Pipeline, message: bytes, then: tuple[str, str] | None
    ) -> Delivery:
        """The message data after DATA's 354, and its reply; the next message's envelope
        (`then`) goes out in the same write."""
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
            return replies.connection_lost(exc, data_written=True)
        delivery = replies.message_data(code, text)
        if delivery.outcome is not Outcome.SENT and (
            self._ahead is None or replies.ends_session(code)
        ):
            # With the next envelope already behind the data, a refusal ended only this
            # transaction and RSET would end the next one's: none, unless the session ends.
            await self._reset_pipe(pipe, code)
        return delivery

    async def _end_empty(self, pipe: Pipeline) -> None:
        try:
            await pipe.exchange(b".\r\n", 1)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await self.close()

    async def _reset_pipe(self, pipe: Pipeline, code: int) -> None:
        """After a reply that ended the transaction: RSET, or close when the reply ends the
        session (replies.ends_session) or when RSET is refused or fails."""
        if self._pipe is not pipe:
            return  # already closed
        if pipe.lost is not None or replies.ends_session(code):
            await self.close()
            return
        try:
            ((reply, _),) = await pipe.exchange(b"RSET\r\n", 1)
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await self.close()
            return
        if replies.reset_refused(reply):
            await self.close()

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
