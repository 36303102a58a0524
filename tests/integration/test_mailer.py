"""The SMTP client against real servers on loopback: aiosmtpd, and a scripted asyncio server for
what aiosmtpd never does (replies out of the RFC, garbage, a 354 after a refused recipient)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.config.settings import SmtpSettings
from followup.delivery.protocol import data_block
from followup.delivery.smtp import SmtpMailer, SmtpSetupError
from followup.domain.outcomes import Delivery, Outcome
from tests.support.smtp import SmtpServer

MESSAGE = b"Subject: hi\r\n\r\n.starts with a dot\r\nline\r\n"


def unstuff(block: bytes) -> bytes:
    assert block.endswith(b"\r\n.\r\n") or block == b".\r\n"
    body = block[: -len(b".\r\n")]
    return re.sub(rb"(?m)^\.", b"", body)


@given(st.binary(max_size=400))
def test_the_data_block_is_the_message_with_crlf_and_dots_doubled(message: bytes) -> None:
    block = data_block(message)
    lines = block.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    # No bare CR or LF, and no line of the message data is a lone "." before the end.
    assert b"\r" not in b"".join(lines) and b"\n" not in b"".join(lines)
    assert b"." not in lines[:-2]
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert unstuff(block) == expected


def settings(port: int, **values: object) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=2, **values)


@pytest.mark.parametrize("smtp_server", [True, False], indirect=True, ids=["offered", "not"])
def test_pipelining_is_used_only_when_the_server_offers_it(smtp_server: SmtpServer) -> None:
    async def run() -> tuple[bool, list[Outcome]]:
        mailer = SmtpMailer(settings(smtp_server.port))
        outcomes = []
        for n in range(3):
            delivery = await mailer.send("b@example.com", f"c{n}@example.com", MESSAGE)
            outcomes.append(delivery.outcome)
        pipelined = mailer._pipe is not None
        await mailer.close()
        return pipelined, outcomes

    pipelined, outcomes = asyncio.run(run())
    assert pipelined is smtp_server.handler.pipelining
    assert outcomes == [Outcome.SENT] * 3
    received = smtp_server.handler.received
    assert [r.rcpt_tos for r in received] == [[f"c{n}@example.com"] for n in range(3)]
    # The server got the message as it was, the leading dot included.
    assert all(r.data.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n") for r in received)


def test_pipelining_can_be_turned_off(smtp_server: SmtpServer) -> None:
    async def run() -> bool:
        mailer = SmtpMailer(settings(smtp_server.port, pipelining=False))
        assert (
            await mailer.send("b@example.com", "c@example.com", MESSAGE)
        ).outcome is Outcome.SENT
        used = mailer._pipe is not None
        await mailer.close()
        return used

    assert asyncio.run(run()) is False
    assert len(smtp_server.handler.received) == 1


# A scripted server: replies given in advance, what it read is kept.
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 scripted ESMTP\r\n")
    await reader.readline()  # EHLO
    writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 HELP\r\n")


async def answer_quit(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """Reads what the client says next (its QUIT) and says goodbye."""
    seen.append(await reader.readline())
    writer.write(b"221 bye\r\n")


async def stay_until_hung_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Stays on the line after the last reply until the client hangs up (answering a QUIT if
    one comes): the outcome is the reply's, never a connection the server dropped first."""
    with contextlib.suppress(ConnectionError):
        while line := await reader.readline():
            if line == b"QUIT\r\n":
                writer.write(b"221 bye\r\n")


