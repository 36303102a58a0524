"""`[import.reps]`, `[import.clients]`, `[import.purchases]`: how a file's columns map to
followup's own (docs/clients.md#your-own-export). The shipped presets (importing/presets/*.toml)
are written in the same shape and read with the same models.

A mapping's keys are followup's column names, each naming the file's column (or a list of
columns: the first non-empty cell wins), beside a few reserved keys:

    [import.clients]
    preset = "shopify"              # start from a shipped preset (optional)
    id = "Customer number"
    email = ["E-mail address", "Email"]
    decimal = ","                   # the file's decimal mark (amounts)
    group_by = "Order"              # consecutive lines with the same value are one record
    items = "product"               # ... this column summarising them ("A (+2 more)")
    [import.clients.values.status]  # the file's words -> followup's values, per column
    "Do not mail" = "do-not-contact"
    [import.clients.defaults]       # a column absent from the file, or an empty cell
    locale = "en"
    [import.clients.formats]        # a date-time column's strptime format
    purchased_at = "%d/%m/%Y %H:%M"
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from followup.domain.columns import Kind, columns_of

#: followup's columns a mapping may name, by kind of file: those the importer reads.
NATIVE_COLUMNS: dict[str, tuple[str, ...]] = {kind.value: columns_of(kind) for kind in Kind}

#: The shipped presets (importing/presets/NAME.toml) and the name of the config's mapping.
PRESETS = ("shopify", "woocommerce")
CONFIG = "config"

_RESERVED = ("preset", "decimal", "group_by", "items", "values", "defaults", "formats")


class ColumnMapping(BaseModel):
    """One kind's mapping; `columns` holds the keys that name followup's columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    KIND: ClassVar[str] = ""

    preset: Literal["shopify", "woocommerce"] | None = None
    decimal: Literal[".", ","] | None = None
    group_by: str | None = None
    items: str | None = None
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    defaults: dict[str, str] = Field(default_factory=dict)
    formats: dict[str, str] = Field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_columns(cls, raw: Any) -> Any:
        """Every key but the reserved ones names one of followup's columns."""
        if not isinstance(raw, dict):
            return raw
        native = NATIVE_COLUMNS[cls.KIND]
        gathered: dict[str, Any] = {k: v for k, v in raw.items() if k in _RESERVED}
        columns: dict[str, Any] = {}
        for key, value in raw.items():
            if key in _RESERVED:
                continue
            if key not in native:
                raise ValueError(
                    f"{key!r} is not a column of followup's {cls.KIND} (they are "
                    f"{', '.join(native)}; other keys: {', '.join(_RESERVED)})"
                )
            if isinstance(value, str):
                value = [value]
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, str) and v.strip() for v in value)
            ):
                raise ValueError(
                    f'{key}: the file\'s column name, or a list of names, e.g. {key} = "{key}"'
                )
            columns[key] = tuple(v.strip() for v in value)
        gathered["columns"] = columns
        return gathered

    @field_validator("values", "defaults", "formats")
    @classmethod
    def _native_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        native = NATIVE_COLUMNS[cls.KIND]
        for key in value:
            if key not in native:
                raise ValueError(
                    f"{key!r} is not a column of followup's {cls.KIND} "
                    f"(they are {', '.join(native)})"
                )
        return value

    @field_validator("items")
    @classmethod
    def _items_native(cls, value: str | None) -> str | None:
        if value is not None and value not in NATIVE_COLUMNS[cls.KIND]:
            raise ValueError(f"{value!r} is not a column of followup's {cls.KIND}")
        return value


class RepsMapping(ColumnMapping):
    KIND: ClassVar[str] = "reps"


class ClientsMapping(ColumnMapping):
    KIND: ClassVar[str] = "clients"


class PurchasesMapping(ColumnMapping):
    KIND: ClassVar[str] = "purchases"


class ImportSettings(BaseModel):
    """`[import]`: the user's mappings (`followup import KIND FILE --preset config`), or a
    preset file's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reps: RepsMapping | None = None
    clients: ClientsMapping | None = None
    purchases: PurchasesMapping | None = None

    def mapping(self, kind: str) -> ColumnMapping | None:
        found: ColumnMapping | None = getattr(self, kind)
        return found
