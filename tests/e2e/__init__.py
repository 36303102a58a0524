"""The installed `followup` executable, run as a user would (marked e2e)."""
