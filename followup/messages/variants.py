"""Design variants of a message ("envelope colours"): the variants files, which designs a
client may get, and the rotation that never sends a client the same design twice in a row.

    templates/_variants.toml                the variants of every message
    templates/<message>/variants.toml       optional: this message's own variants
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from followup.errors import RenderError

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
