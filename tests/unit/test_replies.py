"""The reply table (followup.delivery.replies), row by row: what each SMTP step's reply means,
as an exact Delivery (outcome, code, reply text), a setup error that stops the run, or None
(the step went through). Pipelined replies and the ones aiosmtplib raised (`stepwise`); and
the step-by-step path against a scripted server, where it reads RCPT TO's rows."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from followup.config.settings import SmtpSettings
from followup.delivery import replies
from followup.delivery.replies import Refusal, StopRun
from followup.delivery.smtp import SmtpMailer
from followup.domain.outcomes import Delivery, Outcome

SERVER = "smtp.example.com:587"
SENDER = "bounces@shop.example"
SENDER_REFUSED = (
    "SMTP server smtp.example.com:587 refused the sender 'bounces@shop.example': "
    "{} (check [sender] return_path and the server's policy)"
)
OK = (250, "ok")
#: aiosmtplib's text for a reply line that does not start with a code (its code: -1).
MALFORMED = "Malformed SMTP response line: hello\r\n"


def retry(code: int | None, text: str) -> Delivery:
    return Delivery(Outcome.RETRY, code, text)


def bounced(code: int, text: str) -> Delivery:
    return Delivery(Outcome.BOUNCED, code, text)


def failed(code: int, text: str) -> Delivery:
    return Delivery(Outcome.FAILED, code, text)


def uncertain(code: int | None, text: str) -> Delivery:
    return Delivery(Outcome.UNCERTAIN, code, text)


def refuses_service(reply: str) -> StopRun:
    return StopRun(
        f"SMTP server smtp.example.com:587 refuses service: {reply} "
        "(check [smtp] host and port, and the server's policy for this client)"
    )


def mail_from(code: int, text: str, *, stepwise: bool = False) -> replies.Verdict:
    return replies.mail_from(code, text, server=SERVER, sender=SENDER, stepwise=stepwise)


def rcpt_to(code: int, text: str) -> Delivery | StopRun | None:
    return replies.rcpt_to(code, text, server=SERVER, sender=SENDER)


# The greeting and the opening of the session (EHLO, HELO, STARTTLS).


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (554, "no service", refuses_service("554 no service")),
        (521, "no mail here", refuses_service("521 no mail here")),
        (421, "4.3.2 busy", retry(421, "4.3.2 busy")),
        (250, "odd", retry(250, "odd")),
    ],
    ids=["554", "other-5yz", "421", "out-of-protocol"],
)
def test_a_greeting(code: int, text: str, expected: Delivery | StopRun) -> None:
    assert replies.greeting(code, text, server=SERVER) == expected


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (502, "5.5.1 no EHLO", retry(502, "5.5.1 no EHLO")),
        (454, "4.7.0 TLS not available", retry(454, "4.7.0 TLS not available")),
        (-1, MALFORMED, retry(None, MALFORMED)),
    ],
    ids=["ehlo-5yz", "starttls-4yz", "malformed"],
)
def test_a_refusal_while_the_session_opens_is_retried(
    code: int, text: str, expected: Delivery
) -> None:
    assert replies.opening(code, text) == expected


# MAIL FROM.


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "2.1.0 ok", None),
        (251, "odd but 2yz", None),
        (450, "4.2.0 busy", retry(450, "4.2.0 busy")),
        (421, "4.3.2 closing", retry(421, "4.3.2 closing")),
        (553, "5.7.1 not yours", StopRun(SENDER_REFUSED.format("553 5.7.1 not yours"))),
        (354, "what", retry(354, "what")),
        (199, "odd", retry(199, "odd")),
        (600, "six", retry(600, "six")),
    ],
    ids=["250", "other-2yz", "4yz", "421", "5yz", "354", "1yz", "6yz"],
)
def test_mail_from_pipelined(code: int, text: str, expected: replies.Verdict) -> None:
    assert mail_from(code, text) == expected


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (251, "not 250", retry(251, "not 250")),
        (450, "4.2.0 busy", retry(450, "4.2.0 busy")),
        (421, "4.3.2 closing", retry(421, "4.3.2 closing")),
        (550, "5.7.1 not yours", StopRun(SENDER_REFUSED.format("550 5.7.1 not yours"))),
        (354, "what", retry(354, "what")),
        (600, "six", StopRun(SENDER_REFUSED.format("600 six"))),
        (-1, MALFORMED, retry(None, MALFORMED)),
    ],
    ids=["other-2yz", "4yz", "421", "5yz", "354", "6yz", "malformed"],
)
def test_mail_from_step_by_step(code: int, text: str, expected: replies.Verdict) -> None:
    assert mail_from(code, text, stepwise=True) == expected


# RCPT TO.


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "2.1.5 ok", None),
        (251, "2.1.5 will forward", None),
        (252, "2.1.5 cannot verify, will try", None),
        (450, "4.2.1 try later", retry(450, "4.2.1 try later")),
        (421, "4.3.2 closing", retry(421, "4.3.2 closing")),
        (550, "5.1.1 no such user", bounced(550, "5.1.1 no such user")),
        (354, "what", retry(354, "unexpected reply to RCPT: what")),
        (199, "odd", retry(199, "unexpected reply to RCPT: odd")),
        (600, "six", retry(600, "unexpected reply to RCPT: six")),
    ],
    ids=["250", "251", "other-2yz", "4yz", "421", "5yz", "354", "1yz", "6yz"],
)
def test_rcpt_to(code: int, text: str, expected: Delivery | None) -> None:
    """Pipelined, and step by step for the replies aiosmtplib raised (all but 250 and 251)."""
    assert rcpt_to(code, text) == expected


@given(st.integers(0, 999))
def test_no_reply_before_the_message_data_counts_as_sent(code: int) -> None:
    verdicts = [
        mail_from(code, "text"),
        mail_from(code, "text", stepwise=True),
        rcpt_to(code, "text"),
        replies.data_command(code, "text", server=SERVER, sender=SENDER),
    ]
    assert all(
        v is None or isinstance(v, StopRun) or v.outcome is not Outcome.SENT for v in verdicts
    )


@given(st.integers(0, 999), st.sampled_from(["text", "5.1.1 no such user", "user unknown"]))
def test_only_a_5yz_to_rcpt_to_bounces_and_a_5yz_is_never_retried(code: int, text: str) -> None:
    """Issue 20 changed this property: a 5yz to RCPT TO bounced whatever it said; now only a
    refusal of the recipient's address bounces, others fail the message or stop the run."""
    verdict = rcpt_to(code, text)
    bounces = isinstance(verdict, Delivery) and verdict.outcome is Outcome.BOUNCED
    if bounces:
        assert 500 <= code < 600
    if 500 <= code < 600:
        assert isinstance(verdict, StopRun) or verdict is not None
        assert isinstance(verdict, StopRun) or verdict.outcome in (Outcome.BOUNCED, Outcome.FAILED)
    if 500 <= code < 600 and text == "5.1.1 no such user":
        assert bounces is (code != 530)  # the enhanced code decides; 530 asks for a login
    if 500 <= code < 600 and text == "user unknown":
        assert bounces is (code not in (500, 501, 502, 503, 504, 530, 555))


