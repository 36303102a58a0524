"""The bytes layer of the SMTP boundary, as aiosmtplib's protocol.py is for its client: the
message data as it goes on the wire, and the RFC 2920 PIPELINING transactions' reads and writes
on a connection aiosmtplib opened. What a reply means is for followup.delivery.replies; which
command goes when, for followup.delivery.smtp."""

from __future__ import annotations

import asyncio
import re

import aiosmtplib

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


class Pipeline(asyncio.Protocol):
    """RFC 2920 PIPELINING on a connection that aiosmtplib opened (greeting, EHLO, STARTTLS
    and AUTH done): MAIL FROM, RCPT TO and DATA go out in one write and their three replies
    come back together, then the message data and its reply, with the next message's MAIL,
    RCPT and DATA in the same write when there is one (SmtpMailer.send's `then`): one or two
    round trips a message instead of four, and none of the per-command bookkeeping.
    aiosmtplib reads one reply per command written, so the transport is handed to this
    protocol for the transactions: from then on only this protocol reads the socket."""

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
