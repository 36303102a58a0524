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

Whom a 5yz refuses (`refused`) is read from its enhanced status code (RFC 3463, at the start
of the text, or qmail's "(#5.7.1)"), from the words of the text, and last from the basic code.
Only a refusal of the recipient's address or mailbox bounces (suppresses the address); a
refusal of the sender, of this client (relay, login, TLS, policy) or of followup's commands
stops the run and names the setting to fix; anything else fails that one message. Where a
reply is unclear, it fails the message rather than bounce a client.

The step-by-step rows (`stepwise=True`, data_stepwise) are for the replies aiosmtplib's own
commands raised as refusals, which differ from pipelined replies: aiosmtplib takes only 250 to
MAIL FROM, its code for a malformed reply is -1, and its DATA writes the message data after the
354 in the same call, so a refusal does not say whether it came before or after the data.
"""

from __future__ import annotations

import enum
import re
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


class Refused(enum.Enum):
    """Whom or what a permanent refusal (5yz) refuses."""

    #: The recipient's address or mailbox (RFC 3463 X.1.x, X.2.x; "user unknown"): bounce.
    RECIPIENT = "recipient"
    #: This one message, for a reason that does not say the address is bad: fail it.
    MESSAGE = "message"
    #: The envelope sender ([sender] return_path).
    SENDER = "sender"
    #: Relaying for this client (the server is not followup's relay, or wants a login).
    RELAY = "relay"
    #: A login is needed, or the one given is refused ([smtp] username, the password).
    LOGIN = "login"
    #: An encrypted connection is needed ([smtp] security).
    TLS = "tls"
    #: This client by policy: its address or name is blocked, or a policy refusal (X.7.x)
    #: that names no recipient.
    POLICY = "policy"
    #: followup's command itself (X.5.x, 500-504): syntax, sequence, not implemented.
    PROTOCOL = "protocol"


#: Each refusal of the client's setup, what the server refuses and which setting to check.
_STOP = {
    Refused.SENDER: (
        "refused the sender {sender!r}",
        "check [sender] return_path and the server's policy",
    ),
    Refused.RELAY: (
        "refuses to relay for this client",
        "check [smtp] host: the server "
        "refuses to relay for this client; a relay that wants a login needs "
        "[smtp] username/password",
    ),
    Refused.LOGIN: (
        "wants a login it did not get",
        "check [smtp] username/password: the password comes from FOLLOWUP_SMTP_PASSWORD",
    ),
    Refused.TLS: ("wants an encrypted connection", 'check [smtp] security: "starttls" or "tls"'),
    Refused.POLICY: (
        "refuses mail from this client by policy",
        "check [smtp] host and the server's policy for this client's address and name",
    ),
    Refused.PROTOCOL: (
        "did not take followup's command",
        "check [smtp] host and port; "
        "[smtp] pipelining = false for a server that gets PIPELINING wrong",
    ),
}

#: RFC 3463 section 2: class.subject.detail at the start of a reply line (RFC 2034), or
#: qmail's "(#5.7.1)" anywhere in the text.
_ENHANCED = re.compile(
    r"(?:^|\n)[ \t]*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])|\(#([245])\.(\d{1,3})\.(\d{1,3})\)"
)
#: Words that say whom a refusal is about, whatever its codes; the first that matches wins.
_WORDS = (
    (
        Refused.SENDER,
        r"sender address rejected|not owned by user|sender verif\w* failed|"
        r"sender (?:is )?(?:not allowed|rejected|refused|denied|not authori[sz]ed)",
    ),
    (
        Refused.POLICY,
        r"client host rejected|helo command rejected|blocked using|"
        r"\b(?:black|block|deny|ban)listed\b|\bspamhaus\b|\bdnsbl\b",
    ),
    (
        Refused.RELAY,
        r"relay(?:ing)? (?:access )?(?:is )?(?:denied|not permitted|not allowed|"
        r"prohibited|refused|forbidden)|rcpthosts|relay access|no relaying|do(?:es)? not relay|"
        r"(?:unable|not permitted|not allowed|not authori[sz]ed) to relay",
    ),
    (
        Refused.TLS,
        r"starttls|tls (?:is )?required|encryption (?:is )?required|"
        r"requires? (?:tls|encryption)|must (?:use|issue) (?:a )?(?:tls|starttls|encryption)",
    ),
    (
        Refused.LOGIN,
        r"authentication (?:is )?required|must (?:first )?authenticate|"
        r"authenticat\w* (?:failed|invalid|credentials)|log ?in required|not logged in|"
        r"\bauth(?:orization)? required",
    ),
)
_WORDS_COMPILED = tuple((who, re.compile(words, re.I)) for who, words in _WORDS)
#: A refusal that says it is about the recipient's address or mailbox.
_RECIPIENT_WORDS = re.compile(
    r"user unknown|unknown (?:user|recipient|mailbox|address)|no such (?:user|mailbox|"
    r"recipient|address|account)|mailbox (?:is )?(?:unavailable|not found|does not exist|"
    r"disabled|full|unknown|inactive)|recipient (?:unknown|not found|does not exist|invalid)|"
    r"invalid (?:recipient|mailbox)|(?:user|address|mailbox|account) (?:does not|doesn't) "
    r"exist|over quota|quota exceeded|account (?:is |has been )?disabled",
    re.I,
)
#: A policy refusal (X.7.x) that names a recipient: that message fails, the run goes on.
_NAMES_RECIPIENT = re.compile(r"recipient|mailbox|\buser\b", re.I)


#: An e-mail address in a reply's text.
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")


def enhanced_code(text: str) -> tuple[int, int, int] | None:
    """The reply's enhanced status code (RFC 3463), or None when it has none."""
    found = _ENHANCED.search(text)
    if found is None:
        return None
    parts = found.groups()[:3] if found.group(1) else found.groups()[3:]
    klass, subject, detail = (int(part) for part in parts)
    return klass, subject, detail


def _named(text: str) -> Refused | None:
    """Whom the words of a refusal name, before any code is read (its lines as one)."""
    flat = " ".join(text.split())
    for who, words in _WORDS_COMPILED:
        if words.search(flat):
            return who
    return None


def refused(code: int, text: str) -> Refused:
    """Whom a 5yz reply to RCPT TO refuses (RFC 3463 section 3, RFC 5321 section 4.2.3).
    Words naming the sender, this client, relaying, a login or TLS come first (Postfix
    rejects a sender or a client at RCPT TO); then the enhanced code; then words naming the
    recipient; then the basic code. 550 alone is "mailbox unavailable, or a policy": it
    bounces only when its words name the recipient."""
    named = _named(text)
    if named is not None:
        return named
    enhanced = enhanced_code(text)
    subject, detail = (enhanced[1], enhanced[2]) if enhanced else (0, 0)
    if code == 530 or (subject, detail) == (7, 8):
        return Refused.LOGIN  # RFC 4954: authentication required; credentials invalid
    if subject == 7:
        if detail in (9, 10, 11):
            return Refused.TLS  # mechanism too weak, encryption needed
        return Refused.MESSAGE if _NAMES_RECIPIENT.search(text) else Refused.POLICY
    if subject == 1:
        return Refused.SENDER if detail in (7, 8) else Refused.RECIPIENT
    if subject == 2:
        return Refused.MESSAGE if detail == 3 else Refused.RECIPIENT  # 5.2.3: too long
    if subject == 5 or 500 <= code <= 504 or code == 555:
        return Refused.PROTOCOL
    if subject in (3, 4, 6):
        return Refused.MESSAGE  # the mail system, the route, the content: not the address
    if _RECIPIENT_WORDS.search(" ".join(text.split())) or code in (551, 553, 556):
        return Refused.RECIPIENT
    if code == 521:
        return Refused.POLICY  # RFC 7504: this server does not accept mail
    return Refused.MESSAGE


def stop_run(who: Refused, code: int, text: str, *, server: str, sender: str) -> StopRun:
    """The run's stop for a refusal of the client's setup, naming the setting to check."""
    what, fix = _STOP[who]
    # The reply may name a client's address (Postfix: "<ann@example.com>: Relay access
    # denied"): the reason goes to logs and run records, where no address may go.
    reply = _ADDRESS.sub("…", " ".join(f"{code} {text}".split()))
    return StopRun(f"SMTP server {server} {what.format(sender=sender)}: {reply} ({fix})")


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
        reply = _ADDRESS.sub("…", " ".join(f"{code} {text}".split()))
        return StopRun(
            f"SMTP server {server} refuses service: {reply} "
            "(check [smtp] host and port, and the server's policy for this client)"
        )
    return opening(code, text)


def opening(code: int, text: str) -> Delivery:
    """A refusal while the session opens (EHLO or HELO, STARTTLS, a greeting that is not a
    5yz) or a malformed reply then: nothing of a message went out, try again later."""
    return Delivery(Outcome.RETRY, _code(code), text)


def mail_from(code: int, text: str, *, server: str, sender: str, stepwise: bool = False) -> Verdict:
    """The reply to MAIL FROM. RFC 5321 section 4.2.1: a 5yz refuses the sender or this
    client, never one client's message: the run stops, naming what to check (the sender
    unless the reply names a login, TLS, relaying, a policy or followup's command). A 2yz
    goes on; anything else is retried.

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
    """At MAIL FROM there is no recipient nor message yet: a refusal whose words name no
    one else (this client, relaying, a login, TLS) refuses the sender."""
    who = _named(text) or refused(code, text)
    if who in (Refused.RECIPIENT, Refused.MESSAGE) or (
        who is Refused.POLICY and _named(text) is None
    ):
        who = Refused.SENDER
    return stop_run(who, code, text, server=server, sender=sender)


def rcpt_to(code: int, text: str, *, server: str, sender: str) -> Delivery | StopRun | None:
    """The reply to RCPT TO, pipelined or step by step: a 2yz accepts the recipient (251: will
    forward), a 4yz is retried. A 5yz bounces the recipient when it refuses the address or
    mailbox, stops the run when it refuses the sender or this client (relay, login, TLS,
    policy, followup's command), and otherwise fails this message (`refused`). Anything
    else is out of the protocol before any message data: retried. Step by step, aiosmtplib
    takes only 250 and 251 and raises any other reply, which reads the same rows (a 252 goes
    on to DATA)."""
    if 200 <= code < 300:
        return None
    if 400 <= code < 500:
        return Delivery(Outcome.RETRY, code, text)
    if 500 <= code < 600:
        who = refused(code, text)
        if who is Refused.RECIPIENT:
            return Delivery(Outcome.BOUNCED, code, text)
        if who is Refused.MESSAGE:
            return Delivery(Outcome.FAILED, code, text)
        return stop_run(who, code, text, server=server, sender=sender)
    return Delivery(Outcome.RETRY, code, f"unexpected reply to RCPT: {text}")


def data_command(code: int, text: str, *, server: str, sender: str) -> Delivery | StopRun | None:
    """The reply to the DATA command (pipelined): 354 goes on to the message data; a 4yz is
    retried, a 5yz fails the message, unless its words refuse the sender or this client
    (relaying, a login, TLS, a policy): then the run stops. Anything else is out of the
    protocol, and nothing of the message went out whatever the server says: retried (a 250
    counted as sent would be lost).
    """
    if code == 354:
        return None
    named = _named(text) if 500 <= code < 600 else None
    if named is not None:
        return stop_run(named, code, text, server=server, sender=sender)
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
    data_verdict = data_command(*data, server=server, sender=sender)
    steps = (
        (mail[0], mail_from(*mail, server=server, sender=sender)),
        (rcpt[0], rcpt_to(*rcpt, server=server, sender=sender)),
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
