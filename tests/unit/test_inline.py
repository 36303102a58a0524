"""CSS inlining from the cached skeleton of a page gives exactly what css-inline gives for the
page itself: every shipped message, locale and variant, pages whose markup depends on the data,
arbitrary text and links, and the pages that are inlined directly."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import Environment
from markupsafe import Markup, escape

from followup.messages import inline, preview
from followup.messages.templates import Templates
from tests.support.settings import ROOT, make_settings

FACTS = [
    preview.sample_for("en-US"),
    preview.sample_for("fr-CA"),
    preview.sample_for("fr")._replace(
        first_name='Zoé "Zo" <b>&amp;',
        last_name="O'Brien\u00a0& Co",
        tier="vip",
        rep_signature="Marc\n\n  Girard &nbsp; <i>Motors</i>  ",
        product="Citadine & fils",
    ),
    preview.sample_for("en")._replace(first_name=" ", last_name="", tier="vip"),
]


#: The cached way (the `pages` fixture replaces inline.inline while compose() runs).
CACHED = inline.inline


def _outcome(way: Callable[[str], str], html: str) -> tuple[str, str]:
    try:
        return "inlined", way(html)
    except ValueError as exc:  # e.g. a lone surrogate: not UTF-8
        return type(exc).__name__, str(exc)


def _same_both_ways(html: str) -> None:
    expected = _outcome(inline.INLINER.inline, html)
    assert _outcome(CACHED, html) == expected  # builds the skeleton's entry
    assert _outcome(CACHED, html) == expected  # from it


@pytest.fixture
def pages(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every page compose() inlines while the test runs."""
    seen: list[str] = []

    def record(html: str) -> str:
        seen.append(html)
        return inline.INLINER.inline(html)

    monkeypatch.setattr(inline, "inline", record)
    yield seen


def test_every_shipped_message_locale_and_variant(tmp_path: Path, pages: list[str]) -> None:
    config = make_settings(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    templates = Templates(ROOT / "templates")
    for message in templates.messages():
        for variant in templates.variants(message):
            for facts in FACTS:
                preview.render(
                    config, templates, message, facts, on=date(2026, 12, 25), variant=variant.name
                )
    assert len(pages) == len(templates.messages()) * 6 * len(FACTS)
    cached = 0
    for html in pages:
        _same_both_ways(html)
        cached += inline._skeleton(html) is not None
    # The shipped pages take the cached way (else this test would prove nothing).
    assert cached == len(pages)


PAGE = """<!doctype html>
<html lang="{{ lang }}"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
  body { color: #222; } .vip { color: gold; } p { margin: 0 }
  .card > p:first-child { font-weight: bold } td { padding: 2px } a { color: {{ colour }} }
  li:nth-child(2) { color: red } p:empty { display: none }
</style></head>
<body><div class="card">
{% if vip %}<p class="vip">Dear {{ name }},</p><h1>{{ name }}</h1>{% else %}<p>{{ name }}</p>
{% endif %}
{% for item in items %}<li class="{{ item.kind }}">{{ item.label }}</li>{% endfor %}
<p>{{ empty }}</p><table><tr><td>{{ name }}</td></tr>{{ stray }}</table>
<pre>
{{ name }}</pre>
<a href="{{ link }}" title="{{ name }}">{{ name }}</a>
<p>  {{ name }} and {{ other }}  </p>
</div></body></html>"""


def _page(**values: object) -> str:
    env = Environment(autoescape=True)
    base = {"lang": "en", "title": "T", "colour": "#123456", "vip": False, "name": "Ann"}
    base |= {"items": [], "empty": "", "stray": "", "link": "https://x.example/u/1", "other": "o"}
    return env.from_string(PAGE).render(base | values)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"vip": True},
        {"vip": True, "items": [{"kind": "a", "label": "one"}, {"kind": "b", "label": "two"}]},
        {"items": [{"kind": "vip", "label": "x"}]},
        {"empty": "not empty", "stray": "fostered out of the table"},
        {"stray": "   "},
        {"name": "Zoé & <Lefèvre> \"q\" 'a'", "other": "\u00a0nbsp\u00a0"},
        {"title": "Thanks & more", "link": 'https://x.example/?a=1&b="2"'},
        {"name": Markup("<b>bold</b> inside")},
        {"name": Markup("&copy; 2026")},
        {"lang": "fr", "colour": "#ff0000"},
    ],
)
def test_pages_whose_markup_depends_on_the_data(values: dict[str, object]) -> None:
    _same_both_ways(_page(**values))


