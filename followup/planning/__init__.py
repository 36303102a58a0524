"""Planning: every client's occasions up to a horizon, read a chunk of clients at a time,
decided by the pure planner (followup.domain.planner), written to the ledger."""
