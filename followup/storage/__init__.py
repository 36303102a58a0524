"""The database boundary: every statement followup runs is written in this package."""
