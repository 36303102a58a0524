"""CSS inlining (css-inline) done once per page skeleton instead of once per message.

Messages rendered from one template, locale and variant differ in their text (names, dates,
amounts) and in link addresses, rarely in their markup or styles. Inlining depends only on the
document tree, the stylesheets and the attributes selectors can see, so the inlined page of one
message serves every message of the same skeleton:

1. The page is cut into tags and text at each `<` and `>`. Each run of text outside raw-text
   elements (style, script, ...), without its leading and trailing HTML whitespace, and the
   `href` of each `<a>` becomes a numbered placeholder (U+E000 n U+E001); the page with
   placeholders is the skeleton, the key of the cache.
2. A skeleton not yet seen is inlined once, with its placeholders; the result is kept as the
   pieces between the placeholders (each must come out exactly once, else it is not kept).
3. A message is those pieces joined with its own text and links, escaped as css-inline's
   serializer escapes them (text: & < > and no-break space; attributes: & " and no-break space).

Why the result is the same as inlining the page itself: a placeholder starts and ends with a
character that is not whitespace, like the text it stands for, and neither holds a character the
HTML tokenizer treats specially (no `<` or `>`, no control character but tab and line feed,
`&` only in the escapes markupsafe writes), so the tokenizer and tree builder treat both alike
(they only tell whitespace from other text) and build the same tree; selectors never see text;
`href` matters to selectors only by its presence, and pages whose stylesheets have attribute
selectors keep their links as written. Anything outside that narrow shape (comments, `<` or `>`
in text or quoted values, an unknown `<!`, foreign content, textarea, frames, `<link>`,
`<base>`, placeholder characters in the page) is inlined directly, every time, as is a skeleton
whose placeholders do not each come out exactly once. tests/unit/test_inline.py compares both ways
for every shipped message, locale and variant, for pages whose markup depends on the data, and
for arbitrary text and links.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import css_inline

# Templates may not pull in files or URLs: the CSS inliner loads no stylesheet.
INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)

V = TypeVar("V")

#: Skeletons kept (all are dropped when full); a template x locale x variant is one or a few.
CACHE_SIZE = 512

_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(f"{_OPEN}([0-9]+){_CLOSE}")
_ATTRIBUTE = r"""\s+([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*("[^"<>]*"|'[^'<>]*'|[^\s"'=<>`]+))?"""
_START_TAG = re.compile(rf"([a-zA-Z][a-zA-Z0-9]*)(?:{_ATTRIBUTE})*+\s*/?")
_END_TAG = re.compile(r"/([a-zA-Z][a-zA-Z0-9]*)\s*")
#: Elements whose content is raw text: kept as is in the skeleton.
_RAW = frozenset({"style", "script", "xmp", "iframe", "noembed", "noframes", "noscript"})
#: Elements that change how the parser reads what follows, or load something: not handled.
_DIRECT = frozenset(
    {"textarea", "plaintext", "template", "svg", "math", "frameset", "frame", "link", "base"}
)
_HTML_SPACE = "\t\n\x0c\r "
_ATTRIBUTES = re.compile(_ATTRIBUTE)
#: Text may become a placeholder without a control character but tab and line feed, a
#: surrogate or a placeholder character, and with `&` only in the escapes markupsafe writes;
#: an attribute's value without `"` either (_ATTRIBUTE excludes its `<` and `>`).
_NOT_FREE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\ue000\ue001]")
_NOT_FREE_ATTRIBUTE = re.compile(r'["\x00-\x08\x0b-\x1f\x7f\ud800-\udfff\ue000\ue001]')
_OTHER_AMPERSAND = re.compile(r"&(?!(?:amp|lt|gt|quot|#34|#39);)")

#: skeleton -> (pieces, placeholder index after each piece); None: inline such pages directly.
#: A skeleton is kept as its parts, not joined: most are the same string objects from one
#: message to the next (kept in _pieces), whose hashes Python keeps, so looking a page up
#: does not hash and compare the whole page.
_cache: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[int, ...]] | None] = {}
#: In the skeleton (the build numbers them).
_SLOT = _OPEN + _CLOSE


def inline(html: str) -> str:
    """INLINER.inline(html), from the cached inlining of the page's skeleton when it has one."""
    found = _skeleton(html)
    if found is None:
        return INLINER.inline(html)
    key, values = found
    entry = _cache.get(key, _MISSING)
    if entry is _MISSING:
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        entry = _cache[key] = _build(key, len(values))
    if entry is None:
        return INLINER.inline(html)
    pieces, order = entry
    out = [pieces[0]]
    for index, piece in zip(order, pieces[1:], strict=True):
        out.append(values[index])
        out.append(piece)
    return "".join(out)


_MISSING: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())


def _build(key: tuple[str, ...], count: int) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """The skeleton inlined, as the pieces between its placeholders and their order."""
    parts = "".join(key).split(_SLOT)
    numbered = [parts[0]]
    for number, part in enumerate(parts[1:]):
        numbered.append(f"{_OPEN}{number}{_CLOSE}{part}")
    try:
        inlined = INLINER.inline("".join(numbered))
    except (css_inline.InlineError, ValueError):
        return None  # the page itself will say what is wrong
    pieces = _PLACEHOLDER.split(inlined)
    order = tuple(int(index) for index in pieces[1::2])
    if sorted(order) != list(range(count)):
        return None
    return tuple(pieces[0::2]), order


# What a piece of the page between two `<` is, for _skeleton.
_START, _END, _RAW_START, _TITLE, _OTHER = range(5)
#: piece -> (what, element name, its part of the skeleton, its text and link as css-inline
#: writes them, whether it has a link placeholder or a raw text with `[`)
_Piece = tuple[int, str, str, tuple[str, ...], bool]
_pieces: dict[str, _Piece] = {}
PIECES_SIZE = 4096


