"""The docs cannot drift: the README's commands, the CLI reference and CI agree."""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from followup.config import load_settings
from followup.runtime import Runtime
from followup.service.metrics import Metrics
from followup.storage.schema import upgrade
from tests.support.executable import EXECUTABLE, followup
from tests.support.settings import ROOT, make_settings


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block is not None, "the README starts with a sh block"
    assert text.index(block.group(0)) < 40, "the commands come first"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_starts_with_exactly_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("python3 ")
    assert commands[1].startswith("python3 ")
    assert "followup demo" in commands[0] and "followup run" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_word_for_word() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert script[-1] == readme_commands()[1]


def test_the_readme_demo_shows_a_message_and_where_the_rest_are(tmp_path: Path) -> None:
    """The first README command, after its install step, in a fresh folder."""
    followup(tmp_path, "init")
    followup(tmp_path, "demo")
    result = followup(tmp_path, "run")
    assert "nothing left this machine" in result.stdout
    assert str(tmp_path / "var" / "outbox") in result.stdout
    assert re.search(r"^Subject: (Thank you|Merci), .+", result.stdout, re.M)
    assert re.search(r"^From: .+ <.+@example\.com>$", result.stdout, re.M)
    assert list((tmp_path / "var" / "outbox" / "new").iterdir())


def test_every_command_is_in_the_readme() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = subprocess.run(
        [str(EXECUTABLE), "--help"], capture_output=True, text=True, check=True
    ).stdout
    commands = re.findall(r"^[│ ]+([a-z][a-z-]+)\s{2,}", listed, re.M)
    assert {"init", "demo", "import", "plan", "send", "run", "status", "db"} <= set(commands)
    for command in commands:
        assert f"`followup {command}" in text, command


def test_the_shipped_config_is_valid_and_documents_every_section() -> None:
    settings = load_settings(ROOT / "config.toml", {})
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    for section in ("database", "delivery", "smtp", "sender", "dkim", "http", "schedule", "log"):
        assert f"[{section}]" in text
        for key in type(getattr(settings, section)).model_fields:
            assert re.search(rf"^{key} = ", text, re.M), f"[{section}] {key} is not in config.toml"
    assert settings.delivery.mode == "capture", "the shipped config must be demo-safe"


def test_operations_doc_explains_every_metric(tmp_path: Path) -> None:
    """Every metric family /metrics exports, the ledger's gauges included, has its row."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'followup.db'}")
    rt = Runtime.open(settings, create=True)
    try:
        upgrade(rt.engine)
        exposed = Metrics(rt.engine, lambda: datetime.now(UTC)).exposition().decode()
    finally:
        rt.engine.dispose()
    names = re.findall(r"^# TYPE (\S+) ", exposed, re.M)
    assert len(names) >= 10 and "followup_touches" in names
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for name in names:
        assert f"| `{name}` |" in text, f"docs/operations.md does not explain {name}"


def test_operations_doc_lists_every_log_event() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "followup").rglob("*.py"))
    events = set(re.findall(r'(?:log_event|_event)\(\s*"([a-z_]+\.[a-z_]+)"', source))
    events |= set(re.findall(r'"event": "([a-z_]+\.[a-z_]+)"', source))
    # Built from a status or a job name.
    events |= {f"touch.{status}" for status in ("sent", "retry", "failed", "uncertain")}
    events |= {f"{job}.error" for job in ("plan", "dispatch", "housekeeping")}
    assert {"daemon.started", "touch.skipped", "unsubscribe.done"} <= events
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for event in sorted(events):
        assert f"| `{event}` |" in text, f"docs/operations.md does not list the event {event}"


def test_the_readme_and_the_operations_doc_explain_followup_now() -> None:
    """The moved clock is documented where users look, not only in docs/architecture.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for text in (readme, operations):
        assert "FOLLOWUP_NOW" in text
        assert "FOLLOWUP_NOW=2027-01-01T06:00:00Z followup run --dry-run" in text
    assert "## Moving the clock: FOLLOWUP_NOW" in operations
