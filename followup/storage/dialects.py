"""One ledger per database: `ledger_for` gives the one for an engine or a connection."""

from __future__ import annotations

from sqlalchemy import Connection, Engine

from followup.storage.ledger import Ledger
from followup.storage.postgres import PostgresLedger
from followup.storage.sqlite import SqliteLedger

_LEDGERS: dict[str, Ledger] = {"sqlite": SqliteLedger(), "postgresql": PostgresLedger()}


def ledger_for(bind: Connection | Engine) -> Ledger:
    """The ledger of the database `bind` is connected to."""
    try:
        return _LEDGERS[bind.dialect.name]
    except KeyError:
        raise ValueError(f"followup has no ledger for the {bind.dialect.name} database") from None
