"""Files as they come (docs/clients.md): Windows-1252 and semicolon files, huge cells, rows the
CSV rules cannot read and every error of a row, imported into a real database (SQLite always,
PostgreSQL when FOLLOWUP_TEST_POSTGRES_URL is set); a file that cannot be read leaves the
database as it was. tests/unit/test_import_reader.py has the reader alone."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table, select

from followup import api
from followup.domain.columns import REQUIRED
from followup.importing.importer import EncodingError, HeaderError, Kind, import_csv
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.engine import CHUNK, reader

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)
HEADER = ["id", "email", "first_name", "last_name", "locale", "timezone", "country"]


def row(external_id: str, first_name: str = "Ann") -> list[str]:
    return [
        external_id,
        f"{external_id.lower()}@example.com",
        first_name,
        "Lee",
        "fr",
        "Europe/Paris",
        "FR",
    ]


def csv_bytes(
    rows: list[list[str]], *, delimiter: str = ",", encoding: str = "utf-8", header: Any = None
) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerows([header or HEADER, *rows])
    return buffer.getvalue().encode(encoding)


def stored(rt: Runtime, table: Table) -> dict[str, dict[str, Any]]:
    with reader(rt.engine) as conn:
        rows = conn.execute(select(table)).mappings().all()
    return {r["external_id"]: dict(r) for r in rows}


def windows_file(tmp_path: Path, rows: int) -> tuple[Path, int]:
    """A Windows-1252 clients file whose only accent is on its last row, past the first
    batch of rows and the first 8 KB; and the line of that row."""
    path = tmp_path / "clients.csv"
    path.write_bytes(
        csv_bytes([row(f"C{i}") for i in range(rows)] + [row("CLAST", "Élodie")], encoding="cp1252")
    )
    return path, rows + 2


# ----------------------------------------------------------------------------- encodings


def test_a_windows_1252_file_is_refused_whole_and_names_line_byte_and_option(
    runtime: Runtime, tmp_path: Path
) -> None:
    api.import_csv(runtime, "clients", _file(tmp_path / "before.csv", [row("C1", "Zoë")]), now=NOW)
    before = stored(runtime, tables.clients)
    path, line = windows_file(tmp_path, CHUNK * 2 + 10)
    at = path.read_bytes().index(b"\xc9")
    assert at > 8192

    with pytest.raises(EncodingError) as caught:
        import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert str(caught.value) == (
        f"clients.csv:{line}: byte 0xC9 (at byte {at:,} of the file) is not UTF-8; if the file "
        "was saved by Excel or another Windows program, import it with --encoding cp1252"
    )
    # Two batches had been written in the import's transaction: they are rolled back.
    assert stored(runtime, tables.clients) == before


def test_with_encoding_cp1252_accents_are_stored_right(runtime: Runtime, tmp_path: Path) -> None:
    path, _ = windows_file(tmp_path, 3)
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW, encoding="cp1252")
    assert report.errors == [] and report.imported == 4
    assert stored(runtime, tables.clients)["CLAST"]["first_name"] == "Élodie"


def test_an_unknown_encoding_or_delimiter_is_refused_before_reading(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = _file(tmp_path / "clients.csv", [row("C1")])
    with pytest.raises(ValueError, match="unknown encoding 'klingon'"):
        api.import_csv(runtime, "clients", path, now=NOW, encoding="klingon")
    with pytest.raises(ValueError, match="'::' is not a delimiter"):
        api.import_csv(runtime, "clients", path, now=NOW, delimiter="::")
    assert stored(runtime, tables.clients) == {}


# ----------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_a_file_in_another_delimiter_is_sniffed_and_imported(
    runtime: Runtime, tmp_path: Path, delimiter: str
) -> None:
    path = tmp_path / "clients.csv"
    path.write_bytes(csv_bytes([row("C1", "Ann; Jr"), row("C2", "Zoë")], delimiter=delimiter))
    report = api.import_csv(runtime, "clients", path, now=NOW)
    assert report.errors == []
    assert {k: v["first_name"] for k, v in stored(runtime, tables.clients).items()} == {
        "C1": "Ann; Jr",
        "C2": "Zoë",
    }


def test_a_semicolon_file_read_with_commas_gets_a_hint_not_just_missing_columns(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "clients.csv"
    path.write_bytes(csv_bytes([row("C1")], delimiter=";"))
    with pytest.raises(HeaderError) as caught:
        import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW, delimiter=",")
    assert str(caught.value).startswith("clients.csv:1: missing required column(s) id, email,")
    assert str(caught.value).endswith(
        "; the header holds 5 of them separated by ';': if the file is separated by ';', "
        "import it with --delimiter ';'"
    )
    assert stored(runtime, tables.clients) == {}


# ----------------------------------------------------------------------------- rows


def test_a_200000_character_cell_is_a_row_error_with_its_column(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = _file(tmp_path / "clients.csv", [row("C1", "x" * 200_000), row("C2")])
    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)
    assert [str(e) for e in report.errors] == [
        "clients.csv:2: first_name: is longer than 256 characters"
    ]
    assert set(stored(runtime, tables.clients)) == {"C2"}


def test_rows_the_csv_rules_cannot_read_are_row_errors_in_line_order(
    runtime: Runtime, tmp_path: Path
) -> None:
    good = ",".join(row("C1"))
    lines = [",".join(HEADER), good, '"C2"x,' + good[3:], "C3,bad", good.replace("C1", "C4")]
    path = tmp_path / "clients.csv"
    path.write_text("\r\n".join(lines) + '\r\nC5,"open\r\n', encoding="utf-8")

    report = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW)

    assert [(e.line, e.column) for e in report.errors] == [(3, ""), (4, ""), (6, "")]
    assert "after its closing quote" in report.errors[0].reason
    assert "never closed" in report.errors[2].reason
    assert (report.rows, report.rejected_rows) == (5, 3)
    assert set(stored(runtime, tables.clients)) == {"C1", "C4"}

    strict = import_csv(runtime.engine, Kind.CLIENTS, path, now=NOW, strict=True)
    assert strict.imported == 0 and len(strict.errors) == 3


def test_every_error_of_a_rep_row_is_reported(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "reps.csv"
    path.write_bytes(
        csv_bytes(
            [["R1", "", "not-an-address", "", "maybe"], ["R2", "Sam", "sam@shop.example", "", ""]],
            header=["id", "name", "email", "signature", "active"],
        )
    )
    report = import_csv(runtime.engine, Kind.REPS, path, now=NOW)
    assert [(e.line, e.column) for e in report.errors] == [
        (2, "name"),
        (2, "email"),
        (2, "active"),
    ]
    assert set(stored(runtime, tables.reps)) == {"R2"}


def test_every_error_of_a_purchase_row_is_reported(runtime: Runtime, tmp_path: Path) -> None:
    api.import_csv(runtime, "clients", _file(tmp_path / "clients.csv", [row("C1")]), now=NOW)
    header = [*REQUIRED[Kind.PURCHASES], "status"]
    rows = [
        ["P1", "NOBODY", "2026-13-01", "", "12.5", "EURO", "lost"],
        ["P2", "C1", "2026-12-01", "Bike", "-3", "EUR", ""],
        ["P3", "C1", "2026-12-01", "Bike", "12.345", "EUR", ""],
        ["P4", "C1", "2026-12-01", "Bike", "12.50", "EUR", ""],
    ]
    path = tmp_path / "purchases.csv"
    path.write_bytes(csv_bytes(rows, header=header))

    report = import_csv(runtime.engine, Kind.PURCHASES, path, now=NOW)

    assert [(e.line, e.column) for e in report.errors] == [
        (2, "client"),
        (2, "purchased_at"),
        (2, "product"),
        (2, "currency"),
        (2, "status"),
        (3, "amount"),
        (4, "amount"),
    ]
    assert report.errors[0].reason == "no client with id 'NOBODY' (import clients first)"
    assert set(stored(runtime, tables.purchases)) == {"P4"}


def _file(path: Path, rows: list[list[str]]) -> Path:
    path.write_bytes(csv_bytes(rows))
    return path
