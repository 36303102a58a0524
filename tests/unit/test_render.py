"""The templates boundary and MIME assembly, without a database: a sandboxed Jinja2
environment over templates/, locale fallbacks, formatting filters, error locations, and the
message that compose() builds (headers, structure, injection resistance), plus tokens."""

from __future__ import annotations

import email
import re
from datetime import UTC, date, datetime
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError

from followup.config import Settings
from followup.domain import tokens
from followup.domain.locales import locale_chain
from followup.domain.touches import message_id
from followup.errors import RenderError
from followup.messages import compose
from followup.messages.templates import Templates
from tests.support.messages import (
    OCCURRENCE,
    SECRET,
    SEND_AT,
    compose_thank_you,
    sample_recipient,
)
from tests.support.settings import ROOT, make_settings

TEMPLATES = ROOT / "templates"
PUBLIC_URL = "https://shop.example.com/"
INJECTED_NAME = "Eve\r\nBcc: x@y.z"

#: Each Unicode character babel may put between digits groups or before the currency sign.
SPACE = "[\u00a0\u202f]"


def _context(first_name: str = "Zoé") -> dict[str, Any]:
    """What compose() passes to the thank-you templates, written out by hand."""
    return {
        "client": {"first_name": first_name, "last_name": "Lee", "full_name": first_name},
        "rep": {"name": "Marc Girard", "signature": "Marc Girard"},
        "business": {"name": "Girard Motors", "domain": "example.com"},
        "purchase": {"product": "roadster", "date": date(2026, 11, 5), "amount": 123456},
        "links": {"unsubscribe": "https://shop.example.com/unsubscribe/1.sig"},
    }


def _write(root: Path, message: str, locale: str, **parts: str) -> None:
    """templates/<message>/<locale>/{subject.txt,text.txt,html.html}, with harmless defaults."""
    folder = root / message / locale
    folder.mkdir(parents=True, exist_ok=True)
    files = {"subject.txt": "Subject", "text.txt": "Text", "html.html": "<p>HTML</p>"}
    for name, body in parts.items():
        files[name.replace("_", ".")] = body
    for name, body in files.items():
        (folder / name).write_text(body, encoding="utf-8")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Overrides conftest's `settings` (which is parametrized over databases): no database here.
    return make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'followup.db'}", http={"public_url": PUBLIC_URL}
    )


@pytest.fixture
def templates() -> Templates:
    return Templates(TEMPLATES, default_locale="en")


def _parse(mime: bytes) -> EmailMessage:
    message = email.message_from_bytes(mime, policy=default)
    assert isinstance(message, EmailMessage)
    return message


# ----------------------------------------------------------------------------- the repository's
# thank-you templates


def test_thank_you_in_english(templates: Templates) -> None:
    parts = templates.render("thank_you", "en", _context())

    assert parts.locale == "en"
    assert parts.subject == "Thank you, Zoé!"
    assert "Dear Zoé," in parts.text
    assert "on November 5, 2026." in parts.text
    assert "https://shop.example.com/unsubscribe/1.sig" in parts.text
    assert parts.text.endswith("\n")
    assert not parts.text.endswith("\n\n")
    assert "<h1" in parts.html
    assert "Thank you, Zoé!</h1>" in parts.html
    assert '<html lang="en">' in parts.html


def test_thank_you_in_french_has_french_dates(templates: Templates) -> None:
    parts = templates.render("thank_you", "fr", _context())

    assert parts.locale == "fr"
    assert parts.subject == "Merci, Zoé !"
    assert "Bonjour Zoé," in parts.text
    assert "le 5 novembre 2026." in parts.text
    assert "5 novembre 2026" in parts.html
    assert "Se désabonner" in parts.html
    assert "November" not in parts.text + parts.html


def test_the_html_extends_the_layout_and_has_inlined_styles(templates: Templates) -> None:
    parts = templates.render("thank_you", "en", _context())

    assert "<style" not in parts.html
    assert re.search(r'<h1 style="[^"]*font-size: 26px', parts.html)
    assert re.search(r'<body style="[^"]*background: #f3efe6', parts.html)
    assert "Girard Motors · " in parts.html


