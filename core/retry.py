"""Retry schedules: exponential backoff with a cap and proportional jitter.

Pure: no I/O, no sleeping, no clock. :func:`delays` only computes how long to wait
between attempts; the caller (e.g. ``app.delivery.sinks.deliver_with_retry``) does the
waiting and decides which failures are worth another attempt.

For ``attempts`` tries there are ``attempts - 1`` waits. Wait ``i`` (0-based) is
``base_s * factor ** i`` capped at ``max_delay_s``, then scaled by a uniform factor
in ``[1 - jitter, 1 + jitter]`` and capped again, so every wait lies in
``[0, max_delay_s]`` and the worst-case total wait is ``(attempts - 1) * max_delay_s``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["RetryPolicy", "delay", "delays", "max_total_delay"]

_RNG = random.Random()


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    ``attempts`` counts every try including the first (1 means never retry);
    ``jitter`` is a fraction of each delay (0.2 = +/-20%).
    """

    attempts: int = 5
    base_s: float = 0.1
    factor: float = 2.0
    max_delay_s: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, not {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, not {self.attempts}")
        for name in ("base_s", "factor", "max_delay_s", "jitter"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, not {value!r}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, not {self.factor}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be in [0, 1], not {self.jitter}")


def _backoff(policy: RetryPolicy, index: int) -> float:
    """The un-jittered delay before retry ``index + 1``: geometric, capped."""
    try:
        raw = policy.base_s * policy.factor**index
    except OverflowError:
        return float(policy.max_delay_s)
    return float(min(raw, policy.max_delay_s))


def delay(policy: RetryPolicy, index: int, rnd: random.Random | None = None) -> float:
    """The wait (seconds) before retry ``index + 1`` of a caller that retries for as long as
    it takes (``policy.attempts`` is not a limit here): geometric, capped, jittered, always in
    ``[0, policy.max_delay_s]``."""
    if index < 0:
        raise ValueError(f"index must be >= 0, not {index}")
    wait = _backoff(policy, index)
    if policy.jitter:
        wait *= 1.0 + (rnd if rnd is not None else _RNG).uniform(-policy.jitter, policy.jitter)
    return min(max(wait, 0.0), float(policy.max_delay_s))


def delays(policy: RetryPolicy, rnd: random.Random | None = None) -> list[float]:
    """The ``policy.attempts - 1`` waits (seconds) between consecutive attempts.

    Each is non-negative and at most ``policy.max_delay_s``; with ``jitter == 0``
    they are exactly ``min(base_s * factor**i, max_delay_s)``. Pass ``rnd`` for a
    reproducible sequence.
    """
    return [delay(policy, index, rnd) for index in range(policy.attempts - 1)]


def max_total_delay(policy: RetryPolicy) -> float:
    """Upper bound of ``sum(delays(policy))`` whatever the jitter draws."""
    return sum(min(_backoff(policy, i) * (1.0 + policy.jitter), policy.max_delay_s)
               for i in range(policy.attempts - 1))