async def run_scripted(
    script: Script,
    recipient: str = "c@example.com",
    *,
    envelope: bool = True,
    sender: str = "b@example.com",
) -> tuple[Delivery | SmtpSetupError, list[bytes]]:
    """One send to a server that greets, reads the pipelined MAIL, RCPT and DATA into `seen`
    (unless `envelope` is False), then runs `script`."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greet(reader, writer)
        try:
            if envelope:
                for _ in range(3):
                    seen.append(await reader.readline())
            await script(reader, writer, seen)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = SmtpMailer(settings(port))
    try:
        result: Delivery | SmtpSetupError = await mailer.send(sender, recipient, MESSAGE)
    except SmtpSetupError as exc:
        result = exc
    await mailer.close()
    server.close()
    await server.wait_closed()
    return result, seen


def test_multiline_replies_are_read_whole() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(b"250-sender\r\n250 ok\r\n250-rcpt\r\n250-still\r\n250 ok\r\n354 go\r\n")
        data = await reader.readuntil(b"\r\n.\r\n")
        seen.append(data)
        writer.write(b"250-queued\r\n250 as 42\r\n")
        await answer_quit(reader, writer, seen)

    delivery, seen = asyncio.run(run_scripted(script))
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is Outcome.SENT
    assert delivery.reply == "queued\nas 42"
    assert seen[:3] == [
        b"MAIL FROM:<b@example.com>\r\n",
        b"RCPT TO:<c@example.com>\r\n",
        b"DATA\r\n",
    ]
    assert seen[3] == b"Subject: hi\r\n\r\n..starts with a dot\r\nline\r\n.\r\n"


def test_a_354_after_a_refused_recipient_sends_no_message() -> None:
    """RFC 2920 says the server refuses DATA when no recipient was accepted; one that answers
    354 anyway gets an empty message data, and the address is failed as refused."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        seen.append(await reader.readline())
        writer.write(b"554 no valid recipients\r\n")
        seen.append(await reader.readline())  # RSET
        writer.write(b"250 reset\r\n")
        await answer_quit(reader, writer, seen)

    delivery, seen = asyncio.run(run_scripted(script))
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is Outcome.BOUNCED
    assert seen[3:5] == [b".\r\n", b"RSET\r\n"]
    assert not any(b"Subject" in line for line in seen)


def test_garbage_before_the_message_data_is_retried() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(b"hello there\r\n")
        await stay_until_hung_up(reader, writer)

    delivery, seen = asyncio.run(run_scripted(script))
    assert len(seen) == 3
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is Outcome.RETRY
    assert "malformed reply" in delivery.reply


def test_a_connection_dropped_after_the_message_data_is_uncertain() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        seen.append(await reader.readuntil(b"\r\n.\r\n"))

    delivery, seen = asyncio.run(run_scripted(script))
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is Outcome.UNCERTAIN
    assert len(seen) == 4


def test_a_sender_refused_while_pipelining_stops_the_run() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(
            b"553 5.7.1 sender refused\r\n503 5.5.1 no sender\r\n503 5.5.1 no recipient\r\n"
        )
        seen.append(await reader.readline())
        writer.write(b"250 reset\r\n")
        await answer_quit(reader, writer, seen)

    result, seen = asyncio.run(run_scripted(script))
    assert isinstance(result, SmtpSetupError)
    assert seen[3] == b"RSET\r\n"
    assert "refused the sender 'b@example.com': 553" in str(result)


@pytest.mark.parametrize(
    "recipient", ["a b@example.com", "x@example.com>\r\nRCPT TO:<y@example.com"]
)
def test_an_address_that_cannot_go_between_angle_brackets_is_refused_unsent(recipient: str) -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await answer_quit(reader, writer, seen)

    delivery, seen = asyncio.run(run_scripted(script, recipient, envelope=False))
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is Outcome.FAILED
    assert seen == [b"QUIT\r\n"]


def test_a_sender_that_cannot_go_between_angle_brackets_stops_the_run_unsent() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await answer_quit(reader, writer, seen)

    error, seen = asyncio.run(run_scripted(script, sender="bounces @example.com", envelope=False))
    assert isinstance(error, SmtpSetupError)
    assert "cannot be used in MAIL FROM" in str(error)
    assert seen == [b"QUIT\r\n"]


@pytest.mark.parametrize(
    ("replies", "outcome"),
    [
        # A 250 to DATA: no message data went out; recorded as sent it would be lost.
        (b"250 ok\r\n250 ok\r\n250 ok\r\n", Outcome.RETRY),
        # 1yz or 3yz where a 2yz belongs: out of the protocol, before any data.
        (b"250 ok\r\n354 what\r\n503 no\r\n", Outcome.RETRY),
        (b"354 what\r\n503 no\r\n503 no\r\n", Outcome.RETRY),
        # 251 (user not local, will forward) accepts the recipient.
        (b"250 ok\r\n251 forwarded\r\n554 no\r\n", Outcome.FAILED),
    ],
)
def test_replies_out_of_the_protocol_never_count_as_sent(replies: bytes, outcome: Outcome) -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(replies)
        while line := await reader.readline():
            seen.append(line)
            if line == b"QUIT\r\n":
                writer.write(b"221 bye\r\n")
                break
            writer.write(b"250 ok\r\n")

    delivery, seen = asyncio.run(run_scripted(script))
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is outcome
    assert not any(b"Subject" in line for line in seen), "no message data went out"


