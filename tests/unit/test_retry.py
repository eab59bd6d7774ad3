"""Unit tests for core.retry: backoff schedule shape, caps and jitter bounds."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.retry import RetryPolicy, delay, delays, max_total_delay

policies = st.builds(
    RetryPolicy,
    attempts=st.integers(min_value=1, max_value=40),
    base_s=st.floats(min_value=0, max_value=10, allow_nan=False, allow_infinity=False),
    factor=st.floats(min_value=1, max_value=1e6, allow_nan=False, allow_infinity=False),
    max_delay_s=st.floats(min_value=0, max_value=60, allow_nan=False, allow_infinity=False),
    jitter=st.floats(min_value=0, max_value=1, allow_nan=False, allow_infinity=False),
)


@given(policies, st.integers())
def test_delays_non_negative_capped_and_counted(policy: RetryPolicy, seed: int) -> None:
    waits = delays(policy, random.Random(seed))
    assert len(waits) == policy.attempts - 1
    assert all(0 <= w <= policy.max_delay_s for w in waits)
    assert all(math.isfinite(w) for w in waits)
    assert sum(waits) <= max_total_delay(policy) + 1e-9


@given(policies, st.integers())
def test_jitter_stays_within_fraction(policy: RetryPolicy, seed: int) -> None:
    waits = delays(policy, random.Random(seed))
    for i, wait in enumerate(waits):
        nominal = min(policy.base_s * policy.factor**i, policy.max_delay_s)
        low = nominal * (1 - policy.jitter)
        high = min(nominal * (1 + policy.jitter), policy.max_delay_s)
        assert low - 1e-9 <= wait <= high + 1e-9


@given(
    attempts=st.integers(min_value=1, max_value=30),
    base_s=st.floats(min_value=0, max_value=5, allow_nan=False),
    factor=st.floats(min_value=1, max_value=10, allow_nan=False),
    max_delay_s=st.floats(min_value=0, max_value=100, allow_nan=False),
)
def test_without_jitter_delays_are_exactly_geometric(
    attempts: int, base_s: float, factor: float, max_delay_s: float
) -> None:
    policy = RetryPolicy(attempts, base_s, factor, max_delay_s, jitter=0)
    assert delays(policy) == [min(base_s * factor**i, max_delay_s) for i in range(attempts - 1)]


def test_default_policy_schedule() -> None:
    assert delays(RetryPolicy(jitter=0)) == [0.1, 0.2, 0.4, 0.8]
    assert delays(RetryPolicy(attempts=8, jitter=0))[-3:] == [1.6, 2.0, 2.0]
    assert delays(RetryPolicy(attempts=1)) == []


def test_seeded_rng_is_reproducible() -> None:
    policy = RetryPolicy(attempts=6)
    assert delays(policy, random.Random(7)) == delays(policy, random.Random(7))


def test_huge_exponent_does_not_overflow() -> None:
    waits = delays(RetryPolicy(attempts=3000, base_s=1, factor=10, max_delay_s=3, jitter=0))
    assert waits[-1] == 3.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": 1.5},
        {"base_s": -1},
        {"factor": 0.5},
        {"max_delay_s": math.inf},
        {"jitter": 1.5},
        {"jitter": math.nan},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises((ValueError, TypeError)):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@given(policies, st.integers(min_value=0, max_value=10_000), st.integers())
def test_open_ended_delay_is_capped_and_within_jitter(policy: RetryPolicy, index: int,
                                                      seed: int) -> None:
    """A caller that retries for as long as it takes waits at most max_delay_s per retry,
    however many retries came before (attempts is no limit)."""
    wait = delay(policy, index, random.Random(seed))
    assert 0 <= wait <= policy.max_delay_s and math.isfinite(wait)
    try:
        plain = min(policy.base_s * policy.factor**index, policy.max_delay_s)
    except OverflowError:
        plain = policy.max_delay_s
    assert plain * (1 - policy.jitter) - 1e-9 <= wait <= plain * (1 + policy.jitter) + 1e-9


def test_open_ended_delay_grows_then_stays_at_the_cap() -> None:
    policy = RetryPolicy(base_s=0.2, factor=2, max_delay_s=5, jitter=0)
    assert [delay(policy, i) for i in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert delay(policy, 10**6) == 5.0
    with pytest.raises(ValueError):
        delay(policy, -1)
