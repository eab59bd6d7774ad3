"""The throughput harness's pure parts: changelog decoders, the oracle's totals, the rows made of
runs (a wrong run leaves its peer without a figure), the same-store ratios, and the generated
RESULTS.md section. Expected values are written out by hand here."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import outside, report
from bench.peers import summarise
from bench.run import pairings
from bench.workload import Workload

pytestmark = pytest.mark.timeout(30)


def _workload(*events: dict[str, Any]) -> Workload:
    purchases = [(str(e["user_id"]).encode(), orjson.dumps(e)) for e in events]
    return Workload(len(purchases), 2, 1, purchases, [])


def test_oracle_prices_catalogue_purchases_and_counts_coffee() -> None:
    mid = 1_767_225_600.0 + 15 * 86_400.0  # the coffee price rise (2.50 -> 2.75)
    workload = _workload(
        {"user_id": "a", "product_id": "coffee", "ts": mid - 1},
        {"user_id": "a", "product_id": "coffee", "ts": mid + 1},
        {"user_id": "a", "product_id": "tea", "ts": mid, "price": 1.6},
        {"user_id": "b", "product_id": "sandwich", "ts": mid + 5},
    )
    assert outside.expected_static(workload) == {"a": (250 + 250 + 160, 2), "b": (450, 0)}
    assert outside.expected_as_of(workload) == {"a": (250 + 275 + 160, 2), "b": (450, 0)}


def test_decoders_fold_each_peers_changelog_into_cents_and_coffees() -> None:
    state: outside.State = {}
    outside.decode_pair("t", b"a", b"[12.3,2]", state)
    outside.decode_pair("t", b"a", b"[14.8,3]", state)  # the latest value wins
    assert state == {"a": [1480, 3]}

    quix: outside.State = {}
    outside.decode_quix("changelog__g--t--default", b"b|\"totals\"", b"[2.5,1]", quix)
    assert quix == {"b": [250, 1]}

    faust: outside.State = {}
    decode = outside.decode_two_tables(outside.json_number)
    decode("app-spend-changelog", b'"c"', b"7.25", faust)
    decode("app-coffee-changelog", b'"c"', b"2", faust)
    assert faust == {"c": [725, 2]}

    kstreams: outside.State = {}
    decode = outside.decode_two_tables(outside.long_be)
    decode("x.kstreams-spend-changelog", b"d", struct.pack(">q", 1234), kstreams)
    decode("x.kstreams-coffee-changelog", b"d", struct.pack(">q", 5), kstreams)
    assert kstreams == {"d": [1234, 5]}

    ours: outside.State = {}
    mid = 1_767_225_600.0 + 15 * 86_400.0
    spend = {"settled_cents": 400, "pending": [[mid - 10, "coffee"], [mid + 10, "coffee"]]}
    outside.decode_storestream("app-spend-changelog", b"e", orjson.dumps(spend), ours)
    outside.decode_storestream("app-stamps-changelog", b"e", b'{"total":2}', ours)
    assert ours == {"e": [400 + 250 + 275, 2]}


def test_compare_names_what_differs() -> None:
    assert outside.compare({"a": (1, 0)}, {"a": (1, 0)}) is None
    wrong = outside.compare({"a": (1, 0), "z": (3, 0)}, {"a": (2, 0), "b": (5, 1)})
    assert wrong is not None
    assert "1 customers missing ['b']" in wrong and "1 unexpected ['z']" in wrong
    assert "a: (1, 0) != (2, 0)" in wrong


def _run(rate: float, status: str = "ok") -> dict[str, Any]:
    return {"peer": "p", "status": status, "events": 100, "seconds": 100 / rate if rate else 0,
            "events_per_s": rate, "cpu_percent": 50.0, "cpu_us_per_event": 1e6 / max(rate, 1),
            "peak_rss_mb": rate / 100, "startup_s": 1.0, "produce_s": 1.0, "complete": True,
            "detail": {"error": "wrong totals"} if status == "error" else {}}


def test_a_row_is_the_median_run_with_min_and_max() -> None:
    row = summarise("p", [_run(300.0), _run(100.0), _run(200.0)])
    assert row["status"] == "ok"
    assert (row["events_per_s"], row["min_events_per_s"], row["max_events_per_s"]) == (
        200.0, 100.0, 300.0)
    assert row["peak_rss_mb"] == 3.0 and row["run_count"] == 3


def test_a_peer_wrong_in_any_run_gets_no_figure() -> None:
    row = summarise("p", [_run(300.0), _run(0.0, "error"), _run(200.0)])
    assert row["status"] == "error"
    assert row["events_per_s"] == 0.0
    assert row["detail"]["error"] == "wrong totals"


def _row(rate: float) -> dict[str, Any]:
    return {"status": "ok", "events_per_s": rate, "min_events_per_s": rate * 0.9,
            "max_events_per_s": rate * 1.1}


def test_ratios_pair_the_same_store_class_with_their_targets() -> None:
    results = {"storestream": _row(100.0), "storestream-rocksdb": _row(60.0),
               "storestream_loyalty_on": _row(70.0), "quix-memory": _row(50.0),
               "quix": _row(80.0), "kstreams-rocksdb": _row(100.0),
               "faust": {"status": "error", "detail": {"error": "x"}}}
    pairs = {(p["ours"], p["peer"]): p for p in pairings(results)}
    assert pairs[("storestream", "quix-memory")]["ratio"] == 2.0
    assert pairs[("storestream", "quix-memory")]["met"] is True
    assert pairs[("storestream-rocksdb", "quix")]["ratio"] == 0.75
    assert pairs[("storestream-rocksdb", "quix")]["met"] is False
    assert pairs[("storestream-rocksdb", "kstreams-rocksdb")]["met"] is True  # 0.6 >= 0.5
    assert pairs[("storestream", "faust")]["ratio"] is None
    assert ("storestream", "quix") not in pairs  # memory against RocksDB: never paired
    loyalty = pairs[("storestream_loyalty_on", "storestream")]
    assert loyalty["ratio"] == 0.7 and loyalty["met"] is False  # target 0.8
    assert loyalty["ratio_range"] == [round(63 / 110, 3), round(77 / 90, 3)]


def test_results_md_keeps_the_history_below_the_generated_section(tmp_path: Path) -> None:
    results = {"storestream": {**_row(100.0), "seconds": 10.0, "cpu_percent": 90.0,
                               "cpu_us_per_event": 9.0, "peak_rss_mb": 80.0, "detail": {}},
               "quix": {"status": "error", "detail": {"error": "wrong totals in the changelog"}}}
    data = {"quick": False, "broker": "kafka", "runtime_s": 60.0,
            "machine": {"date": "2026-12-06T07:00:00+00:00", "cpu_model": "cpu", "cores": 2,
                        "python": "3.11", "loadavg_start": [1.0], "loadavg_end": [2.0]},
            "workload": {"events": 1000, "customers": 10, "partitions": 2, "runs": 3},
            "throughput": {"results": results, "pairings": pairings(results)}, "errors": []}
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nintro\n\n# Lab notes\n\n## an old run\n\nnotes\n")
    charts = tmp_path / "charts"
    report.write(data, md, charts)
    first = md.read_text()
    assert first.startswith("# Results\n\nintro\n\n" + report.BEGIN)
    assert "## an old run\n\nnotes" in first.split(report.END, 1)[1]
    assert "**100**" in first and "error: wrong totals in the changelog" in first
    if report.can_draw():  # matplotlib: the bench extra
        assert (charts / "throughput.png").stat().st_size > 0
        assert "![throughput per peer](results/throughput.png)" in first
    else:
        assert report.NO_CHARTS in first and not (charts / "throughput.png").exists()
    results["storestream"].update(events_per_s=123.0, max_events_per_s=130.0)
    report.write(data, md, charts)  # regenerated in place, history kept once
    second = md.read_text()
    assert second.count(report.BEGIN) == 1 and second.count("## an old run") == 1
    assert "**123**" in second


def test_latency_distributions_from_samples_histograms_or_percentiles(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench import latency

    assert report.distribution({"samples_ms": [3.0, 1.0, 2.0, 4.0]}) == (
        [1.0, 2.0, 3.0, 4.0], [25.0, 50.0, 75.0, 100.0])
    monkeypatch.setattr(latency, "HISTOGRAM_MS", (10, 20), raising=False)
    peer = {"median_p99_ms": 30.0, "per_trial": [{"histogram": [1, 2, 1]},
                                                 {"histogram": [3, 2, 1]}]}
    assert report.distribution(peer) == ([10.0, 20.0], [40.0, 80.0])
    assert report.distribution({"median_p50_ms": 5.0, "median_p99_ms": 9.0}) == (
        [5.0, 9.0], [50.0, 99.0])
    data = {"latency": {"500/s": {"storestream": peer, "aiokafka": {"p99_ms": 8.0}}}}
    text = report.write_latency(data, tmp_path)
    assert text is not None and "| 500/s | storestream | - | - | 30.0 |" in text
    assert (tmp_path / "latency.png").exists() == report.can_draw()


def _rss_kb() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_held_workload_records_occupy_about_their_length() -> None:
    from bench.workload import held_json

    event = {"user_id": "c000001", "product_id": "coffee", "purchase_id": "p00000001",
             "ts": 1_767_225_600.125}
    assert held_json(event) == b'{"user_id":"c000001","product_id":"coffee",' \
        b'"purchase_id":"p00000001","ts":1767225600.125}'
    before = _rss_kb()
    held = [held_json({**event, "n": n}) for n in range(100_000)]
    grown_mb = (_rss_kb() - before) / 1024
    assert len(held) == 100_000
    assert grown_mb < 60, f"100,000 held records of ~100 bytes took {grown_mb:.0f} MB"
