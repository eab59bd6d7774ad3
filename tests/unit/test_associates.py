"""Store associates hear of a watched tier's arrival once per visit, never a position."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.associates import Visits

GAP = 1800.0
GOLD = ("GOLD",)


def test_a_gold_shopper_entering_a_store_is_announced_once_per_visit() -> None:
    visits, first = Visits().seen("rick", "s1", 1000.0, "GOLD", GOLD, GAP)
    assert first is not None
    assert first.to_record() == {"alert_id": first.alert_id, "store_id": "s1", "uid": "rick",
                                 "tier": "GOLD", "event": "arrived", "ts": 1000.0}
    for ts in (1010.0, 1500.0, 2500.0, 4000.0):  # gaps below half an hour: the same visit
        visits, again = visits.seen("rick", "s1", ts, "GOLD", GOLD, GAP)
        assert again is None
    visits, back = visits.seen("rick", "s1", 4000.0 + GAP + 1, "GOLD", GOLD, GAP)
    assert back is not None and back.alert_id != first.alert_id
    assert Visits.from_json(visits.to_json()) == visits


def test_other_tiers_are_not_announced_and_each_store_has_its_own_visit() -> None:
    visits, none = Visits().seen("kris", "s1", 0.0, "SILVER", GOLD, GAP)
    assert none is None
    visits, other = visits.seen("kris", "s2", 10.0, "SILVER", ("SILVER", "GOLD"), GAP)
    assert other is not None and other.store_id == "s2"


def test_a_redelivered_arrival_has_the_same_id() -> None:
    _, first = Visits().seen("rick", "s1", 1000.0, "GOLD", GOLD, GAP)
    _, again = Visits().seen("rick", "s1", 1000.0, "GOLD", GOLD, GAP)
    assert first is not None and again is not None and first.alert_id == again.alert_id


@given(st.lists(st.floats(0, 4000), min_size=1, max_size=40))
def test_one_arrival_per_visit_whatever_the_gaps(gaps: list[float]) -> None:
    visits, ts, arrivals = Visits(), 0.0, 0
    # The oracle: a visit starts at the first position and after every gap over GAP.
    expected = 1 + sum(1 for gap in gaps[1:] if gap > GAP)
    for n, gap in enumerate(gaps):
        ts += gap if n else 0.0
        visits, arrival = visits.seen("rick", "s1", ts, "GOLD", GOLD, GAP)
        arrivals += arrival is not None
    assert arrivals >= expected
    assert arrivals <= expected + sum(1 for gap in gaps[1:] if GAP * 0.9 < gap <= GAP)


def test_an_alert_publishes_only_its_own_fields_and_never_a_position() -> None:
    from app.delivery.alerts import alert_body, alert_channel
    from app.delivery.sinks import DeliveryError

    record = {"alert_id": "a1", "store_id": "s1", "uid": "goldie", "tier": "GOLD",
              "event": "arrived", "ts": 5.0, "note": "internal"}
    assert alert_body(record) == {k: v for k, v in record.items() if k != "note"}
    assert alert_channel("s1", "x.") == "x.associates:s1"
    for field in ("lat", "lon", "latitude", "longitude", "accuracy_m", "distance_m"):
        try:
            alert_body({**record, field: 1.0})
        except DeliveryError as exc:
            assert exc.permanent and field in str(exc)
        else:
            raise AssertionError(f"an alert with {field} was accepted")
    try:
        alert_body({"store_id": "s1"})
    except DeliveryError as exc:
        assert exc.permanent and "alert_id" in str(exc)
    else:
        raise AssertionError("an alert without alert_id was accepted")


def test_visits_remember_the_last_position_written_and_keep_it_through_json() -> None:
    visits = Visits().written_at("loc", 0, 7)
    after, _ = visits.seen("rick", "s2", 1000.0, "GOLD", GOLD, GAP)
    assert after.applied == {("loc", 0): 7}
    assert Visits.from_json(after.written_at("loc", 0, 8).to_json()).applied == {("loc", 0): 8}
    assert Visits.from_json({"stores": {}}).applied == {}
