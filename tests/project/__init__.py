"""The project itself: docs that cannot drift, lint, format and typing, the layered
architecture, the public API page."""
