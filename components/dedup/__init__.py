"""The dedup component."""
