"""Reading import files as shops' programs save them (docs/clients.md, "Files as they come"):
encodings and byte order marks, delimiters, cells of any size, rows the CSV rules cannot read.
tests/integration/test_import_files.py imports such files into a real database."""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from followup.importing.reader import (
    DELIMITERS,
    FIELD_LIMIT,
    EncodingError,
    HeaderError,
    RowError,
    check_delimiter,
    check_encoding,
    delimiter_hint,
    read_rows,
    sniff_delimiter,
)

HEADER = ["id", "email", "first_name"]
#: Each example writes its own file in the one tmp_path of the test.
FILES = hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_all(
    path: Path, **options: str | None
) -> tuple[list[str], list[tuple[int, list[str]]], list[RowError]]:
    """The header, every row with its line, and the row errors of `path`."""
    errors: list[RowError] = []
    header, rows, _ = read_rows(path, None, on_error=errors.append, **options)
    return header, list(rows), errors


def csv_text(rows: list[list[str]], delimiter: str = ",", terminator: str = "\r\n") -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter, lineterminator=terminator).writerows(rows)
    return buffer.getvalue()


def breaks(text: str) -> int:
    return len(re.findall(r"\r\n|\r|\n", text))


# ----------------------------------------------------------------------------- round trips

cells = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


@FILES
@given(
    rows=st.lists(st.lists(cells, min_size=1, max_size=4), max_size=6),
    delimiter=st.sampled_from(DELIMITERS),
    encoding=st.sampled_from(["utf-8", "cp1252"]),
    bom=st.booleans(),
    terminator=st.sampled_from(["\r\n", "\n"]),
    sniffed=st.booleans(),
)
def test_rows_written_by_the_csv_module_read_back_equal_with_their_lines(
    tmp_path: Path,
    rows: list[list[str]],
    delimiter: str,
    encoding: str,
    bom: bool,
    terminator: str,
    sniffed: bool,
) -> None:
    # The csv module's writer leaves a lone \r unquoted unless its line ends hold one.
    assume(terminator == "\r\n" or not any("\r" in cell for row in rows for cell in row))
    text = csv_text([HEADER, *rows], delimiter, terminator)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        assume(False)
    path = tmp_path / "file.csv"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    # A UTF-8 mark makes the file UTF-8 whatever it is said to be in: only UTF-8 files have one.
    assume(not bom or encoding == "utf-8")

    header, read, errors = read_all(
        path,
        encoding=None if encoding == "utf-8" and sniffed else encoding,
        delimiter=None if sniffed else delimiter,
    )

    assert header == HEADER and errors == []
    expected, line = [], 2
    for row in rows:
        if any(c.strip() for c in row):
            expected.append((line, row))
        line += breaks(csv_text([row], delimiter, terminator))
    assert read == expected


def test_a_utf16_file_with_its_mark_is_read_whatever_encoding_is_given(tmp_path: Path) -> None:
    """What Excel saves as "Unicode text": UTF-16 with a byte order mark, tab-separated."""
    path = tmp_path / "unicode.txt"
    path.write_bytes(csv_text([HEADER, ["C1", "zoë@example.com", "Zoë"]], "\t").encode("utf-16"))
    for encoding in (None, "cp1252"):
        assert read_all(path, encoding=encoding) == (
            HEADER,
            [(2, ["C1", "zoë@example.com", "Zoë"])],
            [],
        )


def test_a_utf8_mark_wins_over_the_encoding_given(tmp_path: Path) -> None:
    path = tmp_path / "marked.csv"
    path.write_bytes(codecs.BOM_UTF8 + csv_text([HEADER, ["C1", "a@b.example", "Zoë"]]).encode())
    assert read_all(path, encoding="cp1252")[1] == [(2, ["C1", "a@b.example", "Zoë"])]


# ----------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("terminator", ["\r\n", "\n", "\r"])
def test_a_windows_1252_byte_after_8_kb_names_its_line_byte_and_the_option(
    tmp_path: Path, terminator: str
) -> None:
    lines = [",".join(HEADER)] + [f"C{i},c{i}@example.com,Ann" for i in range(400)]
    lines.append("C400,c400@example.com,Élodie")
    path = tmp_path / "clients.csv"
    data = (terminator.join(lines) + terminator).encode("cp1252")
    path.write_bytes(data)
    at = data.index(b"\xc9")
    assert at > 8192

    with pytest.raises(EncodingError) as caught:
        read_all(path)

    assert str(caught.value) == (
        f"clients.csv:402: byte 0xC9 (at byte {at:,} of the file) is not "
        "UTF-8; if the file was saved by Excel or another Windows program, import it with "
        "--encoding cp1252"
    )
    assert read_all(path, encoding="cp1252")[1][-1] == (402, ["C400", "c400@example.com", "Élodie"])


