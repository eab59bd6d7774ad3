"""Rolling tiers (issue 22, criterion 2): with ``TIER_WINDOW_DAYS`` the tier follows spend
within the last N days of event time, a downgrade waits ``TIER_GRACE_DAYS``, and the state
stays bounded (daily buckets); the default (0) is the recipe's lifetime tier."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import load_settings
from core.loyalty import (
    TIER_CHANGED,
    Basket,
    LoyaltyRules,
    Purchase,
    Spend,
    Stamps,
    replay,
    view_spend,
)
from core.returns import Ledger, Return, apply_purchase_returnable, apply_return

INI = str(Path(__file__).resolve().parents[2] / "faust.ini")
DAY = 86_400.0
RANK = {"CLIMBING": 0, "BRONZE": 1, "SILVER": 2, "GOLD": 3}


def no_catalogue(_: str) -> tuple[tuple[float, int], ...]:
    return ()


def tiers(events: list) -> list[tuple[str, str, float]]:  # type: ignore[type-arg]
    return [(e.details["from"], e.details["to"], e.ts) for e in events if e.type == TIER_CHANGED]


def test_by_default_the_tier_is_lifetime_and_the_record_has_no_buckets() -> None:
    rules = load_settings({"STORESTREAM_CONFIG": INI}).loyalty
    assert rules.tier_window_days == 0 and rules.tier_grace_days == 0
    spend, *_ = replay([Purchase("k", "tv", 0.0, 50_000), Purchase("k", "tea", 900 * DAY, 100)],
                       no_catalogue, rules)
    assert spend.tier == "GOLD" and "days" not in spend.to_json()


def test_settings_come_from_the_environment() -> None:
    rules = load_settings({"STORESTREAM_CONFIG": INI, "TIER_WINDOW_DAYS": "365",
                           "TIER_GRACE_DAYS": "30"}).loyalty
    assert rules.tier_window_days == 365 and rules.tier_grace_days == 30.0


def test_spend_older_than_the_window_no_longer_counts_for_the_tier() -> None:
    rules = LoyaltyRules(tier_window_days=365)
    spend, _, _, events = replay([Purchase("k", "tv", 10.0, 50_000),
                                  Purchase("k", "tea", 400 * DAY, 100)], no_catalogue, rules)
    assert spend.tier == "CLIMBING"
    assert view_spend(spend, no_catalogue, rules).total_cents == 50_100  # total: lifetime
    assert tiers(events) == [("CLIMBING", "GOLD", 10.0), ("GOLD", "CLIMBING", 400 * DAY)]


def test_a_downgrade_waits_for_the_grace_and_an_upgrade_does_not() -> None:
    rules = LoyaltyRules(tier_window_days=365, tier_grace_days=30)
    history = [Purchase("k", "tv", 10.0, 50_000), Purchase("k", "tea", 366 * DAY, 100),
               Purchase("k", "tea", 390 * DAY, 100)]
    spend, _, _, events = replay(history, no_catalogue, rules)
    assert spend.tier == "GOLD" and spend.below_since == 366 * DAY
    assert view_spend(spend, no_catalogue, rules).tier == "GOLD"
    spend, _, _, events = replay([*history, Purchase("k", "tea", 396 * DAY, 100)],
                                 no_catalogue, rules)
    assert spend.tier == "CLIMBING" and spend.below_since == -1
    assert tiers(events)[-1] == ("GOLD", "CLIMBING", 396 * DAY)
    # back above within a grace: the grace is over, nothing was announced in between
    spend, _, _, events = replay([*history, Purchase("k", "tv", 391 * DAY, 50_000)],
                                 no_catalogue, rules)
    assert spend.tier == "GOLD" and spend.below_since == -1
    assert tiers(events) == [("CLIMBING", "GOLD", 10.0)]


def test_a_return_takes_the_spend_out_of_its_day_and_the_tier_drops() -> None:
    rules = LoyaltyRules(tier_window_days=30)
    out = apply_purchase_returnable(Purchase("k", "tv", 5 * DAY, 25_000, "tv"), 0, Spend(),
                                    Stamps(), Basket(), Ledger(), no_catalogue, rules)
    assert out.spend is not None and out.spend.tier == "BRONZE" and out.ledger is not None
    back = apply_return(Return("k", "tv", 6 * DAY), 0, out.spend, Stamps(),
                        out.basket or Basket(), out.ledger, no_catalogue, rules)
    assert back.spend is not None and back.spend.tier == "CLIMBING" and not back.spend.days


def test_state_stays_bounded_whatever_the_purchase_count() -> None:
    rules = LoyaltyRules(tier_window_days=365)
    purchases = [Purchase("k", "tea", i * 3_600.0, 100) for i in range(3 * 365 * 24)]
    spend, *_ = replay(purchases, no_catalogue, rules)
    assert len(spend.days) == 365
    assert sum(spend.days.values()) == 365 * 24 * 100


def window_oracle(bought: list[tuple[float, int]], now: float, window: int) -> int:
    """Spend within the window ending on the day of ``now``: written out, not imported."""
    today = int(now // DAY)
    return sum(cents for ts, cents in bought if today - window < int(ts // DAY) <= today)


def tier_oracle(cents: int) -> str:
    return ("GOLD" if cents > 40_000 else "SILVER" if cents > 30_000 else
            "BRONZE" if cents > 20_000 else "CLIMBING")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 40.0), st.integers(1, 30_000)), min_size=1,
                max_size=25), st.integers(1, 20), st.integers(0, 15))
def test_the_tier_never_drops_within_the_grace_and_follows_the_window_otherwise(
        steps: list[tuple[float, int]], window: int, grace: int) -> None:
    rules = LoyaltyRules(tier_window_days=window, tier_grace_days=grace)
    bought: list[tuple[float, int]] = []
    purchases, computed, ts = [], [], 0.0
    for gap_days, cents in steps:
        ts += gap_days * DAY
        purchases.append(Purchase("k", "tea", ts, cents))
        bought.append((ts, cents))
        computed.append((ts, tier_oracle(window_oracle(bought, ts, window))))
    spend, _, _, events = replay(purchases, no_catalogue, rules)
    held = "CLIMBING"
    for (at, tier_then), change in zip(computed, _changes_at(events, computed), strict=True):
        if change is None:  # no change: the window's tier, or a lower one still in grace
            assert RANK[tier_then] <= RANK[held]
            if tier_then != held:
                since = min(t for t, tier in computed if t <= at and all(
                    RANK[x] < RANK[held] for s, x in computed if t <= s <= at))
                assert at - since < grace * DAY
            continue
        old, new = change
        assert old == held
        if RANK[new] > RANK[old]:
            assert new == tier_then  # an upgrade: at once, to the window's tier
        else:
            assert new == tier_then
            # below the old tier for at least the grace: every computed tier since then
            since = min(t for t, tier in computed if t <= at and all(
                RANK[x] < RANK[old] for s, x in computed if t <= s <= at))
            assert at - since >= grace * DAY
        held = new
    assert spend.tier == held


def _changes_at(events: list, computed: list) -> list:  # type: ignore[type-arg]
    """The tier change of each purchase (``None``: none), in purchase order."""
    changes = iter(tiers(events))
    out = []
    pending = next(changes, None)
    for at, _ in computed:
        if pending is not None and pending[2] == at:
            out.append((pending[0], pending[1]))
            pending = next(changes, None)
        else:
            out.append(None)
    return out
