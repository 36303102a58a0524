"""End to end: `followup import` of files as shops' programs save them (docs/clients.md, "Files
as they come"), through the installed executable: a Windows-1252 file is refused whole with
the line and the option to use, then imports with it; a semicolon file imports as it is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.executable import followup
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e

HEADER = "id,email,first_name,last_name,locale,timezone,country"


def clients(folder: Path) -> dict[str, str]:
    with sqlite3.connect(folder / "var" / "followup.db") as conn:
        return dict(conn.execute("select external_id, first_name from clients"))


def test_windows_1252_and_semicolon_files(tmp_path: Path) -> None:
    followup(tmp_path, "init")
    followup(tmp_path, "db", "upgrade")
    lines = [HEADER] + [f"C{i},c{i}@example.com,Ann,Lee,fr,Europe/Paris,FR" for i in range(300)]
    lines.append("C999,c999@example.com,Élodie,Lee,fr,Europe/Paris,FR")
    (tmp_path / "excel.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))

    refused = followup(tmp_path, "import", "clients", "excel.csv", check=False)

    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    # Word for word the error docs/clients.md shows.
    documented = next(
        line.strip().replace("clients.csv", "excel.csv")
        for line in (ROOT / "docs" / "clients.md").read_text(encoding="utf-8").splitlines()
        if "is not UTF-8" in line and line.strip().startswith("error:")
    )
    assert documented.startswith("error: excel.csv:302: byte 0xC9 ")
    assert documented in refused.stderr
    assert clients(tmp_path) == {}

    taken = followup(tmp_path, "import", "clients", "excel.csv", "--encoding", "cp1252")
    assert "301 imported" in taken.stdout
    assert clients(tmp_path)["C999"] == "Élodie"

    semicolons = "\r\n".join(line.replace(",", ";") for line in lines[:3]) + "\r\n"
    (tmp_path / "europe.csv").write_text(semicolons.replace("Ann", "Zoë"), encoding="utf-8")
    result = followup(tmp_path, "import", "clients", "europe.csv")
    assert "2 imported (0 new, 2 updated, 0 unchanged), 0 rejected" in result.stdout
    assert clients(tmp_path)["C1"] == "Zoë"

    usage = followup(tmp_path, "import", "clients", "europe.csv", "--encoding", "nope", check=False)
    assert usage.returncode == 2 and "unknown encoding 'nope'" in usage.stderr
    assert "Traceback" not in usage.stderr