# RCPT TO's 5yz: whom it refuses (RFC 3463 enhanced codes, the words, the basic code).

SERVER_REFUSES = "SMTP server smtp.example.com:587 {} (check {})"
RELAY = (
    "[smtp] host: the server refuses to relay for this client; a relay that wants a login "
    "needs [smtp] username/password"
)
LOGIN = "[smtp] username/password: the password comes from FOLLOWUP_SMTP_PASSWORD"
TLS = '[smtp] security: "starttls" or "tls"'
POLICY = "[smtp] host and the server's policy for this client's address and name"
PROTOCOL = "[smtp] host and port; [smtp] pipelining = false for a server that gets PIPELINING wrong"


def stops(what: str, reply: str, fix: str) -> StopRun:
    return StopRun(SERVER_REFUSES.format(f"{what}: {reply}", fix))


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        # The recipient's address or mailbox: bounced.
        (
            550,
            "5.1.1 <x@example.com>: Recipient address rejected: User unknown in relay "
            "recipient table",
            bounced(
                550,
                "5.1.1 <x@example.com>: Recipient address rejected: "
                "User unknown in relay recipient table",
            ),
        ),
        (550, "5.1.1 User unknown", bounced(550, "5.1.1 User unknown")),
        (
            550,
            "5.1.10 RESOLVER.ADR.RecipientNotFound",
            bounced(550, "5.1.10 RESOLVER.ADR.RecipientNotFound"),
        ),
        (552, "5.2.2 mailbox full", bounced(552, "5.2.2 mailbox full")),
        (550, "5.2.1 mailbox disabled", bounced(550, "5.2.1 mailbox disabled")),
        (550, "User unknown", bounced(550, "User unknown")),
        (
            550,
            "Requested action not taken: mailbox unavailable",
            bounced(550, "Requested action not taken: mailbox unavailable"),
        ),
        (553, "mailbox name not allowed", bounced(553, "mailbox name not allowed")),
        (
            511,
            "sorry, no mailbox here by that name (#5.1.1)",
            bounced(511, "sorry, no mailbox here by that name (#5.1.1)"),
        ),
        # One message, not the address: failed, nobody suppressed.
        (554, "Transaction failed", failed(554, "Transaction failed")),
        (550, "Access denied", failed(550, "Access denied")),
        (552, "5.2.3 message too long", failed(552, "5.2.3 message too long")),
        (550, "5.4.4 unable to route", failed(550, "5.4.4 unable to route")),
        (
            554,
            "5.7.1 <x@example.com>: Recipient address rejected: Access denied",
            failed(554, "5.7.1 <x@example.com>: Recipient address rejected: Access denied"),
        ),
        # The client's setup: the run stops and names the setting.
        (
            554,
            "5.7.1 <x@example.com>: Relay access denied",
            stops(
                "refuses to relay for this client",
                "554 5.7.1 <…>: Relay access denied",
                RELAY,
            ),
        ),
        (
            550,
            "relaying denied",
            stops("refuses to relay for this client", "550 relaying denied", RELAY),
        ),
        (
            553,
            "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
            stops(
                "refuses to relay for this client",
                "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
                RELAY,
            ),
        ),
        (
            530,
            "5.7.0 Authentication required",
            stops("wants a login it did not get", "530 5.7.0 Authentication required", LOGIN),
        ),
        (
            530,
            "Authentication required",
            stops("wants a login it did not get", "530 Authentication required", LOGIN),
        ),
        (
            535,
            "5.7.8 Authentication credentials invalid",
            stops(
                "wants a login it did not get",
                "535 5.7.8 Authentication credentials invalid",
                LOGIN,
            ),
        ),
        (
            530,
            "5.7.0 Must issue a STARTTLS command first",
            stops(
                "wants an encrypted connection",
                "530 5.7.0 Must issue a STARTTLS command first",
                TLS,
            ),
        ),
        (
            550,
            "5.7.1 Service unavailable; client host [192.0.2.1] blocked using zen.spamhaus.org",
            stops(
                "refuses mail from this client by policy",
                "550 5.7.1 Service unavailable; client host [192.0.2.1] blocked using "
                "zen.spamhaus.org",
                POLICY,
            ),
        ),
        (
            550,
            "5.7.1 Message refused by policy",
            stops(
                "refuses mail from this client by policy",
                "550 5.7.1 Message refused by policy",
                POLICY,
            ),
        ),
        (
            553,
            "5.7.1 <b@shop.example>: Sender address rejected: not owned by user shop",
            stops(
                "refused the sender 'bounces@shop.example'",
                "553 5.7.1 <…>: Sender address rejected: not owned by user shop",
                "[sender] return_path and the server's policy",
            ),
        ),
        (
            501,
            "5.5.4 Syntax error in parameters",
            stops(
                "did not take followup's command", "501 5.5.4 Syntax error in parameters", PROTOCOL
            ),
        ),
        (
            503,
            "Bad sequence of commands",
            stops("did not take followup's command", "503 Bad sequence of commands", PROTOCOL),
        ),
        (
            550,
            "5.7.1 relay\nnot permitted",
            stops("refuses to relay for this client", "550 5.7.1 relay not permitted", RELAY),
        ),
    ],
    ids=[
        "postfix-unknown",
        "5.1.1",
        "exchange-5.1.10",
        "5.2.2-full",
        "5.2.1-disabled",
        "550-user-unknown",
        "550-mailbox-unavailable",
        "553",
        "qmail-#5.1.1",
        "554-transaction-failed",
        "550-access-denied",
        "5.2.3-too-long",
        "5.4.4-route",
        "5.7.1-names-the-recipient",
        "relay-access-denied",
        "relaying-denied",
        "qmail-rcpthosts",
        "530-5.7.0",
        "530-alone",
        "5.7.8",
        "starttls-first",
        "blocklisted",
        "5.7.1-policy",
        "sender-not-owned",
        "5.5.4",
        "503",
        "multiline-joined",
    ],
)
def test_whom_a_5yz_to_rcpt_to_refuses(code: int, text: str, expected: Delivery | StopRun) -> None:
    assert rcpt_to(code, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1 no such user", (5, 1, 1)),
        ("ok\n5.7.1 second line", (5, 7, 1)),
        ("no mailbox here (#5.1.1)", (5, 1, 1)),
        ("5.1.10 RESOLVER", (5, 1, 10)),
        ("version 5.1.1.2 of the software", None),
        ("no code here", None),
    ],
)
def test_the_enhanced_status_code_is_read_where_rfc_3463_and_qmail_put_it(
    text: str, expected: tuple[int, int, int] | None
) -> None:
    assert replies.enhanced_code(text) == expected


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (
            530,
            "5.7.0 Authentication required",
            stops("wants a login it did not get", "530 5.7.0 Authentication required", LOGIN),
        ),
        (
            554,
            "5.7.1 <x>: Relay access denied",
            stops("refuses to relay for this client", "554 5.7.1 <x>: Relay access denied", RELAY),
        ),
        (
            550,
            "5.7.1 Client host rejected: cannot find your hostname",
            stops(
                "refuses mail from this client by policy",
                "550 5.7.1 Client host rejected: cannot find your hostname",
                POLICY,
            ),
        ),
        (550, "5.1.1 user unknown", StopRun(SENDER_REFUSED.format("550 5.1.1 user unknown"))),
    ],
    ids=["530", "relay", "client-host", "5.1.1-is-the-sender-here"],
)
def test_mail_from_refused_names_what_to_fix(code: int, text: str, expected: StopRun) -> None:
    """Pipelined and step by step alike: at MAIL FROM a 5yz refuses the setup, not a client."""
    assert mail_from(code, text) == expected
    assert mail_from(code, text, stepwise=True) == expected


