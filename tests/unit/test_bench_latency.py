"""How the latency benchmark summarises its runs (pure arithmetic, no broker)."""

from __future__ import annotations

from bench.latency import median_trial, percentile, quiet, rounds_needed, trial_order
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


def test_median_is_over_the_quiet_trials_when_at_least_two_are_quiet() -> None:
    trials = [{"p50_ms": 30.0, "p99_ms": 60.0, "steal_percent": 1.0},
              {"p50_ms": 90.0, "p99_ms": 900.0, "steal_percent": 30.0},
              {"p50_ms": 31.0, "p99_ms": 70.0, "steal_percent": 4.9},
              {"p50_ms": 80.0, "p99_ms": 400.0, "steal_percent": 20.0}]
    chosen = median_trial(trials)
    assert chosen["p99_ms"] == 60.0 and chosen["quiet_trials"] == 2
    assert not chosen["disturbed"]
    assert chosen["trials_steal_percent"] == [1.0, 30.0, 4.9, 20.0]


def test_too_few_quiet_trials_use_them_all_and_say_so() -> None:
    trials = [{"p50_ms": 30.0, "p99_ms": 60.0, "steal_percent": 1.0},
              {"p50_ms": 90.0, "p99_ms": 900.0, "steal_percent": 30.0},
              {"p50_ms": 80.0, "p99_ms": 400.0, "steal_percent": 20.0}]
    chosen = median_trial(trials)
    assert chosen["p99_ms"] == 400.0 and chosen["disturbed"] and chosen["quiet_trials"] == 1


def test_another_round_runs_until_each_peer_has_enough_quiet_trials() -> None:
    calm, stormy = {"p99_ms": 50.0, "steal_percent": 2.0}, {"p99_ms": 500.0, "steal_percent": 9.0}
    assert quiet(calm) and not quiet(stormy) and not quiet({"error": "boom"})
    assert quiet({"p99_ms": 50.0})  # no steal reading (not Linux): counts as quiet
    runs = {"storestream": [calm, calm, stormy], "aiokafka": [calm, stormy, stormy]}
    assert rounds_needed(runs, 2)
    runs["aiokafka"].append(calm)
    assert not rounds_needed(runs, 2)
    assert not rounds_needed(runs, 0)
