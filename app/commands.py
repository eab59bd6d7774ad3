"""CLI commands: ``faust -A app devstack``, ``faust -A app simulate`` and ``faust -A app topics``.

Importing this module also connects the worker's start-up topic check
(:mod:`app.broker.topic_startup`).
"""

from __future__ import annotations

import sys
from typing import Any

from faust.cli import option

from app.broker import topic_startup
from app.broker.topic_admin import TopicAdminError, format_rows, reconcile
from app.broker.topology import desired_topics
from app.dev import devstack
from app.dev.simulate import simulate as run_simulation
from app.faust_app import app
from app.runtime.replica import replica_connection
from app.settings import SETTINGS

topic_startup.connect(app)


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
    option("--buy-pct", type=float, default=0.0, show_default=True,
           help="Percent of stops at a display after which the shopper buys its product."),
    option("--offer-buy-pct", type=float, default=None,
           help="The same at a display the shopper was offered a promotion for (shoppers "
                "outside CONTROL_GROUP_PCT); default: --buy-pct."),
    option("--visit-stops", type=int, default=0, show_default=True,
           help="Stops after which a shopper leaves and a new one comes in (0: they stay)."),
    name="simulate",
)
async def simulate_command(self: Any, shoppers: int, rate: float, duration: float,
                           load_store: bool, seed: int, buy_pct: float,
                           offer_buy_pct: float | None, visit_stops: int) -> None:
    """Drive shoppers through the demo store (positions to customers.locations)."""
    bootstrap, auth, _ = replica_connection(app)  # SASL/TLS as the worker's own clients
    await run_simulation(SETTINGS, shoppers=shoppers, rate=rate, duration=duration,
                         load=load_store, seed=seed, buy_pct=buy_pct,
                         offer_buy_pct=offer_buy_pct, visit_stops=visit_stops,
                         connection=(bootstrap, auth))


@app.command(
    option("--dry-run", is_flag=True, default=False,
           help="Only report: create nothing (missing topics make the exit status 1)."),
    name="topics",
)
async def topics_command(self: Any, dry_run: bool) -> None:
    """Create the missing topics and verify the others (partitions, replication, settings).

    One line per topic: created, ok, differs (and how) or missing. Exit status 0 when every
    topic is as app/broker/topology.py declares it, 1 when any differs or is missing, 2 when the
    broker could not be asked. Existing topics are never changed.
    """
    bootstrap, auth, _ = replica_connection(app)
    desired = desired_topics(SETTINGS)
    try:
        report = await reconcile(bootstrap, auth, desired, create_missing=not dry_run)
    except TopicAdminError as exc:
        print(f"topics: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    for line in format_rows(report.rows()):
        print(line, flush=True)
    if report.ok:
        print(f"topics: all {len(desired)} topics as declared "
              f"({len(report.created)} created)", flush=True)
        return
    if report.differs:
        names = [line.split(": ", 1)[0] for line in report.differs]
        print(f"topics: {len(names)} differ from app/broker/topology.py ({', '.join(names)}; how: "
              f"above). Nothing was changed: fix them by hand (kafka-configs.sh --alter for "
              f"settings) or recreate them", file=sys.stderr, flush=True)
    if report.missing:
        print(f"topics: missing: {', '.join(report.missing)}"
              + ("" if dry_run else " (the broker refused to create them, see above)"),
              file=sys.stderr, flush=True)
    sys.exit(1)
