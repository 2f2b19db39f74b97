"""Lon/lat boxes cut at the antimeridian, and GeoJSON polygons moved between CRSs in one call.

The curation (each tile's footprint in lon/lat) and the analyst commands (a map's regions) move many
small polygons: rasterio's `transform_geom` hands each to GDAL alone, which may build the coordinate
operation again each time and, into lon/lat, checks each polygon for a cut at the antimeridian or
round a pole.
"""
from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
import rasterio.warp
from rasterio.crs import CRS
from shapely.geometry import MultiPolygon, Polygon, box


def lonlat_box(west: float, south: float, east: float, north: float) -> Polygon | MultiPolygon:
    """A lon/lat box, cut in two at the antimeridian when it crosses it.

    It crosses when `west` > `east` (as rasterio's `transform_bounds` gives the bounds of a raster
    across 180 degrees) or when either lies beyond +-180 (a box drawn round a point near it).
    """
    if east - west >= 360:
        return box(-180.0, south, 180.0, north)
    west, east = (west + 360 if west < -180 else west), (east - 360 if east > 180 else east)
    if west <= east:
        return box(west, south, east, north)
    return MultiPolygon([box(west, south, 180.0, north), box(-180.0, south, east, north)])


def polygon_parts(geometry: dict[str, Any]) -> list[Any] | None:
    """The polygons (each a list of rings) of a GeoJSON Polygon (itself) or MultiPolygon (its parts); None for any other type."""
    return {"Polygon": [geometry["coordinates"]], "MultiPolygon": geometry["coordinates"]}.get(geometry["type"])


def from_parts(kind: str, parts: list[Any]) -> dict[str, Any]:
    """A GeoJSON Polygon or MultiPolygon of its polygons (each a list of rings): `polygon_parts` undone."""
    return {"type": kind, "coordinates": parts[0] if kind == "Polygon" else parts}


def transform_polygons(src_crs: Any, dst_crs: Any, geometries: list[dict[str, Any]], precision: int = -1) -> list[dict[str, Any]]:
    """What rasterio's `transform_geom(src_crs, dst_crs, geometries, precision=precision)` gives polygons and multipolygons, in one call.

    transform_geom hands each geometry to GDAL alone: about 15 us a geometry, and 0.14 ms into
    lon/lat, where GDAL checks each for a cut at the antimeridian or round a pole (6 ms for the
    benchmark scene's 42 regions, 0.73 s for 5,170; here 0.06 s). GDAL never cuts into a projected
    CRS, and into lon/lat only geometries whose longitudes straddle the antimeridian or go round a
    pole: vertices all within less than 180 degrees of longitude do neither. Then its result is the
    transform of each vertex, made here in one `rasterio.warp.transform` call (the same coordinate
    operation, the same doubles: tests/test_rs_analyst.py, tests/test_rs_placement.py) and rounded as rasterio rounds (Python's
    round). Other geometry types, and longitudes spread wider, go to transform_geom.
    """
    if not geometries:
        return []
    polygons = [polygon_parts(g) for g in geometries]
    if any(p is None for p in polygons):
        return rasterio.warp.transform_geom(src_crs, dst_crs, geometries, precision=precision)
    points = [point for parts in polygons for rings in parts for ring in rings for point in ring]
    xs, ys = rasterio.warp.transform(src_crs, dst_crs, [x for x, _ in points], [y for _, y in points])  # raises as transform_geom would
    if CRS.from_user_input(dst_crs).is_geographic and not np.ptp(xs) < 180:
        return rasterio.warp.transform_geom(src_crs, dst_crs, geometries, precision=precision)  # GDAL may cut them
    coordinates = zip(xs, ys) if precision < 0 else ((round(x, precision), round(y, precision)) for x, y in zip(xs, ys))
    found = []
    for geometry, parts in zip(geometries, polygons):
        moved = [[[list(point) for point in itertools.islice(coordinates, len(ring))] for ring in rings] for rings in parts]
        found.append(from_parts(geometry["type"], moved))
    return found


def shapely_polygons(geometries: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Shapely polygons of GeoJSON Polygons and MultiPolygons (a MultiPolygon's parts in turn), and the geometry each came from.

    Made in two vectorised calls: shapely.geometry.shape makes a Python call per vertex.
    """
    import shapely

    rings, ring_polygon, owner = [], [], []
    for i, geometry in enumerate(geometries):
        for part in polygon_parts(geometry):
            rings.extend(part)
            ring_polygon.extend([len(owner)] * len(part))
            owner.append(i)
    if not rings:
        return np.zeros(0, object), np.zeros(0, np.int64)
    points = np.array([point for ring in rings for point in ring], np.float64)
    linear = shapely.linearrings(points, indices=np.repeat(np.arange(len(rings)), [len(ring) for ring in rings]))
    return shapely.polygons(linear, indices=np.asarray(ring_polygon)), np.asarray(owner, np.int64)
