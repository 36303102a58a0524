"""The repository the tests run from, and settings over its templates and calendars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from followup.config import Settings, load_settings

#: The repository: tests/support/settings.py is two folders down.
ROOT = Path(__file__).resolve().parents[2]


def make_settings(tmp_path: Path, database_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings over the repository's templates, with everything written under tmp_path."""
    env = {
        "FOLLOWUP_DATABASE_URL": database_url,
        "FOLLOWUP_TEMPLATES_DIR": str(ROOT / "templates"),
        "FOLLOWUP_CALENDARS_DIR": str(ROOT / "calendars"),
        "FOLLOWUP_DELIVERY_CAPTURE_DIR": str(tmp_path / "outbox"),
        "FOLLOWUP_SECRET_KEY": "test-secret-key",
    }
    for section, values in sections.items():
        for key, value in values.items():
            env[f"FOLLOWUP_{section.upper()}_{key.upper()}"] = str(value)
    return load_settings(ROOT / "config.toml", env)
