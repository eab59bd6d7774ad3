"""``python -m bench.run --quick`` on the session's Apache Kafka: every peer ``make test``
installs (storestream, the plain aiokafka loop, stock Faust) runs through the harness's outside
window, its changelog is read back, and its totals are checked: the run fails (exit 1, status
``error``) when any peer's totals are wrong.

No performance assertions: the figures depend on the machine and its load. The latency,
recovery and geo sections are skipped here (their own tests cover them; the quick run of all
sections takes minutes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.dev.devstack import DevStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 170  # ~45 s on a quiet host; a wrong peer waits 60 s for its changelog


@pytest.mark.timeout(TIMEOUT_S + 10)
def test_quick_bench_checks_every_peer(stack: DevStack, tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--skip", "latency,recovery,geo",
         "--attach", f"{stack.broker_url},{stack.redis_url}", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert report["broker"] == "kafka"
    assert {"cpu_model", "cores", "python", "date"} <= set(report["machine"])

    results = report["throughput"]["results"]
    assert set(results) == {"storestream", "aiokafka", "faust"}
    for name, peer in results.items():
        assert peer["status"] == "ok", (name, peer)
        assert peer["detail"]["totals_checked"] is True, name
        assert peer["events"] == report["workload"]["events"], name
        assert peer["detail"]["customers_read_back"] > 0, name
        assert peer["events_per_s"] > 0 and peer["seconds"] > 0, name
        assert peer["min_events_per_s"] <= peer["events_per_s"] <= peer["max_events_per_s"]
    pairs = {(p["ours"], p["peer"]): p for p in report["throughput"]["pairings"]}
    assert pairs[("storestream", "faust")]["ratio"] > 0
    assert "Throughput" in done.stdout and "Ratios, same store class" in done.stdout
