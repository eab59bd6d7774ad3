"""CLI commands: ``faust -A app devstack`` and ``faust -A app simulate``."""

from __future__ import annotations

import sys
from typing import Any

from faust.cli import option

from app import devstack
from app.faust_app import app
from app.settings import SETTINGS
from app.simulate import simulate as run_simulation


@app.command(name="devstack")
async def devstack_command(self: Any) -> None:
    """Start the embedded Kafka-protocol broker (Tansu) and redis-server until Ctrl-C."""
    code = devstack.serve(SETTINGS.broker_url, SETTINGS.redis_url)
    if code:
        sys.exit(code)


@app.command(
    option("--shoppers", type=int, default=20, show_default=True, help="Shoppers in the store."),
    option("--rate", type=float, default=20.0, show_default=True,
           help="Positions per second, all shoppers together."),
    option("--duration", type=float, default=0.0, show_default=True,
           help="Seconds to run (0: until Ctrl-C)."),
    option("--load-store/--no-load-store", default=True, show_default=True,
           help="Produce the demo floor plan and promotions first."),
    option("--seed", type=int, default=42, show_default=True, help="Random seed of the walk."),
    name="simulate",
)
async def simulate_command(self: Any, shoppers: int, rate: float, duration: float,
                           load_store: bool, seed: int) -> None:
    """Drive shoppers through the demo store (positions to customers.locations)."""
    await run_simulation(SETTINGS, shoppers=shoppers, rate=rate, duration=duration,
                         load=load_store, seed=seed)
