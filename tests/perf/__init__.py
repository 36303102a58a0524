"""Guards of performance: the query plans (EXPLAIN) of the statements the hot paths run."""
