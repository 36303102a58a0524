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
whose placeholders do not each come out exactly once. tests/test_inline.py compares both ways
for every shipped message, locale and variant, for pages whose markup depends on the data, and
for arbitrary text and links.
"""

from __future__ import annotations

import re

import css_inline

# Templates may not pull in files or URLs: the CSS inliner loads no stylesheet.
INLINER = css_inline.CSSInliner(load_remote_stylesheets=False)

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
_cache: dict[str, tuple[tuple[str, ...], tuple[int, ...]] | None] = {}


def inline(html: str) -> str:
    """INLINER.inline(html), from the cached inlining of the page's skeleton when it has one."""
    found = _skeleton(html)
    if found is None:
        return INLINER.inline(html)
    key, values, attributes = found
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
        out.append(_attribute(values[index]) if attributes[index] else _text(values[index]))
        out.append(piece)
    return "".join(out)


_MISSING: tuple[tuple[str, ...], tuple[int, ...]] = ((), ())


def _build(key: str, count: int) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    try:
        inlined = INLINER.inline(key)
    except (css_inline.InlineError, ValueError):
        return None  # the page itself will say what is wrong
    parts = _PLACEHOLDER.split(inlined)
    order = tuple(int(index) for index in parts[1::2])
    if sorted(order) != list(range(count)):
        return None
    return tuple(parts[0::2]), order


def _skeleton(html: str) -> tuple[str, list[str], list[bool]] | None:
    """The page with placeholders, the text and links they stand for (as written in the page)
    and which of them are attributes; None when the page is not of the shape this handles."""
    if _OPEN in html or _CLOSE in html:
        return None
    chunks = html.split("<")
    first = chunks[0]
    if ">" in first:
        return None
    key = [first]
    values: list[str] = []
    attributes: list[bool] = []
    raw = ""  # inside this raw-text element (or title)
    selectors = False
    tags = _tags
    for chunk in chunks[1:]:
        tag, found, text = chunk.partition(">")
        if not found:
            return None
        kind = tags.get(tag)
        if kind is None:
            kind = _tag(tag)
            if len(tags) >= TAGS_SIZE:
                tags.clear()
            tags[tag] = kind
        what, name = kind
        if raw:
            if what != "end" or name != raw:
                return None
            raw = ""
        elif what == "start":
            if name in _RAW:
                # Raw text, kept as is (it may hold `>`); an attribute selector could see a link.
                raw = name
                selectors = selectors or "[" in text
                key.append(f"<{tag}>{text}")
                continue
            if name == "title":
                raw = name
            elif name == "a":
                tag = _link(tag, values, attributes)
        elif what == "other":
            return None
        if ">" in text:
            return None
        middle = text.strip(_HTML_SPACE)
        if not middle or not _free(middle, _NOT_FREE):
            key.append(f"<{tag}>{text}")
            continue
        start = text.index(middle[0])
        rest = text[start + len(middle) :]
        key.append(f"<{tag}>{text[:start]}{_OPEN}{len(values)}{_CLOSE}{rest}")
        values.append(middle)
        attributes.append(False)
    if raw or (selectors and any(attributes)):
        return None
    return "".join(key), values, attributes


#: tag (between < and >) -> ("start", "end", "doctype" or "other"; its name in lower case)
_tags: dict[str, tuple[str, str]] = {}
TAGS_SIZE = 4096


def _tag(tag: str) -> tuple[str, str]:
    """What a tag is: "start", "end", "doctype", or "other" (comments, anything unusual, and
    elements that change how the parser reads what follows: not handled)."""
    end = _END_TAG.fullmatch(tag)
    if end is not None:
        return "end", end.group(1).lower()
    start = _START_TAG.fullmatch(tag)
    if start is not None:
        name = start.group(1).lower()
        return ("other" if name in _DIRECT else "start"), name
    return ("doctype" if tag.lower() == "!doctype html" else "other"), ""


def _link(tag: str, values: list[str], attributes: list[bool]) -> str:
    """An `<a>` tag (between < and >) with the value of its href (the first: the parser drops
    the others) as a placeholder, when it is double-quoted and plain."""
    for attribute in _ATTRIBUTES.finditer(tag, 1):
        if attribute.group(1).lower() != "href":
            continue
        value = attribute.group(2) or ""
        if len(value) > 2 and value[0] == '"' and _free(value[1:-1], _NOT_FREE_ATTRIBUTE):
            values.append(value[1:-1])
            attributes.append(True)
            start, end = attribute.span(2)
            return f'{tag[:start]}"{_OPEN}{len(values) - 1}{_CLOSE}"{tag[end:]}'
        break
    return tag


def _free(value: str, not_free: re.Pattern[str]) -> bool:
    if not_free.search(value):
        return False
    return "&" not in value or _OTHER_AMPERSAND.search(value) is None


def _decoded(value: str) -> str:
    if "&" in value:
        value = value.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
        value = value.replace("&#34;", '"').replace("&#39;", "'").replace("&amp;", "&")
    return value


def _text(value: str) -> str:
    """Text as css-inline writes it."""
    value = _decoded(value)
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "\xa0" in value:
        value = value.replace("\xa0", "&nbsp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    return value


def _attribute(value: str) -> str:
    """An attribute's value as css-inline writes it."""
    value = _decoded(value)
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "\xa0" in value:
        value = value.replace("\xa0", "&nbsp;")
    if '"' in value:
        value = value.replace('"', "&quot;")
    return value
