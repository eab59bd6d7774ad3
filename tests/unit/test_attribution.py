"""Attribution of purchases to offers: the rule, the order of the two topics, replays."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from core.attribution import MAX_OFFERS, AttributionState, OfferMark, PurchaseMark, Where

WINDOW = 7200.0
POS = "customers.locations"
BUY = "purchases"


def offer(offer_id: str, ts: float, sku: str = "101", segment: str | None = None,
          pid: str = "p1") -> OfferMark:
    return OfferMark(offer_id, pid, sku, ts, promo_sku=None if segment else sku,
                     segment=segment)


def buy(ref: str, ts: float, sku: str = "101", cents: int = 499,
        segments: tuple[str, ...] = ()) -> PurchaseMark:
    return PurchaseMark(ref, sku, ts, cents, segments)


def run(events: list[tuple[str, object]], state: AttributionState | None = None,
        ) -> tuple[AttributionState, list[dict[str, object]]]:
    """Apply ("pos", (offset, ts, offers)) and ("buy", (offset, purchase)) events in order."""
    state = state or AttributionState()
    out: list[dict[str, object]] = []
    for kind, body in events:
        if kind == "pos":
            offset, ts, offers = body  # type: ignore[misc]
            state, emitted = state.with_position("kris", ts, offers, Where(POS, 0, offset),
                                                 WINDOW)
        else:
            offset, purchase = body  # type: ignore[misc]
            state, emitted = state.with_purchase("kris", purchase, Where(BUY, 0, offset),
                                                 WINDOW)
        out += [r.to_record() for r in emitted]
    return state, out


def test_a_purchase_of_the_offered_sku_after_the_offer_is_one_redemption() -> None:
    _, out = run([("pos", (0, 100.0, [offer("o1", 100.0)])),
                  ("buy", (0, buy("r1", 700.0))),
                  ("pos", (1, 800.0, []))])
    assert out == [{"offer_id": "o1", "uid": "kris", "pid": "p1", "sku": "101",
                    "purchase_id": "r1", "revenue_cents": 499, "seconds_after_offer": 600.0,
                    "ts": 700.0}]


def test_a_purchase_consumed_after_the_positions_passed_it_is_attributed_at_once() -> None:
    _, out = run([("pos", (0, 100.0, [offer("o1", 100.0)])), ("pos", (1, 800.0, [])),
                  ("buy", (0, buy("r1", 700.0)))])
    assert [r["offer_id"] for r in out] == ["o1"]


def test_a_purchase_before_the_offer_or_after_the_window_redeems_nothing() -> None:
    _, out = run([("buy", (0, buy("early", 50.0))),
                  ("pos", (0, 100.0, [offer("o1", 100.0)])),
                  ("buy", (1, buy("late", 100.0 + WINDOW + 1))),
                  ("pos", (1, 100.0 + WINDOW + 10, []))])
    assert out == []


def test_a_purchase_of_another_sku_redeems_nothing() -> None:
    _, out = run([("pos", (0, 100.0, [offer("o1", 100.0)])), ("buy", (0, buy("r1", 200.0, "9"))),
                  ("pos", (1, 300.0, []))])
    assert out == []


def test_any_sku_of_the_segment_redeems_a_segment_promotion() -> None:
    _, out = run([("pos", (0, 100.0, [offer("o1", 100.0, sku="101", segment="dairy")])),
                  ("buy", (0, buy("r1", 200.0, "202", segments=("dairy",)))),
                  ("buy", (1, buy("r2", 210.0, "303", segments=("bakery",)))),
                  ("pos", (1, 300.0, []))])
    assert [(r["purchase_id"], r["sku"]) for r in out] == [("r1", "202")]


def test_the_latest_qualifying_offer_wins() -> None:
    _, out = run([("pos", (0, 100.0, [offer("o1", 100.0)])),
                  ("pos", (1, 200.0, [offer("o2", 200.0, pid="p2")])),
                  ("pos", (2, 400.0, [offer("o3", 400.0, pid="p3")])),
                  ("buy", (0, buy("r1", 300.0))), ("pos", (3, 500.0, []))])
    assert [(r["offer_id"], r["pid"]) for r in out] == [("o2", "p2")]


def test_a_redelivered_record_emits_nothing_again() -> None:
    events: list[tuple[str, object]] = [("pos", (0, 100.0, [offer("o1", 100.0)])),
                                        ("buy", (0, buy("r1", 200.0))), ("pos", (1, 300.0, []))]
    state, out = run(events)
    assert len(out) == 1
    again, more = run(events, state)
    assert more == [] and again == state


def test_the_state_survives_its_stored_form() -> None:
    state, _ = run([("pos", (0, 100.0, [offer("o1", 100.0, segment="dairy")])),
                    ("buy", (0, buy("r1", 200.0, segments=("dairy",))))])
    assert state.pending
    assert AttributionState.from_json(state.to_json()) == state


def test_a_purchase_waits_no_longer_than_the_window_for_positions() -> None:
    _, out = run([("pos", (0, 100.0, [offer("o1", 100.0)])), ("buy", (0, buy("r1", 200.0))),
                  ("buy", (1, buy("r2", 200.0 + WINDOW + 1, "other")))])
    assert [r["purchase_id"] for r in out] == ["r1"]


# -- the order of the two topics, and replays (hypothesis) -----------------------------------

@dataclass(frozen=True)
class Story:
    positions: list[tuple[float, list[OfferMark]]]  # in event-time order, as a phone sends
    purchases: list[PurchaseMark]                   # in event-time order, as the till sends
    order: list[bool]                               # True: take the next position


@st.composite
def stories(draw: st.DrawFn) -> Story:
    """Offers and purchases of one shopper within one window, and an interleaving."""
    skus = st.sampled_from(["101", "102", "103"])
    times = st.lists(st.integers(0, 3000), max_size=8).map(sorted)
    positions = []
    for n, ts in enumerate(draw(times)):
        offers = [offer(f"o{n}-{k}", float(ts), sku=draw(skus), pid=f"p{k}",
                        segment=draw(st.sampled_from([None, "dairy"])))
                  for k in range(draw(st.integers(0, 2)))]
        positions.append((float(ts), offers))
    positions.append((5000.0, []))  # the shopper walks on: positions pass every purchase
    purchases = [buy(f"r{n}", float(ts), draw(skus), 100 + n,
                     draw(st.sampled_from([(), ("dairy",)])))
                 for n, ts in enumerate(draw(times))]
    order = draw(st.permutations([True] * len(positions) + [False] * len(purchases)))
    return Story(positions, purchases, list(order))


def interleave(story: Story) -> list[tuple[str, object]]:
    events: list[tuple[str, object]] = []
    p = b = 0
    for take_position in story.order:
        if take_position:
            ts, offers = story.positions[p]
            events.append(("pos", (p, ts, offers)))
            p += 1
        else:
            events.append(("buy", (b, story.purchases[b])))
            b += 1
    return events


def expected(story: Story) -> set[tuple[str, str]]:
    """The oracle, written from the rule: each purchase to the latest offer at or before it,
    within the window, naming its sku or holding it in the offer's segment."""
    found = set()
    every = [o for _, offers in story.positions for o in offers]
    for p in story.purchases:
        fits = [o for o in every
                if o.ts <= p.ts <= o.ts + WINDOW
                and (p.sku in (o.sku, o.promo_sku) or (o.segment and o.segment in p.segments))]
        if fits:
            best = max(fits, key=lambda o: (o.ts, o.offer_id))
            found.add((best.offer_id, p.ref))
    return found


