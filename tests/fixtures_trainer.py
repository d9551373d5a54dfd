"""Pytest fixtures (filled in by the owning area)."""
