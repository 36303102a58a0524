"""The templates boundary: a sandboxed Jinja2 environment over templates/, and MIME assembly.

Templates are the marketers' files and are not trusted: they run in an
ImmutableSandboxedEnvironment with StrictUndefined, so a template cannot read files, the
environment or Python internals, and a missing variable is an error, never an empty string.

Layout (see docs/templates.md):

    templates/_layouts/base.html           the shared HTML layout, with blocks
    templates/<message>/<locale>/subject.txt
    templates/<message>/<locale>/text.txt
    templates/<message>/<locale>/html.html  (usually extends the layout)

A client whose locale is fr-CA gets fr-CA, else fr, else the default locale.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import css_inline
from babel.dates import format_date
from babel.dates import format_datetime as babel_datetime
from babel.numbers import format_currency, format_decimal, get_currency_precision
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    pass_context,
    select_autoescape,
)
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from followup.errors import RenderError

PARTS = ("subject.txt", "text.txt", "html.html")
# Control characters and every other character that str.splitlines() breaks on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
# Templates may not pull in files or URLs: the CSS inliner loads no stylesheet.
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)


def header_safe(value: str) -> str:
    """One line, no control characters: nothing can be injected into a header through it."""
    return _CONTROL.sub(" ", value).strip()


def locale_chain(locale: str, default: str) -> list[str]:
    """fr-CA -> [fr-CA, fr, default]."""
    chain: list[str] = []
    parts = locale.replace("_", "-").split("-")
    for end in range(len(parts), 0, -1):
        tag = "-".join(parts[:end])
        if tag not in chain:
            chain.append(tag)
    if default not in chain:
        chain.append(default)
    return chain


def _babel_locale(context: Context) -> str:
    return str(context.get("locale", "en")).replace("-", "_")


@pass_context
def _date_filter(context: Context, value: date | datetime, format: str = "long") -> str:
    if isinstance(value, datetime):
        return babel_datetime(value, format=format, locale=_babel_locale(context))
    return format_date(value, format=format, locale=_babel_locale(context))


@pass_context
def _money_filter(context: Context, minor: int, currency: str) -> str:
    amount = minor / 10 ** get_currency_precision(currency)
    return format_currency(amount, currency, locale=_babel_locale(context))


@pass_context
def _number_filter(context: Context, value: float | int) -> str:
    return format_decimal(value, locale=_babel_locale(context))


class Templates:
    """The sandboxed environment over one templates/ folder. Compiled templates are cached."""

    def __init__(self, root: Path, default_locale: str = "en") -> None:
        self.root = root
        self.default_locale = default_locale
        self.env = ImmutableSandboxedEnvironment(
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            autoescape=select_autoescape(["html", "htm"], default_for_string=False),
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self.env.filters.update(date=_date_filter, money=_money_filter, number=_number_filter)

    def messages(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("_")
        )

    def resolve_locale(self, message: str, locale: str) -> str:
        for tag in locale_chain(locale, self.default_locale):
            if (self.root / message / tag / "subject.txt").is_file():
                return tag
        raise RenderError(
            f"{self.root / message}: no templates for locale {locale!r} "
            f"nor its fallbacks ({', '.join(locale_chain(locale, self.default_locale))})"
        )

    def render(self, message: str, locale: str, context: Mapping[str, Any]) -> RenderedParts:
        tag = self.resolve_locale(message, locale)
        # Format dates and money in the client's locale only when the words around them are in
        # its language: a de client served the English fallback gets an all-English message.
        same_language = tag.split("-")[0].lower() == locale.split("-")[0].lower()
        values = {**context, "locale": locale if same_language else tag}
        rendered: dict[str, str] = {}
        for part in PARTS:
            name = f"{message}/{tag}/{part}"
            try:
                rendered[part] = self.env.get_template(name).render(values)
            except TemplateSyntaxError as exc:
                raise RenderError(
                    f"{self._where(exc.filename or name)}:{exc.lineno}: {exc.message}"
                ) from exc
            except TemplateNotFound as exc:
                raise RenderError(f"{self.root / name}: template not found: {exc.name}") from exc
            except TemplateError as exc:
                raise RenderError(f"{self._locate(exc, name)}: {exc}") from exc
            except (ValueError, TypeError, LookupError, ArithmeticError) as exc:
                # A filter given bad data (an unknown locale or currency, a wrong type).
                raise RenderError(
                    f"{self._locate(exc, name)}: {type(exc).__name__}: {exc}"
                ) from exc
        try:
            html = _INLINER.inline(rendered["html.html"])
        except (css_inline.InlineError, ValueError) as exc:
            raise RenderError(f"{self.root / message / tag / 'html.html'}: CSS: {exc}") from exc
        return RenderedParts(
            locale=tag,
            subject=header_safe(rendered["subject.txt"]),
            text=rendered["text.txt"].strip() + "\n",
            html=html,
        )

    def _where(self, filename: str) -> str:
        path = Path(filename)
        try:
            return str(path.resolve().relative_to(self.root.resolve().parent))
        except ValueError:
            return str(path)

    def _locate(self, exc: BaseException, fallback: str) -> str:
        """file:line of the template frame where `exc` was raised (Jinja2 rewrites tracebacks
        so that template frames carry the template's file name and line)."""
        root = str(self.root.resolve())
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename and str(Path(frame.filename).resolve()).startswith(root):
                return f"{self._where(frame.filename)}:{frame.lineno}"
        return str(self.root / fallback)


@dataclass(frozen=True, slots=True)
class RenderedParts:
    locale: str
    subject: str
    text: str
    html: str


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
    """multipart/alternative (text, then HTML), CRLF line endings, RFC 8058 one-click headers."""
    msg = EmailMessage(policy=SMTP)
    msg["Subject"] = parts.subject
    sender = Address(display_name=header_safe(envelope.from_name), addr_spec=envelope.from_email)
    msg["From"] = sender
    msg["Reply-To"] = sender
    msg["To"] = Address(display_name=header_safe(envelope.to_name), addr_spec=envelope.to_email)
    msg["Date"] = format_datetime(envelope.date)
    msg["Message-ID"] = envelope.message_id
    targets = [f"<{envelope.unsubscribe_url}>"]
    if envelope.unsubscribe_mailto:
        targets.append(f"<mailto:{envelope.unsubscribe_mailto}?subject=unsubscribe>")
    msg["List-Unsubscribe"] = ", ".join(targets)
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
