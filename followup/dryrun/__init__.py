"""The dry-run: what would go out on a day, decided as the dispatcher decides, nothing written
to the database and nothing sent."""
