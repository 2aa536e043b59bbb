"""Converters (filled in by family)."""
