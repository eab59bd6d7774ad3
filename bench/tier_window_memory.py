"""Memory of the loyalty records with a rolling tier window against lifetime tiers.

``python -m bench.tier_window_memory [--customers N] [--window DAYS]``

Each customer's purchases go through the real rules (:func:`core.loyalty.replay`, prices as
of event time from the bench catalogue, so recent purchases are still pending) and the real
table codec: ``to_json`` -> ``orjson.dumps`` (the changelog record) -> ``orjson.loads`` (what
a recovered ``memory://`` table holds), then ``from_json`` (what the worker's decoded cache
holds beside it while it processes). ``tracemalloc`` counts the bytes each of the two holds,
per 100,000 customers, for the lifetime tier (``TIER_WINDOW_DAYS=0``) and for the window,
on two shopping profiles:

* ``bench``: the bench workload's (20 purchases over 30 days, 10 products);
* ``year``: a weekly shopper over a full year (52 purchases over 365 days).

The ratio window / lifetime is what issue 22 bounds (at most 1.5x).
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from bench.catalogue import CATALOGUE, PRICE_CHANGES, T0
from core.loyalty import Basket, LoyaltyRules, Purchase, Spend, Stamps, replay
from core.pricing import PriceHistory

DAY_S = 86_400.0
PROFILES: dict[str, tuple[int, float]] = {"bench": (20, 30.0), "year": (52, 365.0)}


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _histories() -> dict[str, PriceHistory]:
    out: dict[str, list[tuple[float, int]]] = {
        pid: [(T0 - 1, round(price * 100))] for pid, (price, _) in CATALOGUE.items()}
    for pid, price, ts in PRICE_CHANGES:
        out[pid].append((ts, round(price * 100)))
    return {pid: tuple(h) for pid, h in out.items()}


HISTORIES = _histories()


def catalogue(product_id: str) -> PriceHistory:
    """The bench catalogue as the rules read it."""
    return HISTORIES.get(product_id, ())


def purchases_of(rng: random.Random, user: str, count: int, span_days: float
                 ) -> list[Purchase]:
    """``count`` purchases of ``user`` spread at random over ``span_days``, in time order;
    about 20% carry their own price (as in the bench workload)."""
    names = list(CATALOGUE)
    weights = [CATALOGUE[n][1] for n in names]
    out = []
    for n, ts in enumerate(sorted(T0 + rng.random() * span_days * DAY_S
                                  for _ in range(count))):
        product = rng.choices(names, weights)[0]
        price = (round(CATALOGUE[product][0] * 100 * rng.choice((0.8, 0.9, 1.0)))
                 if rng.random() < 0.2 else None)
        out.append(Purchase(user, product, ts, price, f"{user}-{n}"))
    return out


def changelog_records(customers: int, profile: str, rules: LoyaltyRules, seed: int = 5
                      ) -> list[tuple[bytes, bytes, bytes]]:
    """Each customer's spend, stamps and basket changelog values after their purchases."""
    count, span = PROFILES[profile]
    rng = random.Random(seed)
    out = []
    for n in range(customers):
        spend, stamps, basket, _ = replay(purchases_of(rng, f"m{n:07d}", count, span),
                                          catalogue, rules)
        out.append((orjson.dumps(spend.to_json()), orjson.dumps(stamps.to_json()),
                    orjson.dumps(basket.to_json())))
    return out


def _traced(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes allocated (and still held) by ``build()``, and what it returned."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    held = build()
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before, held


def measure(customers: int, profile: str, window: int) -> dict[str, float]:
    """Bytes per customer of the recovered tables and of the decoded records beside them."""
    rules = LoyaltyRules(tier_window_days=window)
    records = changelog_records(customers, profile, rules)
    tracemalloc.start()
    try:
        table_bytes, tables = _traced(lambda: [tuple(orjson.loads(v) for v in rec)
                                               for rec in records])
        decoded_bytes, _decoded = _traced(lambda: [
            (Spend.from_json(s), Stamps.from_json(t), Basket.from_json(b))
            for s, t, b in tables])
        spend_bytes, _spend = _traced(lambda: [orjson.loads(rec[0]) for rec in records])
    finally:
        tracemalloc.stop()
    return {"tables": table_bytes / customers, "decoded": decoded_bytes / customers,
            "spend_table": spend_bytes / customers,
            "changelog": sum(len(b) for rec in records for b in rec) / customers}


def main(argv: list[str] | None = None) -> int:
    """Print the figures per 100,000 customers and the window / lifetime ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=365)
    args = parser.parse_args(argv)
    scale = 100_000 / 2**20  # bytes per customer -> MiB per 100,000 customers
    print(f"{'profile':7} {'window':>6} {'tables MiB':>10} {'+decoded MiB':>12} "
          f"{'spend MiB':>9} {'changelog MiB':>13}   per 100,000 customers")
    for profile in PROFILES:
        figures = {}
        for window in (0, args.window):
            log(f"{profile}: {args.customers:,} customers, window {window} ...")
            figures[window] = m = measure(args.customers, profile, window)
            print(f"{profile:7} {window:>6} {m['tables'] * scale:>10.1f} "
                  f"{(m['tables'] + m['decoded']) * scale:>12.1f} "
                  f"{m['spend_table'] * scale:>9.1f} {m['changelog'] * scale:>13.1f}",
                  flush=True)
        life, win = figures[0], figures[args.window]
        print(f"{profile:7} ratio  {win['tables'] / life['tables']:>10.2f} "
              f"{(win['tables'] + win['decoded']) / (life['tables'] + life['decoded']):>12.2f} "
              f"{win['spend_table'] / life['spend_table']:>9.2f} "
              f"{win['changelog'] / life['changelog']:>13.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
