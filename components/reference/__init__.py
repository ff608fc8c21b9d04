"""The reference component."""
