"""MIME assembly: a rendered message and its envelope -> the bytes handed to the SMTP server.

multipart/alternative (text, then HTML), CRLF line endings, quoted-printable bodies, RFC 2047
encoded words, RFC 8058 one-click unsubscribe headers, and DKIM signing when followup signs.
Also what a message is made of (RenderedParts: what the templates give) and the rule for
every value that goes into a header (header_safe), which the templates apply to the subject.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

from followup.errors import RenderError

# Control characters and every other character that str.splitlines() breaks on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def header_safe(value: str) -> str:
    """One line, no control characters: nothing can be injected into a header through it."""
    if value.isprintable():
        # No character of _CONTROL is printable: nothing to replace.
        return value.strip()
    return _CONTROL.sub(" ", value).strip()


@dataclass(frozen=True, slots=True)
class RenderedParts:
    """One message as its templates rendered it: the locale folder it came from, the subject
    (header-safe), the text and the CSS-inlined HTML, and the design variant."""

    locale: str
    subject: str
    text: str
    html: str
    variant: str = "default"


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who a message is from and to, and its identity; every field is data from the database."""

    from_name: str
    from_email: str
    to_name: str
    to_email: str
    message_id: str
    date: datetime
    unsubscribe_url: str
    unsubscribe_mailto: str = ""


def build_mime(parts: RenderedParts, envelope: Envelope) -> bytes:
    """multipart/alternative (text, then HTML), CRLF line endings, RFC 8058 one-click headers.

    Assembled directly (the email package's header parsing and folding cost more than all the
    rest of a message); addresses outside ASCII go through the email package instead."""
    if not (envelope.from_email.isascii() and envelope.to_email.isascii()):
        return _build_mime_email_package(parts, envelope)
    sender = _address(envelope.from_name, envelope.from_email)
    boundary = "=_" + hashlib.sha256(envelope.message_id.encode()).hexdigest()[:32]
    headers = [
        _header("Subject", parts.subject),
        f"From: {sender}",
        f"Reply-To: {sender}",
        f"To: {_address(envelope.to_name, envelope.to_email)}",
        f"Date: {_date_header(envelope.date)}",
        f"Message-ID: {header_safe(envelope.message_id)}",
        "List-Unsubscribe: " + ",\r\n ".join(_unsubscribe_targets(envelope)),
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
        f"Content-Language: {header_safe(parts.locale)}",
    ]
    # Joined as bytes: the bodies are bytes from binascii, and stay so.
    return b"".join(
        (
            "\r\n".join(headers).encode("ascii"),
            f"\r\n\r\n--{boundary}\r\n{_TEXT_PART}".encode("ascii"),
            _quoted_printable(parts.text),
            f"\r\n--{boundary}\r\n{_HTML_PART}".encode("ascii"),
            _quoted_printable(parts.html),
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        )
    )


