"""What an SMTP server's reply means at each step of a transaction: the one table both ways of
sending read (aiosmtplib's commands one at a time, or pipelined through
followup.delivery.protocol), so that where they read a reply differently it is written here.

Pure functions, no I/O. Each takes the reply to one step (its code and text) and says what it
means: None when the step went through and the transaction goes on, a Delivery when the
message's outcome is known, or StopRun when the reply refuses this client's setup rather than
one message (SmtpMailer raises SmtpSetupError with its reason). RFC 5321 section 4.2.1: 2yz
done, 4yz transient, 5yz permanent; any other code is out of the protocol. Without a reply,
or with one out of the protocol, nothing is retried once the message data may have gone out:
the server may have the message (uncertain).

The step-by-step rows (`stepwise=True`, data_stepwise) are for the replies aiosmtplib's own
commands raised as refusals, which differ from pipelined replies: aiosmtplib takes only 250 to
MAIL FROM, its code for a malformed reply is -1, and its DATA writes the message data after the
354 in the same call, so a refusal does not say whether it came before or after the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from followup.domain.outcomes import Delivery, Outcome


@dataclass(frozen=True, slots=True)
class StopRun:
    """A refusal of the server or of the sender, not of one message: every message would be
    refused the same way, so the run stops and says what to fix."""

    reason: str


#: What a reply to one step means; None: the step went through.
Verdict: TypeAlias = Delivery | StopRun | None
#: A reply as read off the wire: its code and its text (lines joined with "\n").
Reply: TypeAlias = tuple[int, str]


def classify_code(code: int, reply: str, *, recipient: bool) -> Delivery:
    """RFC 5321 section 4.2.1: 2yz done, 4yz transient, 5yz permanent."""
    if 200 <= code < 300:
        return Delivery(Outcome.SENT, code, reply)
    if 400 <= code < 500:
        return Delivery(Outcome.RETRY, code, reply)
    return Delivery(Outcome.BOUNCED if recipient else Outcome.FAILED, code, reply)


def _code(code: int) -> int | None:
    """aiosmtplib's code, None for its "no code" (-1: a malformed reply)."""
    return code if code > 0 else None


def greeting(code: int, text: str, *, server: str) -> Delivery | StopRun:
    """The server's greeting when it is not a 220. RFC 5321 section 3.1: a 554 says the server
    gives this client no service; any 5yz stops the run. Anything else: try again later."""
    if code >= 500:
        return StopRun(f"SMTP server {server} refuses service: {code} {text}")
    return opening(code, text)


def opening(code: int, text: str) -> Delivery:
    """A refusal while the session opens (EHLO or HELO, STARTTLS, a greeting that is not a
    5yz) or a malformed reply then: nothing of a message went out, try again later."""
    return Delivery(Outcome.RETRY, _code(code), text)


def mail_from(code: int, text: str, *, server: str, sender: str, stepwise: bool = False) -> Verdict:
    """The reply to MAIL FROM. RFC 5321 section 4.2.1: a 5yz refuses the sender, not this
    client's message: the run stops. A 2yz goes on; anything else is retried.

    Step by step, aiosmtplib took only a 250: any other reply under 500 is retried, and any
    from 500 up stops the run."""
    if stepwise:
        if code >= 500:
            return _sender_refused(code, text, server=server, sender=sender)
        return Delivery(Outcome.RETRY, _code(code), text)
    if 200 <= code < 300:
        return None
    if 500 <= code < 600:
        return _sender_refused(code, text, server=server, sender=sender)
    return Delivery(Outcome.RETRY, code, text)


def _sender_refused(code: int, text: str, *, server: str, sender: str) -> StopRun:
    return StopRun(
        f"SMTP server {server} refused the sender {sender!r}: "
        f"{code} {text} (check [sender] return_path and the server's policy)"
    )


