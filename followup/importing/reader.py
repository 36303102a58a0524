"""Reading an import file: its header and its rows, streamed, each with the line it starts on.

Files come as shops' programs save them (docs/clients.md, "Files as they come"): with or
without a byte order mark, in UTF-8 or the encoding given, separated by the delimiter given or
the one the header line uses most. A row the CSV rules cannot read is a row error; a byte the
encoding cannot read, anywhere in the file, stops the whole import (EncodingError), because
every later cell would be read wrong.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TextIO

#: The delimiters a header line is sniffed for, in the order that breaks a tie.
DELIMITERS = (",", ";", "\t", "|")
#: The longest cell read, in characters. Longer than any column allows (the cell rules then
#: reject it by name), yet bounded: a quote left open at the top of a huge file does not read
#: the rest of the file into memory.
FIELD_LIMIT = 1 << 24
_NAMED = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|"}
# A byte order mark names its encoding, whatever the file is said to be in. UTF-32's little
# endian mark starts with UTF-16's, so it is tried first.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True, slots=True)
class RowError:
    file: str
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.column}: {self.reason}" if self.column else f"{where}: {self.reason}"
        )


class HeaderError(ValueError):
    """The file cannot be imported at all (no header, missing required columns, a byte not
    in its encoding): nothing of it is written."""


class EncodingError(HeaderError):
    """A byte of the file, at any line, is not valid in the file's encoding."""


def check_encoding(name: str) -> str:
    """`name` if Python has a text codec by that name (utf-8, cp1252, latin-1, ...)."""
    try:
        "".encode(name)
        b"".decode(name)
    except LookupError:
        raise ValueError(
            f"unknown encoding {name!r} (give a Python codec name: utf-8, cp1252, latin-1, "
            "utf-16, ...)"
        ) from None
    return name


def check_delimiter(value: str) -> str:
    """One character (or comma, semicolon, tab, pipe, \\t), neither a quote nor a line break
    nor a letter or digit; returned as the character."""
    delimiter = _NAMED.get(value.lower(), value)
    if len(delimiter) != 1 or delimiter in '"\r\n' or delimiter.isalnum():
        raise ValueError(
            f"{value!r} is not a delimiter (one character such as ';' or '|', or comma, "
            "semicolon, tab, pipe)"
        )
    return delimiter


