"""The year of a client, end to end: dry-runs of the real executable over the shipped calendar
and templates show each occasion at the right local hour, named in the client's language."""

from __future__ import annotations

import email
import json
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from tests.support.executable import followup

pytestmark = pytest.mark.e2e

REPS = "id,name,email,signature\nr1,Joe Girard,joe@example.com,Joe\n"
CLIENTS = (
    "id,email,first_name,last_name,locale,timezone,country,rep,birthday\n"
    "us1,ann@example.com,Ann,Lee,en-US,America/New_York,US,r1,2000-02-29\n"
    "us2,bob@example.com,Bob,Ray,en-US,America/New_York,US,r1,1985-02-15\n"
    "fr1,chloe@example.fr,Chloé,Roy,fr,Europe/Paris,FR,r1,\n"
)
PURCHASES = "id,client,purchased_at,product,amount,currency,status\n"


def make_shop(folder: Path) -> Path:
    """A project folder with the three clients above imported."""
    followup(folder, "init")
    followup(folder, "db", "upgrade")
    for kind, content in (("reps", REPS), ("clients", CLIENTS), ("purchases", PURCHASES)):
        (folder / f"{kind}.csv").write_text(content, encoding="utf-8")
        followup(folder, "import", kind, f"{kind}.csv", "--strict")
    return folder


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shop(tmp_path_factory.mktemp("year"))


def dry_run(folder: Path, day: str) -> dict[str, Any]:
    out = folder / "dry-run" / day
    result = followup(folder, "run", "--dry-run", "--on", day, "--json", "--out", str(out))
    manifest: dict[str, Any] = json.loads(result.stdout)
    assert manifest == json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return manifest


def by(entries: list[dict[str, Any]], client: str, campaign: str) -> dict[str, Any]:
    (entry,) = [e for e in entries if e["client"] == client and e["campaign"] == campaign]
    return entry


def test_a_us_client_is_greeted_on_washingtons_birthday_at_10_before_the_dst_change(
    shop: Path,
) -> None:
    manifest = dry_run(shop, "2027-02-15")
    greeting = by(manifest["messages"], "us1", "washingtons_birthday")
    assert greeting["send_at_local"] == "2027-02-15T10:00:00-05:00"
    assert greeting["occasion"] == "Washington's Birthday"
    assert greeting["subject"].startswith("Washington's Birthday")
    # The French client has no such holiday.
    assert not [e for e in manifest["messages"] if e["client"] == "fr1"]


def test_st_patricks_day_goes_out_at_10_local_after_the_dst_change(shop: Path) -> None:
    manifest = dry_run(shop, "2027-03-17")
    greeting = by(manifest["messages"], "us1", "st_patricks_day")
    assert greeting["send_at_local"] == "2027-03-17T10:00:00-04:00"
    assert greeting["send_at_utc"] == "2027-03-17T14:00:00+00:00"


def test_new_year_in_new_york_and_in_paris_in_each_language(shop: Path) -> None:
    manifest = dry_run(shop, "2027-01-01")
    us = by(manifest["messages"], "us1", "new_year")
    assert us["send_at_local"] == "2027-01-01T10:00:00-05:00"
    france = by(manifest["messages"], "fr1", "new_year")
    assert france["send_at_local"] == "2027-01-01T10:00:00+01:00"
    assert france["occasion"] == "Jour de l'an"
    assert france["locale"] == "fr"
    message = email.message_from_bytes(
        (shop / "dry-run" / "2027-01-01" / france["file"]).read_bytes(), policy=default
    )
    text = message.get_body(("plain",))
    assert text is not None
    assert "En ce jour de l'an 2027" in text.get_content()


@pytest.mark.parametrize("day", ["2027-02-28", "2028-02-29"])
def test_born_on_29_february_is_greeted_on_28_february_in_common_years(
    shop: Path, day: str
) -> None:
    manifest = dry_run(shop, day)
    birthday = by(manifest["messages"], "us1", "birthday")
    assert birthday["occurrence"] == day
    assert birthday["send_at_local"] == f"{day}T10:00:00-05:00"


def test_a_birthday_on_a_holiday_sends_one_message_and_says_why_not_the_other(
    shop: Path,
) -> None:
    manifest = dry_run(shop, "2027-02-15")
    bob = [e for e in manifest["messages"] if e["client"] == "us2"]
    assert [e["campaign"] for e in bob] == ["birthday"]
    holiday = by(manifest["skipped"], "us2", "washingtons_birthday")
    assert holiday["reason"] == "capped: birthday on 2027-02-15"
    # The day before, Valentine's Day gave way to the higher-priority occasion after it.
    valentine = by(dry_run(shop, "2027-02-14")["skipped"], "us1", "valentines_day")
    assert valentine["reason"] == "capped: washingtons_birthday on 2027-02-15"


def test_history_shows_why_a_colliding_occasion_did_not_go_out(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = make_shop(tmp_path_factory.mktemp("history"))
    followup(folder, "plan", "--until", "2027-02-16")
    found = json.loads(followup(folder, "history", "us2", "--json").stdout)
    by_campaign = {t["campaign"]: t for t in found["touches"] if t["occurrence"] == "2027-02-15"}
    assert by_campaign["birthday"]["status"] == "planned"
    holiday = by_campaign["washingtons_birthday"]
    assert (holiday["status"], holiday["reason"]) == ("skipped", "capped: birthday on 2027-02-15")
    assert holiday["events"][0]["detail"] == "capped: birthday on 2027-02-15"
    text = followup(folder, "history", "us2").stdout
    assert "capped: birthday on 2027-02-15" in text
