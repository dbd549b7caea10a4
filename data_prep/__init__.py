"""Raw behaviour logs to prepared training data (SPEC §3.1-3.2)."""
