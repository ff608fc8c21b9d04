"""The select component."""