@settings(max_examples=300, deadline=None)
@given(stories())
def test_redemptions_do_not_depend_on_which_topic_is_consumed_first(story: Story) -> None:
    _, out = run(interleave(story))
    pairs = [(str(r["offer_id"]), str(r["purchase_id"])) for r in out]
    assert len(pairs) == len(set(pairs)), "a purchase redeemed twice"
    assert len({ref for _, ref in pairs}) == len(pairs)
    assert set(pairs) == expected(story)


@settings(max_examples=200, deadline=None)
@given(stories(), st.data())
def test_a_replay_after_a_crash_emits_each_redemption_exactly_once(story: Story,
                                                                   data: st.DataObject) -> None:
    events = interleave(story)
    crash = data.draw(st.integers(0, len(events)), label="crash after")
    state, first = run(events[:crash])
    # The state as of the crash was kept (its changelog was flushed with the output); every
    # record from a point before the crash on is delivered again.
    back = data.draw(st.integers(0, crash), label="redelivered from")
    _, second = run(events[back:], state)
    pairs = [(r["offer_id"], r["purchase_id"]) for r in first + second]
    assert len(pairs) == len(set(pairs))
    assert {(str(o), str(p)) for o, p in pairs} == expected(story)


def test_a_held_out_offer_is_redeemed_too_and_says_so() -> None:
    held = OfferMark("o1", "p1", "101", 100.0, "101", None, held_out=True)
    _, out = run([("pos", (0, 100.0, [held])), ("buy", (0, buy("r1", 200.0))),
                  ("pos", (1, 300.0, []))])
    assert [r["held_out"] for r in out] == [True]


