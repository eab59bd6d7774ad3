"""Micro-benchmark: cost per shopper position of the display lookup (and full offer decision).

Layouts follow real stores. The "spread" cases hold the local density fixed at 400
displays per 100 m x 60 m store (one per 15 m2) and grow the number of stores:
20 displays -> one 300 m2 convenience store, 2,000 -> 5 stores, 200,000 -> 500 stores
scattered over ~30 km x 30 km; so the ratio between them isolates the effect of the
total display count. The "dense" case packs 2,000 displays into one 100 m x 60 m store
(5x the density) to show what local density costs. Positions are uniform inside stores.

Run ``python bench/geo_bench.py [--quick] [--json PATH]``; ``run(quick)`` returns the
figures as a dict. Timing uses ``time.perf_counter``: every case is built first, then
timed in interleaved rounds and the best round is kept, so background load on a shared
machine skews the ratios less (medians are reported too).
Target: ns/position at 200,000 displays within 2x the 20-display case.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from core.geo import DEFAULT_CELL_M, DEFAULT_RADIUS_M, EARTH_RADIUS_M, Display, DisplayIndex
from core.offers import DEFAULT_COOLDOWN_S, Promotion, PromotionIndex, decide_offers

ORIGIN_LAT, ORIGIN_LON = 51.40, -0.30  # south-west corner of the area (Greater London)
AREA_M = 30_000.0
STORE_W_M, STORE_H_M = 100.0, 60.0
SPREAD_DENSITY = 400 / (STORE_W_M * STORE_H_M)  # displays per m2
SEGMENTS = ("dairy", "bakery", "produce", "frozen", "drinks", "snacks", "household", "beauty")
TARGET_RATIO = 2.0
M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: ``displays`` spread over ``stores`` equal stores."""

    name: str
    displays: int
    stores: int
    store_m2: float = STORE_W_M * STORE_H_M

    @property
    def store_size_m(self) -> tuple[float, float]:
        """Store (depth north, width east) in metres, with the 60:100 shape of the big store."""
        width = math.sqrt(self.store_m2 * STORE_W_M / STORE_H_M)
        return self.store_m2 / width, width


CASES = (
    Case("spread", 20, 1, store_m2=20 / SPREAD_DENSITY),
    Case("spread", 2_000, 5),
    Case("spread", 200_000, 500),
    Case("dense", 2_000, 1),
)

Store = tuple[float, float, float, float]  # south-west corner north/east, depth, width (m)


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays a clean table."""
    print(message, file=sys.stderr, flush=True)


def to_lat_lon(north_m: float, east_m: float) -> tuple[float, float]:
    """Local metres from the area origin to WGS84 degrees."""
    lat = ORIGIN_LAT + north_m / M_PER_DEG
    return lat, ORIGIN_LON + east_m / (M_PER_DEG * math.cos(math.radians(lat)))


def make_stores(case: Case, rng: random.Random) -> list[Store]:
    """``case.stores`` stores at random places in the area."""
    depth, width = case.store_size_m
    return [
        (rng.uniform(0, AREA_M), rng.uniform(0, AREA_M), depth, width) for _ in range(case.stores)
    ]


def point_in_store(store: Store, rng: random.Random) -> tuple[float, float]:
    """A uniform random point inside a store."""
    north, east, depth, width = store
    return to_lat_lon(north + rng.uniform(0, depth), east + rng.uniform(0, width))


def build_displays(
    case: Case, rng: random.Random, cell_m: float = DEFAULT_CELL_M
) -> tuple[DisplayIndex, list[Store]]:
    """Index ``case.displays`` displays spread evenly over the case's stores."""
    stores = make_stores(case, rng)
    index = DisplayIndex(cell_m)
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
    promos += [
        Promotion("p-dairy", 5, segment="dairy"),
        Promotion("p-bakery", 15, segment="bakery"),
    ]
    return PromotionIndex(promos)


def positions_for(stores: list[Store], count: int, rng: random.Random) -> list[tuple[float, float]]:
    """Shopper positions uniformly inside random stores."""
    return [point_in_store(rng.choice(stores), rng) for _ in range(count)]


def time_near(index: DisplayIndex, points: list[tuple[float, float]]) -> float:
    """ns per ``near`` lookup for one pass over ``points``."""
    near = index.near
    start = time.perf_counter()
    for lat, lon in points:
        near(lat, lon, DEFAULT_RADIUS_M)
    return (time.perf_counter() - start) / len(points) * 1e9


def time_decide(
    index: DisplayIndex, promos: PromotionIndex, points: list[tuple[float, float]]
) -> float:
    """ns per full ``decide_offers`` call for one pass over ``points``."""
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
    return (time.perf_counter() - start) / len(points) * 1e9


