"""CLI commands: ``faust -A app devstack`` (and, later, ``simulate``)."""

from __future__ import annotations

import sys
from typing import Any

from app import devstack
from app.faust_app import app
from app.settings import SETTINGS


@app.command()
async def devstack_command(self: Any) -> None:
    """Start the embedded Kafka-protocol broker (Tansu) and redis-server until Ctrl-C."""
    code = devstack.serve(SETTINGS.broker_url, SETTINGS.redis_url)
    if code:
        sys.exit(code)