def test_an_unexpected_final_reply_after_the_data_is_uncertain() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        seen.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"354 again?\r\n")
        await stay_until_hung_up(reader, writer)

    delivery, _ = asyncio.run(run_scripted(script))
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is Outcome.UNCERTAIN


def test_a_refused_recipient_is_bounced_even_when_ending_an_unwanted_data_fails() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        seen.append(await reader.readline())
        # ... and the connection drops instead of answering the lone dot.

    delivery, _ = asyncio.run(run_scripted(script))
    assert isinstance(delivery, Delivery)
    assert delivery.outcome is Outcome.BOUNCED


def test_a_send_cancelled_while_awaiting_replies_never_reuses_the_connection() -> None:
    connections: list[int] = []
    handlers: list[asyncio.Task[None]] = []
    # The first connection has the envelope; its replies come once the send is cancelled.
    got_envelope, cancelled = asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        connections.append(len(connections))
        await greet(reader, writer)
        await reader.readline()
        await reader.readline()
        await reader.readline()
        if len(connections) == 1:
            got_envelope.set()
            await cancelled.wait()  # the first send is cancelled meanwhile
            writer.write(b"250 late\r\n250 late\r\n354 late\r\n")
            with contextlib.suppress(ConnectionError):
                await reader.read()  # until the client, which never reuses it, has closed it
        else:
            writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
            await reader.readuntil(b"\r\n.\r\n")
            writer.write(b"250 queued\r\n")
            await reader.readline()
            writer.write(b"221 bye\r\n")
        writer.close()

    async def run() -> Delivery:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        mailer = SmtpMailer(settings(server.sockets[0].getsockname()[1]))
        first = asyncio.create_task(mailer.send("b@example.com", "c@example.com", MESSAGE))
        await got_envelope.wait()  # the send awaits the envelope's replies
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        cancelled.set()
        delivery = await mailer.send("b@example.com", "c@example.com", MESSAGE)
        await mailer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()
        return delivery

    delivery = asyncio.run(run())
    assert delivery.outcome is Outcome.SENT
    assert delivery.reply == "queued"
    assert len(connections) == 2


# The next message's envelope written behind the data (RFC 2920 section 3.1).

ENVELOPE_2 = [b"MAIL FROM:<b@example.com>\r\n", b"RCPT TO:<d@example.com>\r\n", b"DATA\r\n"]


async def run_connections(
    scripts: list[Script], sends: list[tuple[str, tuple[str, str] | None]]
) -> tuple[list[Delivery], list[list[bytes]]]:
    """`sends` (recipient, then) on one mailer, against a server that greets each connection
    and runs the next of `scripts` on it; returns the outcomes and what each connection read,
    ending with what came after the script until the client closed (b"" when nothing)."""
    seen: list[list[bytes]] = []
    pending = list(scripts)

    handlers: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        writers.append(writer)
        lines: list[bytes] = []
        seen.append(lines)
        await greet(reader, writer)
        try:
            await pending.pop(0)(reader, writer, lines)
            lines.append(await reader.read())  # what came until the client closed
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    mailer = SmtpMailer(settings(server.sockets[0].getsockname()[1]))
    outcomes = []
    for recipient, then in sends:
        outcomes.append(await mailer.send("b@example.com", recipient, MESSAGE, then=then))
        await seen_closed(mailer, writers)
    await mailer.close()
    # Each connection's script ends when the client has closed it (read until EOF).
    await asyncio.wait_for(asyncio.gather(*handlers), 5)
    server.close()
    await server.wait_closed()
    return outcomes, seen


async def seen_closed(mailer: SmtpMailer, writers: list[asyncio.StreamWriter]) -> None:
    """Returns once the client has seen the close of the connection it holds if the server
    closed it (the server's end of the latest connection is that one): its next send then
    opens a new one. A condition with a deadline, checked at each turn of the event loop
    (the client sees the close within one or two): the mailer's connection has no event
    to wait for."""
    async with asyncio.timeout(5):
        pipe = mailer._pipe
        closed = bool(writers) and writers[-1].is_closing()
        while closed and pipe is not None and pipe.lost is None:  # noqa: ASYNC110 (see above)
            await asyncio.sleep(0)