def test_client_data_is_escaped_in_html_but_not_in_text(templates: Templates) -> None:
    parts = templates.render("thank_you", "en", _context(first_name="<b>Al & Bo</b>"))

    assert "<b>Al" not in parts.html
    assert "&lt;b&gt;Al &amp; Bo&lt;/b&gt;" in parts.html
    assert "Dear <b>Al & Bo</b>," in parts.text


def test_the_subject_is_one_line_without_control_characters(templates: Templates) -> None:
    parts = templates.render("thank_you", "en", _context(first_name="Eve\r\nBcc: x@y.z\x00"))

    assert parts.subject == "Thank you, Eve Bcc: x@y.z !"
    assert not re.search(r"[\x00-\x1f\x7f]", parts.subject)


# ----------------------------------------------------------------------------- filters


@pytest.fixture
def filters_root(tmp_path: Path) -> Path:
    root = tmp_path / "templates"
    body = (
        "{{ amount|money(currency) }}\n{{ day|date('long') }}\n{{ day|date('short') }}\n"
        "{{ value|number }}"
    )
    for locale in ("en", "fr"):
        _write(root, "filters", locale, text_txt=body)
    return root


def _filtered(root: Path, locale: str, amount: int, currency: str) -> list[str]:
    context = {"amount": amount, "currency": currency, "day": date(2026, 11, 5), "value": 1234.5}
    return Templates(root).render("filters", locale, context).text.splitlines()


def test_money_in_french_uses_a_comma_and_spaces(filters_root: Path) -> None:
    money, long_date, short_date, number = _filtered(filters_root, "fr", 123456, "EUR")

    assert re.fullmatch(f"1{SPACE}234,56{SPACE}€", money), repr(money)
    assert long_date == "5 novembre 2026"
    assert short_date == "05/11/2026"
    assert re.fullmatch(f"1{SPACE}234,5", number), repr(number)


def test_money_in_us_english(filters_root: Path) -> None:
    money, long_date, short_date, number = _filtered(filters_root, "en-US", 123456, "USD")

    assert money == "$1,234.56"
    assert long_date == "November 5, 2026"
    assert short_date == "11/5/26"
    assert number == "1,234.5"


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [
        (350_000_000_000, "IDR", "3,500,000,000"),
        (1_234_500, "HUF", "12,345"),
        (1234, "RSD", "1,234"),
    ],
)
def test_stored_amounts_keep_their_meaning_whatever_babels_currency_digits(
    filters_root: Path, minor: int, currency: str, major: str
) -> None:
    # CLDR 48 (Babel 2.18) changed the digits of IDR and HUF from 2 to 0 and of RSD from 0 to
    # 2; amounts stored before must not be shown a hundred times too large or too small.
    (money, *_) = _filtered(filters_root, "en-US", minor, currency)
    assert major in money and "350,000,000,000" not in money, money


def test_the_minor_units_are_followups_own_table() -> None:
    from followup.domain.money import minor_digits

    expected = {"USD": 2, "EUR": 2, "JPY": 0, "KWD": 3, "CLF": 4, "IDR": 2, "HUF": 2}
    assert {code: minor_digits(code) for code in expected} == expected
    assert minor_digits("RSD") == 0 and minor_digits("idr") == 2 and minor_digits("XYZ") == 2


def test_money_follows_the_currencys_minor_unit(filters_root: Path) -> None:
    # The yen has no minor unit: 1234 minor units are ¥1,234, not ¥12.34.
    (money, *_) = _filtered(filters_root, "en-US", 1234, "JPY")
    assert money == "¥1,234"


def test_money_in_canadian_french_uses_the_regional_format(filters_root: Path) -> None:
    (money, *_) = _filtered(filters_root, "fr-CA", 123456, "CAD")
    assert re.fullmatch(f"1{SPACE}234,56{SPACE}\\$", money), repr(money)


# ----------------------------------------------------------------------------- locales


@pytest.mark.parametrize(
    ("locale", "chain"),
    [
        ("fr-CA", ["fr-CA", "fr", "en"]),
        ("fr_CA", ["fr-CA", "fr", "en"]),
        ("fr", ["fr", "en"]),
        ("en", ["en"]),
        ("en-US", ["en-US", "en"]),
        ("zh-Hant-TW", ["zh-Hant-TW", "zh-Hant", "zh", "en"]),
    ],
)
def test_locale_chain(locale: str, chain: list[str]) -> None:
    assert list(locale_chain(locale, "en")) == chain


