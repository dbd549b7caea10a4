"""Numerical operators (TADN delta rule, jagged helpers)."""
