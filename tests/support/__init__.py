"""What the tests share, and nothing else: no test module imports another one.

- settings: ROOT (the repository), make_settings over its templates and calendars.
- postgres: POSTGRES_URL, NO_POSTGRES, a fresh PostgreSQL database per test.
- smtp: the recording SMTP server (aiosmtpd) on a port it binds itself, and its waits.
- ports: a port reserved for a server another process or task binds later.
- executable: the installed `followup` executable, run as a user would.
- shop: the small shop several modules seed (NOW, REPS, CLIENTS, PURCHASES, seed).
- ledger: a client, its row and a touch straight into the ledger.
- messages: a recipient and a composed thank-you, without a database.
- cdp: headless Chromium over the DevTools protocol.
- studio: the studio's server on a thread.
"""