@FILES
@given(
    before=st.lists(st.text(st.characters(codec="ascii", exclude_characters="\r\n"), max_size=90)),
    bad=st.sampled_from([b"\xc9", b"\xff", b"\xe9t\xe9", b"\xc3(", b"\xe2\x82"]),
    terminator=st.sampled_from([b"\r\n", b"\n", b"\r"]),
    bom=st.booleans(),
)
@example(before=["x" * 90] * 200, bad=b"\xe9", terminator=b"\r\n", bom=False)
def test_the_first_byte_not_in_utf8_is_found_at_its_line_and_offset(
    tmp_path: Path, before: list[str], bad: bytes, terminator: bytes, bom: bool
) -> None:
    head = (codecs.BOM_UTF8 if bom else b"") + b"id" + terminator
    body = b"".join(line.encode() + terminator for line in before)
    path = tmp_path / "bad.csv"
    path.write_bytes(head + body + b"x" + bad + b"x" + terminator + b"end" + terminator)
    offset = len(head + body) + 1

    with pytest.raises(EncodingError, match=rf"^bad\.csv:{len(before) + 2}: byte 0x{bad[0]:02X} "):
        read_all(path)
    with pytest.raises(EncodingError, match=rf"\(at byte {offset:,} of the file\)"):
        read_all(path)


def test_a_sequence_cut_at_the_end_of_the_file_is_an_encoding_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv"
    path.write_bytes(b"id,email\nC1,\xe2\x82")
    with pytest.raises(EncodingError, match=r"^cut\.csv:2: byte 0xE2 0x82 \(at byte 12 "):
        read_all(path)


def test_a_bad_byte_inside_a_quoted_multi_line_cell_names_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_bytes(b'id,note\r\nC1,"one\r\ntwo\r\nthr\xe9e"\r\n')
    with pytest.raises(EncodingError, match=r"^notes\.csv:4: byte 0xE9"):
        read_all(path)


def test_a_byte_not_in_the_encoding_given_suggests_the_files_own(tmp_path: Path) -> None:
    path = tmp_path / "ascii.csv"
    path.write_bytes(b"id\nZo\xc3\xab\n")
    with pytest.raises(EncodingError, match=r"^ascii\.csv:2: byte 0xC3 .* is not ascii; .*--enc"):
        read_all(path, encoding="ascii")


def test_a_utf8_mark_on_a_windows_1252_file_says_the_mark_decides(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"id\n\xc9lodie\n")
    with pytest.raises(EncodingError, match=r"^mixed\.csv:2: byte 0xC9 \(at byte 6 .*byte order"):
        read_all(path, encoding="cp1252")


@pytest.mark.parametrize("name", ["utf-8", "cp1252", "latin-1", "UTF-16", "windows-1252"])
def test_python_codec_names_are_encodings(name: str) -> None:
    assert check_encoding(name) == name


@pytest.mark.parametrize("name", ["nope", "base64", "rot13", "zip", ""])
def test_unknown_names_and_codecs_that_are_not_text_encodings_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"encoding .* Python codec name"):
        check_encoding(name)


# ----------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("id,email,name\r\n", ","),
        ("id;email;name\r\n", ";"),
        ("id\temail\tname\n", "\t"),
        ("id|email|name", "|"),
        ("id\n", ","),
        ("", ","),
        ('"last, first";email;id\n', ";"),
        ('"a;b;c",d\n', ","),
        ("a,b;c\n", ","),
        ("a|b\tc\n", "\t"),
        ("a;b;c,d,e,f|g", ","),
    ],
)
def test_the_delimiter_is_the_candidate_the_header_line_holds_most(
    line: str, expected: str
) -> None:
    assert sniff_delimiter(line) == expected


@given(
    names=st.lists(st.text(st.characters(exclude_characters=',;\t|"\r\n'), min_size=1), min_size=2),
    delimiter=st.sampled_from(DELIMITERS),
)
def test_a_header_of_two_columns_or_more_is_sniffed_right(names: list[str], delimiter: str) -> None:
    assert sniff_delimiter(delimiter.join(names) + "\r\n") == delimiter


@pytest.mark.parametrize(
    ("value", "expected"),
    [(";", ";"), ("|", "|"), ("tab", "\t"), ("\\t", "\t"), ("\t", "\t"), ("Semicolon", ";")],
)
def test_a_delimiter_is_one_character_or_its_name(value: str, expected: str) -> None:
    assert check_delimiter(value) == expected


@pytest.mark.parametrize("value", ["", ";;", '"', "\n", "\r", "a", "7", "semi"])
def test_quotes_line_breaks_letters_and_words_are_not_delimiters(value: str) -> None:
    with pytest.raises(ValueError, match="is not a delimiter"):
        check_delimiter(value)


