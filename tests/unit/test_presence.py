"""Enter, exit and dwell at displays; inaccurate positions; dwell-gated promotions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.geo import Display, DisplayIndex
from core.offers import Promotion, PromotionIndex, decide_offers, parse_promotion
from core.presence import Presence, accurate

POS = "customers.locations"
A, B = ("s1", "101"), ("s1", "202")


def test_a_position_without_accuracy_or_within_the_limit_may_trigger_offers() -> None:
    assert accurate(None, 5.0) and accurate(5.0, 5.0) and not accurate(5.01, 5.0)
    assert accurate(250.0, 0.0)  # no limit configured


def test_entering_and_leaving_a_display_are_events_with_the_dwell() -> None:
    state = Presence()
    state, entered = state.moved("kris", 10.0, [A], POS, 0, 0)
    assert [e.to_record() for e in entered] == [
        {"uid": "kris", "store_id": "s1", "sku": "101", "event": "enter", "ts": 10.0}]
    state, nothing = state.moved("kris", 20.0, [A], POS, 0, 1)
    assert nothing == [] and state.stayed(A, 25.0) == 15.0
    state, moved = state.moved("kris", 42.5, [B], POS, 0, 2)
    assert [(e.kind, e.sku, e.dwell_s) for e in moved] == [("exit", "101", 32.5),
                                                           ("enter", "202", None)]
    assert state.stayed(A, 50.0) == -1.0
    again, replayed = state.moved("kris", 42.5, [B], POS, 0, 2)  # redelivered
    assert replayed == [] and again is state
    assert Presence.from_json(state.to_json()) == state


@given(st.lists(st.sets(st.sampled_from([A, B])), max_size=30))
def test_every_display_is_entered_and_left_in_turn_and_the_stays_add_up(
        walk: list[set[tuple[str, str]]]) -> None:
    state = Presence()
    kinds: dict[tuple[str, str], list[str]] = {A: [], B: []}
    for offset, here in enumerate(walk):
        state, events = state.moved("kris", float(offset), sorted(here), POS, 0, offset)
        for event in events:
            kinds[(event.store_id, event.sku)].append(event.kind)
    for key, seen in kinds.items():
        assert seen == ["enter", "exit"] * (len(seen) // 2) + ["enter"] * (len(seen) % 2)
        assert (key in state.near) == (len(seen) % 2 == 1)
    # The oracle: the display's current stay started at the last position before which the
    # shopper was not near it.
    for key in state.near:
        start = len(walk) - 1
        while start > 0 and key in walk[start - 1]:
            start -= 1
        assert state.near[key] == float(start)


def test_a_promotion_may_ask_the_shopper_to_dwell_before_its_offer() -> None:
    displays = DisplayIndex()
    displays.upsert(Display("101", 51.5, -0.1, store_id="s1"))
    promotions = PromotionIndex([Promotion("p-dwell", 10, sku="101", dwell_s=30.0)])

    def offers(stayed: float | None) -> list[str]:
        return [o.pid for o in decide_offers(
            "kris", 51.5, -0.1, 100.0, opted_out=False, tier=None, displays=displays,
            promotions=promotions, last_offered={},
            stayed=None if stayed is None else (lambda _display: stayed))]

    assert offers(None) == [] and offers(-1.0) == [] and offers(29.9) == []
    assert offers(30.0) == ["p-dwell"]


def test_dwell_is_read_from_the_promotion_record() -> None:
    assert parse_promotion({"pid": "p", "sku": "1", "discount_pct": 5,
                            "dwell_s": 45}).dwell_s == 45.0
    assert parse_promotion({"pid": "p", "sku": "1", "discount_pct": 5}).dwell_s == 0.0
    for bad in (-1, float("nan")):
        try:
            parse_promotion({"pid": "p", "sku": "1", "discount_pct": 5, "dwell_s": bad})
        except ValueError:
            continue
        raise AssertionError(f"dwell_s {bad!r} accepted")