def rcpt_to(code: int, text: str) -> Delivery | None:
    """The reply to RCPT TO, pipelined or step by step: a 2yz accepts the recipient (251: will
    forward), a 4yz is retried, a 5yz refuses the recipient (bounced). Anything else is out of
    the protocol before any message data: retried. Step by step, aiosmtplib takes only 250 and
    251 and raises any other reply, which reads the same rows (a 252 goes on to DATA)."""
    if 200 <= code < 300:
        return None
    if 400 <= code < 600:
        return classify_code(code, text, recipient=True)
    return Delivery(Outcome.RETRY, code, f"unexpected reply to RCPT: {text}")


def data_command(code: int, text: str) -> Delivery | None:
    """The reply to the DATA command (pipelined): 354 goes on to the message data; a 4yz is
    retried, a 5yz fails the message. Anything else is out of the protocol, and nothing of the
    message went out whatever the server says: retried (a 250 counted as sent would be lost).
    """
    if code == 354:
        return None
    if 400 <= code < 600:
        return classify_code(code, text, recipient=False)
    return Delivery(Outcome.RETRY, code, f"unexpected reply to DATA: {text}")


def message_data(code: int, text: str) -> Delivery:
    """The reply to the end of the message data: a 2yz took the message, a 4yz is retried, a
    5yz fails it. Anything else is out of the protocol after the data: the server may have
    taken the message (uncertain)."""
    if 200 <= code < 300:
        return Delivery(Outcome.SENT, code, text)
    if 400 <= code < 600:
        return classify_code(code, text, recipient=False)
    return Delivery(Outcome.UNCERTAIN, code, f"unexpected reply to the message data: {text}")


def data_stepwise(code: int, text: str) -> Delivery:
    """A reply aiosmtplib's DATA raised as a refusal (anything but 354 to DATA, or but 250
    after the message data): it does not say which. From 400 up the server answered and did
    not take the message (4yz retried, else failed); anything lower is out of the protocol and
    may have come after the data: uncertain."""
    if code >= 400:
        return classify_code(code, text, recipient=False)
    return Delivery(Outcome.UNCERTAIN, None, f"connection lost during DATA: {(code, text)}")


def connection_lost(exc: BaseException, *, data_written: bool) -> Delivery:
    """No reply: the connection was lost, timed out or read garbage. Before any message data
    was written nothing of the message went out: retried. After, the server may have accepted
    it: uncertain."""
    what = f"{type(exc).__name__}: {exc}"
    if data_written:
        return Delivery(Outcome.UNCERTAIN, None, f"no reply to the message data: {what}")
    return Delivery(Outcome.RETRY, None, what)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The step of a pipelined envelope that did not go through, the first of MAIL FROM,
    RCPT TO and DATA."""

    verdict: Delivery | StopRun
    #: Its reply's code: whether the connection can be reset after it (ends_session).
    code: int
    #: DATA got its 354 all the same, which RFC 2920 section 3.1 says a server should not do
    #: when no recipient was accepted: the server waits for message data, to be ended empty.
    data_waiting: bool


def envelope(mail: Reply, rcpt: Reply, data: Reply, *, server: str, sender: str) -> Refusal | None:
    """The replies to a pipelined MAIL FROM, RCPT TO and DATA (RFC 2920): None when all three
    went through, else the first that did not, which decides the outcome."""
    data_verdict = data_command(*data)
    steps = (
        (mail[0], mail_from(*mail, server=server, sender=sender)),
        (rcpt[0], rcpt_to(*rcpt)),
        (data[0], data_verdict),
    )
    for code, verdict in steps:
        if verdict is not None:
            return Refusal(verdict, code, data_waiting=data_verdict is None)
    return None


def ends_session(code: int) -> bool:
    """After a reply that ended a transaction, whether the connection must be closed rather
    than reset: a 421 (RFC 5321 section 3.8: the server is closing it) or a reply out of the
    protocol (what the server will say next cannot be trusted)."""
    return code == 421 or not 400 <= code < 600


def reset_refused(code: int) -> bool:
    """The reply to RSET: a refusal leaves the session in a state not known: close it."""
    return code >= 400