def test_a_header_read_with_the_wrong_delimiter_gets_a_hint() -> None:
    wanted = ("id", "email", "first_name")
    assert delimiter_hint(["id;email;first_name;tags"], wanted) == (
        "; the header holds 3 of them separated by ';': if the file is separated by ';', "
        "import it with --delimiter ';'"
    )
    assert "separated by tab" in delimiter_hint(["id\temail", "first_name"], wanted)
    assert delimiter_hint(["id", "email"], wanted) == ""
    assert delimiter_hint(["id;nickname"], wanted) == ""


def test_a_semicolon_file_read_as_comma_separated_is_one_column(tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_text(csv_text([HEADER, ["C1", "a@b.example", "Ann, Jr"]], ";"), encoding="utf-8")
    assert read_all(path)[1] == [(2, ["C1", "a@b.example", "Ann, Jr"])]
    assert read_all(path, delimiter=",")[0] == ["id;email;first_name"]


# ----------------------------------------------------------------------------- the CSV rules


def test_a_cell_of_200000_characters_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text(csv_text([HEADER, ["C1", "x" * 200_000, "Ann"], ["C2", "b", "c"]]))
    assert [(line, [len(c) for c in row]) for line, row in read_all(path)[1]] == [
        (2, [2, 200_000, 3]),
        (3, [2, 1, 1]),
    ]


def test_a_cell_over_the_limit_is_a_row_error_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text(csv_text([HEADER, ["C1", "x" * (FIELD_LIMIT + 1), "Ann"], ["C2", "b", "c"]]))
    _, rows, errors = read_all(path)
    assert errors == [
        RowError(
            "huge.csv",
            2,
            "",
            f"a cell is longer than {FIELD_LIMIT:,} characters (the most one cell may hold; "
            "is a quote left open?)",
        )
    ]
    assert rows == [(3, ["C2", "b", "c"])]


def test_a_quote_left_open_to_the_end_of_the_file_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "open.csv"
    path.write_text('id,note\nC1,fine\nC2,"never\nclosed\nC3,x\n', encoding="utf-8")
    _, rows, errors = read_all(path)
    assert rows == [(2, ["C1", "fine"])]
    assert errors == [
        RowError(
            "open.csv",
            3,
            "",
            "a quote opened in this row is never closed (the file ends inside it)",
        )
    ]


def test_text_after_a_closing_quote_is_a_row_error_and_the_next_row_is_read(
    tmp_path: Path,
) -> None:
    path = tmp_path / "after.csv"
    path.write_text('id,note\n"C1"x,a\nC2,"b"\n', encoding="utf-8")
    _, rows, errors = read_all(path)
    assert [(e.line, e.column) for e in errors] == [(2, "")]
    assert "after its closing quote" in errors[0].reason
    assert rows == [(3, ["C2", "b"])]


def test_a_nul_byte_is_read_into_its_cell_for_the_cell_rules_to_judge(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_bytes(b"id,name\nC1,A\x00n\n")
    assert read_all(path)[1] == [(2, ["C1", "A\x00n"])]


def test_an_open_quote_in_the_header_is_a_header_error(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text('id,"name\n', encoding="utf-8")
    with pytest.raises(HeaderError, match=r"^header\.csv:1: a quote opened in this row"):
        read_all(path)


@FILES
@given(
    data=st.binary(max_size=400),
    encoding=st.sampled_from([None, "cp1252", "utf-16", "latin-1"]),
    delimiter=st.sampled_from([None, ";"]),
)
@example(data=b'id,x\n"a\x00', encoding=None, delimiter=None)
@example(data=b"\xff\xfe\x00", encoding=None, delimiter=None)
@example(data=b"\xef\xbb\xbf", encoding=None, delimiter=None)
@example(data=b"id\r\n\r\n\r", encoding=None, delimiter=None)
def test_any_bytes_give_rows_or_the_documented_errors(
    tmp_path: Path, data: bytes, encoding: str | None, delimiter: str | None
) -> None:
    path = tmp_path / "any.csv"
    path.write_bytes(data)
    try:
        _, rows, errors = read_all(path, encoding=encoding, delimiter=delimiter)
    except HeaderError as exc:
        assert re.match(r"any\.csv(:\d+)?: ", str(exc)), exc
        return
    last = max(breaks(data.decode("latin-1")), 0) + 1
    for line, cells in rows:
        assert 2 <= line <= last and any(c.strip() for c in cells)
    assert all(e.file == "any.csv" and 2 <= e.line <= last for e in errors)


def test_progress_is_told_every_byte_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text(csv_text([HEADER] + [[f"C{i}", "é" * 50, "x"] for i in range(2000)]))
    told: list[int] = []
    _, rows, _ = read_rows(path, told.append, on_error=lambda error: None)
    assert len(list(rows)) == 2000
    assert sum(told) == path.stat().st_size and len(told) > 1
