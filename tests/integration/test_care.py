"""Client care against a real database (SQLite, and PostgreSQL when FOLLOWUP_TEST_POSTGRES_URL
is set): erasing a client (tests/unit/test_care.py has the pure rules)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC)


def test_erasing_by_an_address_two_clients_share_is_refused(
    tmp_path: Path, runtime: object
) -> None:
    from followup.errors import FollowupError
    from followup.importing import importer
    from followup.runtime import Runtime
    from followup.storage import people

    assert isinstance(runtime, Runtime)
    (tmp_path / "clients.csv").write_text(
        "id,email,first_name,last_name,locale,timezone,country\n"
        "a1,same@example.com,Ann,Lee,en-US,America/New_York,US\n"
        "a2,same@example.com,Al,Lee,en-US,America/New_York,US\n",
        encoding="utf-8",
    )
    importer.import_csv(
        runtime.engine, importer.Kind.CLIENTS, tmp_path / "clients.csv", now=NOW, strict=True
    )
    with pytest.raises(FollowupError, match=r"2 clients have the address .* \(a1, a2\): give"):
        people.erase_client(runtime.engine, "same@example.com", NOW)
    erased = people.erase_client(runtime.engine, "a1", NOW)
    assert erased.touches_kept == 0
