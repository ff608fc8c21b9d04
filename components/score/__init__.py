"""The score component."""
