"""Pure logic: no database, no network, no other process. Fast; run them first."""
