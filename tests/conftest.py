"""Test-wide settings: hypothesis without wall-clock deadlines (CI machines are shared)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "storestream", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("storestream")
