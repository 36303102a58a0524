"""Reading an import file: its header and its rows, streamed, each with the line it starts on."""

from __future__ import annotations

import csv
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO


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
    """The file cannot be read at all (no header, missing required columns)."""


def read_rows(
    path: Path, progress: Callable[[int], None] | None
) -> tuple[list[str], Generator[tuple[int, list[str]], None, None], TextIO]:
    handle = path.open(encoding="utf-8-sig", newline="")

    def lines() -> Iterator[str]:
        for line in handle:
            if progress is not None:
                progress(len(line.encode("utf-8")))
            yield line

    reader = csv.reader(lines())
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise HeaderError(f"{path.name}:1: the file is empty (a header row is required)") from None
    except UnicodeDecodeError as exc:
        handle.close()
        raise HeaderError(f"{path.name}: not UTF-8 ({exc.reason})") from None

    def body() -> Generator[tuple[int, list[str]], None, None]:
        previous = reader.line_num
        try:
            for cells in reader:
                start = previous + 1
                previous = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                yield start, cells
        finally:
            handle.close()

    return [h.strip() for h in header], body(), handle
