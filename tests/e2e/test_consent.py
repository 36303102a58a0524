"""Marketing consent through the real `followup` executable: imported with clients.csv, set by
`followup consent`, shown by `followup history`, and applied by the dry-run: a "no" client's
birthday greeting is skipped "no marketing consent" while its thank-you goes out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.executable import followup

pytestmark = pytest.mark.e2e

# The clock of tests.support.executable: Monday 23 November 2026, 18:00 UTC.
CLIENTS = (
    "id,email,first_name,last_name,locale,timezone,country,birthday,marketing_consent\n"
    "k1,kim@example.com,Kim,Ode,en-US,America/New_York,US,1980-11-23,no\n"
    "k2,lou@example.com,Lou,Ray,en-US,America/New_York,US,1981-11-23,yes\n"
)
PURCHASES = (
    "id,client,purchased_at,product,amount,currency\n"
    "p1,k1,2026-11-21T10:00:00,Roadster,32500.00,USD\n"
    "p2,k2,2026-11-21T11:00:00,Roadster,32500.00,USD\n"
)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    followup(tmp_path, "init")
    for kind, content in (("clients", CLIENTS), ("purchases", PURCHASES)):
        (tmp_path / f"{kind}.csv").write_text(content, encoding="utf-8")
        followup(tmp_path, "import", kind, f"{kind}.csv")
    return tmp_path


def outcomes(shop: Path, client: str) -> dict[str, str]:
    """campaign -> "message" or the skip's reason, in the dry-run of 23 November."""
    manifest = json.loads(followup(shop, "run", "--dry-run", "--on", "2026-11-23", "--json").stdout)
    found = {e["campaign"]: "message" for e in manifest["messages"] if e["client"] == client}
    found |= {e["campaign"]: e["reason"] for e in manifest["skipped"] if e["client"] == client}
    return found


def test_consent_imported_set_by_command_shown_by_history_and_applied_by_the_dry_run(
    shop: Path,
) -> None:
    assert outcomes(shop, "k1") == {"thank_you": "message", "birthday": "no marketing consent"}
    assert outcomes(shop, "k2") == {"thank_you": "message", "birthday": "message"}
    history = json.loads(followup(shop, "history", "k1", "--json").stdout)
    assert (history["consent"], history["consent_source"], history["consent_at"]) == (
        "no",
        "import:clients.csv",
        "2026-11-23T18:00:00+00:00",
    )

    result = followup(
        shop, "-v", "consent", "lou@example.com", "NO", "--source", "Lou Ray on the phone",
        "--at", "2026-11-22",
    )  # fmt: skip

    assert result.stdout.strip() == "client k2: marketing consent yes -> no"
    assert "client.consent" in result.stderr and "consent=no" in result.stderr
    for private in ("lou@example.com", "Lou Ray", "k2"):
        assert private not in result.stderr, "no client data in the logs"
    assert outcomes(shop, "k2") == {"thank_you": "message", "birthday": "no marketing consent"}
    text = followup(shop, "history", "k2").stdout
    assert "marketing consent: no from Lou Ray on the phone on 2026-11-22T00:00:00+00:00" in text
    assert "consent: yes -> no (source: Lou Ray on the phone; at 2026-11-22T00:00:00+00:00)" in text

    refused = followup(shop, "consent", "k2", "maybe", check=False)
    assert refused.returncode == 2
    assert "'maybe' is not yes, no or unknown" in refused.stderr
    future = followup(shop, "consent", "k2", "yes", "--at", "2027-01-01", check=False)
    assert future.returncode == 1
    assert "must be aware and not in the future" in future.stderr
    nobody = followup(shop, "consent", "nobody", "yes", check=False)
    assert (nobody.returncode, nobody.stderr.strip()) == (
        1,
        "error: no client with id or e-mail 'nobody'",
    )
