"""The worker's settings, resolved once from ``faust.ini`` and the environment."""

from __future__ import annotations

from core.config import Settings, load_settings

SETTINGS: Settings = load_settings()
