"""Micro-benchmark: cost per shopper position of the display lookup (and full offer decision).

Displays are laid out the way stores are: "spread" cases put up to 400 displays in
each 100 m x 60 m store and add stores as the count grows (20 displays -> 1 store,
200,000 -> 500 stores scattered over ~30 km x 30 km); the "dense" case packs 2,000
displays into a single store. Positions are uniform inside populated stores.

Run ``python bench/geo_bench.py [--quick] [--json PATH]``; ``run(quick)`` returns the
figures as a dict. Timing is the best of several repeats with ``time.perf_counter``.
Target: ns/position at 200,000 displays within 2x the 20-display case.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

from core.geo import DEFAULT_CELL_M, DEFAULT_RADIUS_M, EARTH_RADIUS_M, Display, DisplayIndex
from core.offers import DEFAULT_COOLDOWN_S, Promotion, PromotionIndex, decide_offers

ORIGIN_LAT, ORIGIN_LON = 51.40, -0.30  # south-west corner of the area (Greater London)
AREA_M = 30_000.0
STORE_W_M, STORE_H_M = 100.0, 60.0
PER_STORE = 400
SEGMENTS = ("dairy", "bakery", "produce", "frozen", "drinks", "snacks", "household", "beauty")
TARGET_RATIO = 2.0
M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    name: str
    displays: int
    stores: int


CASES = (
    Case("spread", 20, 1),
    Case("spread", 2_000, 5),
    Case("spread", 200_000, 500),
    Case("dense", 2_000, 1),
)


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays a clean table."""
    print(message, file=sys.stderr, flush=True)


def to_lat_lon(north_m: float, east_m: float) -> tuple[float, float]:
    """Local metres from the area origin to WGS84 degrees."""
    lat = ORIGIN_LAT + north_m / M_PER_DEG
    return lat, ORIGIN_LON + east_m / (M_PER_DEG * math.cos(math.radians(lat)))


def store_origins(count: int, rng: random.Random) -> list[tuple[float, float]]:
    """South-west corners (north_m, east_m) of ``count`` stores in the area."""
    return [(rng.uniform(0, AREA_M), rng.uniform(0, AREA_M)) for _ in range(count)]


def point_in_store(store: tuple[float, float], rng: random.Random) -> tuple[float, float]:
    """A uniform random point inside a store."""
    return to_lat_lon(store[0] + rng.uniform(0, STORE_H_M), store[1] + rng.uniform(0, STORE_W_M))