# DATA, pipelined: the command's own reply, before any message data.


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (354, "go ahead", None),
        (451, "4.3.0 try later", retry(451, "4.3.0 try later")),
        (421, "4.3.2 closing", retry(421, "4.3.2 closing")),
        (554, "5.5.1 no valid recipients", failed(554, "5.5.1 no valid recipients")),
        # A 250 counted as sent would lose the message: none of it went out.
        (250, "ok", retry(250, "unexpected reply to DATA: ok")),
        (600, "six", retry(600, "unexpected reply to DATA: six")),
        (
            530,
            "5.7.0 Authentication required",
            stops("wants a login it did not get", "530 5.7.0 Authentication required", LOGIN),
        ),
        (
            554,
            "5.7.1 Relay access denied",
            stops("refuses to relay for this client", "554 5.7.1 Relay access denied", RELAY),
        ),
    ],
    ids=["354", "4yz", "421", "5yz", "2yz", "6yz", "530-login", "relay"],
)
def test_the_data_command_pipelined(
    code: int, text: str, expected: Delivery | StopRun | None
) -> None:
    assert replies.data_command(code, text, server=SERVER, sender=SENDER) == expected


# The end of the message data.


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (250, "2.0.0 queued as 42", Delivery(Outcome.SENT, 250, "2.0.0 queued as 42")),
        (251, "odd but 2yz", Delivery(Outcome.SENT, 251, "odd but 2yz")),
        (451, "4.3.0 try later", retry(451, "4.3.0 try later")),
        (421, "4.3.2 closing", retry(421, "4.3.2 closing")),
        (554, "5.7.1 content refused", failed(554, "5.7.1 content refused")),
        (354, "again?", uncertain(354, "unexpected reply to the message data: again?")),
        (199, "odd", uncertain(199, "unexpected reply to the message data: odd")),
        (600, "six", uncertain(600, "unexpected reply to the message data: six")),
    ],
    ids=["250", "other-2yz", "4yz", "421", "5yz", "354", "1yz", "6yz"],
)
def test_the_end_of_the_message_data(code: int, text: str, expected: Delivery) -> None:
    assert replies.message_data(code, text) == expected


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (451, "4.3.0 try later", retry(451, "4.3.0 try later")),
        (421, "4.3.2 closing", retry(421, "4.3.2 closing")),
        (554, "5.7.1 content refused", failed(554, "5.7.1 content refused")),
        (600, "six", failed(600, "six")),
        (250, "ok", uncertain(None, "connection lost during DATA: (250, 'ok')")),
        (354, "again?", uncertain(None, "connection lost during DATA: (354, 'again?')")),
        (
            -1,
            MALFORMED,
            uncertain(
                None,
                "connection lost during DATA: (-1, 'Malformed SMTP response line: hello\\r\\n')",
            ),
        ),
    ],
    ids=["4yz", "421", "5yz", "6yz", "2yz", "354", "malformed"],
)
def test_data_step_by_step(code: int, text: str, expected: Delivery) -> None:
    """aiosmtplib's DATA refused at DATA or after the data: it does not say which."""
    assert replies.data_stepwise(code, text) == expected


