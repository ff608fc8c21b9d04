"""The data component."""
