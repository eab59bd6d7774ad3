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

    ``near`` derives an exact bounding box from the haversine formula (latitude
    span ``r/R``; longitude span ``2*asin(sin(r/2R)/cos(lat_max))`` over the box's
    most poleward latitude) and probes the cells it overlaps. When the radius is
    at most ``cell_m`` that is at most 3 x 3 cells, so a display just across a
    cell border is never missed and the cost per lookup depends on local display
    density, not on the total number of displays. A box reaching a pole probes
    every column of the polar rows (few cells, since they are tiny). Larger radii
    are correct too; they just probe more cells.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias

EARTH_RADIUS_M = 6_371_000.0
DEFAULT_RADIUS_M = 0.9144
DEFAULT_CELL_M = 2.0
_SAFETY = 1.0 + 1e-9
_TINY_DEG = 1e-12
_COL_BITS = 40
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


def valid_coordinates(lat: object, lon: object) -> bool:
    """True when lat is in [-90, 90] and lon in [-180, 180], both finite numbers."""
    if not (_is_real(lat) and _is_real(lon)):
        return False
    assert isinstance(lat, int | float) and isinstance(lon, int | float)
    return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0


def normalise_sku(value: object) -> str:
    """Return a SKU as a stripped string; integral numbers (``123``, ``123.0``) become ``"123"``.

    Leading zeros lost by a producer that sent a number cannot be recovered.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid sku: {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float | Decimal):
        if not math.isfinite(value):
            raise ValueError(f"invalid sku: {value!r}")
        return str(int(value)) if value == int(value) else str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"invalid sku: {value!r}")


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
    store_id = optional_str(record.get("store_id"))
    return Display(
        sku=normalise_sku(record.get("sku")),
        lat=parse_float(record.get("lat"), "lat"),
        lon=parse_float(record.get("lon"), "lon"),
        segment=optional_str(record.get("segment")),
        variant=optional_str(record.get("variant")),
        store_id=store_id or "",
        active=parse_bool(record.get("active"), default=True),
    )


def _wrap_lon(lon: float) -> float:
    """Map a longitude into [-180, 180)."""
    return (lon + 180.0) % 360.0 - 180.0


def _sort_key(item: tuple[Display, float]) -> tuple[float, str, str]:
    return (item[1], item[0].store_id, item[0].sku)


class DisplayIndex:
    """Grid index of active displays keyed by ``(store_id, sku)``; see the module docstring."""

    def __init__(self, cell_m: float = DEFAULT_CELL_M) -> None:
        if not (_is_real(cell_m) and 0.01 <= cell_m <= 100_000.0):
            raise ValueError(f"cell_m must be in [0.01, 100000] metres, got {cell_m!r}")
        self.cell_m = float(cell_m)
        self._dlat = math.degrees(self.cell_m / EARTH_RADIUS_M)
        self._nrows = int(180.0 / self._dlat) + 1
        self._rows: dict[int, tuple[int, float]] = {}
        # Per cell: unboxed [lat, lon, lat, lon, ...] (one cache line for the hot scan) and
        # the displays in the same order, only touched for candidates inside the box.
        self._coords: dict[int, array[float]] = {}
        self._members: dict[int, list[Display]] = {}
        self._where: dict[DisplayKey, int] = {}
        self._displays: dict[DisplayKey, Display] = {}

    def __len__(self) -> int:
        return len(self._displays)

    def __contains__(self, key: object) -> bool:
        return key in self._displays

    def __iter__(self) -> Iterator[Display]:
        return iter(list(self._displays.values()))

    def get(self, store_id: str, sku: str) -> Display | None:
        """Return the display with this identity, if indexed."""
        return self._displays.get((store_id, sku))

    def upsert(self, display: Display) -> None:
        """Add or replace a display by key; an inactive display is removed instead."""
        self.remove(display.store_id, display.sku)
        if not display.active:
            return
        cell = self._cell_key(*self.cell_of(display.lat, display.lon))
        self._coords.setdefault(cell, array("d")).extend((display.lat, display.lon))
        self._members.setdefault(cell, []).append(display)
        self._where[display.key] = cell
        self._displays[display.key] = display

    def remove(self, store_id: str, sku: str) -> Display | None:
        """Remove a display by identity; returns it, or ``None`` if absent."""
        key = (store_id, sku)
        display = self._displays.pop(key, None)
        if display is None:
            return None
        cell = self._where.pop(key)
        members = self._members[cell]
        position = next(i for i, member in enumerate(members) if member.key == key)
        del members[position]
        del self._coords[cell][2 * position : 2 * position + 2]
        if not members:
            del self._members[cell], self._coords[cell]
        return display

    def cell_of(self, lat: float, lon: float) -> tuple[int, int]:
        """Grid ``(row, col)`` of a point."""
        row = self._row(lat)
        ncols, width = self._row_info(row)
        return row, int(((lon + 180.0) % 360.0) // width) % ncols

    def cells_for(self, lat: float, lon: float, radius_m: float) -> list[tuple[int, int]]:
        """Grid cells a ``near`` query probes (at most 3 x 3 when ``radius_m <= cell_m``)."""
        keys, _, _ = self._probe(lat, lon, radius_m)
        mask = (1 << _COL_BITS) - 1
        return [(key >> _COL_BITS, key & mask) for key in keys]

    def near(self, lat: float, lon: float, radius_m: float) -> list[tuple[Display, float]]:
        """Displays within ``radius_m`` metres, as ``(display, distance_m)`` nearest first.

        Distances equal ``haversine_m(lat, lon, display.lat, display.lon)`` exactly; ties
        are broken by ``(store_id, sku)`` so the order is deterministic.
        """
        keys, dlat, dlon = self._probe(lat, lon, radius_m)
        phi = math.radians(lat)
        cos_phi = math.cos(phi)
        sin, cos, radians = math.sin, math.cos, math.radians
        coords_by_cell = self._coords
        found: list[tuple[Display, float]] = []
        for key in keys:
            coords = coords_by_cell.get(key)
            if coords is None:
                continue
            for i in range(0, len(coords), 2):
                d_lat = coords[i]
                if abs(d_lat - lat) > dlat:
                    continue
                d_lon = coords[i + 1]
                if dlon is not None:
                    gap = abs(d_lon - lon)
                    if (360.0 - gap if gap > 180.0 else gap) > dlon:
                        continue
                # Same operations, in the same order, as haversine_m.
                d_phi = radians(d_lat)
                a = (
                    sin((d_phi - phi) / 2.0) ** 2
                    + cos_phi * cos(d_phi) * sin(radians(d_lon - lon) / 2.0) ** 2
                )
                distance = 2.0 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))
                if distance <= radius_m:
                    found.append((self._members[key][i // 2], distance))
        if len(found) > 1:
            found.sort(key=_sort_key)
        return found

    def _probe(
        self, lat: float, lon: float, radius_m: float
    ) -> tuple[list[int], float, float | None]:
        """Cell keys to probe plus the lat/lon half-spans (degrees) of the search box."""
        try:
            ok = -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0 and 0.0 <= radius_m < math.inf
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"invalid query: lat={lat!r} lon={lon!r} radius_m={radius_m!r}")
        theta = radius_m / EARTH_RADIUS_M
        dlat = theta * _DEG_PER_RAD * _SAFETY + _TINY_DEG
        dlon = self._lon_span(theta, lat - dlat, lat + dlat)
        base = (lon + 180.0) % 360.0
        rows = self._rows
        keys: list[int] = []
        for row in range(self._row(lat - dlat), self._row(lat + dlat) + 1):
            info = rows.get(row)
            ncols, width = info if info is not None else self._row_info(row)
            prefix = row << _COL_BITS
            first, last = 0, ncols - 1
            if dlon is not None:
                first, last = int((base - dlon) // width), int((base + dlon) // width)
                if last - first + 1 >= ncols:
                    first, last = 0, ncols - 1
                elif first < 0 or last >= ncols:  # the box wraps around the antimeridian
                    keys.extend([prefix | (col % ncols) for col in range(first, last + 1)])
                    continue
            keys.extend(range(prefix | first, (prefix | last) + 1))
        return keys, dlat, dlon

    @staticmethod
    def _cell_key(row: int, col: int) -> int:
        return (row << _COL_BITS) | col

    def _row(self, lat: float) -> int:
        row = int((lat + 90.0) // self._dlat)
        if row < 0:
            return 0
        return row if row < self._nrows else self._nrows - 1

    def _row_info(self, row: int) -> tuple[int, float]:
        """``(columns, column width in degrees)``: cells >= cell_m at the row's poleward edge."""
        info = self._rows.get(row)
        if info is None:
            lat_lo = -90.0 + row * self._dlat
            edge = min(90.0, max(abs(lat_lo), abs(lat_lo + self._dlat)))
            circumference = 2.0 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(edge))
            ncols = max(1, int(circumference / self.cell_m))
            info = (ncols, 360.0 / ncols)
            self._rows[row] = info
        return info

    @staticmethod
    def _lon_span(theta: float, lat_lo: float, lat_hi: float) -> float | None:
        """Max longitude difference (degrees) within angular radius ``theta``; None: all."""
        if lat_lo <= -90.0 or lat_hi >= 90.0:
            return None
        edge = -lat_lo if -lat_lo > lat_hi else lat_hi
        cos_min = math.cos(edge / _DEG_PER_RAD)
        ratio = math.sin(theta / 2.0) / cos_min
        if ratio >= 1.0:
            return None
        return 2.0 * math.asin(ratio) * _DEG_PER_RAD * _SAFETY + _TINY_DEG
