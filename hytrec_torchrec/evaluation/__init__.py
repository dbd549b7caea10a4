"""Offline evaluation: per-segment reports, paired comparisons and checkpoint diagnostics."""
