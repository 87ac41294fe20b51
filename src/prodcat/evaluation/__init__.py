"""Scores (metrics, score tables, review), plots (report) and the submission."""
