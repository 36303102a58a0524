"""A clients file with a country and no zone or language, through the real `followup`
executable: the import says what it inferred and what it guessed, `followup history` and the
dry-run manifest say which values were inferred, and the history shows what the tier counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.executable import NOW, followup

pytestmark = pytest.mark.e2e


def test_history_and_the_dry_run_say_what_was_inferred_from_the_country(tmp_path: Path) -> None:
    shop = tmp_path
    followup(shop, "init")
    followup(shop, "db", "upgrade")
    guess = {"FOLLOWUP_DEFAULTS_TIMEZONE": "America/Sao_Paulo"}
    (shop / "clients.csv").write_text(
        "id,email,first_name,last_name,country\n"
        "c1,ana@example.com,Ana,Souza,BR\n"
        "c2,zoe@example.com,Zoë,Martin,FR\n",
        encoding="utf-8",
    )
    day = NOW[:10]
    (shop / "purchases.csv").write_text(
        "id,client,purchased_at,product,amount,currency\n"
        f"p1,c1,{day}T11:00:00,Car,89000.00,BRL\n"
        f"p2,c2,{day}T11:00:00,Roof box,425.00,EUR\n",
        encoding="utf-8",
    )

    imported = followup(shop, "import", "clients", "clients.csv", env=guess)
    assert "2 imported (2 new, 0 updated, 0 unchanged), 0 rejected" in imported.stdout
    assert "timezone inferred for 2, locale inferred for 2" in imported.stdout
    assert "warning: clients.csv:2: timezone: 1 row(s) of BR took [defaults] timezone" in (
        imported.stderr
    )
    followup(shop, "import", "purchases", "purchases.csv")

    history = followup(shop, "history", "c1").stdout
    assert "timezone America/Sao_Paulo (inferred from the country)" in history
    assert "locale pt-BR (inferred from the country)" in history
    # 89,000 BRL is not 89,000 EUR: not counted, and said so.
    assert "paid BRL 89,000.00; counted toward vip: EUR 0.00" in history
    assert "not counted (no [tiers.rates] or [tiers.vip_min_totals]): BRL" in history
    as_json = json.loads(followup(shop, "history", "c2", "--json").stdout)
    assert as_json["inferred"] == ["timezone", "locale"]
    assert (as_json["timezone"], as_json["locale"]) == ("Europe/Paris", "fr-FR")

    # Two days later, the thank-yous: each manifest entry says what was inferred.
    out = shop / "dry-run"
    thank_you_day = f"{day[:8]}{int(day[8:]) + 2:02d}"
    result = followup(shop, "run", "--dry-run", "--on", thank_you_day, "--json", "--out", str(out))
    manifest = json.loads(result.stdout)
    sent = {e["client"]: e for e in manifest["messages"] if e["campaign"] == "thank_you"}
    assert set(sent) == {"c1", "c2"}
    assert all(e["inferred"] == ["timezone", "locale"] for e in sent.values())
