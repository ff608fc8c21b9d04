"""The WSL report component."""
