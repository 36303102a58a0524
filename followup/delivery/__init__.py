"""Delivery: claim due touches, decide, compose, hand off, send over SMTP, record."""