async def read_lines(reader: asyncio.StreamReader, seen: list[bytes], count: int) -> None:
    for _ in range(count):
        seen.append(await reader.readline())


async def take_message(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """Reads an envelope, accepts it, and reads the message data."""
    await read_lines(reader, seen, 3)
    writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
    seen.append(await reader.readuntil(b"\r\n.\r\n"))


async def take_one_then_quit(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """A connection that takes one message ("as 2"), then its QUIT."""
    await take_message(reader, writer, seen)
    writer.write(b"250 as 2\r\n")
    await answer_quit(reader, writer, seen)


#: A send to c@ announcing d@ as the next, then the send to d@.
ANNOUNCED_THEN_SENT: list[tuple[str, tuple[str, str] | None]] = [
    ("c@example.com", ("b@example.com", "d@example.com")),
    ("d@example.com", None),
]


async def take_with_next_envelope(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes], replies: bytes
) -> None:
    """take_message, then reads the next envelope written behind the data before answering
    (a client that waited for the data's reply would hang here), and answers `replies`."""
    await take_message(reader, writer, seen)
    await read_lines(reader, seen, 3)
    writer.write(replies)


async def take_one_with_next_envelope(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """take_with_next_envelope: the message answered ("as 1") and the next envelope accepted
    (its DATA answered 354); then the server waits for that message's data."""
    await take_with_next_envelope(
        reader, writer, seen, b"250 as 1\r\n250 ok\r\n250 ok\r\n354 go\r\n"
    )


def test_the_next_envelope_goes_out_behind_the_message_data() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        # The next envelope is read before the data's reply is written.
        await take_one_with_next_envelope(reader, writer, seen)
        seen.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 as 2\r\n")
        await answer_quit(reader, writer, seen)

    outcomes, seen = asyncio.run(run_connections([script], ANNOUNCED_THEN_SENT))
    assert [(d.outcome, d.reply) for d in outcomes] == [
        (Outcome.SENT, "as 1"),
        (Outcome.SENT, "as 2"),
    ]
    (lines,) = seen
    assert lines[:3] == [
        b"MAIL FROM:<b@example.com>\r\n",
        b"RCPT TO:<c@example.com>\r\n",
        b"DATA\r\n",
    ]
    assert lines[4:7] == ENVELOPE_2
    assert unstuff(lines[3]) == unstuff(lines[7]) == MESSAGE
    assert lines[8:] == [b"QUIT\r\n", b""]


def test_garbage_read_with_the_data_reply_fails_the_next_send_at_once_unsent() -> None:
    # The server answers the data and, in the same write, something that is not a reply to
    # the next envelope. The next send finds it already read: it is retried at once (nothing
    # of its data went out), without waiting for the reply timeout.
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await take_with_next_envelope(reader, writer, seen, b"250 as 1\r\nbogus\r\n")

    outcomes, seen = asyncio.run(run_connections([script], ANNOUNCED_THEN_SENT))
    assert [(d.outcome, d.code) for d in outcomes] == [(Outcome.SENT, 250), (Outcome.RETRY, None)]
    assert "malformed reply: 'bogus'" in outcomes[1].reply
    (lines,) = seen
    assert lines[4:7] == ENVELOPE_2 and lines[7:] == [b""]  # no data, no QUIT


def test_a_refused_message_data_keeps_the_next_envelope_and_sends_no_rset() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await take_with_next_envelope(
            reader, writer, seen, b"554 5.7.1 content refused\r\n250 ok\r\n250 ok\r\n354 go\r\n"
        )
        seen.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250 as 2\r\n")
        await answer_quit(reader, writer, seen)  # QUIT, not RSET

    outcomes, seen = asyncio.run(run_connections([script], ANNOUNCED_THEN_SENT))
    assert outcomes[0].outcome is Outcome.FAILED and outcomes[0].code == 554
    assert outcomes[1].outcome is Outcome.SENT
    assert seen[0][4:7] == ENVELOPE_2
    assert seen[0][8:] == [b"QUIT\r\n", b""]


def test_another_message_than_announced_gets_a_new_connection_and_no_data_is_ended() -> None:
    # The server waits for d@'s data after its 354; the caller sends to e@ instead (a touch
    # lost its lease): the connection is dropped without a "." (which would send an empty
    # message to d@) nor a QUIT (which would be taken as d@'s data).
    outcomes, seen = asyncio.run(
        run_connections(
            [take_one_with_next_envelope, take_one_then_quit],
            [("c@example.com", ("b@example.com", "d@example.com")), ("e@example.com", None)],
        )
    )
    assert [d.outcome for d in outcomes] == [Outcome.SENT, Outcome.SENT]
    assert seen[0][4:7] == ENVELOPE_2
    assert seen[0][7:] == [b""]  # nothing after d@'s DATA: closed
    assert seen[1][1] == b"RCPT TO:<e@example.com>\r\n"


def test_closing_with_an_announced_message_pending_ends_no_data() -> None:
    outcomes, seen = asyncio.run(
        run_connections(
            [take_one_with_next_envelope], [("c@example.com", ("b@example.com", "d@example.com"))]
        )
    )
    assert [d.outcome for d in outcomes] == [Outcome.SENT]
    assert seen[0][7:] == [b""]


@pytest.mark.parametrize("replied", [True, False], ids=["data-answered", "no-reply"])
def test_a_connection_lost_behind_the_data_keeps_what_was_answered(replied: bool) -> None:
    # Answered: the message was taken and the next one goes over a new connection. Not
    # answered: the server may have taken it (uncertain).
    async def first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await take_message(reader, writer, seen)
        await read_lines(reader, seen, 3)
        if replied:
            writer.write(b"250 as 1\r\n")
            await writer.drain()
        writer.close()  # before the next envelope's replies

    outcomes, seen = asyncio.run(
        run_connections(
            [first, take_one_then_quit],
            ANNOUNCED_THEN_SENT,
        )
    )
    first_outcome = Outcome.SENT if replied else Outcome.UNCERTAIN
    assert [d.outcome for d in outcomes] == [first_outcome, Outcome.SENT]
    assert seen[1][:3] == ENVELOPE_2


def test_the_outcome_of_an_answered_message_data_is_kept_when_the_send_is_cancelled() -> None:
    # The server answers the data at once and the next envelope slowly (a recipient check);
    # the send is cancelled meanwhile (the run stops): the message was taken, and the send
    # says so, as it would without the next envelope behind its data.
    async def run() -> tuple[Delivery, list[bytes]]:
        seen: list[bytes] = []
        cancelled = asyncio.Event()

        handlers: list[asyncio.Task[None]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                await greet(reader, writer)
                await take_with_next_envelope(reader, writer, seen, b"250 as 1\r\n")
                await cancelled.wait()  # the next envelope is answered after the cancel
                writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
                seen.append(await reader.read())
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        mailer = SmtpMailer(settings(server.sockets[0].getsockname()[1]))
        task = asyncio.create_task(
            mailer.send("b@example.com", "c@example.com", MESSAGE, then=("b@example.com", "d@x"))
        )
        # Cancelled once the send has read its data's reply (it returns then; were it to await
        # the next envelope's replies, the cancel would come after 5 s, in that wait).
        await asyncio.wait({task}, timeout=5)
        task.cancel()
        cancelled.set()
        delivery = await task
        await mailer.close()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 5)
        server.close()
        await server.wait_closed()
        return delivery, seen

    delivery, seen = asyncio.run(run())
    assert (delivery.outcome, delivery.reply) == (Outcome.SENT, "as 1")
    assert seen[4:6] == [ENVELOPE_2[0], b"RCPT TO:<d@x>\r\n"]


@pytest.mark.parametrize("reply", [b"421 4.3.2 closing", b"199 odd"], ids=["421", "out-of-rfc"])
def test_a_data_reply_that_ends_the_connection_ends_no_waiting_data(reply: bytes) -> None:
    # The next envelope went out behind the data; the data's reply closes the connection (a
    # 421) or is out of the protocol: the connection is dropped without QUIT, which the server,
    # waiting for the next message's data, would take as data (and wait for more).
    async def first(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await take_with_next_envelope(
            reader, writer, seen, reply + b"\r\n250 ok\r\n250 ok\r\n354 go\r\n"
        )

    outcomes, seen = asyncio.run(
        run_connections(
            [first, take_one_then_quit],
            ANNOUNCED_THEN_SENT,
        )
    )
    first_outcome = Outcome.RETRY if reply.startswith(b"421") else Outcome.UNCERTAIN
    assert [d.outcome for d in outcomes] == [first_outcome, Outcome.SENT]
    assert seen[0][7:] == [b""]  # nothing after the next envelope: no QUIT
    assert seen[1][:3] == ENVELOPE_2


def test_a_refused_sender_in_the_envelope_behind_the_data_stops_the_run() -> None:
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await take_with_next_envelope(
            reader,
            writer,
            seen,
            b"250 as 1\r\n550 5.7.1 sender refused\r\n503 no sender\r\n503 no sender\r\n",
        )
        seen.append(await reader.readline())  # RSET
        writer.write(b"250 reset\r\n")
        await answer_quit(reader, writer, seen)

    async def run() -> tuple[Delivery, BaseException]:
        seen: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await greet(reader, writer)
            await script(reader, writer, seen)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        mailer = SmtpMailer(settings(server.sockets[0].getsockname()[1]))
        then = ("b@example.com", "d@example.com")
        first = await mailer.send("b@example.com", "c@example.com", MESSAGE, then=then)
        with pytest.raises(SmtpSetupError) as refused:
            await mailer.send("b@example.com", "d@example.com", MESSAGE)
        await mailer.close()
        server.close()
        await server.wait_closed()
        return first, refused.value

    first, refused = asyncio.run(run())
    assert first.outcome is Outcome.SENT
    assert "refused the sender" in str(refused)


def test_a_refused_recipient_behind_the_data_ends_an_accepted_data_empty() -> None:
    # The server accepts DATA after refusing the only recipient (RFC 2920 says it should not):
    # the empty data is ended with ".", the transaction reset, the address bounced.
    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
    ) -> None:
        await take_with_next_envelope(
            reader, writer, seen, b"250 as 1\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n"
        )
        seen.append(await reader.readline())  # "."
        writer.write(b"554 no valid recipients\r\n")
        seen.append(await reader.readline())  # RSET
        writer.write(b"250 reset\r\n")
        await answer_quit(reader, writer, seen)

    outcomes, seen = asyncio.run(run_connections([script], ANNOUNCED_THEN_SENT))
    assert [d.outcome for d in outcomes] == [Outcome.SENT, Outcome.BOUNCED]
    assert seen[0][7:] == [b".\r\n", b"RSET\r\n", b"QUIT\r\n", b""]


@pytest.mark.parametrize("cancel_after", ["envelope", "data"])
def test_a_cancelled_send_says_whether_its_message_data_was_written(cancel_after: str) -> None:
    """A dispatcher's task can be cancelled in the middle of a send (another connection
    failed, the run stops): the touch may go back to the queue only if none of its data was
    written. Cancelled while waiting for the envelope's replies: not written. Cancelled while
    waiting for the reply to the data: written (the server may have the message)."""

    async def main() -> tuple[bool, list[bytes]]:
        seen: list[bytes] = []
        got_envelope, got_data, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await greet(reader, writer)
            for _ in range(3):
                seen.append(await reader.readline())
            got_envelope.set()
            if cancel_after == "data":
                writer.write(b"250 sender ok\r\n250 rcpt ok\r\n354 go\r\n")
                seen.append(await reader.readuntil(b"\r\n.\r\n"))
                got_data.set()
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.read()  # no reply: the client is cancelled meanwhile
            writer.close()
            await writer.wait_closed()
            finished.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        mailer = SmtpMailer(settings(port))
        sending = asyncio.create_task(mailer.send("b@example.com", "c@example.com", MESSAGE))
        # The server has read what the client wrote last: the send awaits its replies.
        await (got_data if cancel_after == "data" else got_envelope).wait()
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        written = mailer.data_written
        await mailer.close()
        await asyncio.wait_for(finished.wait(), 5)
        server.close()
        await server.wait_closed()
        return written, seen

    written, seen = asyncio.run(main())
    assert written is (cancel_after == "data")
    assert seen[0].startswith(b"MAIL FROM:<b@example.com>")
    assert len(seen) == (4 if cancel_after == "data" else 3)
