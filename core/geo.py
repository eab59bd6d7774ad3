"""Pure geometry for in-store offers: haversine distance, displays and a grid index.

No I/O and no framework imports: everything here is deterministic and unit-testable.

Distance is the haversine great-circle distance on a sphere of radius 6371 km, the
same model as ksqlDB ``GEO_DISTANCE``.

Display identity
    A display is identified by ``(store_id, sku)``: the same SKU is shown in many
    stores, and a store shows one promotional display per SKU. A later record with
    the same key replaces (moves / re-segments) the display; ``active=False``
    removes it.

Spatial index
    ``DisplayIndex`` buckets displays into a lat/lon grid. Rows are ``cell_m`` metres
    of latitude. Each row is split into a whole number of equal longitude columns
    whose width is at least ``cell_m`` metres even at the row's poleward edge
    (longitude cells are scaled by cos(lat)); because columns tile 360 degrees
    exactly, column indices wrap modulo the column count, so the antimeridian
    needs no special case. Near the poles rows have few (finally one) columns.

    ``near`` derives a bounding box that provably holds the search circle from the
    haversine formula (latitude half-span ``r/R``; longitude half-span
    ``2*asin(sin(r/2R)/cos(lat_max))`` at the box's most poleward latitude, both
    widened by 1e-9 against rounding) and probes the cells it overlaps: at most
    3 x 3 when the radius is below ``cell_m``, so a display just across a cell
    border is never missed. Candidates are pre-filtered against the box, then
    checked with the exact haversine distance, so results equal a brute-force scan.
    The cost per lookup depends on local display density, not on the total count.
    A box reaching a pole probes every column of the polar rows (few, since they
    are tiny). Larger radii are exact too; they just probe more cells.

    Memory layout: rows holding displays map column -> unboxed ``array('d')`` of
    ``lat, lon`` pairs, so a probe touches few objects; rows and cells without
    displays are skipped without any arithmetic.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias

EARTH_RADIUS_M = 6_371_000.0
DEFAULT_RADIUS_M = 0.9144
DEFAULT_CELL_M = 2.0
_SAFETY = 1.0 + 1e-9
_TINY_DEG = 1e-12
_DEG_PER_RAD = 180.0 / math.pi

DisplayKey: TypeAlias = tuple[str, str]


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS84 points (sphere, R = 6371 km)."""
    phi1 = math.radians(lat1)
    phi2 = math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2.0
    half_dlam = math.radians(lon2 - lon1) / 2.0
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlam) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def _is_real(value: object) -> bool:
    """True for finite int/float values that are not bools."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _within(value: object, low: float, high: float) -> bool:
    """True for an int/float (not bool) in ``[low, high]``; NaN never is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return low <= value <= high


def valid_coordinates(lat: object, lon: object) -> bool:
    """True when lat is in [-90, 90] and lon in [-180, 180], both real numbers."""
    return _within(lat, -90.0, 90.0) and _within(lon, -180.0, 180.0)


def normalise_id(value: object, name: str = "id") -> str:
    """Return an identifier as a stripped string; integral numbers (``123``, ``123.0``) give
    ``"123"``. Leading zeros lost by a producer that sent a number cannot be recovered.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid {name}: {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            raise ValueError(f"invalid {name}: {value!r}")
        return str(int(value)) if value == int(value) else str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"invalid {name}: {value!r}")


def normalise_sku(value: object) -> str:
    """``normalise_id`` for SKUs, which may arrive as numbers."""
    return normalise_id(value, "sku")


def optional_str(value: object) -> str | None:
    """Normalise an optional label: ``None`` and blank strings become ``None``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid label: {value!r}")
    text = str(value).strip()
    return text or None


def parse_float(value: object, name: str) -> float:
    """Parse a finite float from a number or numeric string (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"invalid {name}: {value!r}")
    try:
        result = float(value)
    except ValueError as exc:
        raise ValueError(f"invalid {name}: {value!r}") from exc
    if not math.isfinite(result):
        raise ValueError(f"invalid {name}: {value!r}")
    return result


def parse_bool(value: object, default: bool = True) -> bool:
    """Parse a flag: missing means ``default``; accepts bools, 0/1 and true/false strings."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"invalid flag: {value!r}")


@dataclass(frozen=True, slots=True)
class Display:
    """A product display at a fixed position in a store; identity is ``(store_id, sku)``."""

    sku: str
    lat: float
    lon: float
    segment: str | None = None
    variant: str | None = None
    store_id: str = ""
    active: bool = True

    def __post_init__(self) -> None:
        if not self.sku:
            raise ValueError("display sku must be non-empty")
        if not valid_coordinates(self.lat, self.lon):
            raise ValueError(f"invalid display coordinates: {self.lat!r}, {self.lon!r}")

    @property
    def key(self) -> DisplayKey:
        """Identity of the display: ``(store_id, sku)``."""
        return (self.store_id, self.sku)


