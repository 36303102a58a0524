"""The templates boundary: a sandboxed Jinja2 environment over templates/, and MIME assembly.

Templates are the marketers' files and are not trusted: they run in an
ImmutableSandboxedEnvironment with StrictUndefined, so a template cannot read files, the
environment or Python internals, and a missing variable is an error, never an empty string.

Layout (see docs/templates.md):

    templates/_layouts/base.html            the shared HTML layout, with blocks
    templates/_partials/*.html              pieces included by messages ({% include %})
    templates/_variants.toml                the design variants ("envelope colours")
    templates/<message>/<locale>/subject.txt
    templates/<message>/<locale>/text.txt
    templates/<message>/<locale>/html.html  (usually extends the layout)
    templates/<message>/<locale>/html.<variant>.html   optional: one variant's own part
    templates/<message>/variants.toml       optional: this message's own variants

A client whose locale is fr-CA gets fr-CA, else fr, else the default locale. Every message
renders in every variant: the layout takes its colours from the `variant` object.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
import tomllib
import traceback
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from types import CodeType
from typing import Any

import css_inline
from babel import Locale
from babel.dates import format_date
from babel.dates import format_datetime as babel_datetime
from babel.numbers import format_currency, format_decimal
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    pass_context,
    select_autoescape,
)
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import internalcode
from markupsafe import escape

from followup import inline
from followup.errors import RenderError
from followup.money import minor_digits


def _escaped_text(value: str) -> str:
    """markupsafe.escape(value) as a plain str: the public way, for a MarkupSafe without the
    private function below (it is MarkupSafe 3's; its tests pin the equivalence)."""
    return str(escape(value))


try:
    from markupsafe._speedups import _escape_inner
except ImportError:  # MarkupSafe without its C extension, or another version
    try:
        from markupsafe._native import _escape_inner
    except ImportError:
        _escape_inner = _escaped_text


PARTS = ("subject.txt", "text.txt", "html.html")
# Control characters and every other character that str.splitlines() breaks on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def header_safe(value: str) -> str:
    """One line, no control characters: nothing can be injected into a header through it."""
    if value.isprintable():
        # No character of _CONTROL is printable: nothing to replace.
        return value.strip()
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


@functools.lru_cache(maxsize=256)
def _parsed_locale(tag: str) -> Locale:
    """babel.Locale.parse, once per locale string (the filters run several times a message)."""
    return Locale.parse(tag)


def _locale(tag: str) -> Locale | str:
    # An empty tag is passed on as is: Babel reads it as its default locale.
    return _parsed_locale(tag) if tag else tag


# Formatted values repeat across messages (same purchase dates, amounts, locales): the
# filters' results are cached for the exact types whose equality implies the same output.
@functools.lru_cache(maxsize=4096)
def _cached_date(value: date, format: str, tag: str) -> str:
    return format_date(value, format=format, locale=_locale(tag))


@functools.lru_cache(maxsize=4096)
def _cached_money(minor: int, currency: str, tag: str) -> str:
    amount = minor / 10 ** minor_digits(currency)
    return format_currency(amount, currency, locale=_locale(tag))


@functools.lru_cache(maxsize=4096)
def _cached_number(value: int, tag: str) -> str:
    return format_decimal(value, locale=_locale(tag))


@pass_context
def _date_filter(context: Context, value: date | datetime, format: str = "long") -> str:
    tag = _babel_locale(context)
    if type(value) is date and type(format) is str:
        return _cached_date(value, format, tag)
    if isinstance(value, datetime):
        return babel_datetime(value, format=format, locale=_locale(tag))
    return format_date(value, format=format, locale=_locale(tag))


@pass_context
def _money_filter(context: Context, minor: int, currency: str) -> str:
    tag = _babel_locale(context)
    if type(minor) is int and type(currency) is str:
        return _cached_money(minor, currency, tag)
    amount = minor / 10 ** minor_digits(currency)
    return format_currency(amount, currency, locale=_locale(tag))


@pass_context
def _number_filter(context: Context, value: float | int) -> str:
    tag = _babel_locale(context)
    if type(value) is int:
        return _cached_number(value, tag)
    return format_decimal(value, locale=_locale(tag))


VARIANTS_FILE = "_variants.toml"
MESSAGE_VARIANTS_FILE = "variants.toml"
_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: A variant's colours (all optional but `accent`): what the layout may use.
COLOURS = {
    "accent": "#b5562b",
    "background": "#f3efe6",
    "card": "#ffffff",
    "ink": "#2b2b2b",
    "muted": "#7a7a7a",
    "button_text": "#ffffff",
}


@dataclass(frozen=True, slots=True)
class Variant:
    """One design of a message (an "envelope colour"): a name, a label and colours."""

    name: str
    label: str
    colours: Mapping[str, str] = field(default_factory=lambda: dict(COLOURS))
    #: Client tiers this design is reserved to ("vip"); empty: for every other client.
    tiers: frozenset[str] = frozenset()

    def context(self) -> dict[str, str]:
        """What templates see as `variant`: name, label and each colour."""
        return {**self.colours, "name": self.name, "label": self.label}


DEFAULT_VARIANTS = (Variant("default", "Default"),)


def parse_variants(path: Path, where: str) -> tuple[Variant, ...]:
    """A variants file: `[[variant]]` tables with name, label and colours. Errors name the
    file (as `where`) and the variant."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RenderError(f"{where}: {exc}", file=where, detail=str(exc)) from exc
    except (OSError, UnicodeError) as exc:
        raise RenderError(f"{where}: {exc}", file=where, detail=str(exc)) from exc

    def bad(detail: str) -> RenderError:
        return RenderError(f"{where}: {detail}", file=where, detail=detail)

    unknown = set(data) - {"variant"}
    if unknown:
        raise bad(f"unknown key(s) {', '.join(sorted(unknown))}: only [[variant]] tables")
    tables = data.get("variant", [])
    if not isinstance(tables, list) or not tables:
        raise bad("no [[variant]] table: a message needs at least one design")
    variants: list[Variant] = []
    for number, table in enumerate(tables, start=1):
        name = table.get("name")
        label = f"variant {number}" if not isinstance(name, str) else f"variant {name!r}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise bad(f"{label}: name must be lower-case letters, digits, - or _")
        if any(v.name == name for v in variants):
            raise bad(f"{label}: defined twice")
        colours = dict(COLOURS)
        tiers = table.get("tiers", [])
        if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
            raise bad(f'{label}: tiers must be a list of tier names, e.g. ["vip"]')
        for key, value in table.items():
            if key in ("name", "label", "tiers"):
                continue
            if key not in COLOURS:
                raise bad(f"{label}: unknown key {key!r} (known: {', '.join(COLOURS)})")
            if not isinstance(value, str) or not _COLOUR.fullmatch(value):
                raise bad(f'{label}: {key} = {value!r} is not a colour like "#b5562b"')
            colours[key] = value
        variants.append(Variant(name, str(table.get("label", name)), colours, frozenset(tiers)))
    if all(v.tiers for v in variants):
        raise bad("every variant is reserved to a tier: at least one must be for everyone")
    return tuple(variants)


def variants_for(variants: Sequence[Variant], tier: str) -> list[str]:
    """The designs a client of `tier` may get: those reserved to the tier if there are any,
    else the ones for everyone."""
    reserved = [v.name for v in variants if tier and tier in v.tiers]
    return reserved or [v.name for v in variants if not v.tiers]


def choose_variant(names: Sequence[str], key: str, previous: str | None) -> str:
    """The variant of one touch: picked from a hash of the touch key (the same touch always
    gets the same design), moved on by one when it is the client's previous variant, so that
    two consecutive messages to a client never look the same."""
    if not names:
        raise ValueError("no variants to choose from")
    index = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % len(names)
    if names[index] == previous and len(names) > 1:
        index = (index + 1) % len(names)
    return names[index]


def _output_escape(value: Any) -> str:
    """markupsafe.escape as a compiled template's `{{ ... }}` calls it: a str's escaped text as a
    str. escape() wraps it in Markup, whose Python-level __new__ cost several times the escaping
    itself (about 20 values a message). Jinja2 only joins what these calls return (into the
    output, a block, a macro's or a captured block's text, wrapped in Markup there), so the
    type makes no difference; anything else (Markup, numbers, objects) goes to escape()."""
    if type(value) is str:
        return _escape_inner(value)
    return escape(value)


class _Template(Template):
    """A Template whose output escapes through _output_escape."""

    @classmethod
    def from_code(
        cls,
        environment: Any,
        code: CodeType,
        globals: MutableMapping[str, Any],
        uptodate: Callable[[], bool] | None = None,
    ) -> Template:
        template = super().from_code(environment, code, globals, uptodate)
        # The compiled module's namespace: its functions look `escape` up there when they run.
        namespace = getattr(template.root_render_func, "__globals__", None)
        if isinstance(namespace, dict) and namespace.get("escape") is escape:
            namespace["escape"] = _output_escape
        return template


#: Every name getattr() finds on a dict (its methods, object's): these go through the sandbox.
_DICT_ATTRIBUTES = frozenset(dir(dict))


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, stricter in one way: reaching an unsafe attribute is an
    error at once. Jinja2 returns an undefined value there, which StrictUndefined turns into
    an error only when printed; through a filter chain (`map('attr', '__class__')|list`) it
    would render silently. A template that tries is broken, and says so."""

    template_class = _Template

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, Template] = {}

    @internalcode
    def _load_template(self, name: str, globals: MutableMapping[str, Any] | None) -> Template:
        """Without auto_reload, a template once loaded comes from a plain dict: Jinja2's cache
        takes a weak reference and a locked LRU lookup on every include."""
        if self.auto_reload or globals:
            return super()._load_template(name, globals)
        template = self._loaded.get(name)
        if template is None:
            template = self._loaded[name] = super()._load_template(name, globals)
        return template

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`client.name` on a plain dict without the AttributeError Jinja2 raises and catches
        before falling back to the item: the same result, since a name that is not an
        attribute of dict is never an attribute of a dict."""
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals over the environment's, as one dict in ChainMap's key order.
        Jinja2 returns a ChainMap, which it iterates in Python twice per context (five
        contexts a message: three parts, two includes). The environment's globals are set
        once, in Templates(), before any template is loaded."""
        return {**self.globals, **(d or {})}

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe."
        )


