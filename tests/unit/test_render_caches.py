"""The shortcuts of rendering give exactly what the plain way gives: the Babel filters' caches,
the sandbox's direct item access on dicts, flat template globals, header fast paths, tokens
signed with precomputed HMAC pads, compiled parts kept, quoted-printable line by line, the
survey token's date and the kept time zones."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import ChainMap
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from email.utils import format_datetime as format_datetime_header
from pathlib import Path
from types import FunctionType
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal, get_currency_precision
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import DictLoader, StrictUndefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from followup.domain import occasions, tokens
from followup.domain.sandbox import Sandbox
from followup.errors import RenderError
from followup.messages import compose
from followup.messages.mime import _date_header, _encoded_words, _quoted_printable, header_safe
from followup.messages.templates import Templates, TemplateSandbox, _escaped_text, _output_escape
from tests.support.settings import ROOT

LOCALES = ["en", "en-US", "fr", "fr-CA", "de-CH", "ja"]
PARIS = ZoneInfo("Europe/Paris")


def _render(tmp_path: Path, locale: str, text: str, context: dict[str, Any]) -> str:
    folder = tmp_path / "templates" / "filters" / locale
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "subject.txt").write_text("Subject", encoding="utf-8")
    (folder / "html.html").write_text("<p>HTML</p>", encoding="utf-8")
    (folder / "text.txt").write_text(text, encoding="utf-8")
    return (
        Templates(tmp_path / "templates", default_locale=locale)
        .render("filters", locale, context)
        .text
    )


@pytest.mark.parametrize("locale", LOCALES)
def test_the_filters_give_babels_own_results_twice_over(tmp_path: Path, locale: str) -> None:
    tag = locale.replace("-", "_")
    values: list[tuple[str, Any, str]] = [
        ("{{ v|date }}", date(2026, 11, 5), format_date(date(2026, 11, 5), "long", tag)),
        ("{{ v|date('short') }}", date(2027, 1, 2), format_date(date(2027, 1, 2), "short", tag)),
        ("{{ v|date('EEEE d') }}", date(2027, 1, 2), format_date(date(2027, 1, 2), "EEEE d", tag)),
        (
            "{{ v|date('full') }}",
            datetime(2027, 1, 8, 15, 0, tzinfo=UTC).astimezone(PARIS),
            format_datetime(
                datetime(2027, 1, 8, 15, 0, tzinfo=UTC).astimezone(PARIS), "full", locale=tag
            ),
        ),
        ("{{ v|money('EUR') }}", 123456, format_currency(1234.56, "EUR", locale=tag)),
        ("{{ v|money('JPY') }}", 123456, format_currency(123456, "JPY", locale=tag)),
        ("{{ v|money('USD') }}", 99.5, format_currency(99.5 / 100, "USD", locale=tag)),
        ("{{ v|number }}", 1234567, format_decimal(1234567, locale=tag)),
        ("{{ v|number }}", 1234.5, format_decimal(1234.5, locale=tag)),
        ("{{ v|number }}", -0.0, format_decimal(-0.0, locale=tag)),
        ("{{ v|number }}", Decimal("1.10"), format_decimal(Decimal("1.10"), locale=tag)),
    ]
    assert get_currency_precision("JPY") == 0
    for template, value, expected in values:
        # Twice, and after the other values: a cached result must be the one Babel gives.
        for _ in range(2):
            assert _render(tmp_path, locale, template, {"v": value}).strip() == expected


def test_equal_numbers_of_other_types_are_not_confused(tmp_path: Path) -> None:
    # 1 == 1.0: the cache must not hand one's formatting to the other.
    text = "{{ a|number }} {{ b|number }} {{ a|number }} {{ b|money('EUR') }} {{ a|money('EUR') }}"
    rendered = _render(tmp_path, "en", text, {"a": 1, "b": 1.0}).strip()
    one, one_float = format_decimal(1, locale="en"), format_decimal(1.0, locale="en")
    cent = format_currency(0.01, "EUR", locale="en")
    assert rendered == f"{one} {one_float} {one} {cent} {cent}"


def test_an_unknown_locale_in_a_filter_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="xx"):
        _render(tmp_path, "xx", "{{ d|date }}", {"d": date(2026, 1, 1)})
    # Not cached as a success either: it fails again.
    with pytest.raises(Exception, match="xx"):
        _render(tmp_path, "xx", "{{ d|date }}", {"d": date(2026, 1, 1)})


# ----------------------------------------------------------------------------- dict attributes

NAMES = [
    "name",
    "items",
    "keys",
    "get",
    "update",
    "pop",
    "clear",
    "setdefault",
    "__class__",
    "__dict__",
    "__init__",
    "__len__",
    "fromkeys",
    "copy",
    "missing",
    "mro",
    "__name__",
]


@pytest.mark.parametrize("name", NAMES)
def test_dict_attributes_are_what_jinja2s_sandbox_gives(name: str) -> None:
    ours = Sandbox(undefined=StrictUndefined)
    theirs = ImmutableSandboxedEnvironment(undefined=StrictUndefined)
    data = {"name": "Zoé", "items": "shadowed", "update": "shadowed", "__class__": "shadowed"}

    def outcome(env: ImmutableSandboxedEnvironment) -> tuple[str, str]:
        try:
            value = env.getattr(data, name)
        except SecurityError as exc:
            return ("security", str(exc))
        if isinstance(value, StrictUndefined):
            return ("undefined", value._undefined_message)
        return ("value", repr(value))

    mine, jinja = outcome(ours), outcome(theirs)
    if jinja[0] == "undefined" and "unsafe" in jinja[1]:
        # Our sandbox raises at once where Jinja2 returns an undefined (see Sandbox).
        assert mine == ("security", jinja[1])
    else:
        assert mine == jinja


def test_a_key_named_like_a_dict_method_is_the_method_in_templates(tmp_path: Path) -> None:
    text = "{{ d.items()|list|length }} {{ d['items'] }} {{ d.name }}"
    assert _render(tmp_path, "en", text, {"d": {"items": "x", "name": "n"}}).strip() == "2 x n"


def test_a_missing_key_of_a_dict_is_still_an_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="has no attribute 'nope'"):
        _render(tmp_path, "en", "{{ d.nope }}", {"d": {"name": "n"}})


def test_a_dict_method_that_would_change_the_dict_is_still_refused(tmp_path: Path) -> None:
    context: dict[str, Any] = {"d": {"name": "n"}}
    with pytest.raises(RenderError) as caught:
        _render(tmp_path, "en", "{{ d.update({'name': 'x'}) }}", context)
    assert isinstance(caught.value.__cause__, SecurityError)
    assert context["d"] == {"name": "n"}


# ----------------------------------------------------------------------------- escaping


class _Html:
    def __html__(self) -> str:
        return "<b>safe</b>"


#: Output escaped in every place Jinja2 compiles `{{ }}`: directly, in blocks and super(), a
#: captured block (escaped once, not twice), a macro and its caller, a filter block, a
#: concatenation, an include; values of every kind.
ESCAPING = """{% macro box(v) %}[{{ v }}]{% endmacro -%}
{% macro wrap(v) %}[{{ v }}|{{ caller() }}]{% endmacro -%}
{% set captured %}<i>{{ text }}</i>{% endset -%}
{{ text }} {{ markup }} {{ number }} {{ html }} {{ none }} {{ text ~ markup }}
{{ captured }} {{ captured|upper }} {{ box(text) }} {% call wrap(markup) %}{{ text }}{% endcall %}
{% filter upper %}{{ text }}{% endfilter %} {% block b %}{{ text }}{% endblock %}
{% include "part.html" %} {{ [text, markup]|join(text) }} {{ text|e }} {{ text|safe }}"""


_SOURCES = {
    "page.html": ESCAPING,
    "child.html": "{% extends 'page.html' %}{% block b %}{{ super() }}{{ text }}{% endblock %}",
    "part.html": "{{ text }}{{ markup }}",
}
_OURS = TemplateSandbox(loader=DictLoader(_SOURCES), undefined=StrictUndefined, autoescape=True)
_THEIRS = ImmutableSandboxedEnvironment(
    loader=DictLoader(_SOURCES), undefined=StrictUndefined, autoescape=True
)


@given(st.text(max_size=30))
def test_template_output_is_escaped_as_by_jinja2s_own_templates(text: str) -> None:
    values = {
        "text": text,
        "markup": Markup("<em>") + text,
        "number": 1.5,
        "html": _Html(),
        "none": None,
    }
    for name in _SOURCES:
        mine = _OURS.get_template(name)
        # Ours escapes through _output_escape, Jinja2's through markupsafe.escape.
        assert cast(FunctionType, mine.root_render_func).__globals__["escape"] is _output_escape
        assert mine.render(values) == _THEIRS.get_template(name).render(values)


@given(st.text())
def test_output_escape_gives_markupsafes_text(text: str) -> None:
    assert _output_escape(text) == escape(text)
    assert type(_output_escape(text)) is str
    for value in (Markup(text), 12, None, _Html()):
        assert _output_escape(value) == escape(value)
        assert type(_output_escape(value)) is Markup
    # The public fallback, for a MarkupSafe without the private function, gives the same text.
    assert _escaped_text(text) == _output_escape(text) == escape(text)
    assert type(_escaped_text(text)) is str


# ----------------------------------------------------------------------------- globals


def test_template_globals_are_the_environments_with_the_templates_own_over_them(
    tmp_path: Path,
) -> None:
    env = Templates(tmp_path).env
    before = dict(env.globals)
    own = {"x": 1, "range": "shadowed"}
    template = env.from_string("{{ range }} {{ x }}", globals=own)

    assert list(template.globals.items()) == list(ChainMap(own, env.globals).items())
    assert template.render() == "shadowed 1"
    assert env.from_string("{{ range(2)|list }} {{ namespace(a=1).a }}").render() == "[0, 1] 1"
    assert env.globals == before


# ----------------------------------------------------------------------------- headers


def _header_safe_by_regex(value: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", value).strip()


@given(st.text())
def test_header_safe_is_the_regex_replacement(value: str) -> None:
    assert header_safe(value) == _header_safe_by_regex(value)


@pytest.mark.parametrize("value", ["a\x85b", "a\u2028b", " a\tb ", "a\xa0b", "\u200bx", "é"])
def test_header_safe_on_the_edges_of_printable(value: str) -> None:
    assert header_safe(value) == _header_safe_by_regex(value)


def _encoded_words_char_by_char(text: str, size: int = 45) -> list[str]:
    words, chunk = [], b""
    for char in text:
        encoded = char.encode("utf-8")
        if chunk and len(chunk) + len(encoded) > size:
            words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode()}?=")
            chunk = b""
        chunk += encoded
    if chunk:
        words.append(f"=?utf-8?b?{binascii.b2a_base64(chunk, newline=False).decode()}?=")
    return words


@given(st.text(max_size=80))
def test_encoded_words_are_those_of_the_character_by_character_split(text: str) -> None:
    assert _encoded_words(text) == _encoded_words_char_by_char(text)


@pytest.mark.parametrize(
    "text", ["", "é", "é" * 22, "é" * 22 + "a", "é" * 23, "李" * 15, "李" * 16]
)
def test_encoded_words_around_the_size_limit(text: str) -> None:
    assert _encoded_words(text) == _encoded_words_char_by_char(text)


# ----------------------------------------------------------------------------- tokens, dates


def _token_by_hmac_new(secret: str, purpose: str, subject: str) -> str:
    mac = hmac.new(secret.encode(), f"{purpose}:{subject}".encode(), hashlib.sha256).digest()
    return f"{subject}.{base64.urlsafe_b64encode(mac[:18]).decode().rstrip('=')}"


@given(st.text(min_size=1, max_size=200), st.text(max_size=20), st.text(max_size=40))
def test_tokens_are_the_hmac_modules_signature(secret: str, purpose: str, subject: str) -> None:
    assert tokens.make(secret, purpose, subject) == _token_by_hmac_new(secret, purpose, subject)


@pytest.mark.parametrize("size", [1, 63, 64, 65, 200])
def test_tokens_with_keys_around_the_block_size(size: int) -> None:
    secret = "k" * size
    for subject in ("42", "7-20270105-thank_you", "é"):
        token = tokens.make(secret, "unsubscribe", subject)
        assert token == _token_by_hmac_new(secret, "unsubscribe", subject)
        assert tokens.verify(secret, "unsubscribe", token) == subject
        assert tokens.verify(secret + "x", "unsubscribe", token) is None


def test_the_date_header_of_one_instant_in_two_zones() -> None:
    utc = datetime(2027, 1, 8, 15, 0, tzinfo=UTC)
    paris, new_york = utc.astimezone(PARIS), utc.astimezone(ZoneInfo("America/New_York"))
    assert utc == paris == new_york
    for when in (utc, paris, new_york, paris, utc, datetime(2027, 1, 8, 15, 0)):
        assert _date_header(when) == format_datetime_header(when)
    # The repeated hour when clocks go back: same wall time, two offsets.
    first = datetime(2026, 10, 25, 2, 30, tzinfo=PARIS)
    second = first.replace(fold=1)
    assert _date_header(first).endswith("+0200")
    assert _date_header(second).endswith("+0100")


class _NoOffset(tzinfo):
    """An aware time whose zone knows no offset: strftime("%z") gives ""."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30)),
    st.sampled_from(
        [
            None,
            UTC,
            PARIS,
            ZoneInfo("America/New_York"),
            ZoneInfo("Australia/Lord_Howe"),  # a half-hour change
            ZoneInfo("Asia/Kathmandu"),  # +0545
            timezone(timedelta(hours=-3, minutes=-30, seconds=-15)),  # seconds in the offset
            _NoOffset(),
        ]
    ),
    st.booleans(),
)
def test_the_date_header_is_format_datetimes(
    when: datetime, zone: tzinfo | None, fold: bool
) -> None:
    # Paris before 1911 was 0:09:21 ahead of UTC: offsets with seconds come from ZoneInfo too.
    when = when.replace(tzinfo=zone, fold=int(fold))
    assert _date_header(when) == format_datetime_header(when)