def parse_display(record: Mapping[str, object]) -> Display:
    """Build a ``Display`` from a ``stores.products`` record; raises ``ValueError`` if invalid."""
    raw_store = record.get("store_id")
    blank = raw_store is None or (isinstance(raw_store, str) and not raw_store.strip())
    return Display(
        sku=normalise_sku(record.get("sku")),
        lat=parse_float(record.get("lat"), "lat"),
        lon=parse_float(record.get("lon"), "lon"),
        segment=optional_str(record.get("segment")),
        variant=optional_str(record.get("variant")),
        store_id="" if blank else normalise_id(raw_store, "store_id"),
        active=parse_bool(record.get("active"), default=True),
    )


def _sort_key(item: tuple[Display, float]) -> tuple[float, str, str]:
    return (item[1], item[0].store_id, item[0].sku)


def _col_range(base: float, dlon: float | None, ncols: int, width: float) -> Sequence[int]:
    """Columns of a row overlapping ``[base - dlon, base + dlon]`` (``base`` in [0, 360))."""
    if dlon is None:
        return range(ncols)
    first = int((base - dlon) // width)
    last = int((base + dlon) // width)
    if last - first + 1 >= ncols:
        return range(ncols)
    if first < 0 or last >= ncols:  # the box wraps around the antimeridian
        return [col % ncols for col in range(first, last + 1)]
    return range(first, last + 1)


# One grid row: (column count, column width in degrees, cells by column). A cell holds the
# unboxed coordinates [lat, lon, lat, lon, ...] of its displays so that the hot scan
# touches one buffer; the Display objects live in ``_members`` and are only read for hits.
_Row: TypeAlias = tuple[int, float, dict[int, "array[float]"]]


class DisplayIndex:
    """Grid index of active displays keyed by ``(store_id, sku)``; see the module docstring."""

    def __init__(self, cell_m: float = DEFAULT_CELL_M) -> None:
        if not (_is_real(cell_m) and 0.01 <= cell_m <= 100_000.0):
            raise ValueError(f"cell_m must be in [0.01, 100000] metres, got {cell_m!r}")
        self.cell_m = float(cell_m)
        self._dlat = math.degrees(self.cell_m / EARTH_RADIUS_M)
        self._nrows = int(180.0 / self._dlat) + 1
        self._grid: dict[int, _Row] = {}
        self._members: dict[tuple[int, int], list[Display]] = {}
        self._where: dict[DisplayKey, tuple[int, int]] = {}
        self._displays: dict[DisplayKey, Display] = {}
        #: sku -> store_id -> segment, for the displays that have a segment.
        self._segments: dict[str, dict[str, str]] = {}

    def __len__(self) -> int:
        return len(self._displays)

    def __contains__(self, key: object) -> bool:
        return key in self._displays

    def __iter__(self) -> Iterator[Display]:
        return iter(list(self._displays.values()))

    def get(self, store_id: str, sku: str) -> Display | None:
        """Return the display with this identity, if indexed."""
        return self._displays.get((store_id, sku))

    def segments_of(self, sku: str) -> tuple[str, ...]:
        """The segments of the active displays of ``sku`` in every store, sorted."""
        stores = self._segments.get(sku)
        return () if not stores else tuple(sorted(set(stores.values())))

    def upsert(self, display: Display) -> None:
        """Add or replace a display by key; an inactive display is removed instead."""
        self.remove(display.store_id, display.sku)
        if not display.active:
            return
        row, col = self.cell_of(display.lat, display.lon)
        grid_row = self._grid.get(row)
        if grid_row is None:
            grid_row = self._grid[row] = (*self._row_shape(row), {})
        grid_row[2].setdefault(col, array("d")).extend((display.lat, display.lon))
        self._members.setdefault((row, col), []).append(display)
        self._where[display.key] = (row, col)
        self._displays[display.key] = display
        if display.segment is not None:
            self._segments.setdefault(display.sku, {})[display.store_id] = display.segment

    def remove(self, store_id: str, sku: str) -> Display | None:
        """Remove a display by identity; returns it, or ``None`` if absent."""
        key = (store_id, sku)
        display = self._displays.pop(key, None)
        if display is None:
            return None
        stores = self._segments.get(sku)
        if stores is not None:
            stores.pop(store_id, None)
            if not stores:
                del self._segments[sku]
        row, col = cell = self._where.pop(key)
        members = self._members[cell]
        position = next(i for i, member in enumerate(members) if member.key == key)
        del members[position]
        cells = self._grid[row][2]
        del cells[col][2 * position : 2 * position + 2]
        if not members:
            del self._members[cell], cells[col]
            if not cells:
                del self._grid[row]
        return display

    def cell_of(self, lat: float, lon: float) -> tuple[int, int]:
        """Grid ``(row, col)`` of a point."""
        row = self._row(lat)
        ncols, width = self._row_shape(row)
        return row, int(((lon + 180.0) % 360.0) // width) % ncols

    def cells_for(self, lat: float, lon: float, radius_m: float) -> list[tuple[int, int]]:
        """Grid cells covering the search box of a ``near`` query (at most 3 x 3 when
        ``radius_m < cell_m``); ``near`` skips the rows among them that hold no display.
        """
        dlat, dlon = self._search_box(lat, lon, radius_m)
        base = (lon + 180.0) % 360.0
        return [
            (row, col)
            for row in range(self._row(lat - dlat), self._row(lat + dlat) + 1)
            for col in _col_range(base, dlon, *self._row_shape(row))
        ]

    def near(self, lat: float, lon: float, radius_m: float) -> list[tuple[Display, float]]:
        """Displays within ``radius_m`` metres, as ``(display, distance_m)`` nearest first.

        Distances equal ``haversine_m(lat, lon, display.lat, display.lon)`` exactly; ties
        are broken by ``(store_id, sku)`` so the order is deterministic.
        """
        dlat, dlon = self._search_box(lat, lon, radius_m)
        base = (lon + 180.0) % 360.0
        found: list[tuple[Display, float]] = []
        grid = self._grid
        for row in range(self._row(lat - dlat), self._row(lat + dlat) + 1):
            grid_row = grid.get(row)
            if grid_row is None:
                continue
            ncols, width, cells = grid_row
            for col in _col_range(base, dlon, ncols, width):
                coords = cells.get(col)
                if coords is not None:
                    self._scan(coords, (row, col), lat, lon, radius_m, dlat, dlon, found)
        if len(found) > 1:
            found.sort(key=_sort_key)
        return found

    def _scan(
        self,
        coords: array[float],
        cell: tuple[int, int],
        lat: float,
        lon: float,
        radius_m: float,
        dlat: float,
        dlon: float | None,
        found: list[tuple[Display, float]],
    ) -> None:
        """Append the displays of one cell within ``radius_m`` to ``found``."""
        for i in range(0, len(coords), 2):
            d_lat = coords[i]
            if abs(d_lat - lat) > dlat:
                continue
            d_lon = coords[i + 1]
            if dlon is not None:
                gap = abs(d_lon - lon)
                if (360.0 - gap if gap > 180.0 else gap) > dlon:
                    continue
            distance = haversine_m(lat, lon, d_lat, d_lon)
            if distance <= radius_m:
                found.append((self._members[cell][i // 2], distance))

    def _search_box(self, lat: float, lon: float, radius_m: float) -> tuple[float, float | None]:
        """Half-spans in degrees (lat, lon; lon None = all) of the box holding the circle."""
        try:
            ok = -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0 and 0.0 <= radius_m < math.inf
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"invalid query: lat={lat!r} lon={lon!r} radius_m={radius_m!r}")
        theta = radius_m / EARTH_RADIUS_M
        dlat = theta * _DEG_PER_RAD * _SAFETY + _TINY_DEG
        return dlat, self._lon_span(theta, lat - dlat, lat + dlat)

    def _row(self, lat: float) -> int:
        row = int((lat + 90.0) // self._dlat)
        if row < 0:
            return 0
        return row if row < self._nrows else self._nrows - 1

    def _row_shape(self, row: int) -> tuple[int, float]:
        """``(columns, column width in degrees)``: cells >= cell_m at the row's poleward edge."""
        grid_row = self._grid.get(row)
        if grid_row is not None:
            return grid_row[0], grid_row[1]
        lat_lo = -90.0 + row * self._dlat
        edge = min(90.0, max(abs(lat_lo), abs(lat_lo + self._dlat)))
        circumference = 2.0 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(edge))
        ncols = max(1, int(circumference / self.cell_m))
        return ncols, 360.0 / ncols

    @staticmethod
    def _lon_span(theta: float, lat_lo: float, lat_hi: float) -> float | None:
        """Max longitude difference (degrees) within angular radius ``theta``; None: all."""
        if lat_lo <= -90.0 or lat_hi >= 90.0:
            return None
        edge = -lat_lo if -lat_lo > lat_hi else lat_hi
        ratio = math.sin(theta / 2.0) / math.cos(edge / _DEG_PER_RAD)
        if ratio >= 1.0:
            return None
        return 2.0 * math.asin(ratio) * _DEG_PER_RAD * _SAFETY + _TINY_DEG
