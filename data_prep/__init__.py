"""Raw behaviour logs to prepared training data (docs/design.md §3.1-3.2)."""