# No reply at all.


@pytest.mark.parametrize(
    ("exc", "data_written", "expected"),
    [
        (
            aiosmtplib.SMTPServerDisconnected("the server closed the connection"),
            False,
            retry(None, "SMTPServerDisconnected: the server closed the connection"),
        ),
        (
            aiosmtplib.SMTPServerDisconnected("the server closed the connection"),
            True,
            Delivery(
                Outcome.UNCERTAIN,
                None,
                "no reply to the message data: "
                "SMTPServerDisconnected: the server closed the connection",
            ),
        ),
        (
            TimeoutError("no reply from the SMTP server in time"),
            True,
            Delivery(
                Outcome.UNCERTAIN,
                None,
                "no reply to the message data: TimeoutError: no reply from the SMTP server in time",
            ),
        ),
        (
            aiosmtplib.SMTPResponseException(-1, "malformed reply: 'hello'"),
            False,
            retry(None, "SMTPResponseException: (-1, \"malformed reply: 'hello'\")"),
        ),
    ],
    ids=["lost-before-the-data", "lost-after-the-data", "timeout-after-the-data", "garbage"],
)
def test_a_lost_connection(exc: BaseException, data_written: bool, expected: Delivery) -> None:
    assert replies.connection_lost(exc, data_written=data_written) == expected


