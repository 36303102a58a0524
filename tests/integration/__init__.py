"""The boundaries for real: a database (SQLite, and PostgreSQL when FOLLOWUP_TEST_POSTGRES_URL
is set), a real SMTP server on loopback, an HTTP socket, headless Chromium."""