def build_displays(case: Case, rng: random.Random) -> tuple[DisplayIndex, list[tuple[float, float]]]:
    """Index ``case.displays`` displays spread evenly over ``case.stores`` stores."""
    stores = store_origins(case.stores, rng)
    index = DisplayIndex()
    for i in range(case.displays):
        store_no = i % case.stores
        lat, lon = point_in_store(stores[store_no], rng)
        index.upsert(
            Display(
                sku=str(100_000 + i // case.stores),
                lat=lat,
                lon=lon,
                segment=SEGMENTS[i % len(SEGMENTS)],
                variant="std",
                store_id=f"store-{store_no:04d}",
            )
        )
    return index, stores


def build_promotions(skus: int) -> PromotionIndex:
    """One SKU promotion per 10 SKUs plus two segment-wide promotions."""
    promos = [Promotion(f"p-sku-{s}", 10, sku=str(100_000 + s)) for s in range(0, skus, 10)]
    promos += [Promotion("p-dairy", 5, segment="dairy"), Promotion("p-bakery", 15, segment="bakery")]
    return PromotionIndex(promos)


def positions_for(
    stores: list[tuple[float, float]], count: int, rng: random.Random
) -> list[tuple[float, float]]:
    """Shopper positions uniformly inside random stores."""
    return [point_in_store(rng.choice(stores), rng) for _ in range(count)]


def time_near(index: DisplayIndex, points: list[tuple[float, float]], repeats: int) -> float:
    """Best ns per ``near`` lookup over ``repeats`` passes."""
    near = index.near
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for lat, lon in points:
            near(lat, lon, DEFAULT_RADIUS_M)
        best = min(best, time.perf_counter() - start)
    return best / len(points) * 1e9


def time_decide(
    index: DisplayIndex, promos: PromotionIndex, points: list[tuple[float, float]], repeats: int
) -> float:
    """Best ns per full ``decide_offers`` call over ``repeats`` passes."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for i, (lat, lon) in enumerate(points):
            decide_offers(
                "u1",
                lat,
                lon,
                1_700_000_000.0 + i,
                opted_out=False,
                tier="GOLD",
                displays=index,
                promotions=promos,
                last_offered={},
                radius_m=DEFAULT_RADIUS_M,
                cooldown_s=DEFAULT_COOLDOWN_S,
            )
        best = min(best, time.perf_counter() - start)
    return best / len(points) * 1e9


def measure(case: Case, n_points: int, repeats: int, seed: int) -> dict[str, Any]:
    """Build one case and time it."""
    rng = random.Random(seed)
    log(f"  building {case.name} case: {case.displays:,} displays in {case.stores} store(s)")
    built = time.perf_counter()
    index, stores = build_displays(case, rng)
    build_s = time.perf_counter() - built
    promos = build_promotions(math.ceil(case.displays / case.stores))
    points = positions_for(stores, n_points, rng)
    hits = sum(len(index.near(lat, lon, DEFAULT_RADIUS_M)) for lat, lon in points)
    log(f"  timing {n_points:,} positions x {repeats} repeats")
    gc.collect()
    gc.disable()
    try:
        near_ns = time_near(index, points, repeats)
        decide_ns = time_decide(index, promos, points, repeats)
    finally:
        gc.enable()
    return {
        "case": case.name,
        "displays": case.displays,
        "stores": case.stores,
        "build_s": round(build_s, 3),
        "near_ns_per_position": round(near_ns, 1),
        "decide_ns_per_position": round(decide_ns, 1),
        "hits_per_position": round(hits / n_points, 3),
    }


def run(quick: bool, seed: int = 7) -> dict[str, Any]:
    """Run every case; returns figures including ratios to the 20-display case."""
    n_points, repeats = (2_000, 3) if quick else (20_000, 7)
    results = []
    for number, case in enumerate(CASES, 1):
        log(f"[{number}/{len(CASES)}] {case.name} {case.displays:,}")
        results.append(measure(case, n_points, repeats, seed))
    base = results[0]
    for row in results:
        row["near_ratio_to_20"] = round(row["near_ns_per_position"] / base["near_ns_per_position"], 2)
        row["decide_ratio_to_20"] = round(
            row["decide_ns_per_position"] / base["decide_ns_per_position"], 2
        )
    largest = max((r for r in results if r["case"] == "spread"), key=lambda r: r["displays"])
    return {
        "benchmark": "geo_lookup",
        "quick": quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "radius_m": DEFAULT_RADIUS_M,
        "cell_m": DEFAULT_CELL_M,
        "positions": n_points,
        "repeats": repeats,
        "target_ratio": TARGET_RATIO,
        "ratio_at_largest": largest["near_ratio_to_20"],
        "meets_target": largest["near_ratio_to_20"] <= TARGET_RATIO,
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table of a ``run`` report."""
    header = (
        f"{'case':<7} {'displays':>9} {'stores':>6} {'near ns/pos':>12} {'x20':>6} "
        f"{'decide ns/pos':>14} {'x20':>6} {'hits/pos':>9} {'build s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in report["results"]:
        lines.append(
            f"{r['case']:<7} {r['displays']:>9,} {r['stores']:>6} "
            f"{r['near_ns_per_position']:>12,.0f} {r['near_ratio_to_20']:>6.2f} "
            f"{r['decide_ns_per_position']:>14,.0f} {r['decide_ratio_to_20']:>6.2f} "
            f"{r['hits_per_position']:>9.3f} {r['build_s']:>8.2f}"
        )
    verdict = "meets" if report["meets_target"] else "MISSES"
    lines.append(
        f"spread 200,000 vs 20: {report['ratio_at_largest']:.2f}x ({verdict} target "
        f"<= {report['target_ratio']:.0f}x); radius {report['radius_m']} m, cell "
        f"{report['cell_m']} m, {report['positions']:,} positions x {report['repeats']} repeats"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer positions and repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    report = run(args.quick, args.seed)
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
