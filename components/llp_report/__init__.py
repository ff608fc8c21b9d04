"""LLP's report component."""
