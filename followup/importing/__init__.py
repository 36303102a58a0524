"""Data in: CSV files of reps, clients and purchases, suppression lists, the demo shop."""
