"""``python -m bench.run --quick`` runs end to end and reports every section.

No performance assertions: the figures depend on the machine and its load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import kstreams_peer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 235  # the quick run takes ~2.5 min on a busy 2-core machine


def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    report = json.loads(out.read_text())
    for section in ("machine", "workload", "throughput", "latency", "recovery", "memory",
                    "geo"):
        assert section in report, section
    assert report["errors"] == []
    assert {"cpu_model", "cores", "python", "date"} <= set(report["machine"])

    results = report["throughput"]["results"]
    assert set(results) == {"storestream", "aiokafka", "quix", "faust", "exactly_once",
                            "storestream_keyless",
                            *kstreams_peer.VARIANTS}
    for name, peer in results.items():
        if name == "quix" and peer["status"] == "skipped":  # quixstreams is a bench extra
            continue
        if name == "exactly_once" and peer["status"] == "skipped":  # Tansu: no transactions
            continue
        if name in kstreams_peer.VARIANTS and peer["status"] == "skipped":  # Kafka only
            continue
        assert peer["status"] == "ok", (name, peer)
        assert peer["events"] > 0 and peer["events_per_s"] > 0 and peer["peak_rss_mb"] > 0

    assert report["latency"], "no latency row"
    for row in report["latency"].values():
        for name in ("storestream", "aiokafka"):
            trial = row[name]["per_trial"][0]
            assert trial["received"] > 0 and trial["redis_offers"] > 0, (name, row[name])
            assert row[name]["median_p50_ms"] > 0, (name, row[name])

    assert report["recovery"]["5000 customers"]["memory://"]["restart_s"] > 0
    assert report["memory"]["mb_per_100k_customers"] is not None
    assert report["geo"]["results"]
    assert "storestream" in done.stdout and "Throughput" in done.stdout