#: (locale folder, variant, its colours for templates, locale the filters use, language of
#: the folder, template of each part in PARTS' order)
_Plan = tuple[str, Variant, dict[str, str], str, str, tuple[str, ...]]
#: Plans kept (all are dropped when full): messages x client locales x variants.
PLANS_SIZE = 4096


class Templates:
    """The sandboxed environment over one templates/ folder. Compiled templates are cached;
    with `auto_reload` (the studio), a template saved on disk is compiled again."""

    def __init__(self, root: Path, default_locale: str = "en", *, auto_reload: bool = False):
        self.root = root
        self.default_locale = default_locale
        self.env = Sandbox(
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            # Asked for every context (five a message): the answer for each name is kept.
            autoescape=functools.lru_cache(maxsize=1024)(
                select_autoescape(["html", "htm"], default_for_string=False)
            ),
            keep_trailing_newline=False,
            auto_reload=auto_reload,
        )
        self.env.filters.update(date=_date_filter, money=_money_filter, number=_number_filter)
        self.auto_reload = auto_reload
        self._variants: dict[Path, tuple[float, tuple[Variant, ...]]] = {}
        #: Without auto_reload (the dispatcher), what exists on disk is looked up once.
        self._files: dict[str, bool] = {}
        self._message_variants: dict[str, tuple[Variant, ...]] = {}
        #: Without auto_reload, each part's compiled template (Jinja2 would give the same one
        #: from its cache, through a weak reference and a locked LRU on every call).
        self._compiled: dict[str, Template] = {}
        #: Without auto_reload, (message, client locale) -> the locale folder it gets.
        self._locales: dict[tuple[str, str], str] = {}
        #: Without auto_reload, (message, client locale, variant asked) -> its _Plan.
        self._plans: dict[tuple[str, str, str | None], _Plan] = {}

    def _is_file(self, relative: str) -> bool:
        if self.auto_reload:
            return (self.root / relative).is_file()
        found = self._files.get(relative)
        if found is None:
            found = self._files[relative] = (self.root / relative).is_file()
        return found

    def messages(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("_")
        )

    def locales(self, message: str) -> list[str]:
        """The locale folders of one message that hold a subject."""
        folder = self.root / message
        return sorted(p.name for p in folder.iterdir() if (p / "subject.txt").is_file())

    def variants(self, message: str) -> tuple[Variant, ...]:
        """The message's own variants.toml, else templates/_variants.toml, else one default."""
        if not self.auto_reload and message in self._message_variants:
            return self._message_variants[message]
        found = self._read_variants(message)
        if not self.auto_reload:
            self._message_variants[message] = found
        return found

    def _read_variants(self, message: str) -> tuple[Variant, ...]:
        for path in (self.root / message / MESSAGE_VARIANTS_FILE, self.root / VARIANTS_FILE):
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            cached = self._variants.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, parse_variants(path, self._where(str(path))))
                self._variants[path] = cached
            return cached[1]
        return DEFAULT_VARIANTS

    def variant(self, message: str, name: str | None) -> Variant:
        """A variant by name (None: the first)."""
        variants = self.variants(message)
        if name is None:
            return variants[0]
        for variant in variants:
            if variant.name == name:
                return variant
        raise RenderError(
            f"{self._where(str(self.root / message))}: no variant {name!r} "
            f"(known: {', '.join(v.name for v in variants)})",
            detail=f"no variant {name!r}",
        )

    def resolve_locale(self, message: str, locale: str) -> str:
        if not self.auto_reload:
            found = self._locales.get((message, locale))
            if found is None:
                found = self._locales[(message, locale)] = self._resolve_locale(message, locale)
            return found
        return self._resolve_locale(message, locale)

    def _resolve_locale(self, message: str, locale: str) -> str:
        for tag in locale_chain(locale, self.default_locale):
            if self._is_file(f"{message}/{tag}/subject.txt"):
                return tag
        raise RenderError(
            f"{self._where(str(self.root / message))}: no templates for locale {locale!r} "
            f"nor its fallbacks ({', '.join(locale_chain(locale, self.default_locale))})"
        )

    def part_name(self, message: str, tag: str, part: str, variant: str) -> str:
        """The template of one part: html.<variant>.html when the variant has its own."""
        stem, dot, ext = part.partition(".")
        own = f"{message}/{tag}/{stem}.{variant}{dot}{ext}"
        return own if self._is_file(own) else f"{message}/{tag}/{part}"

    def render(
        self,
        message: str,
        locale: str,
        context: Mapping[str, Any],
        variant: str | None = None,
    ) -> RenderedParts:
        plan = self._plans.get((message, locale, variant)) if not self.auto_reload else None
        if plan is None:
            plan = self._plan(message, locale, variant)
            if not self.auto_reload:
                if len(self._plans) >= PLANS_SIZE:
                    self._plans.clear()
                self._plans[(message, locale, variant)] = plan
        tag, chosen, colours, shown_locale, language, names = plan
        # With the environment's globals: the three parts read this dict as it is (see
        # _render_one), where Template.render copied it twice for each.
        values = {
            **self.env.globals,
            "variant": dict(colours),
            **context,
            "locale": shown_locale,
            "language": language,
        }
        rendered = [self._render_one(name, values) for name in names]
        try:
            html = inline.inline(rendered[2])
        except (css_inline.InlineError, ValueError) as exc:
            where = self._where(str(self.root / message / tag / "html.html"))
            raise RenderError(f"{where}: CSS: {exc}", file=where, detail=f"CSS: {exc}") from exc
        return RenderedParts(
            locale=tag,
            subject=header_safe(rendered[0]),
            text=rendered[1].strip() + "\n",
            html=html,
            variant=chosen.name,
        )

    def _plan(self, message: str, locale: str, variant: str | None) -> _Plan:
        """What rendering `message` for `locale` in `variant` needs besides the client's
        values: the same for every message of that kind (kept without auto_reload)."""
        tag = self.resolve_locale(message, locale)
        chosen = self.variant(message, variant)
        # Format dates and money in the client's locale only when the words around them are in
        # its language: a de client served the English fallback gets an all-English message.
        same_language = tag.split("-")[0].lower() == locale.split("-")[0].lower()
        return (
            tag,
            chosen,
            chosen.context(),
            locale if same_language else tag,
            # The language of the template folder: picks the layout's partials (footer).
            tag.split("-")[0].lower(),
            tuple(self.part_name(message, tag, part, chosen.name) for part in PARTS),
        )

    def _render_one(self, name: str, values: dict[str, Any]) -> str:
        """One template file, with every error turned into a RenderError naming file and line.

        `values` holds the environment's globals under the message's own: what
        Template.render(values) would give its context, built once for the three parts.
        Templates only read their context's parent (what they set goes into the context's
        own vars), so all three share it."""
        try:
            template = self._compiled.get(name)
            if template is None:
                template = self.env.get_template(name)
                if not self.auto_reload:
                    self._compiled[name] = template
            try:
                return "".join(template.root_render_func(template.new_context(values, True)))
            except Exception:
                # As Template.render: the traceback gets the template's file and line.
                self.env.handle_exception()
        except TemplateSyntaxError as exc:
            raise self._error(
                self._where(exc.filename or name), exc.lineno, exc.message or str(exc)
            ) from exc
        except TemplateNotFound as exc:
            where = self._where(str(self.root / name))
            raise RenderError(
                f"{where}: template not found: {exc.name}",
                file=where,
                detail=f"template not found: {exc.name}",
            ) from exc
        except TemplateError as exc:
            file, line = self._locate(exc, name)
            raise self._error(file, line, str(exc)) from exc
        except (ValueError, TypeError, LookupError, ArithmeticError) as exc:
            # A filter given bad data (an unknown locale or currency, a wrong type).
            file, line = self._locate(exc, name)
            raise self._error(file, line, f"{type(exc).__name__}: {exc}") from exc

    def compile_all(self) -> list[RenderError]:
        """Compile every template file under the root (syntax only): one error per bad file."""
        errors: list[RenderError] = []
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.suffix not in (".txt", ".html", ".htm"):
                continue
            name = path.relative_to(self.root).as_posix()
            try:
                source = path.read_text(encoding="utf-8")
                self.env.parse(source, name, str(path))
            except TemplateSyntaxError as exc:
                errors.append(
                    self._error(self._where(str(path)), exc.lineno, exc.message or str(exc))
                )
            except UnicodeError as exc:
                where = self._where(str(path))
                errors.append(RenderError(f"{where}: {exc}", file=where, detail=str(exc)))
        return errors

    @staticmethod
    def _error(file: str, line: int | None, detail: str) -> RenderError:
        where = f"{file}:{line}" if line else file
        return RenderError(f"{where}: {detail}", file=file, line=line, detail=detail)

    def _where(self, filename: str) -> str:
        path = Path(filename)
        try:
            return str(path.resolve().relative_to(self.root.resolve().parent))
        except ValueError:
            return str(path)

    def _locate(self, exc: BaseException, fallback: str) -> tuple[str, int | None]:
        """file and line of the template frame where `exc` was raised (Jinja2 rewrites
        tracebacks so that template frames carry the template's file name and line)."""
        root = str(self.root.resolve())
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename and str(Path(frame.filename).resolve()).startswith(root):
                return self._where(frame.filename), frame.lineno
        return self._where(str(self.root / fallback)), None


@dataclass(frozen=True, slots=True)
class RenderedParts:
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
