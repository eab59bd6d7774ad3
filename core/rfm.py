"""RFM: recency, frequency and monetary scores (1-5) and a named segment per customer.

Recency is the days between the customer's newest purchase (event time) and "now" (the
position's event time when an offer is decided, the wall clock when the web view answers);
frequency the purchases counted (returns take theirs back); monetary the spend in cents.
Each score is 5 for the best fifth of customers and 1 for the worst, by four boundaries: the
configured ones, or quintiles learnt from the customers a worker holds
(:func:`learn_boundaries`, refreshed periodically by the worker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

DAY_S = 86_400.0

CHAMPIONS = "champions"
LOYAL = "loyal"
NEW = "new"
POTENTIAL = "potential_loyalist"
AT_RISK = "at_risk"
HIBERNATING = "hibernating"
NEEDS_ATTENTION = "needs_attention"
SEGMENTS = (CHAMPIONS, LOYAL, NEW, POTENTIAL, AT_RISK, HIBERNATING, NEEDS_ATTENTION)


@dataclass(frozen=True, slots=True)
class RfmBoundaries:
    """Four ascending boundaries per measure. Recency: days since the newest purchase (at or
    below the first: score 5); frequency and monetary: above the last: score 5."""

    recency_days: tuple[float, float, float, float] = (7.0, 30.0, 90.0, 180.0)
    frequency: tuple[float, float, float, float] = (1.0, 2.0, 4.0, 8.0)
    monetary_cents: tuple[float, float, float, float] = (5_000.0, 15_000.0, 30_000.0,
                                                         60_000.0)

    def __post_init__(self) -> None:
        for cuts in (self.recency_days, self.frequency, self.monetary_cents):
            if len(cuts) != 4 or list(cuts) != sorted(cuts):
                raise ValueError(f"RFM boundaries must be four ascending numbers: {cuts!r}")


class Rfm(NamedTuple):
    """A customer's scores (1-5) and segment."""

    recency: int
    frequency: int
    monetary: int
    segment: str


def score_higher_better(value: float, cuts: Sequence[float]) -> int:
    """1 + how many boundaries ``value`` is above."""
    return 1 + sum(1 for cut in cuts if value > cut)


def score_recency(days: float, cuts: Sequence[float]) -> int:
    """5 for the most recent, 1 for the longest away."""
    return 5 - sum(1 for cut in cuts if days > cut)


def segment_of(r: int, f: int, m: int) -> str:
    """The named segment of scores (first rule that holds)."""
    if r >= 4 and f >= 4 and m >= 4:
        return CHAMPIONS
    if r >= 3 and f >= 4:
        return LOYAL
    if r >= 4 and f <= 1:
        return NEW
    if r >= 3 and f >= 2:
        return POTENTIAL
    if r <= 2 and f >= 3:
        return AT_RISK
    if r <= 2:
        return HIBERNATING
    return NEEDS_ATTENTION


def rfm_of(newest_ts: float, purchases: int, spend_cents: int, now: float,
           cuts: RfmBoundaries) -> Rfm:
    """Scores and segment of one customer at ``now`` (event time or wall clock, seconds)."""
    days = max(now - newest_ts, 0.0) / DAY_S
    r = score_recency(days, cuts.recency_days)
    f = score_higher_better(purchases, cuts.frequency)
    m = score_higher_better(spend_cents, cuts.monetary_cents)
    return Rfm(r, f, m, segment_of(r, f, m))


def quintile_cuts(values: Sequence[float]) -> tuple[float, float, float, float] | None:
    """The 20th, 40th, 60th and 80th percentiles (nearest rank) of ``values``; ``None``
    when there are fewer than five."""
    if len(values) < 5:
        return None
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: int) -> float:
        return ordered[max(-(-p * n // 100) - 1, 0)]

    return rank(20), rank(40), rank(60), rank(80)


def learn_boundaries(customers: Sequence[tuple[float, int, int]], now: float,
                     fallback: RfmBoundaries) -> RfmBoundaries:
    """Quintile boundaries from ``(newest_ts, purchases, spend_cents)`` of a population;
    each measure keeps ``fallback``'s boundaries when fewer than five customers are known."""
    recency = quintile_cuts([max(now - ts, 0.0) / DAY_S for ts, _, _ in customers])
    frequency = quintile_cuts([float(n) for _, n, _ in customers])
    monetary = quintile_cuts([float(c) for _, _, c in customers])
    return RfmBoundaries(recency or fallback.recency_days, frequency or fallback.frequency,
                         monetary or fallback.monetary_cents)


def parse_segments(value: object) -> frozenset[str] | None:
    """A promotion's ``segment_rfm``: one segment name, a comma-separated list or a list;
    ``None``/blank: no restriction. Raises ``ValueError`` for an unknown name."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list | tuple):
        raise ValueError(f"segment_rfm must be a segment name or a list, got {value!r}")
    chosen = frozenset(str(n).strip().lower() for n in names if str(n).strip())
    if not chosen:
        return None
    unknown = chosen - set(SEGMENTS)
    if unknown:
        raise ValueError(f"unknown RFM segment(s) {sorted(unknown)}; known: {list(SEGMENTS)}")
    return chosen