# The pipelined envelope: MAIL FROM, RCPT TO and DATA answered together.


def envelope(mail: replies.Reply, rcpt: replies.Reply, data: replies.Reply) -> Refusal | None:
    return replies.envelope(mail, rcpt, data, server=SERVER, sender=SENDER)


def test_an_accepted_envelope_goes_on_to_the_message_data() -> None:
    assert envelope(OK, (251, "will forward"), (354, "go")) is None


def test_a_354_after_a_refused_recipient_bounces_and_leaves_data_to_end() -> None:
    assert envelope(OK, (550, "5.1.1 no such user"), (354, "go")) == Refusal(
        bounced(550, "5.1.1 no such user"), 550, data_waiting=True
    )


def test_a_refused_recipient_with_data_refused_too() -> None:
    assert envelope(OK, (550, "5.1.1 no such user"), (554, "no valid recipients")) == Refusal(
        bounced(550, "5.1.1 no such user"), 550, data_waiting=False
    )


def test_a_refused_sender_stops_the_run_whatever_follows() -> None:
    expected = StopRun(SENDER_REFUSED.format("553 5.7.1 sender refused"))
    refused = (553, "5.7.1 sender refused")
    assert envelope(refused, (503, "no sender"), (503, "no sender")) == Refusal(
        expected, 553, data_waiting=False
    )
    assert envelope(refused, OK, (354, "go")) == Refusal(expected, 553, data_waiting=True)


def test_the_first_step_that_did_not_go_through_decides() -> None:
    assert envelope((451, "4.3.0 later"), (550, "no"), (554, "no")) == Refusal(
        retry(451, "4.3.0 later"), 451, data_waiting=False
    )