_TEXT_PART = (
    'Content-Type: text/plain; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
)
_HTML_PART = (
    'Content-Type: text/html; charset="utf-8"\r\n'
    "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: UTC offset -> strftime("%z") (a function of the offset alone; None: an aware time whose
#: zone gives no offset). Zones have few offsets: kept, dropped all at once when full.
_ZONES: dict[timedelta | None, str] = {}


def _date_header(when: datetime) -> str:
    """email.utils.format_datetime(when), formatted directly: its timetuple() and strftime()
    cost more than the rest of the headers, and each message has its own second."""
    if when.tzinfo is None:
        zone = "-0000"
    else:
        offset = when.utcoffset()
        found = _ZONES.get(offset)
        if found is None:
            if len(_ZONES) >= 256:
                _ZONES.clear()
            found = _ZONES[offset] = when.strftime("%z")
        zone = found
    # email.utils._format_timetuple_and_zone's format, with the fields of when.timetuple().
    return "%s, %02d %s %04d %02d:%02d:%02d %s" % (  # noqa: UP031
        _DAYS[when.weekday()],
        when.day,
        _MONTHS[when.month - 1],
        when.year,
        when.hour,
        when.minute,
        when.second,
        zone,
    )


def _unsubscribe_targets(envelope: Envelope) -> list[str]:
    targets = [f"<{header_safe(envelope.unsubscribe_url)}>"]
    if envelope.unsubscribe_mailto:
        targets.append(f"<mailto:{header_safe(envelope.unsubscribe_mailto)}?subject=unsubscribe>")
    return targets


#: Encoded lines by line: most lines of a message (the layout, styled paragraphs, footers)
#: are the same in every message of its template, locale and variant.
_QP_LINES: dict[bytes, bytes] = {}
QP_LINES_SIZE = 8192
QP_LINE_KEPT = 512


def _quoted_printable(text: str) -> bytes:
    """UTF-8 quoted-printable with CRLF line ends, without the last one (binascii, in C).

    binascii.b2a_qp encodes each line on its own (its line length starts again at each line
    feed; a line's last space, a lone dot, depend only on the line), so a body is encoded line
    by line and each line's encoding is kept."""
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = body.encode("utf-8").split(b"\n")
    if len(lines) > 1 and not lines[-1]:
        lines.pop()  # the body ends with a line feed
    cache = _QP_LINES
    encoded: list[bytes] = []
    for line in lines:
        found = cache.get(line)
        if found is None:
            found = binascii.b2a_qp(line + b"\n", istext=True)[:-1].replace(b"\n", b"\r\n")
            # Long lines are rarely shared (a minified page, a personal paragraph): not kept,
            # so the cache stays within QP_LINES_SIZE x QP_LINE_KEPT bytes.
            if len(line) <= QP_LINE_KEPT:
                if len(cache) >= QP_LINES_SIZE:
                    cache.clear()
                cache[line] = found
        encoded.append(found)
    return b"\r\n".join(encoded)


#: A display name that needs neither quoting nor encoding (RFC 5322 atoms and spaces).
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")


def _address(name: str, email: str) -> str:
    """`Name <addr>`: the name on one line, quoted or RFC 2047-encoded as needed."""
    name = header_safe(name)
    email = header_safe(email)
    if not name:
        return email
    # A name that looks like an encoded-word is encoded itself, so that clients show it as
    # written instead of decoding it (some decode inside quotes too).
    if name.isascii() and "=?" not in name:
        if not _ATOMS.fullmatch(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{email}>"
    return "\r\n ".join(_encoded_words(name)) + f" <{email}>"


def _encoded_words(text: str, size: int = 45) -> list[str]:
    """RFC 2047 "B" encoded-words of at most `size` UTF-8 bytes each, never splitting a
    character (so each word stays under 75 characters)."""
    whole = text.encode("utf-8")
    if len(whole) <= size:
        return (
            [f"=?utf-8?b?{binascii.b2a_base64(whole, newline=False).decode()}?="] if whole else []
        )
    words: list[str] = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8")
        if chunk and len(chunk) + len(encoded) > size:
            words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode()}?=")
            chunk = b""
        chunk += encoded
    if chunk:
        words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode()}?=")
    return words


def _header(name: str, value: str) -> str:
    """An unstructured header (the subject), folded: plain ASCII at spaces, anything else as
    encoded-words, one per line."""
    value = header_safe(value)
    if value.isascii():
        line, folded = f"{name}:", []
        for word in value.split(" "):
            if len(line) + 1 + len(word) > 78 and line != f"{name}:":
                folded.append(line)
                line = ""
            line += " " + word
        folded.append(line)
        return "\r\n".join(folded)
    return f"{name}: " + "\r\n ".join(_encoded_words(value))


def _build_mime_email_package(parts: RenderedParts, envelope: Envelope) -> bytes:
    """The same message built by the email package (internationalised addresses)."""
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = parts.subject
    sender = Address(display_name=header_safe(envelope.from_name), addr_spec=envelope.from_email)
    msg["From"] = sender
    msg["Reply-To"] = sender
    msg["To"] = Address(display_name=header_safe(envelope.to_name), addr_spec=envelope.to_email)
    msg["Date"] = format_datetime(envelope.date)
    msg["Message-ID"] = envelope.message_id
    msg["List-Unsubscribe"] = ", ".join(_unsubscribe_targets(envelope))
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(parts.text, cte="quoted-printable")
    msg.add_alternative(parts.html, subtype="html", cte="quoted-printable")
    # After the body: set_content() clears every Content-* header.
    msg["Content-Language"] = parts.locale
    return msg.as_bytes()


#: Headers the DKIM signature covers, List-Unsubscribe and List-Unsubscribe-Post included
#: (RFC 8058 section 4: the one-click headers must be signed).
DKIM_HEADERS = (
    b"From",
    b"To",
    b"Reply-To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"List-Unsubscribe",
    b"List-Unsubscribe-Post",
    b"MIME-Version",
    b"Content-Type",
    b"Content-Language",
)


class DkimSigner:
    """Signs finished messages with one key (relaxed/relaxed canonicalisation, rsa-sha256)."""

    def __init__(self, domain: str, selector: str, key_file: Path) -> None:
        try:
            self.key = key_file.read_bytes()
        except OSError as exc:
            raise RenderError(f"[dkim] key_file {key_file}: {exc.strerror}") from exc
        self.domain = domain.encode()
        self.selector = selector.encode()

    def sign(self, message: bytes) -> bytes:
        import dkim

        signature = dkim.sign(
            message,
            self.selector,
            self.domain,
            self.key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(DKIM_HEADERS),
            linesep=b"\r\n",
        )
        return bytes(signature) + message
