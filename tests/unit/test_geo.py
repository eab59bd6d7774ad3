"""Unit tests for core.geo: haversine distance, displays and the grid index."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from haversine import Unit, haversine
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.geo import (
    DEFAULT_RADIUS_M,
    EARTH_RADIUS_M,
    Display,
    DisplayIndex,
    haversine_m,
    normalise_sku,
    parse_display,
    valid_coordinates,
)

M_PER_DEG = math.pi * EARTH_RADIUS_M / 180.0

lats = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
lons = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """Point roughly ``north_m``/``east_m`` metres away, wrapped/reflected onto the globe."""
    new_lat = lat + north_m / M_PER_DEG
    cos_lat = max(math.cos(math.radians(lat)), 1e-9)
    new_lon = lon + east_m / (M_PER_DEG * cos_lat)
    if new_lat > 90.0:
        new_lat, new_lon = 180.0 - new_lat, new_lon + 180.0
    elif new_lat < -90.0:
        new_lat, new_lon = -180.0 - new_lat, new_lon + 180.0
    new_lon = (new_lon + 180.0) % 360.0 - 180.0
    return new_lat, new_lon


def brute_force(
    displays: list[Display], lat: float, lon: float, radius_m: float
) -> dict[tuple[str, str], float]:
    """Reference answer: scan every display."""
    found = {}
    for display in displays:
        distance = haversine_m(lat, lon, display.lat, display.lon)
        if distance <= radius_m:
            found[display.key] = distance
    return found


# --- haversine -------------------------------------------------------------------------


@given(lats, lons, lats, lons)
def test_haversine_matches_haversine_package(
    lat1: float, lon1: float, lat2: float, lon2: float
) -> None:
    # The package uses a 6371.0088 km radius; its RADIANS unit is the central angle.
    expected = haversine((lat1, lon1), (lat2, lon2), unit=Unit.RADIANS) * EARTH_RADIUS_M
    assert haversine_m(lat1, lon1, lat2, lon2) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_one_degree_of_latitude_is_about_111_195_m() -> None:
    assert haversine_m(0.0, 0.0, 1.0, 0.0) == pytest.approx(111_194.93, abs=0.01)


def test_one_yard_east_at_london_latitude() -> None:
    lat, lon = 51.5, -0.12
    east = offset(lat, lon, 0.0, DEFAULT_RADIUS_M)
    assert haversine_m(lat, lon, *east) == pytest.approx(DEFAULT_RADIUS_M, rel=1e-6)


@given(lats, lons, lats, lons)
def test_haversine_is_symmetric_and_non_negative(
    lat1: float, lon1: float, lat2: float, lon2: float
) -> None:
    d = haversine_m(lat1, lon1, lat2, lon2)
    assert d >= 0.0
    assert d == pytest.approx(haversine_m(lat2, lon2, lat1, lon1), abs=1e-6)
    assert d <= math.pi * EARTH_RADIUS_M + 1e-6


def test_haversine_across_antimeridian_is_short() -> None:
    assert haversine_m(0.0, 179.999_99, 0.0, -179.999_99) == pytest.approx(2.2239, abs=1e-3)


# --- validation and parsing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lon", "ok"),
    [
        (0.0, 0.0, True),
        (90, 180, True),
        (-90.0, -180.0, True),
        (90.000_001, 0.0, False),
        (0.0, -180.1, False),
        (math.nan, 0.0, False),
        (0.0, math.inf, False),
        (True, 0.0, False),
        ("51.5", "0.1", False),
        (None, 0.0, False),
    ],
)
def test_valid_coordinates(lat: object, lon: object, ok: bool) -> None:
    assert valid_coordinates(lat, lon) is ok


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(123, "123"), (123.0, "123"), (Decimal("42"), "42"), (" AB-1 ", "AB-1"), ("007", "007")],
)
def test_sku_number_is_normalised_to_str(raw: object, expected: str) -> None:
    assert normalise_sku(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "  ", True, math.nan, [1]])
def test_invalid_sku_rejected(raw: object) -> None:
    with pytest.raises(ValueError):
        normalise_sku(raw)


def test_parse_display_defaults_and_normalises() -> None:
    display = parse_display(
        {"sku": 991, "lat": "51.5", "lon": -0.12, "segment": "dairy", "store_id": 7}
    )
    assert display == Display("991", 51.5, -0.12, "dairy", None, "7", True)
    assert display.key == ("7", "991")


def test_parse_display_inactive_flag() -> None:
    assert parse_display({"sku": "a", "lat": 1, "lon": 2, "active": False}).active is False


@pytest.mark.parametrize(
    "record",
    [
        {"sku": "a", "lat": 91.0, "lon": 0.0},
        {"sku": "a", "lat": 0.0},
        {"lat": 0.0, "lon": 0.0},
        {"sku": "a", "lat": "north", "lon": 0.0},
        {"sku": "a", "lat": 0.0, "lon": 0.0, "active": "maybe"},
    ],
)
def test_parse_display_rejects_bad_records(record: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_display(record)


# --- index maintenance ------------------------------------------------------------------


def test_display_identity_is_store_and_sku() -> None:
    index = DisplayIndex()
    index.upsert(Display("sku-1", 51.5, -0.12, store_id="s1"))
    index.upsert(Display("sku-1", 51.5, -0.12, store_id="s2"))
    assert len(index) == 2
    assert {d.store_id for d, _ in index.near(51.5, -0.12, 0.5)} == {"s1", "s2"}


def test_update_moves_display() -> None:
    index = DisplayIndex()
    index.upsert(Display("sku-1", 51.5, -0.12, store_id="s1"))
    moved_lat, moved_lon = offset(51.5, -0.12, 30.0, 0.0)
    index.upsert(Display("sku-1", moved_lat, moved_lon, store_id="s1"))
    assert len(index) == 1
    assert index.near(51.5, -0.12, 5.0) == []
    assert [d.sku for d, _ in index.near(moved_lat, moved_lon, 1.0)] == ["sku-1"]


def test_inactive_display_is_removed() -> None:
    index = DisplayIndex()
    index.upsert(Display("sku-1", 51.5, -0.12, store_id="s1"))
    index.upsert(Display("sku-1", 51.5, -0.12, store_id="s1", active=False))
    assert len(index) == 0
    assert index.near(51.5, -0.12, 1.0) == []


def test_remove_returns_display_and_is_idempotent() -> None:
    index = DisplayIndex()
    display = Display("sku-1", 51.5, -0.12, store_id="s1")
    index.upsert(display)
    assert index.remove("s1", "sku-1") == display
    assert index.remove("s1", "sku-1") is None
    assert ("s1", "sku-1") not in index


# --- lookups ----------------------------------------------------------------------------


def test_near_is_sorted_by_distance_then_identity() -> None:
    index = DisplayIndex()
    lat, lon = 48.8566, 2.3522
    for metres, sku in [(0.6, "far"), (0.2, "near"), (0.4, "mid"), (0.2, "also-near")]:
        index.upsert(Display(sku, *offset(lat, lon, metres, 0.0), store_id="s"))
    result = index.near(lat, lon, DEFAULT_RADIUS_M)
    assert [d.sku for d, _ in result] == ["also-near", "near", "mid", "far"]
    assert [round(dist, 3) for _, dist in result] == [0.2, 0.2, 0.4, 0.6]


def test_display_beyond_radius_is_not_found() -> None:
    index = DisplayIndex()
    lat, lon = 40.0, -74.0
    index.upsert(Display("x", *offset(lat, lon, 0.0, 0.95), store_id="s"))
    assert index.near(lat, lon, DEFAULT_RADIUS_M) == []
    assert len(index.near(lat, lon, 1.0)) == 1


@pytest.mark.parametrize("axis", ["north", "east"])
def test_display_just_across_cell_border_is_found(axis: str) -> None:
    index = DisplayIndex(cell_m=1.0)
    lat, lon = 51.500_003, -0.120_007
    # Walk east/north in 1 cm steps until the cell changes: that is a border.
    step = (0.01, 0.0) if axis == "north" else (0.0, 0.01)
    inside = (lat, lon)
    while index.cell_of(*offset(*inside, *step)) == index.cell_of(lat, lon):
        inside = offset(*inside, *step)
    across = offset(*inside, step[0] * 50, step[1] * 50)  # 0.5 m over the border
    assert index.cell_of(*across) != index.cell_of(*inside)
    index.upsert(Display("across", *across, store_id="s"))
    found = index.near(*inside, DEFAULT_RADIUS_M)
    assert [d.sku for d, _ in found] == ["across"]


def test_lookup_probes_at_most_3x3_cells() -> None:
    index = DisplayIndex(cell_m=1.0)
    for lat, lon in [(51.5, -0.12), (0.0, 0.0), (-33.87, 151.21), (70.0, 25.0)]:
        cells = index.cells_for(lat, lon, DEFAULT_RADIUS_M)
        assert 1 <= len(cells) <= 9
        assert len(set(cells)) == len(cells)


def test_near_across_antimeridian() -> None:
    index = DisplayIndex()
    index.upsert(Display("east", -17.0, 179.999_999, store_id="fiji"))
    index.upsert(Display("west", -17.0, -179.999_998, store_id="fiji"))
    assert {d.sku for d, _ in index.near(-17.0, 180.0, DEFAULT_RADIUS_M)} == {"east", "west"}
    assert {d.sku for d, _ in index.near(-17.0, -180.0, DEFAULT_RADIUS_M)} == {"east", "west"}


def test_near_at_the_pole() -> None:
    index = DisplayIndex()
    index.upsert(Display("pole", 90.0, 0.0, store_id="santa"))
    index.upsert(Display("other-side", 89.999_996, 123.0, store_id="santa"))
    found = {d.sku for d, _ in index.near(89.999_996, -57.0, DEFAULT_RADIUS_M)}
    assert found == {"pole", "other-side"}


def test_radius_larger_than_cell_is_still_exact() -> None:
    index = DisplayIndex(cell_m=1.0)
    lat, lon = 35.0, 139.0
    displays = [
        Display(f"d{i}", *offset(lat, lon, 3.0 * math.sin(i), 3.0 * math.cos(i)), store_id="s")
        for i in range(40)
    ]
    for display in displays:
        index.upsert(display)
    got = {d.key: dist for d, dist in index.near(lat, lon, 2.5)}
    assert got == brute_force(displays, lat, lon, 2.5)


def test_near_rejects_invalid_input() -> None:
    index = DisplayIndex()
    with pytest.raises(ValueError):
        index.near(95.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        index.near(0.0, 0.0, -1.0)


# --- property: the index agrees with a brute-force scan ---------------------------------

# Anchors include the poles, the antimeridian and ordinary store latitudes.
anchors = st.one_of(
    st.tuples(lats, lons),
    st.sampled_from([(51.5, -0.12), (0.0, 180.0), (0.0, -180.0), (89.99999, 10.0), (-90.0, 0.0)]),
)
offsets_m = st.tuples(
    st.floats(min_value=-4.0, max_value=4.0, allow_nan=False),
    st.floats(min_value=-4.0, max_value=4.0, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(
    anchor=anchors,
    display_offsets=st.lists(offsets_m, min_size=0, max_size=40),
    query_offset=offsets_m,
    radius_m=st.one_of(st.just(DEFAULT_RADIUS_M), st.floats(min_value=0.0, max_value=3.0)),
    cell_m=st.sampled_from([0.5, 1.0, 2.0]),
    snap_to_border=st.booleans(),
)
def test_near_matches_brute_force(
    anchor: tuple[float, float],
    display_offsets: list[tuple[float, float]],
    query_offset: tuple[float, float],
    radius_m: float,
    cell_m: float,
    snap_to_border: bool,
) -> None:
    index = DisplayIndex(cell_m=cell_m)
    displays = []
    for i, (north, east) in enumerate(display_offsets):
        display = Display(f"sku{i}", *offset(*anchor, north, east), store_id=f"s{i % 3}")
        displays.append(display)
        index.upsert(display)
    lat, lon = offset(*anchor, *query_offset)
    if snap_to_border:
        # Put the query exactly on the southern edge of its row.
        row, _ = index.cell_of(lat, lon)
        lat = -90.0 + row * math.degrees(cell_m / EARTH_RADIUS_M)
        assume(valid_coordinates(lat, lon))
    got = {d.key: dist for d, dist in index.near(lat, lon, radius_m)}
    assert got == brute_force(displays, lat, lon, radius_m)


# Offsets within a couple of cells, so cells hold several displays.
crowded_offsets_m = st.tuples(
    st.floats(min_value=-1.5, max_value=1.5, allow_nan=False),
    st.floats(min_value=-1.5, max_value=1.5, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["upsert", "upsert", "deactivate", "remove"]),
            st.integers(0, 7),  # sku
            st.integers(0, 1),  # store
            crowded_offsets_m,
        ),
        max_size=40,
    ),
    query_offset=crowded_offsets_m,
)
def test_index_matches_model_after_updates_and_removals(
    ops: list[tuple[str, int, int, tuple[float, float]]], query_offset: tuple[float, float]
) -> None:
    anchor = (51.5, -0.12)
    index = DisplayIndex(cell_m=1.0)
    model: dict[tuple[str, str], Display] = {}
    for op, sku, store, (north, east) in ops:
        display = Display(f"sku{sku}", *offset(*anchor, north, east), store_id=f"s{store}")
        if op == "upsert":
            index.upsert(display)
            model[display.key] = display
        elif op == "deactivate":
            index.upsert(Display(display.sku, display.lat, display.lon, store_id=f"s{store}",
                                 active=False))  # fmt: skip
            model.pop(display.key, None)
        else:
            assert index.remove(f"s{store}", f"sku{sku}") == model.pop(display.key, None)
    assert len(index) == len(model)
    assert sorted(d.key for d in index) == sorted(model)
    lat, lon = offset(*anchor, *query_offset)
    got = {d.key: dist for d, dist in index.near(lat, lon, 2.0)}
    assert got == brute_force(list(model.values()), lat, lon, 2.0)


def test_lookup_does_not_scan_all_displays(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.geo

    index = DisplayIndex()
    lat0, lon0 = 51.5, -0.12
    for i in range(10_000):  # a 100 m x 100 m grid, one display per square metre
        index.upsert(Display(f"d{i}", *offset(lat0, lon0, i // 100, i % 100), store_id="s"))
    calls = 0
    real = core.geo.haversine_m

    def counting(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
        nonlocal calls
        calls += 1
        return real(lat1, lon1, lat2, lon2)

    monkeypatch.setattr(core.geo, "haversine_m", counting)
    found = index.near(*offset(lat0, lon0, 50.3, 50.4), DEFAULT_RADIUS_M)
    assert len(found) == 3  # (50, 50), (50, 51) and (51, 50) are within a yard
    assert calls <= 6  # only the candidates inside the search box get a distance
