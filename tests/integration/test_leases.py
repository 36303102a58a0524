"""Leases after a crash and between clocks that disagree: a gone owner of this host is settled
at once; leases are judged by the database's clock, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from time import monotonic
from typing import Any

import pytest
from sqlalchemy import select

from followup import owners
from followup.config import Settings
from followup.delivery.dispatcher import dispatch
from followup.runtime import Runtime
from followup.storage import tables
from followup.storage.dialects import ledger_for
from followup.storage.ledger import HandOff
from tests.integration.test_dispatch import greeted_runtime, statuses
from tests.support.ledger import NOW, add_client, new_touch
from tests.support.owners import dead_owner
from tests.support.shop import NOW as SHOP_NOW
from tests.support.smtp import SmtpServer

LEASE = timedelta(minutes=5)


def test_the_touches_of_a_gone_owner_of_this_host_are_settled_before_its_lease_ends(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A killed process's touches: the one handed to the mailer becomes uncertain, the other
    goes back to the queue, at once. A live owner's, and those of an owner on another host
    (whose pid means nothing here), keep their leases."""
    if owners.this_start() == owners.UNKNOWN:
        pytest.skip("needs /proc (Linux) to tell a process's start")
    dead = dead_owner()
    elsewhere = "elsewhere:" + dead.split(":", 1)[1]
    live = owners.owner_id()
    client_id = add_client(runtime)
    held: dict[str, list[int]] = {}
    with runtime.engine.begin() as conn:
        ledger = ledger_for(conn)
        days = [date(2027, 1, d) for d in range(1, 7)]
        ledger.insert_touches(conn, [new_touch(client_id, day) for day in days], NOW)
        for owner in (dead, live, elsewhere):
            held[owner] = sorted(ledger.claim_due(conn, owner, NOW, LEASE, 2))
            hand_off = [HandOff(held[owner][0], f"<{owner}@x>", {})]
            assert ledger.hand_off_many(conn, hand_off, owner, NOW, LEASE) == [True]
    with caplog.at_level(logging.INFO, logger="followup"), runtime.engine.begin() as conn:
        # At the time of the claim: no lease has run out.
        assert ledger_for(conn).expire_leases(conn, NOW) == 1
    gone = [r for r in caplog.records if getattr(r, "event", "") == "owner.gone"]
    assert [getattr(r, "fields", None) for r in gone] == [{"owner": dead}]
    t = tables.touches
    with runtime.engine.connect() as conn:
        rows = {
            row.id: (row.status, row.lease_owner, row.attempts)
            for row in conn.execute(select(t.c.id, t.c.status, t.c.lease_owner, t.c.attempts))
        }
        detail = conn.execute(
            select(tables.touch_events.c.detail).where(
                tables.touch_events.c.touch_id == held[dead][0],
                tables.touch_events.c.to_status == "uncertain",
            )
        ).scalar_one()
    handed, unsent = held[dead]
    assert rows[handed] == ("uncertain", None, 1)
    assert rows[unsent] == ("planned", None, 0)
    assert f"{dead} is gone while sending" in detail
    for owner in (live, elsewhere):
        assert {rows[i] for i in held[owner]} == {("sending", owner, 1)}
    with runtime.engine.begin() as conn:
        assert ledger_for(conn).claim_due(conn, "next", NOW, LEASE, 10) == [unsent]


@pytest.mark.parametrize("skewed", ["sender", "other"])
def test_a_clock_400_s_off_takes_no_lease_and_every_delivery_is_recorded_sent(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    open_runtime: Callable[[Settings], Runtime],
    skewed: str,
) -> None:
    """Two processes, one clock 400 s ahead of the other, leases of 300 s (on PostgreSQL,
    daemons on two machines; on SQLite, a rehearsal with FOLLOWUP_NOW beside a run).
    While the sender's messages are on the wire, the other process expires leases and claims
    (as a dispatch starting then does): it takes nothing, and every message the server got is
    recorded sent, whichever of the two clocks is ahead."""
    rt = greeted_runtime(
        tmp_path,
        database_url,
        smtp_server,
        open_runtime,
        6,
        delivery={"batch_size": 50, "group_size": 2},
        smtp={"pool_size": 1},
        database={"lease_seconds": 300},
    )
    began = monotonic()
    skews = {"sender": timedelta(0), "other": timedelta(0)}
    skews[skewed] = timedelta(seconds=400)

    def clock_of(who: str) -> Callable[[], datetime]:
        return lambda: SHOP_NOW + timedelta(seconds=monotonic() - began) + skews[who]

    other_clock = clock_of("other")
    seen: dict[str, Any] = {}
    original_data = smtp_server.handler.handle_DATA

    async def other_process_meanwhile(server: Any, session: Any, envelope: Any) -> str:
        if not seen:
            with rt.engine.begin() as conn:
                seen["uncertain"] = rt.ledger.expire_leases(conn, other_clock())
                seen["claimed"] = rt.ledger.claim_due(conn, "other", other_clock(), LEASE, 50)
        return await original_data(server, session, envelope)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(smtp_server.handler, "handle_DATA", other_process_meanwhile)
        report = asyncio.run(dispatch(rt, clock_of("sender"), rng=random.Random(1)))
    assert seen == {"uncertain": 0, "claimed": []}
    assert (report.sent, report.uncertain) == (6, 0)
    assert statuses(rt) == ["sent"] * 6
    assert len(set(smtp_server.handler.message_ids())) == 6
