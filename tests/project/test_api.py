"""The public Python API: docs/api.md's example runs as written, on the demo shop, and the page
names every public name (and no other)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

import followup
from followup.importing import demo
from tests.support.settings import ROOT

DOC = ROOT / "docs" / "api.md"


def example() -> str:
    block = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block is not None, "docs/api.md starts with an example"
    return block.group(1)


def test_the_example_of_the_api_page_runs_on_the_demo_shop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = demo.write_csvs(tmp_path, datetime.now(UTC).date(), clients=40)
    for kind, path in paths.items():
        (tmp_path / f"{kind}.csv").write_bytes(path.read_bytes())
    (tmp_path / "config.toml").write_bytes((ROOT / "config.toml").read_bytes())
    for name, value in {
        "FOLLOWUP_TEMPLATES_DIR": str(ROOT / "templates"),
        "FOLLOWUP_CALENDARS_DIR": str(ROOT / "calendars"),
        "FOLLOWUP_DELIVERY_CAPTURE_DIR": str(tmp_path / "outbox"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(example(), str(DOC), "exec"), namespace)
    rt = namespace["rt"]
    assert isinstance(rt, followup.Runtime)
    try:
        report = namespace["report"]
        assert isinstance(report, followup.DispatchReport)
        assert isinstance(namespace["day"], followup.DryRun)
        assert (tmp_path / "var" / "followup.db").exists()
        status = followup.status(rt)
        assert sum(status.counts.values()) > 0, "the demo shop was planned"
        assert status.counts.get("sent", 0) == report.sent
        lines = capsys.readouterr().out.splitlines()
        assert lines[-1] == f"{report.sent} {report.failed}"
    finally:
        rt.engine.dispose()


def test_the_api_page_names_every_public_name_and_no_other() -> None:
    text = DOC.read_text(encoding="utf-8")
    first_cells = re.findall(r"^\| (.+?) \| ", text, re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`(\w+)", cell)}
    errors = text[text.index("## Errors") :]
    documented |= set(re.findall(r"`(\w+)`", errors))
    documented -= {"name"}  # the tables' heading
    assert documented == set(followup.__all__)
