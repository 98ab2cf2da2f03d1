"""Metrics, caption metrics, run reports, results table and plots."""