def test_canadian_french_falls_back_to_the_french_templates(templates: Templates) -> None:
    assert templates.resolve_locale("thank_you", "fr-CA") == "fr"

    parts = templates.render("thank_you", "fr-CA", _context())

    assert parts.locale == "fr"
    assert parts.subject == "Merci, Zoé !"
    assert "le 5 novembre 2026." in parts.text


def test_a_more_specific_template_wins_over_its_language(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "hello", "en", subject_txt="Hello")
    _write(root, "hello", "fr", subject_txt="Bonjour")
    _write(root, "hello", "fr-CA", subject_txt="Allô")
    templates = Templates(root)

    assert templates.render("hello", "fr-CA", {}).subject == "Allô"
    assert templates.render("hello", "fr-FR", {}).subject == "Bonjour"
    assert templates.render("hello", "fr-CA", {}).locale == "fr-CA"


def test_a_locale_without_templates_falls_back_to_the_default(templates: Templates) -> None:
    assert templates.resolve_locale("thank_you", "de-AT") == "en"

    parts = templates.render("thank_you", "de-AT", _context())

    assert parts.locale == "en"
    assert parts.subject == "Thank you, Zoé!"
    assert "Dear Zoé," in parts.text


def test_a_fallback_to_the_default_formats_in_the_default_language(
    templates: Templates,
) -> None:
    parts = templates.render("thank_you", "de", _context())

    assert "on November 5, 2026." in parts.text
    assert '<html lang="en">' in parts.html


def test_a_locale_unknown_to_babel_falls_back_to_the_default(templates: Templates) -> None:
    assert templates.resolve_locale("thank_you", "xx") == "en"
    try:
        parts = templates.render("thank_you", "xx", _context())
    except RenderError:
        return  # acceptable: a clear error naming the template
    except Exception as exc:
        raise AssertionError(f"not a RenderError: {exc!r}") from exc
    assert parts.locale == "en"
    assert "on November 5, 2026." in parts.text


def test_no_templates_for_the_locale_nor_the_default_is_a_render_error(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "hello", "fr")
    templates = Templates(root, default_locale="en")

    with pytest.raises(RenderError, match=r"no templates for locale 'de'.*\(de, en\)"):
        templates.render("hello", "de", {})


def test_messages_lists_the_message_folders_but_not_the_layouts(templates: Templates) -> None:
    messages = templates.messages()
    assert "thank_you" in messages
    assert "_layouts" not in messages


# ----------------------------------------------------------------------------- errors


def test_an_undefined_variable_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "broken", "en", text_txt="Hello {{ client.first_name }},\n\nYour {{ car }}.\n")

    with pytest.raises(RenderError) as caught:
        Templates(root).render("broken", "en", {"client": {"first_name": "Ann"}})

    assert str(caught.value).startswith("templates/broken/en/text.txt:3: ")
    assert "'car' is undefined" in str(caught.value)
    assert isinstance(caught.value.__cause__, UndefinedError)


def test_an_undefined_attribute_is_an_error_too(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "broken", "en", subject_txt="Hi {{ client.nickname }}")

    with pytest.raises(RenderError, match=r"^templates/broken/en/subject\.txt:1: .*nickname"):
        Templates(root).render("broken", "en", {"client": {"first_name": "Ann"}})


def test_an_undefined_variable_in_the_layout_names_the_layout(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    (root / "_layouts").mkdir(parents=True)
    (root / "_layouts" / "base.html").write_text(
        "<html>\n<body>\n{% block content %}{% endblock %}\n<p>{{ footer }}</p>\n</body>\n</html>\n"
    )
    _write(
        root,
        "hello",
        "en",
        html_html='{% extends "_layouts/base.html" %}\n{% block content %}Hi{% endblock %}\n',
    )

    with pytest.raises(RenderError, match=r"^templates/_layouts/base\.html:4: 'footer' is"):
        Templates(root).render("hello", "en", {})


def test_the_repository_template_without_a_purchase_names_the_line(
    templates: Templates,
) -> None:
    context = _context()
    del context["purchase"]

    with pytest.raises(RenderError, match=r"^templates/thank_you/en/text\.txt:3: .*purchase"):
        templates.render("thank_you", "en", context)


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "broken", "en", html_html="<p>\n{% if client %}\n<b>x</b>\n</p>\n")

    with pytest.raises(RenderError) as caught:
        Templates(root).render("broken", "en", {"client": 1})

    message = str(caught.value)
    assert message.startswith("templates/broken/en/html.html:")
    assert re.match(r"templates/broken/en/html\.html:\d+: .*endif", message), message
    assert isinstance(caught.value.__cause__, TemplateSyntaxError)