@pytest.mark.parametrize("auto_reload", [False, True])
def test_what_a_part_sets_is_not_seen_by_the_next_part(tmp_path: Path, auto_reload: bool) -> None:
    # The three parts share one dict of values (the parent of each part's context).
    folder = tmp_path / "templates" / "m" / "en"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text(
        "{% set client = {'name': 'set'} %}{% set range = 1 %}{{ client.name }}", encoding="utf-8"
    )
    (folder / "text.txt").write_text("{{ client.name }} {{ range(2)|list }}", encoding="utf-8")
    (folder / "html.html").write_text("<p>{{ client.name }}</p>", encoding="utf-8")
    templates = Templates(tmp_path / "templates", auto_reload=auto_reload)
    context = {"client": {"name": "Zoé"}}
    for _ in range(2):
        parts = templates.render("m", "en", context)
        assert (parts.subject, parts.text) == ("set", "Zoé [0, 1]\n")
        assert "<p>Zoé</p>" in parts.html
    assert context == {"client": {"name": "Zoé"}}


def test_templates_without_auto_reload_compile_each_part_once(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    text = root / "m" / "en" / "text.txt"
    text.parent.mkdir(parents=True)
    (text.parent / "subject.txt").write_text("Subject", encoding="utf-8")
    (text.parent / "html.html").write_text("<p>HTML</p>", encoding="utf-8")
    text.write_text("first", encoding="utf-8")
    fixed, reloading = Templates(root), Templates(root, auto_reload=True)
    assert fixed.render("m", "en", {}).text == reloading.render("m", "en", {}).text == "first\n"

    text.write_text("second, saved later", encoding="utf-8")
    os.utime(text, (text.stat().st_mtime + 5, text.stat().st_mtime + 5))

    assert fixed.render("m", "en", {}).text == "first\n"
    assert reloading.render("m", "en", {}).text == "second, saved later\n"


# ----------------------------------------------------------------------------- quoted-printable


def _quoted_printable_whole(text: str) -> bytes:
    """The body encoded in one call, as build_mime did before encoding line by line."""
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    encoded = binascii.b2a_qp(body.encode("utf-8"), istext=True)
    return encoded.replace(b"\n", b"\r\n").removesuffix(b"\r\n")


# Text as str holds no lone surrogate once rendered: both ways would fail to encode it alike.
QP_TEXT = st.text(
    alphabet=st.sampled_from(list("ab =.\t\r\n\x00\x7fé€😀"))
    | st.characters(exclude_categories=["Cs"])
)


@given(st.lists(QP_TEXT, max_size=6), st.integers(min_value=0, max_value=90))
def test_quoted_printable_line_by_line_is_the_whole_body_encoded_at_once(
    pieces: list[str], width: int
) -> None:
    # Lines around the 76-character limit, with spaces, dots and = where it matters.
    text = ("x" * width).join(pieces)
    for _ in range(2):  # the second time from the cache
        assert _quoted_printable(text) == _quoted_printable_whole(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "\n\n",
        "a",
        "a\n",
        "a\n\n",
        ".",
        ".\n",
        "a.\n.",
        "a \nb\t",
        " ",
        "\r",
        "\r\n",
        "x" * 75 + "=",
        "x" * 74 + "é",
        "x" * 76 + " ",
        "=" * 30,
        ("y" * 75 + "\n") * 3,
    ],
)
def test_quoted_printable_edges(text: str) -> None:
    for _ in range(2):
        assert _quoted_printable(text) == _quoted_printable_whole(text)


