"""The profile an import runs with: a shipped preset (importing/presets/NAME.toml), the user's
mapping in config.toml (`--preset config`, which may start from a preset), or followup's own
format (docs/clients.md#your-own-export)."""

from __future__ import annotations

import functools
import tomllib
from importlib import resources

from pydantic import ValidationError

from followup.config.imports import CONFIG, NATIVE_COLUMNS, PRESETS, ColumnMapping, ImportSettings
from followup.domain.columns import Kind
from followup.errors import ConfigError
from followup.importing.profiles import Column, Profile, native_profile

__all__ = ["CONFIG", "PRESETS", "profile_for"]


@functools.cache
def _preset(name: str) -> ImportSettings:
    """A shipped preset file, validated as [import] is."""
    text = resources.files("followup.importing").joinpath(f"presets/{name}.toml").read_text("utf-8")
    try:
        return ImportSettings.model_validate(tomllib.loads(text))
    except ValidationError as exc:  # a packaging mistake: tests/unit load every preset
        raise ConfigError(f"preset {name}: {exc}") from None


def profile_for(
    kind: Kind, preset: str | None, config: ImportSettings, decimal: str | None = None
) -> Profile:
    """The profile of `followup import KIND FILE --preset PRESET [--decimal D]`.

    `--preset NAME` is the shipped preset as it is; `--preset config` is [import.KIND] of
    config.toml, laid over the preset it names (`preset = "shopify"`); no preset is followup's
    own format. `decimal` (the command's --decimal) wins over the profile's."""
    if preset is None:
        return native_profile(kind, decimal or ".")
    if preset == CONFIG:
        mine = config.mapping(kind.value)
        if mine is None:
            raise ConfigError(
                f"--preset config: config.toml has no [import.{kind.value}] mapping "
                "(docs/clients.md#your-own-export)"
            )
        base = _preset(mine.preset).mapping(kind.value) if mine.preset else None
        return _profile(
            f"config [import.{kind.value}]", kind, [m for m in (base, mine) if m], decimal
        )
    if preset not in PRESETS:
        raise ConfigError(
            f"--preset {preset!r}: no such preset (they are {', '.join(PRESETS)}, or {CONFIG} "
            "for config.toml's [import.KIND] mapping)"
        )
    shipped = _preset(preset).mapping(kind.value)
    if shipped is None:
        raise ConfigError(f"--preset {preset}: the preset has no mapping for {kind.value}")
    return _profile(preset, kind, [shipped], decimal)


def _profile(name: str, kind: Kind, layers: list[ColumnMapping], decimal: str | None) -> Profile:
    """Mappings laid one over the other (a later one wins, key by key); a column no layer
    maps is read from the file's column of the same name, if there is one."""
    sources: dict[str, tuple[str, ...]] = {}
    values: dict[str, dict[str, str]] = {}
    defaults: dict[str, str] = {}
    formats: dict[str, str] = {}
    group_by = items = None
    mark = "."
    for layer in layers:
        sources.update(layer.columns)
        for native, words in layer.values.items():
            values.setdefault(native, {}).update({k.casefold(): v for k, v in words.items()})
        defaults.update(layer.defaults)
        formats.update(layer.formats)
        group_by = layer.group_by or group_by
        items = layer.items or items
        mark = layer.decimal or mark
    columns = tuple(
        Column(
            native,
            sources.get(native, (native,)),
            values.get(native, {}),
            defaults.get(native),
            formats.get(native),
        )
        for native in NATIVE_COLUMNS[kind.value]
    )
    return Profile(name, kind, columns, group_by, items, decimal or mark)
