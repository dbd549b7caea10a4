"""Offline evaluation: full-catalog ranks, metrics, segments, reports."""
