"""Marketing consent against a real database (SQLite, and PostgreSQL when
FOLLOWUP_TEST_POSTGRES_URL is set): imported with clients.csv or kept as stored, planned and
dry-run ("no marketing consent"), checked again at send time, set by an unsubscribe and by the
operator (tests/unit/test_consent.py has the pure rules)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from followup import api
from followup.config import Settings
from followup.domain.consent import NO_CONSENT
from followup.errors import FollowupError
from followup.importing.importer import Kind, RowError, import_csv
from followup.planning.plan import clients_to_replan
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.dialects import ledger_for
from tests.support.settings import make_settings

OpenRuntime = Callable[[Settings], Runtime]

#: 1 January 2027, 06:00 UTC: 01:00 in New York, where the day's messages go out at 10:00.
NOW = datetime(2027, 1, 1, 6, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
HEADER = "id,email,first_name,last_name,locale,timezone,country,birthday"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(rt: Runtime, path: Path, kind: Kind = Kind.CLIENTS, now: datetime = NOW) -> list[Any]:
    report = import_csv(rt.engine, kind, path, now=now)
    return report.errors


def consents(rt: Runtime) -> dict[str, tuple[str, str | None, datetime | None]]:
    c = tables.clients
    query = select(c.c.external_id, c.c.marketing_consent, c.c.consent_source, c.c.consent_at)
    with rt.engine.connect() as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(query)}  # type: ignore[misc]


def client_line(external_id: str, rest: str = "") -> str:
    return f"{external_id},{external_id}@example.com,Ann,Lee,en-US,America/New_York,US,{rest}"


# ----------------------------------------------------------------------------- import


def test_an_imports_consent_column_is_stored_with_its_source_and_date(
    tmp_path: Path, runtime: Runtime
) -> None:
    path = write(
        tmp_path,
        "clients.csv",
        f"{HEADER},marketing_consent,consent_at,consent_source\n"
        + "\n".join(
            [
                client_line("k1", ",no,,"),
                client_line("k2", ",Yes,2026-03-01,shop checkout"),
                client_line("k3", ",,,"),
                client_line("k4", ",1,2026-06-01T12:00:00Z,"),
                client_line("k5", ",maybe,,"),
                client_line("k6", ",,2026-06-01,"),
            ]
        )
        + "\n",
    )
    errors = load(runtime, path)

    assert errors == [
        RowError(
            "clients.csv",
            6,
            "marketing_consent",
            "'maybe' is not yes, no or unknown (or true/false, 1/0, y/n)",
        ),
        RowError("clients.csv", 7, "consent_at", "is given without a marketing_consent value"),
    ]
    assert consents(runtime) == {
        "k1": ("no", "import:clients.csv", NOW),
        # A date alone is midnight in the client's zone.
        "k2": ("yes", "shop checkout", datetime(2026, 3, 1, 5, tzinfo=UTC)),
        "k3": ("unknown", None, None),
        "k4": ("yes", "import:clients.csv", datetime(2026, 6, 1, 12, tzinfo=UTC)),
    }


def test_a_file_without_the_column_or_with_a_blank_cell_keeps_the_stored_consent(
    tmp_path: Path, runtime: Runtime
) -> None:
    first = f"{HEADER},marketing_consent\n{client_line('k1', ',no')}\n{client_line('k2', ',yes')}\n"
    assert load(runtime, write(tmp_path, "crm.csv", first)) == []
    api.plan(runtime, NOW)
    before = consents(runtime)

    # Tonight's export of another system, without the column: names change, consent stays.
    plain = f"{HEADER}\n{client_line('k1').replace('Ann', 'Anne')}\n{client_line('k2')}\n"
    assert load(runtime, write(tmp_path, "clients.csv", plain), now=LATER) == []
    blank = f"{HEADER},marketing_consent\n{client_line('k1', ',')}\n{client_line('k2', ',')}\n"
    assert load(runtime, write(tmp_path, "blank.csv", blank), now=LATER) == []
    # The same answers again later: the source and date of the first stay.
    assert load(runtime, write(tmp_path, "crm.csv", first), now=LATER) == []

    assert (
        consents(runtime)
        == before
        == {
            "k1": ("no", "import:crm.csv", NOW),
            "k2": ("yes", "import:crm.csv", NOW),
        }
    )
    ids = {v: k for k, v in _ids(runtime).items()}
    assert clients_to_replan(runtime) == [], "nothing the planner reads changed"

    changed = (
        f"{HEADER},marketing_consent\n{client_line('k1', ',no')}\n{client_line('k2', ',no')}\n"
    )
    assert load(runtime, write(tmp_path, "crm.csv", changed), now=LATER) == []
    assert consents(runtime)["k2"] == ("no", "import:crm.csv", LATER)
    assert [ids[i] for i in clients_to_replan(runtime)] == ["k2"]


def _ids(rt: Runtime) -> dict[str, int]:
    c = tables.clients
    with rt.engine.connect() as conn:
        return dict(conn.execute(select(c.c.external_id, c.c.id)).all())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- plan and dry-run


def shop(rt: Runtime, tmp_path: Path) -> None:
    """Three clients born on 1 January who bought on 30 December (their thank-yous are due on
    1 January too, with New Year's Day): k1 said no, k2 yes, k3 nothing."""
    clients = (
        f"{HEADER},marketing_consent\n"
        f"{client_line('k1', '1980-01-01,no')}\n"
        f"{client_line('k2', '1981-01-01,yes')}\n"
        f"{client_line('k3', '1982-01-01,')}\n"
    )
    purchases = "id,client,purchased_at,product,amount,currency\n" + "".join(
        f"p{n},k{n},2026-12-30T12:00:00,Roadster,100.00,USD\n" for n in (1, 2, 3)
    )
    assert load(rt, write(tmp_path, "clients.csv", clients)) == []
    assert load(rt, write(tmp_path, "purchases.csv", purchases), Kind.PURCHASES) == []


def outcomes(run: api.DryRun, client: str) -> dict[str, tuple[str, str | None]]:
    found = {e.campaign: ("message", None) for e in run.messages if e.client == client}
    found |= {e.campaign: (e.status, e.reason) for e in run.skipped if e.client == client}
    return found


def ledger(rt: Runtime, client: str) -> dict[str, tuple[str, str | None]]:
    t, c = tables.touches, tables.clients
    query = (
        select(t.c.campaign, t.c.status, t.c.reason)
        .join(c, c.c.id == t.c.client_id)
        .where(c.c.external_id == client)
    )
    with rt.engine.connect() as conn:
        return {row.campaign: (row.status, row.reason) for row in conn.execute(query)}


def test_a_no_clients_greetings_are_skipped_no_marketing_consent_and_its_thank_you_goes_out(
    tmp_path: Path, runtime: Runtime
) -> None:
    shop(runtime, tmp_path)
    before_plan = api.dry_run(runtime, date(2027, 1, 1), NOW)
    api.plan(runtime, NOW)
    run = api.dry_run(runtime, date(2027, 1, 1), NOW)

    no_consent = ("skipped", NO_CONSENT)
    for found in (outcomes(before_plan, "k1"), outcomes(run, "k1")):
        assert found == {
            "thank_you": ("message", None),
            "birthday": no_consent,
            "new_year": no_consent,
        }
    assert ledger(runtime, "k1") == {
        "thank_you": ("planned", None),
        "birthday": ("skipped", NO_CONSENT),
        "new_year": ("skipped", NO_CONSENT),
    }
    for client in ("k2", "k3"):  # yes, and unknown under the default soft opt-in
        assert outcomes(run, client)["birthday"] == ("message", None)
        assert outcomes(run, client)["thank_you"] == ("message", None)

    # k2 withdraws consent after planning: the send-time decision stops the greeting.
    api.set_consent(runtime, "k2", "no", source="phone call", now=NOW + timedelta(hours=1))
    later = api.dry_run(runtime, date(2027, 1, 1), NOW + timedelta(hours=1))
    assert outcomes(later, "k2")["birthday"] == no_consent
    assert outcomes(later, "k2")["thank_you"] == ("message", None)


def test_under_opt_in_an_unknown_consent_is_implied_until_24_months_after_a_paid_purchase(
    tmp_path: Path, open_runtime: OpenRuntime, database_url: str
) -> None:
    rt = open_runtime(
        make_settings(tmp_path, database_url, consent={"marketing": "opt-in", "implied_months": 24})
    )
    clients = f"{HEADER}\n" + "".join(client_line(f"u{n}", "1980-01-01") + "\n" for n in (1, 2, 3))
    # u1's birthday greeting is due at 2027-01-01T15:00Z (10:00 in New York): u1 bought 24
    # months before to the second, u2 a second later, u3 never.
    purchases = (
        "id,client,purchased_at,product,amount,currency\n"
        "q1,u1,2025-01-01T15:00:00Z,Roadster,100.00,USD\n"
        "q2,u2,2025-01-01T15:00:01Z,Roadster,100.00,USD\n"
    )
    assert load(rt, write(tmp_path, "clients.csv", clients)) == []
    assert load(rt, write(tmp_path, "purchases.csv", purchases), Kind.PURCHASES) == []
    api.plan(rt, NOW)

    assert ledger(rt, "u1")["birthday"] == ("skipped", NO_CONSENT)
    assert ledger(rt, "u2")["birthday"] == ("planned", None)
    assert ledger(rt, "u3")["birthday"] == ("skipped", NO_CONSENT)
    run = api.dry_run(rt, date(2027, 1, 1), NOW)
    assert outcomes(run, "u2")["birthday"] == ("message", None)
    # Decided a second after its period ended (a dispatcher running late), it is skipped.
    with rt.engine.connect() as conn:
        due = conn.execute(
            select(tables.touches.c.due_at).where(tables.touches.c.campaign == "birthday")
        ).scalars()
        assert set(due) == {datetime(2027, 1, 1, 15, tzinfo=UTC)}
    late = api.dry_run(rt, date(2027, 1, 1), datetime(2027, 1, 1, 15, 0, 2, tzinfo=UTC))
    assert outcomes(late, "u2")["birthday"] == ("skipped", NO_CONSENT)


# ------------------------------------------------------------------ unsubscribe, operator


def test_an_unsubscribe_sets_consent_to_no_with_its_source_and_time(
    tmp_path: Path, runtime: Runtime
) -> None:
    shop(runtime, tmp_path)
    k2 = _ids(runtime)["k2"]
    for at in (NOW, LATER):  # twice: the first one's date stays
        with runtime.engine.begin() as conn:
            assert ledger_for(conn).unsubscribe(conn, k2, at)
    assert consents(runtime)["k2"] == ("no", "unsubscribe", NOW)
    history = api.history(runtime, "k2")
    assert history is not None
    assert (history.status, history.consent, history.consent_source) == (
        "unsubscribed",
        "no",
        "unsubscribe",
    )


def test_the_operator_sets_consent_and_the_history_shows_it(
    tmp_path: Path, runtime: Runtime
) -> None:
    shop(runtime, tmp_path)
    api.plan(runtime, NOW)
    given = datetime(2026, 11, 3, tzinfo=UTC)
    change = api.set_consent(
        runtime, "k1@example.com", "YES", source="signed form", at=given, now=LATER
    )
    assert (change.client, change.before, change.consent) == ("k1", "no", "yes")
    assert consents(runtime)["k1"] == ("yes", "signed form", given)
    assert _ids(runtime)["k1"] in clients_to_replan(runtime), "its plan version rose"
    history = api.history(runtime, "k1")
    assert history is not None
    assert (history.consent, history.consent_source, history.consent_at) == (
        "yes",
        "signed form",
        given,
    )
    (event,) = history.events
    assert (event.at, event.kind) == (LATER, "consent")
    assert event.detail == "no -> yes (source: signed form; at 2026-11-03T00:00:00+00:00)"

    for bad, message in (
        ({"consent": "perhaps"}, "consent 'perhaps' is not yes, no or unknown"),
        ({"consent": "no", "source": "a\nb"}, "source contains control characters"),
        ({"consent": "no", "at": LATER + timedelta(days=1)}, "must be aware and not in the"),
        ({"consent": "no", "client": "nobody"}, "no client with id or e-mail 'nobody'"),
    ):
        arguments: dict[str, Any] = {"client": "k1", "now": LATER, **bad}
        with pytest.raises(FollowupError, match=message):
            api.set_consent(runtime, **arguments)
    assert consents(runtime)["k1"] == ("yes", "signed form", given), "nothing half-written"


def test_a_consent_date_or_source_without_the_consent_column_is_reported(
    tmp_path: Path, runtime: Runtime
) -> None:
    path = write(
        tmp_path,
        "crm.csv",
        f"{HEADER},consent_at,consent_source\n{client_line('k1', '')},2026-11-02,form\n",
    )
    errors = load(runtime, path)

    assert [(e.line, e.column) for e in errors] == [(1, "consent_at"), (1, "consent_source")]
    assert "without a marketing_consent column" in errors[0].reason
    assert consents(runtime) == {"k1": ("unknown", None, None)}  # the client itself is stored
