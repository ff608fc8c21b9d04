"""The workers component."""
