"""How the latency benchmark summarises its runs (pure arithmetic, no broker)."""

from __future__ import annotations

from bench.latency import median_trial, percentile, trial_order
from bench.procstat import steal_percent


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 99) == 0.0


def test_each_peer_reports_its_median_p99_trial_with_every_trial_listed() -> None:
    trials = [{"p50_ms": 30.0, "p99_ms": 214.0}, {"p50_ms": 28.0, "p99_ms": 65.0},
              {"p50_ms": 33.0, "p99_ms": 118.0}]
    chosen = median_trial(trials)
    assert chosen["p99_ms"] == 118.0 and chosen["p50_ms"] == 33.0
    assert chosen["trials"] == 3
    assert chosen["trials_p99_ms"] == [214.0, 65.0, 118.0]


def test_a_failed_trial_is_listed_but_never_chosen() -> None:
    trials = [{"error": "worker never ready"}, {"p50_ms": 20.0, "p99_ms": 40.0}]
    chosen = median_trial(trials)
    assert chosen["p99_ms"] == 40.0 and chosen["trials_p99_ms"] == [None, 40.0]
    assert median_trial([{"error": "boom"}]) == {"error": "boom"}


def test_peers_take_turns_in_abba_order() -> None:
    firsts = [trial_order(t)[0] for t in range(6)]
    assert firsts == ["storestream", "aiokafka", "aiokafka", "storestream",
                      "storestream", "aiokafka"]
    assert all(set(trial_order(t)) == {"storestream", "aiokafka"} for t in range(6))


def test_steal_is_the_stolen_share_of_all_cpu_ticks() -> None:
    assert steal_percent((100, 10_000), (150, 11_000)) == 5.0
    assert steal_percent((100, 10_000), (100, 10_000)) == 0.0