def test_a_syntax_error_on_a_given_line(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "broken", "en", text_txt="Hello\nthere\n{{ client. }}\nbye\n")

    with pytest.raises(RenderError, match=r"^templates/broken/en/text\.txt:3: "):
        Templates(root).render("broken", "en", {"client": 1})


def test_a_missing_part_is_a_render_error(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "hello", "en")
    (root / "hello" / "en" / "html.html").unlink()

    with pytest.raises(RenderError, match=r"template not found"):
        Templates(root).render("hello", "en", {})


# ----------------------------------------------------------------------------- sandbox

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ ''|attr('__class__') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ lipsum.__globals__['os'] }}",
]


@pytest.mark.parametrize("payload", ESCAPES)
@pytest.mark.parametrize("part", ["subject_txt", "text_txt", "html_html"])
def test_templates_cannot_reach_python_internals(tmp_path: Path, payload: str, part: str) -> None:
    root = tmp_path / "templates"
    _write(root, "evil", "en", **{part: f"before {payload} after"})
    templates = Templates(root)
    rendered = None

    with pytest.raises(RenderError) as caught:
        rendered = templates.render("evil", "en", {})

    assert rendered is None
    assert isinstance(caught.value.__cause__, SecurityError)
    assert "unsafe" in str(caught.value)
    assert str(caught.value).startswith(f"templates/evil/en/{part.replace('_', '.')}:1: ")


def test_templates_cannot_modify_their_context(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "evil", "en", text_txt="{{ client.tags.append('owned') }}")
    context: dict[str, Any] = {"client": {"tags": ["vip"]}}

    with pytest.raises(RenderError) as caught:
        Templates(root).render("evil", "en", context)

    assert isinstance(caught.value.__cause__, SecurityError)
    assert context["client"]["tags"] == ["vip"]


# ----------------------------------------------------------------------------- compose and MIME


def test_a_header_injection_through_the_first_name_goes_nowhere(
    settings: Settings, templates: Templates
) -> None:
    composed = compose_thank_you(settings, templates, sample_recipient(first_name=INJECTED_NAME))
    message = _parse(composed.mime)

    to = message["To"]
    assert len(to.addresses) == 1
    assert to.addresses[0].addr_spec == "eve@client.example"
    assert to.addresses[0].display_name == "Eve Bcc: x@y.z Lee"
    assert message["Bcc"] is None
    assert message["Cc"] is None
    for part in message.walk():
        assert "Bcc" not in part
    assert message["Subject"] == "Thank you, Eve Bcc: x@y.z!"
    assert composed.to == "eve@client.example"


def test_the_message_uses_crlf_line_endings_only(settings: Settings, templates: Templates) -> None:
    mime = compose_thank_you(settings, templates, sample_recipient(first_name=INJECTED_NAME)).mime

    assert b"\r\n" in mime
    assert re.search(rb"(?<!\r)\n", mime) is None
    assert re.search(rb"\r(?!\n)", mime) is None


def test_from_and_reply_to_are_the_rep(settings: Settings, templates: Templates) -> None:
    composed = compose_thank_you(settings, templates, sample_recipient())
    message = _parse(composed.mime)

    for header in ("From", "Reply-To"):
        (address,) = message[header].addresses
        assert address.addr_spec == "marc@girard.example"
        assert address.display_name == "Marc Girard"
    assert composed.from_email == "marc@girard.example"
    assert composed.rep_id == 3