def sniff_delimiter(line: str) -> str:
    """The candidate of DELIMITERS found most often outside quotes in the header `line`; a
    tie goes to the earlier candidate, and a line holding none is comma-separated."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))
    return best if counts[best] else ","


def delimiter_hint(header: Sequence[str], wanted: Sequence[str]) -> str:
    """When `wanted` columns are missing from `header`: a hint naming the delimiter that
    would find more of them (a semicolon file read as comma-separated), else ""."""
    present = sum(column in header for column in wanted)
    best, found = "", present
    for candidate in DELIMITERS:
        cells = {part.strip() for cell in header for part in cell.split(candidate)}
        count = sum(column in cells for column in wanted)
        if count > found:
            best, found = candidate, count
    if not best or found < 2:
        # One column name is no pattern: "id;nickname" may be just a strange column.
        return ""
    shown = "tab" if best == "\t" else f"'{best}'"
    return (
        f"; the header holds {found} of them separated by {shown}: "
        f"if the file is separated by {shown}, import it with --delimiter {shown}"
    )


def read_rows(
    path: Path,
    progress: Callable[[int], None] | None,
    *,
    on_error: Callable[[RowError], None],
    encoding: str | None = None,
    delimiter: str | None = None,
) -> tuple[list[str], Generator[tuple[int, list[str]], None, None], TextIO]:
    """The file's header and a generator of its non-blank rows, each with the line it starts
    on. A row the CSV rules cannot read goes to `on_error` (and is not yielded); a byte that
    is not in the encoding raises EncodingError, from here or from the generator. The caller
    closes the handle if it never starts the generator."""
    csv.field_size_limit(FIELD_LIMIT)
    codec, marked = _codec(path, encoding)
    handle = path.open(encoding=codec, newline="")
    try:
        first = handle.readline()
    except UnicodeError as exc:
        handle.close()
        raise _encoding_error(path, codec, marked, exc) from None
    except BaseException:
        handle.close()
        raise
    if not first:
        handle.close()
        raise HeaderError(f"{path.name}:1: the file is empty (a header row is required)")
    lines: Iterable[str] = chain([first], handle if progress is None else _told(handle, progress))
    reader = csv.reader(lines, delimiter=delimiter or sniff_delimiter(first), strict=True)
    try:
        header = next(reader)
    except (UnicodeError, csv.Error) as exc:
        handle.close()
        if isinstance(exc, UnicodeError):
            raise _encoding_error(path, codec, marked, exc) from None
        raise HeaderError(f"{path.name}:1: {_csv_reason(str(exc))}") from None

    def body() -> Generator[tuple[int, list[str]], None, None]:
        previous = reader.line_num
        try:
            while True:
                try:
                    for cells in reader:
                        start = previous + 1
                        previous = reader.line_num
                        if not "".join(cells).strip():
                            continue  # blank: no cell holds anything but spaces
                        yield start, cells
                    return
                except csv.Error as exc:
                    # The reader goes on at the next line.
                    on_error(RowError(path.name, previous + 1, "", _csv_reason(str(exc))))
                    previous = reader.line_num
        except UnicodeError as exc:
            raise _encoding_error(path, codec, marked, exc) from None
        finally:
            handle.close()

    return [h.strip() for h in header], body(), handle


def _codec(path: Path, encoding: str | None) -> tuple[str, bool]:
    """The codec a file is read with, and whether its byte order mark chose it (the mark's
    encoding wins over the one given: a file saved again as UTF-8 with a mark is not read as
    Windows-1252 in silence)."""
    with path.open("rb") as raw:
        start = raw.read(4)
    for bom, codec in _BOMS:
        if start.startswith(bom):
            return codec, True
    return encoding or "utf-8", False


def _told(handle: TextIO, progress: Callable[[int], None]) -> Iterator[str]:
    """The handle's lines, telling `progress` the bytes read (as the buffer reads them, looked
    at every few hundred lines: asking for each line would halve the rows read a second)."""
    told = 0
    for number, line in enumerate(handle):
        if not number & 255:
            at = handle.buffer.tell()
            progress(at - told)
            told = at
        yield line
    progress(handle.buffer.tell() - told)


def _csv_reason(message: str) -> str:
    """The csv module's complaint about a row, in a user's words."""
    if message.startswith("field larger than field limit"):
        return (
            f"a cell is longer than {FIELD_LIMIT:,} characters "
            "(the most one cell may hold; is a quote left open?)"
        )
    if message == "unexpected end of data":
        return "a quote opened in this row is never closed (the file ends inside it)"
    if "expected after '\"'" in message:
        return (
            "a quoted cell goes on after its closing quote "
            '(a quote inside a quoted cell is written twice: "")'
        )
    return f"cannot be read as CSV ({message})"


def _encoding_error(path: Path, codec: str, marked: bool, exc: UnicodeError) -> EncodingError:
    """The error for a file that `codec` cannot read: the line and byte of the first bad
    byte (found by reading the file again: the text reader decodes ahead of the rows), and
    the --encoding to try."""
    name = "UTF-8" if codecs.lookup(codec).name in ("utf-8", "utf-8-sig") else codec
    if marked:
        advice = (
            f"the file starts with a {name} byte order mark, which makes it {name} whatever "
            f"--encoding says: save it again in one encoding"
        )
    elif name == "UTF-8":
        advice = (
            "if the file was saved by Excel or another Windows program, "
            "import it with --encoding cp1252"
        )
    else:
        advice = "import it with --encoding and the file's own encoding (utf-8, cp1252, ...)"
    found = _first_bad_byte(path, codec)
    if found is None:
        reason = exc.reason if isinstance(exc, UnicodeDecodeError) else str(exc)
        return EncodingError(f"{path.name}: is not {name} ({reason}); {advice}")
    line, offset, bad = found
    shown = " ".join(f"0x{b:02X}" for b in bad)
    return EncodingError(
        f"{path.name}:{line}: byte {shown} (at byte {offset:,} of the file) is not {name}; {advice}"
    )


def _first_bad_byte(path: Path, codec: str) -> tuple[int, int, bytes] | None:
    """(line, offset, bytes) of the first bytes `codec` cannot decode, or None."""
    line, offset, after_cr = 1, 0, False
    if codec == "utf-8-sig":
        # Its decoder reports positions past the mark it drops: read past the mark instead.
        codec, offset = "utf-8", len(codecs.BOM_UTF8)
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    with path.open("rb") as raw:
        raw.seek(offset)
        while True:
            chunk = raw.read(1 << 16)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                # Buffered decoders raise over (what they held back + chunk).
                held = pending if len(exc.object) == pending + len(chunk) else 0
                prefix = chunk[: max(exc.start - held, 0)]
                try:
                    text = decoder.decode(prefix)
                except UnicodeError:
                    text = ""
                line += _breaks(text, after_cr)
                return line, offset - held + exc.start, bytes(exc.object[exc.start : exc.end])
            except UnicodeError:
                return None  # not a byte's fault (UTF-16 without a byte order mark)
            line += _breaks(text, after_cr)
            after_cr = text.endswith("\r") or (after_cr and not text)
            offset += len(chunk)
            if not chunk:
                return None


def _breaks(text: str, after_cr: bool) -> int:
    """How many line breaks (\\n, \\r, \\r\\n) `text` holds, a \\r\\n split between two
    pieces counted once."""
    count = text.count("\n") + text.count("\r") - text.count("\r\n")
    return count - 1 if after_cr and text.startswith("\n") else count