TEXT = st.text(
    alphabet=st.sampled_from(list(" \t\n\r\x0c\x00\x01\x7f\x85\u00a0\u2028&<>\"'=;#é€😀\ufffe"))
    | st.characters(),
    max_size=30,
)


@settings(max_examples=300)
@given(TEXT, TEXT, TEXT, st.booleans())
def test_arbitrary_text_and_links(name: str, other: str, link: str, vip: bool) -> None:
    _same_both_ways(_page(name=name, other=other, link=link, title=other, vip=vip))


@settings(max_examples=200)
@given(TEXT, TEXT)
def test_arbitrary_unescaped_text(name: str, other: str) -> None:
    # Values marked safe reach the page as written, markup and all.
    _same_both_ways(_page(name=Markup(name), other=Markup(other), link=Markup(other)))


@pytest.mark.parametrize(
    "html",
    [
        "<p>a</p><!-- a comment --><p>b</p>",
        "<p>a > b</p>",
        "<p>a < b</p>",
        '<p title="a>b">x</p>',
        "<script>if (a < b) {}</script><p>x</p>",
        "<svg><title>x</title></svg><p>y</p>",
        "<textarea><p>x</p></textarea>",
        '<link rel="stylesheet" href="x.css"><p>x</p>',
        "<p>\ue0000\ue001</p>",
        "<!DOCTYPE html PUBLIC '-//W3C//DTD XHTML 1.0'><p>x</p>",
        "<p>x</p><style>p { color: red }",
    ],
)
def test_pages_of_other_shapes_are_inlined_directly(html: str) -> None:
    assert inline._skeleton(html) is None
    _same_both_ways(html)


def test_links_stay_as_written_when_a_selector_reads_them() -> None:
    style = '<style>a[href^="https"] { color: green } a { color: red }</style>'
    safe, plain = (
        f'<html><head>{style}</head><body><a href="{link}">x</a></body></html>'
        for link in ("https://x.example", "http://x.example")
    )
    assert inline._skeleton(safe) is None
    _same_both_ways(safe)
    _same_both_ways(plain)


def test_text_that_is_not_plain_stays_in_the_skeleton() -> None:
    # Control characters and other entities than markupsafe's are part of the key.
    for text in ("a\x01b", "&copy; 2026", "x&#345;", "a&b"):
        html = f"<html><head><style>p {{ color: red }}</style></head><body><p>{text}</p></body>"
        found = inline._skeleton(html)
        assert found is not None and found[1] == []
        _same_both_ways(html)


def test_escaped_values_decode_and_encode_as_css_inline_writes_them() -> None:
    value = str(escape("a & b < c > d \" e ' f\u00a0g"))
    head = "<html><head><style>p { color: red }</style></head>"
    html = f'{head}<body><p>{value}</p><a href="{value}">l</a></body></html>'
    found = inline._skeleton(html)
    text, link = "a &amp; b &lt; c &gt; d \" e ' f&nbsp;g", "a &amp; b < c > d &quot; e ' f&nbsp;g"
    assert found is not None and found[1] == [text, link, "l"]
    _same_both_ways(html)


TAGS = [
    "p",
    'p class="vip"',
    "h1",
    "title",
    "style",
    "/p",
    "!doctype html",
    "textarea",
    "br/",
    'a href="https://x.example/u/1" style="color: #7a7a7a;"',
    "a href='x'",
]


@settings(max_examples=300)
@given(st.sampled_from(TAGS), TEXT, TEXT)
def test_a_kept_tag_with_any_text_is_the_piece_classified_afresh(
    tag: str, text: str, other: str
) -> None:
    # The tag's classification is kept (_heads) apart from its text: pieces with client text
    # miss _pieces, and must come out as if nothing had been kept.
    inline._heads.clear()
    fresh = inline._piece(f"{tag}>{text}")
    inline._heads.clear()
    inline._piece(f"{tag}>{other}")  # keeps the tag, seen with another text
    assert inline._piece(f"{tag}>{text}") == fresh
