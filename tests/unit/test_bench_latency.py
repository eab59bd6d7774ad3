"""How the latency benchmark summarises its runs (pure arithmetic, no broker)."""

from __future__ import annotations

import pytest

from bench.latency import HISTOGRAM_MS, histogram, peer_order, percentile, quiet, ratio, summarise
from bench.procstat import steal_percent

pytestmark = pytest.mark.timeout(30)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) == 0.0


def test_each_peer_reports_the_median_of_its_per_trial_p99s_with_every_trial() -> None:
    trials = [{"p50_ms": 30.0, "p99_ms": 214.0}, {"p50_ms": 28.0, "p99_ms": 65.0},
              {"p50_ms": 33.0, "p99_ms": 118.0}, {"p50_ms": 29.0, "p99_ms": 90.0},
              {"p50_ms": 31.0, "p99_ms": 100.0}]
    summary = summarise(trials)
    assert summary["median_p99_ms"] == 100.0
    assert summary["min_max_p99_ms"] == [65.0, 214.0]
    assert summary["median_p50_ms"] == 30.0
    assert summary["per_trial"] == trials and summary["ok_trials"] == 5


def test_a_failed_trial_is_listed_but_never_counted() -> None:
    trials = [{"error": "worker never ready"}, {"p50_ms": 20.0, "p99_ms": 40.0}]
    summary = summarise(trials)
    assert summary["median_p99_ms"] == 40.0 and summary["trials"] == 2
    assert summary["ok_trials"] == 1
    assert "median_p99_ms" not in summarise([{"error": "boom"}])


def test_the_quiet_median_leaves_out_trials_with_host_steal() -> None:
    trials = [{"p99_ms": 60.0, "steal_percent": 1.0}, {"p99_ms": 900.0, "steal_percent": 30.0},
              {"p99_ms": 70.0, "steal_percent": 4.9}]
    summary = summarise(trials)
    assert summary["quiet_trials"] == 2 and summary["quiet_median_p99_ms"] == 65.0
    assert summary["median_p99_ms"] == 70.0
    assert quiet({"p99_ms": 50.0}) and not quiet({"error": "boom"})


def test_ratios_are_between_medians_of_the_same_run() -> None:
    row = {"storestream": {"median_p99_ms": 120.0}, "aiokafka": {"median_p99_ms": 100.0}}
    assert ratio(row, "storestream", "aiokafka", "p99_ms") == 1.2
    assert ratio(row, "rules-on", "rules-off", "p99_ms") is None


def test_peers_take_turns_forward_then_reverse() -> None:
    names = ["a", "b", "c"]
    assert [peer_order(names, t) for t in range(3)] == [names, ["c", "b", "a"], names]
    assert [peer_order(["s", "k"], t)[0] for t in range(4)] == ["s", "k", "s", "k"]


def test_histogram_buckets_by_upper_edge_with_an_open_last_bucket() -> None:
    counts = histogram([0.5, 1.0, 1.5, 4.0, 10_000.0])
    assert len(counts) == len(HISTOGRAM_MS) + 1
    assert counts[0] == 2 and counts[1] == 1 and counts[2] == 1 and counts[-1] == 1
    assert sum(counts) == 5


def test_steal_is_the_stolen_share_of_all_cpu_ticks() -> None:
    assert steal_percent((100, 10_000), (150, 11_000)) == 5.0
    assert steal_percent((100, 10_000), (100, 10_000)) == 0.0