@dataclass
class Prepared:
    """A built case, its inputs and its best timings so far."""

    case: Case
    index: DisplayIndex
    promos: PromotionIndex
    points: list[tuple[float, float]]
    build_s: float
    hits: int
    near_rounds: list[float] = field(default_factory=list)
    decide_rounds: list[float] = field(default_factory=list)


def prepare(case: Case, n_points: int, seed: int, cell_m: float) -> Prepared:
    """Build one case's index, promotions and positions."""
    rng = random.Random(seed)
    started = time.perf_counter()
    index, stores = build_displays(case, rng, cell_m)
    build_s = time.perf_counter() - started
    promos = build_promotions(math.ceil(case.displays / case.stores))
    points = positions_for(stores, n_points, rng)
    hits = sum(len(index.near(lat, lon, DEFAULT_RADIUS_M)) for lat, lon in points)
    return Prepared(case, index, promos, points, build_s, hits)


def measure_round(prepared: list[Prepared]) -> None:
    """Time every case once, interleaved so background load hits all cases alike."""
    gc.collect()
    gc.disable()
    try:
        for p in prepared:
            p.near_rounds.append(time_near(p.index, p.points))
            p.decide_rounds.append(time_decide(p.index, p.promos, p.points))
    finally:
        gc.enable()


def summarise(p: Prepared, base: Prepared, n_points: int) -> dict[str, Any]:
    """Figures for one case: best and median round; ratio of best rounds to the base, and
    the median over rounds of the same-round ratio (robust to load drifting between rounds).
    """
    return {
        "case": p.case.name,
        "displays": p.case.displays,
        "stores": p.case.stores,
        "store_m2": round(p.case.store_m2),
        "build_s": round(p.build_s, 3),
        "near_ns_per_position": round(min(p.near_rounds), 1),
        "near_ns_median": round(statistics.median(p.near_rounds), 1),
        "decide_ns_per_position": round(min(p.decide_rounds), 1),
        "decide_ns_median": round(statistics.median(p.decide_rounds), 1),
        "hits_per_position": round(p.hits / n_points, 3),
        "near_ratio_to_20": round(min(p.near_rounds) / min(base.near_rounds), 2),
        "near_ratio_round_median": round(
            statistics.median(a / b for a, b in zip(p.near_rounds, base.near_rounds, strict=True)),
            2,
        ),
        "decide_ratio_to_20": round(min(p.decide_rounds) / min(base.decide_rounds), 2),
    }


def run(quick: bool, seed: int = 7, cell_m: float = DEFAULT_CELL_M) -> dict[str, Any]:
    """Run every case; returns figures including ratios to the 20-display case."""
    n_points, repeats = (2_000, 10) if quick else (10_000, 30)
    prepared = []
    for number, case in enumerate(CASES, 1):
        log(f"[build {number}/{len(CASES)}] {case.name}: {case.displays:,} displays "
            f"in {case.stores} store(s)")  # fmt: skip
        prepared.append(prepare(case, n_points, seed, cell_m))
    for repeat in range(1, repeats + 1):
        if repeat == 1 or repeat % 5 == 0:
            log(f"[time {repeat}/{repeats}] {n_points:,} positions per case")
        measure_round(prepared)
    base = prepared[0]
    results = [summarise(p, base, n_points) for p in prepared]
    largest = max((r for r in results if r["case"] == "spread"), key=lambda r: r["displays"])
    return {
        "benchmark": "geo_lookup",
        "quick": quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "radius_m": DEFAULT_RADIUS_M,
        "cell_m": cell_m,
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
        f"{'case':<7} {'displays':>9} {'stores':>6} {'m2/store':>8} {'near ns/pos':>12} {'x20':>6} "
        f"{'median':>8} {'x20 rnd':>7} {'decide ns/pos':>14} {'x20':>6} "
        f"{'hits/pos':>9} {'build s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in report["results"]:
        lines.append(
            f"{r['case']:<7} {r['displays']:>9,} {r['stores']:>6} {r['store_m2']:>8,} "
            f"{r['near_ns_per_position']:>12,.0f} {r['near_ratio_to_20']:>6.2f} "
            f"{r['near_ns_median']:>8,.0f} {r['near_ratio_round_median']:>7.2f} "
            f"{r['decide_ns_per_position']:>14,.0f} {r['decide_ratio_to_20']:>6.2f} "
            f"{r['hits_per_position']:>9.3f} {r['build_s']:>8.2f}"
        )
    verdict = "meets" if report["meets_target"] else "MISSES"
    lines.append(
        f"spread 200,000 vs 20: {report['ratio_at_largest']:.2f}x ({verdict} target "
        f"<= {report['target_ratio']:.0f}x); radius {report['radius_m']} m, cell "
        f"{report['cell_m']} m, best of {report['repeats']} rounds of {report['positions']:,} "
        "positions"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer positions and repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cell-m", type=float, default=DEFAULT_CELL_M, help="grid cell size")
    args = parser.parse_args(argv)
    report = run(args.quick, args.seed, args.cell_m)
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