def test_only_an_offers_first_redemption_converts_it() -> None:
    state = AttributionState()
    state, _ = state.with_position("kris", 100.0, [offer("o1", 100.0)], Where(POS, 0, 0),
                                   WINDOW)
    firsts = []
    for n, ts in enumerate((200.0, 300.0, 400.0)):
        state, _ = state.with_purchase("kris", buy(f"r{n}", ts), Where(BUY, 0, n), WINDOW)
    state, emitted = state.with_position("kris", 500.0, [], Where(POS, 0, 1), WINDOW)
    firsts = [r.first for r in emitted]
    assert firsts == [True, False, False]
    state, more = state.with_purchase("kris", buy("r9", 450.0), Where(BUY, 0, 9), WINDOW)
    assert [r.first for r in more] == [False]


def test_a_shopper_keeps_the_newest_offers_in_time_order() -> None:
    state = AttributionState()
    times = [float(t) for t in range(1000, 1000 + MAX_OFFERS + 10)]
    times[5], times[6] = times[6], times[5]  # one position's offer read late
    for offset, ts in enumerate(times):
        state, _ = state.with_position("kris", ts, [offer(f"o{ts:.0f}", ts)],
                                       Where(POS, 0, offset), WINDOW)
    kept = [o.ts for o in state.offers]
    assert kept == sorted(times)[-MAX_OFFERS:]


def test_offers_stored_in_another_order_or_with_numeric_flags_are_read() -> None:
    raw = {"offers": [["o2", "p1", "101", 200.0, "101", None, 0, 1],
                      ["o1", "p1", "101", 100.0, "101", None, 1, 0]],
           "pending": [], "positions_ts": 200.0, "purchases_ts": None, "applied": []}
    state = AttributionState.from_json(raw)
    assert [(o.offer_id, o.held_out, o.redeemed) for o in state.offers] == [
        ("o1", True, False), ("o2", False, True)]
    assert AttributionState.from_json(state.to_json()) == state


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 5), st.sampled_from("abcdef")),
                         max_size=3), max_size=12))
def test_an_offer_held_already_is_kept_once_and_offers_stay_in_time_order(
        positions: list[list[tuple[int, str]]]) -> None:
    """Offers come again (a position's offers recomputed after a crash, under a new
    offset) and out of order; each (time, id) is held once, in (time, id) order."""
    state, sent = AttributionState(), set()
    for at, drawn in enumerate(positions):
        offers = [offer(f"{name}{ts}", 1_000.0 + ts) for ts, name in drawn]
        sent.update((o.ts, o.offer_id) for o in offers)
        state, _ = state.with_position("kris", 1_000.0 + max((t for t, _ in drawn), default=0),
                                       offers, Where(POS, 0, at), WINDOW)
    held = [(o.ts, o.offer_id) for o in state.offers]
    assert held == sorted(sent)[-MAX_OFFERS:]