def test_without_a_rep_the_message_is_from_the_business(
    settings: Settings, templates: Templates
) -> None:
    facts = sample_recipient(rep_id=None, rep_name=None, rep_email=None, rep_signature=None)
    message = _parse(compose_thank_you(settings, templates, facts).mime)

    (address,) = message["From"].addresses
    assert address.addr_spec == "hello@example.com"
    assert address.display_name == "Girard Motors"
    assert message["Reply-To"].addresses[0].addr_spec == "hello@example.com"


def test_the_message_id_is_the_touch_keys(settings: Settings, templates: Templates) -> None:
    composed = compose_thank_you(settings, templates, sample_recipient())
    message = _parse(composed.mime)

    expected = message_id(42, "thank_you", OCCURRENCE, "example.com")
    assert message["Message-ID"] == expected
    assert composed.message_id == expected
    assert compose_thank_you(settings, templates, sample_recipient()).message_id == expected


def test_the_one_click_unsubscribe_headers(settings: Settings, templates: Templates) -> None:
    message = _parse(compose_thank_you(settings, templates, sample_recipient()).mime)

    token = tokens.make(SECRET, compose.UNSUBSCRIBE, 42)
    # The header is folded after its name; unfolding leaves the value's leading white space.
    assert message["List-Unsubscribe"].strip() == (
        f"<https://shop.example.com/unsubscribe/{token}>, "
        "<mailto:unsubscribe@example.com?subject=unsubscribe>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert tokens.verify(SECRET, compose.UNSUBSCRIBE, token) == "42"


def test_the_message_is_text_then_html_with_inlined_styles(
    settings: Settings, templates: Templates
) -> None:
    composed = compose_thank_you(settings, templates, sample_recipient())
    message = _parse(composed.mime)

    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert isinstance(text, EmailMessage)
    assert isinstance(html, EmailMessage)
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert text.get_content_charset() == "utf-8"
    assert "Dear Eve," in text.get_content()
    assert "on November 5, 2026." in text.get_content()
    body = html.get_content()
    assert re.search(r'<h1 style="[^"]+">Thank you, Eve!</h1>', body)
    assert "<style" not in body
    assert f"{PUBLIC_URL}unsubscribe/" in body
    assert message["Date"].datetime == SEND_AT


def test_a_french_client_gets_a_french_message(settings: Settings, templates: Templates) -> None:
    composed = compose_thank_you(
        settings, templates, sample_recipient(locale="fr-CA", first_name="Émilie")
    )
    message = _parse(composed.mime)

    assert message["Subject"] == "Merci, Émilie !"
    assert composed.locale == "fr"
    text, _html = message.iter_parts()
    assert isinstance(text, EmailMessage)
    assert "le 5 novembre 2026." in text.get_content()


@pytest.mark.parametrize(("locale", "language"), [("en-US", "en"), ("fr-CA", "fr")])
def test_the_message_says_its_language(
    settings: Settings, templates: Templates, locale: str, language: str
) -> None:
    message = _parse(compose_thank_you(settings, templates, sample_recipient(locale=locale)).mime)

    assert message["Content-Language"] == language


def test_the_purchase_date_is_the_clients_local_date(
    settings: Settings, templates: Templates
) -> None:
    # 02:00 UTC on the 6th is still the evening of the 5th in New York.
    facts = sample_recipient(purchased_at=datetime(2026, 11, 6, 2, 0, tzinfo=UTC))
    composed = compose_thank_you(settings, templates, facts)

    assert "on November 5, 2026." in composed.text


# ----------------------------------------------------------------------------- tokens


def test_a_token_verifies_to_its_subject() -> None:
    token = tokens.make(SECRET, "unsubscribe", 42)

    assert token.startswith("42.")
    assert tokens.verify(SECRET, "unsubscribe", token) == "42"


@given(
    secret=st.text(min_size=1),
    purpose=st.text(),
    subject=st.one_of(st.integers(min_value=0), st.text(min_size=1)),
)
def test_tokens_round_trip(secret: str, purpose: str, subject: int | str) -> None:
    token = tokens.make(secret, purpose, subject)
    assert tokens.verify(secret, purpose, token) == str(subject)


def test_an_altered_subject_does_not_verify() -> None:
    token = tokens.make(SECRET, "unsubscribe", 42)
    _, signature = token.split(".")

    assert tokens.verify(SECRET, "unsubscribe", f"43.{signature}") is None
    assert tokens.verify(SECRET, "unsubscribe", f"042.{signature}") is None


def test_an_altered_signature_does_not_verify() -> None:
    token = tokens.make(SECRET, "unsubscribe", 42)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")

    assert tokens.verify(SECRET, "unsubscribe", flipped) is None
    assert tokens.verify(SECRET, "unsubscribe", token[:-1]) is None
    assert tokens.verify(SECRET, "unsubscribe", token + "A") is None
    assert tokens.verify(SECRET, "unsubscribe", "42.") is None
    assert tokens.verify(SECRET, "unsubscribe", "42") is None
    assert tokens.verify(SECRET, "unsubscribe", "") is None


def test_another_secret_or_purpose_does_not_verify() -> None:
    token = tokens.make(SECRET, "unsubscribe", 42)

    assert tokens.verify("another-secret", "unsubscribe", token) is None
    assert tokens.verify(SECRET, "confirm", token) is None


@given(
    secret=st.text(min_size=1),
    other=st.text(min_size=1),
    subject=st.integers(min_value=0),
)
def test_a_token_made_with_another_secret_never_verifies(
    secret: str, other: str, subject: int
) -> None:
    assume(secret != other)
    assert tokens.verify(secret, "unsubscribe", tokens.make(other, "unsubscribe", subject)) is None


def test_a_forged_token_with_non_ascii_characters_does_not_verify() -> None:
    assert tokens.verify(SECRET, "unsubscribe", "42.é") is None


def test_a_template_cannot_pull_in_a_file_through_a_stylesheet_link(tmp_path: Path) -> None:
    secret = tmp_path / "secret.css"
    secret.write_text("p { color: #c0ffee; }")
    root = tmp_path / "templates"
    _write(
        root,
        "m",
        "en",
        subject_txt="Hi",
        text_txt="Hi",
        html_html=f'<html><head><link rel="stylesheet" href="{secret}"></head><body><p>x</p></body>'
        "</html>",
    )
    html = Templates(root).render("m", "en", _context()).html
    assert "c0ffee" not in html
    assert "<p>x</p>" in html


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_cannot_break_a_header(
    settings: Settings, templates: Templates, separator: str
) -> None:
    message = _parse(
        compose_thank_you(settings, templates, sample_recipient(first_name=f"An{separator}n")).mime
    )
    assert "\n" not in str(message["Subject"]) and separator not in str(message["Subject"])
    assert len(message.get_all("To") or []) == 1


def test_a_name_that_looks_like_an_encoded_word_is_shown_as_written(
    settings: Settings, templates: Templates
) -> None:
    facts = sample_recipient(rep_name="=?utf-8?b?QWRtaW4=?=", first_name="=?utf-8?b?Qm9zcw==?=")
    mime = compose_thank_you(settings, templates, facts).mime
    assert _decoded(mime, "From").startswith("=?utf-8?b?QWRtaW4=?= <")
    assert _decoded(mime, "To").startswith("=?utf-8?b?Qm9zcw==?= ")


def _decoded(mime: bytes, name: str) -> str:
    """A header as RFC 2047 says to show it (adjacent encoded-words joined; Python's address
    parser keeps the folding space between them, which mail clients drop)."""
    head = mime.split(b"\r\n\r\n", 1)[0].decode("ascii")
    raw = re.search(rf"^{name}: ([^\r\n]*(?:\r\n [^\r\n]*)*)", head, re.M)
    assert raw is not None
    return str(make_header(decode_header(raw.group(1).replace("\r\n", ""))))


def test_long_names_in_any_script_keep_every_line_within_the_limit(
    settings: Settings, templates: Templates
) -> None:
    facts = sample_recipient(first_name="山" * 250, last_name="田" * 250, rep_name="Joé " * 60)
    mime = compose_thank_you(settings, templates, facts).mime
    assert max(len(line) for line in mime.split(b"\r\n")) <= 998
    assert b"\n" not in mime.replace(b"\r\n", b"")
    assert _decoded(mime, "To") == "山" * 250 + " " + "田" * 250 + f" <{facts.email}>"
