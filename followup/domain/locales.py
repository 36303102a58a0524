"""Locale tags (BCP 47, as clients' data carries them): the fallback chain and the language."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1024)
def locale_chain(locale: str, default: str | None = None) -> tuple[str, ...]:
    """The tags to try for `locale`, most specific first, then `default` when given:
    fr-CA -> (fr-CA, fr); with default "en", (fr-CA, fr, en). An underscore counts as a hyphen
    (fr_CA), as in some exports."""
    parts = locale.replace("_", "-").split("-")
    chain = ["-".join(parts[:end]) for end in range(len(parts), 0, -1)]
    if default is not None:
        chain.append(default)
    return tuple(dict.fromkeys(chain))


def language(locale: str) -> str:
    """The language of a tag, lower-case: fr-CA -> fr."""
    return locale.replace("_", "-").split("-")[0].lower()