def test_long_lines_are_encoded_but_not_kept() -> None:
    from followup.messages import mime as render

    long_line = "Dear Ann, " + "a very personal paragraph " * 80
    text = f"short line\n{long_line}\nshort line"
    assert _quoted_printable(text) == _quoted_printable_whole(text)
    assert long_line.encode() not in render._QP_LINES
    assert b"short line" in render._QP_LINES


def test_the_locale_folder_is_looked_up_once_without_auto_reload(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    for locale in ("en", "fr"):
        folder = root / "m" / locale
        folder.mkdir(parents=True)
        for name in ("subject.txt", "text.txt", "html.html"):
            (folder / name).write_text(locale, encoding="utf-8")
    fixed, reloading = Templates(root), Templates(root, auto_reload=True)
    assert fixed.resolve_locale("m", "fr-CA") == reloading.resolve_locale("m", "fr-CA") == "fr"

    (root / "m" / "fr-CA").mkdir()
    (root / "m" / "fr-CA" / "subject.txt").write_text("fr-CA", encoding="utf-8")

    assert fixed.resolve_locale("m", "fr-CA") == "fr"
    assert reloading.resolve_locale("m", "fr-CA") == "fr-CA"
    assert fixed.resolve_locale("m", "de") == fixed.resolve_locale("m", "de") == "en"


def test_included_partials_are_loaded_once_without_auto_reload(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    folder = root / "m" / "en"
    folder.mkdir(parents=True)
    (root / "_partials").mkdir()
    partial = root / "_partials" / "sign.txt"
    partial.write_text("first", encoding="utf-8")
    (folder / "subject.txt").write_text("Subject", encoding="utf-8")
    (folder / "html.html").write_text("<p>{% include '_partials/sign.txt' %}</p>", encoding="utf-8")
    (folder / "text.txt").write_text(
        "{% include ['_partials/missing.txt', '_partials/sign.txt'] %} {{ '<' }}", encoding="utf-8"
    )
    fixed, reloading = Templates(root), Templates(root, auto_reload=True)
    for templates in (fixed, reloading):
        parts = templates.render("m", "en", {})
        assert (parts.text, parts.html) == (
            "first <\n",
            "<html><head></head><body><p>first</p></body></html>",
        )

    partial.write_text("second", encoding="utf-8")
    os.utime(partial, (partial.stat().st_mtime + 5, partial.stat().st_mtime + 5))

    assert fixed.render("m", "en", {}).text == "first <\n"
    assert reloading.render("m", "en", {}).text == "second <\n"


@given(st.dates(), st.sampled_from([date, datetime]))
def test_the_survey_tokens_date_is_strftimes(day: date, kind: type[date]) -> None:
    value = kind(day.year, day.month, day.day)
    for _ in range(2):  # computed, then kept
        assert compose.survey_token("k", 7, "thank_you", value) == tokens.make(
            "k", "survey", f"7-{value:%Y%m%d}-thank_you"
        )


@pytest.mark.parametrize("name", ["Europe/Paris", "America/New_York", "Australia/Perth", "UTC"])
def test_the_kept_time_zone_gives_zoneinfos_local_times(name: str) -> None:
    instants = [datetime(2026, month, 1, 12, tzinfo=UTC) for month in range(1, 13)]
    for instant in instants:
        expected = instant.astimezone(ZoneInfo(name))
        found = instant.astimezone(occasions.zone(name))
        assert (found.isoformat(), found.tzname()) == (expected.isoformat(), expected.tzname())


def test_kept_plans_render_what_a_reloading_environment_renders() -> None:
    # Without auto_reload, the locale folder, variant, its colours, the filters' locale, the
    # language and each part's template are kept per (message, client locale, variant).
    root = ROOT / "templates"
    fixed, reloading = Templates(root), Templates(root, auto_reload=True)
    context = {
        "client": {"first_name": "Zoé", "last_name": "L", "full_name": "Zoé L", "tier": "vip"},
        "rep": {"name": "R", "first_name": "R", "email": "r@x.example", "signature": "R"},
        "business": {"name": "B", "domain": "x.example"},
        "occasion": {"name": "N", "kind": "yearly", "date": date(2026, 1, 2), "years": 3},
        "purchase": {"product": "P", "amount": 1234, "currency": "EUR", "date": date(2026, 1, 2)},
        "links": {"unsubscribe": "https://x.example/u", "survey": "https://x.example/s"},
        "send_at": datetime(2026, 1, 5, 10, tzinfo=UTC),
    }
    for message in fixed.messages():
        names: list[str | None] = [None, *(v.name for v in fixed.variants(message))]
        for locale in ("en", "en-GB", "fr", "fr-CA", "de-CH"):
            for variant in names:
                for _ in range(2):  # planned, then from the kept plan
                    assert fixed.render(message, locale, context, variant) == reloading.render(
                        message, locale, context, variant
                    )