def test_a_421_to_data_is_retried() -> None:
    assert envelope(OK, OK, (421, "4.3.2 closing")) == Refusal(
        retry(421, "4.3.2 closing"), 421, data_waiting=False
    )


def test_a_250_to_data_is_retried_not_sent() -> None:
    assert envelope(OK, OK, OK) == Refusal(
        retry(250, "unexpected reply to DATA: ok"), 250, data_waiting=False
    )


# The connection after a refusal.


@pytest.mark.parametrize(
    ("code", "ends"),
    [(421, True), (450, False), (554, False), (199, True), (250, True), (354, True), (600, True)],
)
def test_a_421_or_a_reply_out_of_the_protocol_ends_the_session(code: int, ends: bool) -> None:
    assert replies.ends_session(code) is ends


@pytest.mark.parametrize(("code", "refused"), [(250, False), (421, True), (500, True)])
def test_a_refused_rset_closes_the_connection(code: int, refused: bool) -> None:
    assert replies.reset_refused(code) is refused


@pytest.mark.parametrize(
    ("code", "recipient", "expected"),
    [
        (250, True, Delivery(Outcome.SENT, 250, "r")),
        (450, True, retry(450, "r")),
        (550, True, bounced(550, "r")),
        (550, False, failed(550, "r")),
    ],
)
def test_classify_code(code: int, recipient: bool, expected: Delivery) -> None:
    assert replies.classify_code(code, "r", recipient=recipient) == expected


# The step-by-step path reads RCPT TO's rows (a scripted server without PIPELINING).


async def send_by_step(rcpt_reply: bytes) -> tuple[Delivery, bool, list[bytes]]:
    """One send to a server that offers no PIPELINING and answers RCPT TO with `rcpt_reply`,
    everything else as a server that takes the message; returns the outcome, whether the
    message data was written, and the commands the server read."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted ESMTP\r\n")
        answers = {b"EHLO": b"250 scripted", b"MAIL": b"250 ok", b"RCPT": rcpt_reply}
        answers |= {b"DATA": b"354 go", b"RSET": b"250 reset", b"QUIT": b"221 bye"}
        try:
            while line := await reader.readline():
                command = line.split(b" ")[0].split(b":")[0].strip()
                seen.append(command)
                writer.write(answers[command] + b"\r\n")
                if command == b"DATA":
                    seen.append(await reader.readuntil(b"\r\n.\r\n"))
                    writer.write(b"250 queued\r\n")
                if command == b"QUIT":
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=2))
    delivery = await mailer.send("b@example.com", "c@example.com", b"Subject: hi\r\n\r\nhi\r\n")
    written, by_step = mailer.data_written, mailer._pipe is None
    await mailer.close()
    server.close()
    await server.wait_closed()
    assert by_step
    return delivery, written, seen


def test_a_252_to_rcpt_to_step_by_step_goes_on_to_the_message_data() -> None:
    delivery, written, seen = asyncio.run(send_by_step(b"252 2.1.5 cannot verify, will try"))
    assert delivery == Delivery(Outcome.SENT, 250, "queued")
    assert written
    assert seen[:4] == [b"EHLO", b"MAIL", b"RCPT", b"DATA"]


@pytest.mark.parametrize(
    ("reply", "expected", "commands"),
    [
        (b"550 5.1.1 no such user", bounced(550, "5.1.1 no such user"), [b"RSET", b"QUIT"]),
        (b"450 4.2.1 later", retry(450, "4.2.1 later"), [b"RSET", b"QUIT"]),
        (b"354 what", retry(354, "unexpected reply to RCPT: what"), [b"RSET", b"QUIT"]),
        (
            b"hello",
            retry(None, "SMTPResponseException: (-1, 'Malformed SMTP response line: hello\\r\\n')"),
            [b"QUIT"],
        ),
    ],
    ids=["5yz", "4yz", "out-of-protocol", "malformed"],
)
def test_a_refused_recipient_step_by_step(
    reply: bytes, expected: Delivery, commands: list[bytes]
) -> None:
    delivery, written, seen = asyncio.run(send_by_step(reply))
    assert delivery == expected
    assert not written
    assert seen == [b"EHLO", b"MAIL", b"RCPT", *commands]
