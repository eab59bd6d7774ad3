"""Changelog-backed tables: keys are UTF-8 text, values JSON, no defaults (absent means 404)."""
