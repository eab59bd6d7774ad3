"""Control group by a stable hash of the uid; per-promotion figures, conversion and lift."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from core.lift import Figures, combine, in_control_group, lift, summary

UIDS = [f"shopper-{n}" for n in range(20_000)]


def test_no_shopper_is_held_out_by_default() -> None:
    assert not any(in_control_group(uid, 0) for uid in UIDS)


def test_about_the_configured_share_of_shoppers_is_held_out_and_always_the_same() -> None:
    held = [uid for uid in UIDS if in_control_group(uid, 10)]
    assert 0.09 < len(held) / len(UIDS) < 0.11
    assert held == [uid for uid in UIDS if in_control_group(uid, 10)]  # stable
    assert set(held) <= {uid for uid in UIDS if in_control_group(uid, 25)}  # nested
    assert all(in_control_group(uid, 100) for uid in UIDS[:100])


def test_lift_is_the_relative_gain_in_conversion_with_a_95_percent_interval() -> None:
    # 10% of 1,000 sent offers converted against 5% of 1,000 held out: lift +100%; the log
    # method's interval, worked by hand: se = sqrt(1/100 - 1/1000 + 1/50 - 1/1000) = 0.167332,
    # 2 * exp(-/+ 1.959964 * 0.167332) - 1 = 2 * (0.720388, 1.388140) - 1 = 0.4408 .. 1.7763.
    found = lift(100, 1000, 50, 1000)
    assert found is not None
    assert math.isclose(found[0], 1.0)
    assert math.isclose(found[1], 0.4408, abs_tol=1e-4)
    assert math.isclose(found[2], 1.7763, abs_tol=1e-4)


def test_lift_is_unknown_until_both_groups_have_converted() -> None:
    assert lift(10, 100, 0, 100) is None and lift(0, 100, 3, 100) is None
    assert lift(5, 100, 5, 0) is None


@given(st.integers(1, 500), st.integers(0, 500), st.integers(1, 500), st.integers(0, 500))
def test_the_interval_holds_the_lift(x_t: int, extra_t: int, x_c: int, extra_c: int) -> None:
    found = lift(x_t, x_t + extra_t, x_c, x_c + extra_c)
    assert found is not None
    estimate, low, high = found
    assert low <= estimate + 1e-12 and estimate <= high + 1e-12
    assert low > -1.0


def test_a_promotion_summary_has_each_group_revenue_and_lift() -> None:
    figures = Figures(sent=200, held_out=100, sent_redeemed=40, held_out_redeemed=10,
                      sent_redemptions=45, held_out_redemptions=11,
                      sent_revenue_cents=12_345, held_out_revenue_cents=2_000)
    doc = summary("p1", figures)
    assert doc["sent"] == {"offers": 200, "redeemed": 40, "redemptions": 45,
                           "conversion": 0.2, "revenue_cents": 12_345}
    assert doc["held_out"] == {"offers": 100, "redeemed": 10, "redemptions": 11,
                               "conversion": 0.1, "revenue_cents": 2_000}
    assert doc["lift"] == 1.0 and doc["lift_ci95"][0] < 1.0 < doc["lift_ci95"][1]
    assert summary("p2", Figures())["lift"] is None


figures_st = st.builds(Figures, *(st.integers(0, 10_000) for _ in range(8)))


@given(st.lists(figures_st, max_size=6), st.randoms())
def test_figures_of_every_partition_combine_in_any_order(parts: list[Figures],
                                                         rnd: object) -> None:
    shuffled = list(parts)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert combine(parts) == combine(shuffled)
    assert combine(parts).sent == sum(p.sent for p in parts)
    for part in parts:
        assert Figures.from_json(part.to_json()) == part


def test_counting_an_offer_and_its_redemptions() -> None:
    figures = Figures().offered(False).offered(True)
    figures = figures.redeemed(False, 499, first=True).redeemed(False, 100, first=False)
    assert figures == Figures(sent=1, held_out=1, sent_redeemed=1, sent_redemptions=2,
                              sent_revenue_cents=599)
