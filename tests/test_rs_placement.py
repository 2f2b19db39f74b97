"""Where the remote-sensing curation puts each object's tile, and the lon/lat boxes it meets rasters with."""
from __future__ import annotations

import json
from typing import Any

import pytest
import rasterio.warp
import shapely
from rasterio.crs import CRS
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box, mapping, shape

from domains.remote_sensing.curation import curate
from domains.remote_sensing.curation.curate import RSCurateConfig, _extents_in, _place_tiles, tile_sizes
from domains.remote_sensing.curation.geometry import lonlat_box
from domains.remote_sensing.curation.osm import Feature
from domains.remote_sensing.curation.tiles import WGS84
from domains.remote_sensing.curation.visibility import load_tag_table
from pipelines.curation import UnitResult
from pipelines.params import build

TRANSFORM_GEOM = rasterio.warp.transform_geom


def _square(lon: float, lat: float, half: float) -> Polygon:
    return box(lon - half, lat - half, lon + half, lat + half)


def _features(lon: float, lat: float) -> list[Feature]:
    """Objects of every kind round (lon, lat): polygons (one with a hole, a multipolygon whose second part reaches
    farthest), points and lines, one tag not visible at 1 m, ids out of order."""
    holed = Polygon(_square(lon, lat, 0.002).exterior, [_square(lon, lat, 0.0005).exterior.coords])
    parts = MultiPolygon([_square(lon + 0.004, lat, 0.0004), _square(lon + 0.01, lat + 0.003, 0.0012)])
    return [
        Feature("way/9", "way", {"building": "yes"}, _square(lon - 0.003, lat + 0.001, 0.0002), "polygon"),
        Feature("way/2", "way", {"natural": "water"}, holed, "polygon"),
        Feature("node/5", "node", {"amenity": "parking"}, Point(lon + 0.001, lat - 0.002), "point"),
        Feature("relation/7", "relation", {"landuse": "forest"}, parts, "polygon"),
        Feature("way/4", "way", {"highway": "residential"}, LineString([(lon, lat), (lon + 0.003, lat + 0.002)]), "line"),
        Feature("node/8", "node", {"shop": "bakery"}, Point(lon - 0.001, lat), "point"),  # not in the visibility table
    ]


def _gdal_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The way the curation moved coordinates before: GDAL's transform_geom for each geometry alone."""
    monkeypatch.setattr(curate, "transform_polygons", lambda src, dst, geometries: TRANSFORM_GEOM(src, dst, geometries))
    monkeypatch.setattr(curate, "_extents_in", lambda crs, polygons: iter(
        [shape(TRANSFORM_GEOM(WGS84, crs, mapping(p))).bounds for p in polygons]))


def _placed(features: list[Feature], own_crs: CRS | None) -> tuple[list[Any], dict[str, int]]:
    cfg = build(RSCurateConfig, dict(tile_size=64, target_gsd_m=1.0, max_shift_fraction=0.2))
    result = UnitResult()
    placements = _place_tiles(features, cfg, load_tag_table(), tile_sizes(cfg, 1.0), own_crs, result)
    return [(p.feature.osm_id, p.crs.to_wkt(), p.gsd, p.shift.tolist(), p.bounds, json.dumps(mapping(p.footprint)))
            for p in placements], dict(result.counts)


@pytest.mark.parametrize("own_crs", [None, "EPSG:32631"])
def test_tiles_are_placed_as_when_each_object_was_moved_alone(own_crs: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects on both sides of the UTM 31/32 boundary at 6 E (two tile CRSs unless the mosaic has its own): the same CRS,
    bounds and lon/lat footprint, to the last digit, as transform_geom and a transform per object gave, without calling it."""
    features = _features(5.995, 45.0) + [Feature(f"{f.osm_id}0", f.osm_type, f.tags, f.geometry, f.kind) for f in _features(6.01, 45.0)]
    crs = CRS.from_user_input(own_crs) if own_crs else None
    with monkeypatch.context() as gdal:
        _gdal_one_by_one(gdal)
        expected = [_placed([f], crs) for f in features]
    with monkeypatch.context() as banned:
        banned.setattr(rasterio.warp, "transform_geom", None)
        placed, counts = _placed(features, crs)
    assert placed == sorted(row for rows, _ in expected for row in rows)
    assert counts == {"objects_not_visible_at_gsd": 2}
    assert len({row[1] for row in placed}) == (1 if own_crs else 2)


def test_a_tile_across_the_antimeridian_keeps_gdals_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles in UTM zone 60 on 180 E: GDAL cuts a footprint across it into a multipolygon, and still does."""
    features = _features(179.9995, 60.0)
    with monkeypatch.context() as gdal:
        _gdal_one_by_one(gdal)
        expected = [_placed([f], CRS.from_epsg(32660)) for f in features]
    placed, _ = _placed(features, CRS.from_epsg(32660))
    assert placed == sorted(row for rows, _ in expected for row in rows)
    assert any(json.loads(row[-1])["type"] == "MultiPolygon" for row in placed)


@pytest.mark.parametrize("crs", ["EPSG:32631", "EPSG:3857", "EPSG:3035", "EPSG:3413"])
def test_extents_are_the_bounds_gdal_gives_each_polygon(crs: str) -> None:
    """A polygon with a hole, and multipolygons whose later parts reach farthest, in UTM, Web Mercator, LAEA Europe and
    polar stereographic north: the bounds of the transformed outer rings equal shapely's bounds of transform_geom's result."""
    lon, lat = (2.0, 80.0) if crs == "EPSG:3413" else (2.0, 47.0)
    polygons = [f.geometry for f in _features(lon, lat) if f.kind == "polygon"]
    polygons.append(MultiPolygon([_square(lon, lat, 0.001), _square(lon - 0.02, lat - 0.01, 0.001), _square(lon + 0.03, lat, 0.002)]))
    assert shapely.get_num_geometries(polygons[-1]) == 3
    expected = [shape(TRANSFORM_GEOM(WGS84, crs, mapping(p))).bounds for p in polygons]
    assert list(_extents_in(CRS.from_user_input(crs), polygons)) == expected


def test_lonlat_boxes_are_cut_at_the_antimeridian() -> None:
    """Bounds from west > east (a raster across 180 degrees) and a box drawn beyond +-180 (round an object near it) become
    two boxes, one each side; other boxes stay one."""
    def parts(geometry: Any) -> list[tuple[float, ...]]:
        return sorted(g.bounds for g in getattr(geometry, "geoms", [geometry]))

    assert parts(lonlat_box(10.0, 40.0, 11.0, 41.0)) == [(10.0, 40.0, 11.0, 41.0)]
    assert parts(lonlat_box(179.9, 40.0, -179.9, 41.0)) == [(-180.0, 40.0, -179.9, 41.0), (179.9, 40.0, 180.0, 41.0)]
    assert parts(lonlat_box(179.75, 40.0, 180.25, 41.0)) == [(-180.0, 40.0, -179.75, 41.0), (179.75, 40.0, 180.0, 41.0)]
    assert parts(lonlat_box(-180.5, 40.0, -179.5, 41.0)) == [(-180.0, 40.0, -179.5, 41.0), (179.5, 40.0, 180.0, 41.0)]
    assert parts(lonlat_box(-190.0, 40.0, 190.0, 41.0)) == [(-180.0, 40.0, 180.0, 41.0)]  # all the way round