def _skeleton(html: str) -> tuple[tuple[str, ...], list[str]] | None:
    """The page with placeholders and what they stand for, as css-inline writes it; None
    when the page is not of the shape this handles."""
    if _OPEN in html or _CLOSE in html:
        return None
    chunks = html.split("<")
    first = chunks[0]
    if ">" in first:
        return None
    key = [first]
    values: list[str] = []
    raw = ""  # inside this raw-text element (or title)
    selectors = links = False
    known = _pieces
    for chunk in chunks[1:]:
        what, name, part, texts, flag = known.get(chunk) or _kept(known, chunk, _piece)
        if raw:
            if what != _END or name != raw:
                return None
            raw = ""
        elif what == _RAW_START:
            raw = name
            selectors = selectors or flag
        elif what == _TITLE:
            raw = name
        elif what == _OTHER:
            return None
        else:
            links = links or flag
        key.append(part)
        values += texts
    if raw or (selectors and links):
        return None
    return tuple(key), values


def _kept(cache: dict[str, V], key: str, make: Callable[[str], V]) -> V:
    """make(key), kept in `cache` (emptied when it holds PIECES_SIZE). Callers look the key
    up first (`cache.get(key) or _kept(...)`: the values are non-empty tuples)."""
    value = make(key)
    if len(cache) >= PIECES_SIZE:
        cache.clear()
    cache[key] = value
    return value


def _piece(chunk: str) -> _Piece:
    """One tag and the text after it (up to the next `<`)."""
    tag, found, text = chunk.partition(">")
    if not found:
        return _OTHER, "", "", (), False
    what, name, part, link_texts, link = _heads.get(tag) or _kept(_heads, tag, _head)
    if what == _RAW_START:
        return what, name, f"<{chunk}", (), "[" in text
    if what == _OTHER or ">" in text:
        return _OTHER, "", "", (), False
    middle = text.strip(_HTML_SPACE)
    if not middle or not _free(middle, _NOT_FREE):
        return what, name, f"<{part}>{text}", link_texts, link
    start = text.index(middle[0])
    rest = text[start + len(middle) :]
    return what, name, f"<{part}>{text[:start]}{_SLOT}{rest}", (*link_texts, _text(middle)), link


#: tag (between < and >) -> (what, element name, the tag in the skeleton, its link as
#: css-inline writes it, whether it has a link placeholder). Pieces whose text holds client
#: data (names, dates) miss _pieces, but their tag is the template's: classified once.
_Head = tuple[int, str, str, tuple[str, ...], bool]
_heads: dict[str, _Head] = {}


def _head(tag: str) -> _Head:
    """What _piece needs of a tag, which does not depend on the text after it."""
    what, name = _tag(tag)
    texts: list[str] = []
    link = False
    if what == _START and name == "a":
        tag, link = _link(tag, texts)
    return what, name, tag, tuple(texts), link


def _tag(tag: str) -> tuple[int, str]:
    """What a tag (between < and >) is, and its name in lower case. Comments, anything
    unusual and elements that change how the parser reads what follows are _OTHER."""
    end = _END_TAG.fullmatch(tag)
    if end is not None:
        return _END, end.group(1).lower()
    start = _START_TAG.fullmatch(tag)
    if start is not None:
        name = start.group(1).lower()
        if name in _DIRECT:
            return _OTHER, name
        if name in _RAW:
            return _RAW_START, name
        return (_TITLE if name == "title" else _START), name
    return (_END if tag.lower() == "!doctype html" else _OTHER), ""


def _link(tag: str, texts: list[str]) -> tuple[str, bool]:
    """An `<a>` tag (between < and >) with the value of its href (the first: the parser drops
    the others) as a placeholder, when it is double-quoted and plain."""
    for attribute in _ATTRIBUTES.finditer(tag, 1):
        if attribute.group(1).lower() != "href":
            continue
        value = attribute.group(2) or ""
        if len(value) > 2 and value[0] == '"' and _free(value[1:-1], _NOT_FREE_ATTRIBUTE):
            texts.append(_attribute(value[1:-1]))
            start, end = attribute.span(2)
            return f'{tag[:start]}"{_SLOT}"{tag[end:]}', True
        break
    return tag, False


def _free(value: str, not_free: re.Pattern[str]) -> bool:
    if not_free.search(value):
        return False
    return "&" not in value or _OTHER_AMPERSAND.search(value) is None


def _decoded(value: str) -> str:
    if "&" in value:
        value = value.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
        value = value.replace("&#34;", '"').replace("&#39;", "'").replace("&amp;", "&")
    return value


#: What css-inline's serializer escapes, in this order (& first): in text, in attributes.
_TEXT_ESCAPES = (("&", "&amp;"), ("\xa0", "&nbsp;"), ("<", "&lt;"), (">", "&gt;"))
_ATTRIBUTE_ESCAPES = (("&", "&amp;"), ("\xa0", "&nbsp;"), ('"', "&quot;"))


def _escaped(value: str, escapes: tuple[tuple[str, str], ...]) -> str:
    value = _decoded(value)
    for char, escape in escapes:
        if char in value:
            value = value.replace(char, escape)
    return value


def _text(value: str) -> str:
    """Text as css-inline writes it."""
    return _escaped(value, _TEXT_ESCAPES)


def _attribute(value: str) -> str:
    """An attribute's value as css-inline writes it."""
    return _escaped(value, _ATTRIBUTE_ESCAPES)
