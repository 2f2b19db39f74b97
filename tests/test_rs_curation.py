"""Remote-sensing curation end to end on small GeoTIFFs and OSM/GeoJSON files written here."""
from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import typer
import webdataset as wds
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform_geom
from scipy import ndimage
from shapely.geometry import LineString, Point, Polygon, box, mapping, shape

from domains.remote_sensing.curation.curate import RSCurateConfig, curate, curate_command, load_config, plan_units
from domains.remote_sensing.curation.osm import OSMFileError, read_features
from domains.remote_sensing.curation.tiles import Tile, keeps_own_crs, overview_sample, read_tile, to_rgb8, utm_crs
from domains.remote_sensing.curation.visibility import captions, load_tag_table
from pipelines.io.manifest import read_manifest
from pipelines.io.shards import shard_paths
from pipelines.params import build

CRS = "EPSG:32631"
X0, Y0 = 500_000.0, 4_800_000.0  # top-left corner of the test scene (UTM 31N, about 3E 43.3N)
GSD = 2.0
SIZE = 192  # pixels: a 384 m scene
BORDER = 40  # nodata columns on the right, as at a swath edge

CFG = dict(
    tile_size=32,
    target_gsd_m=2.0,
    max_shift_fraction=0.1,
    max_tile_m=128.0,
    split_cell_m=200.0,
    split_buffer_m=0.0,  # this scene is a few cells: drop only tiles that straddle two splits (test_rs_splits.py tests the buffer)
    val_fraction=0.25,
    test_fraction=0.25,
    shard_size=5,
)


# ---------------------------------------------------------------- inputs


def texture(count: int, lo: float, hi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bands = [ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 2) for _ in range(count)]
    bands = [(b - b.min()) / (b.max() - b.min()) for b in bands]
    return np.stack([lo + b * (hi - lo) for b in bands])


def write_raster(path: Path, data: np.ndarray, crs: str | None = CRS, nodata: float | None = 0, x0: float = X0, y0: float = Y0) -> Path:
    count, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=count, dtype=data.dtype, nodata=nodata)
    if crs is not None:
        profile.update(crs=crs, transform=from_origin(x0, y0, GSD, GSD))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def good_raster(path: Path) -> Path:
    data = texture(3, 30, 220, seed=1).round().astype(np.uint8)
    data[:, :, SIZE - BORDER :] = 0
    return write_raster(path, data)


def multispectral_raster(path: Path) -> Path:
    data = texture(4, 1000, 5000, seed=2).round().astype(np.uint16)
    data[:, :, SIZE - BORDER :] = 0
    return write_raster(path, data)


def ll(geom):
    """UTM scene metres (x east of X0, y north of Y0) to a lon/lat GeoJSON geometry."""
    from shapely.affinity import translate

    return transform_geom(CRS, "EPSG:4326", mapping(translate(geom, X0, Y0)))


def utm_features() -> list[tuple[str, dict, object]]:
    """(id, tags, geometry in scene metres) of the test map."""
    return [
        ("way/1", {"leisure": "park"}, box(40, -140, 120, -60)),
        ("way/2", {"amenity": "parking"}, box(200, -100, 240, -60)),
        ("way/3", {"landuse": "farmland"}, box(40, -340, 200, -200)),
        ("way/4", {"building": "yes"}, box(110, -280, 125, -265)),  # a farm building
        ("way/5", {"highway": "residential", "name": "Rue A"}, LineString([(20, -180), (340, -180)])),
        ("node/6", {"sport": "tennis"}, Point(250, -340)),
        ("node/7", {"natural": "tree"}, Point(100, -100)),  # ~1 m object: not visible at 2 m
        ("node/8", {"name": "nothing visible"}, Point(150, -150)),
        ("node/9", {"building": "yes"}, Point(370, -40)),  # in the nodata border
        ("way/10", {"landuse": "meadow"}, Polygon([(220, -240), (290, -300), (290, -240), (220, -300)])),  # bow tie
    ]


def write_geojson(path: Path, extra: list[dict] = ()) -> Path:
    feats = [{"type": "Feature", "id": fid, "properties": tags, "geometry": ll(g)} for fid, tags, g in utm_features()]
    feats += list(extra)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


BROKEN = [
    {"type": "Feature", "properties": {"osm_id": "way/20", "building": "yes"},
     "geometry": {"type": "Polygon", "coordinates": [[[3.0, 43.3], [3.001, 43.3], [3.001, 43.301]]]}},
    {"type": "Feature", "properties": {"osm_id": "way/21", "landuse": "forest"}, "geometry": None},
    {"type": "Feature", "properties": {"osm_id": "way/1", "landuse": "forest"}, "geometry": {"type": "Point", "coordinates": [3.0, 43.3]}},
]


def run(tmp_path: Path, rasters: list[Path], osm: Path, out: str = "out", **overrides) -> dict:
    cfg = build(RSCurateConfig, {**CFG, **overrides})
    return curate(rasters, osm, tmp_path / out, cfg)


def shard_samples(out: Path) -> list[dict]:
    samples = []
    for split in ("train", "val", "test"):
        for path in shard_paths(out, split):
            for s in wds.WebDataset(path, shardshuffle=False):
                samples.append({**s, "split": split, "shard": Path(path).name})
    return samples


def png(sample: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample["png"])))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    """One good run over two rasters (uint8 RGB and uint16 4-band) and the GeoJSON map."""
    tmp = tmp_path_factory.mktemp("rs")
    good = good_raster(tmp / "good.tif")
    ms = multispectral_raster(tmp / "ms.tif")
    osm = write_geojson(tmp / "map.geojson", BROKEN)
    summary = run(tmp, [good, ms], osm)
    return dict(tmp=tmp, good=good, ms=ms, osm=osm, out=tmp / "out", summary=summary)


# ---------------------------------------------------------------- the good run


def test_shards_are_webdataset_and_match_manifest(scene):
    out = scene["out"]
    samples = shard_samples(out)
    manifest = read_manifest(out)
    assert len(samples) == len(manifest) == scene["summary"]["pairs"]["kept"] > 10
    for s in samples:
        assert {"png", "txt", "json"} <= set(s), s.keys()
    by_key = {s["__key__"]: s for s in samples}
    assert set(by_key) == set(manifest["key"])
    for row in manifest.itertuples():
        s = by_key[row.key]
        assert s["txt"].decode() == row.caption
        assert s["split"] == row.split and s["shard"] == row.shard
        meta = json.loads(s["json"])
        assert meta["id"] == row.id and meta["provenance"]["osm_id"] == row.provenance["osm_id"]
        image = png(s)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_captions_from_tags(scene):
    manifest = read_manifest(scene["out"])
    good = manifest[manifest.source == str(scene["good"])]
    title = {r.provenance["osm_id"]: r.caption for r in good.itertuples()}
    assert title["way/1"] == "park"
    assert title["way/2"] == "parking lot"
    assert title["way/3"] == "farmland"
    assert title["way/4"] == "building"
    assert title["way/5"] == "residential road"
    assert title["node/6"] == "sport of tennis"  # no phrase in the table: "<key> of <value>"
    variants = {r.provenance["osm_id"]: r.caption_variants for r in good.itertuples()}
    assert variants["way/4"]["title_multi_objects"].startswith("building, surrounded by ")
    assert "farmland" in variants["way/4"]["title_multi_objects"]
    # the farmland tile is cut at 6 m/px, where a building (visible up to 2 m/px) is not named
    assert "building" not in variants["way/3"]["title_multi_objects"]
    for v in variants.values():
        assert v["title_multi_objects"].count(v["title"]) == 1  # the title never repeats as a neighbour
    prov = good.iloc[0].provenance
    assert {"osm_id", "osm_type", "tags", "tile_bounds", "tile_crs", "raster_crs", "gsd_m", "centre_lonlat", "shift_m"} <= set(prov)
    assert prov["tile_crs"] == "EPSG:32631"  # a projected metric raster keeps its CRS
    # a polygon bigger than the minimum tile is cut at a coarser GSD, within what its tag allows
    farm = good[good.provenance.map(lambda p: p["osm_id"]) == "way/3"].iloc[0].provenance
    assert 2.0 < farm["gsd_m"] <= 30.0
    assert abs(farm["tile_bounds"][2] - farm["tile_bounds"][0] - 32 * farm["gsd_m"]) < 1e-6


def test_visibility_and_reject_counts(scene):
    steps = scene["summary"]["steps"]
    assert steps["objects_not_visible_at_gsd"] == 2  # the tree, once per raster
    assert steps["objects_without_visible_tags"] == 1  # name only
    assert steps["osm_geometries_repaired"] == 1  # bow-tie meadow
    assert steps["rasters_seen"] == 2 and steps["rasters_curated"] == 2
    rejects = pd.read_csv(scene["out"] / "rejects.csv")
    reasons = set(zip(rejects.input, rejects.stage, rejects.reason))
    osm = str(scene["osm"])
    assert (f"{osm}#way/20", "osm", "unclosed polygon ring") in reasons
    assert (f"{osm}#way/21", "osm", "missing geometry") in reasons
    assert (f"{osm}#way/1", "osm", "duplicate feature id") in reasons
    assert (f"{scene['good']}#node/9", "tile", "too much nodata") in reasons
    tiled = tiled_ids(scene["out"])
    assert "way/10" in tiled  # the repaired one is curated
    assert "node/7" not in tiled


def tiled_ids(out: Path) -> set[str]:
    """OSM ids of the objects that got a tile: in the manifest, or dropped by the split's buffer."""
    manifest = read_manifest(out)
    rejects = pd.read_csv(out / "rejects.csv")
    dropped = {"/".join(i.rsplit("-", 2)[-2:]) for i, s in zip(rejects.input, rejects.stage) if s == "split"}
    return set(manifest.provenance.map(lambda p: p["osm_id"])) | dropped


def test_groups_never_span_splits(scene):
    manifest = read_manifest(scene["out"])
    assert manifest.groupby("group")["split"].nunique().max() == 1
    assert manifest["group"].nunique() >= 2
    assert set(manifest["split"]) >= {"train"}
    assert all(g.startswith("cell:") for g in manifest["group"])  # equal-area cells of split_cell_m
    assert all(f and f["type"] == "Polygon" for f in manifest["footprint"])


def test_one_stretch_for_the_whole_raster_and_uint8_passthrough(scene):
    samples = shard_samples(scene["out"])
    ms = [s for s in samples if json.loads(s["json"])["source"] == str(scene["ms"])]
    good = [s for s in samples if json.loads(s["json"])["source"] == str(scene["good"])]
    assert ms and good
    limits = {json.dumps(json.loads(s["json"])["provenance"]["stretch_limits"]) for s in ms}
    assert len(limits) == 1  # every tile of ms.tif is stretched with the same per-band range
    (lo, hi), *_ = json.loads(limits.pop())
    assert 1000 < lo < hi < 5000  # percentiles of the raster's valid pixels, not of its nodata border
    for s in good:
        image = png(s)
        assert image.max() <= 220 and image[image > 0].min() >= 30  # 8-bit data is not stretched
    assert "stretch_limits" not in json.loads(good[0]["json"])["provenance"]


def shard_contents(out: Path) -> dict[str, list[tuple[str, str]]]:
    """Each shard's members in order with a digest of their bytes (tar headers carry write times)."""
    contents = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            contents[path.name] = [(m.name, hashlib.sha256(tar.extractfile(m).read()).hexdigest()) for m in tar]
    return contents


def test_rerun_reuses_units_and_shards(scene):
    before = shard_contents(scene["out"])
    summary = run(scene["tmp"], [scene["good"], scene["ms"]], scene["osm"])
    assert summary["units"]["total"] == summary["run"]["units_cached"] >= 2 and summary["run"]["units_processed"] == 0
    assert shard_contents(scene["out"]) == before
    # a parameter that changes the output changes the unit keys: nothing stale is reused
    changed = run(scene["tmp"], [scene["good"]], scene["osm"], max_shift_fraction=0.0)
    assert changed["run"]["units_cached"] == 0


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_are_rejected_while_good_raster_is_curated(tmp_path):
    good = good_raster(tmp_path / "good.tif")
    nocrs = write_raster(tmp_path / "nocrs.tif", texture(3, 30, 220, 3).astype(np.uint8), crs=None)
    truncated = tmp_path / "truncated.tif"
    raw = good.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    empty = write_raster(tmp_path / "allnodata.tif", np.zeros((3, SIZE, SIZE), np.uint8))
    far = write_raster(tmp_path / "far.tif", texture(3, 30, 220, 4).astype(np.uint8), x0=X0 + 50_000)
    flat = write_raster(tmp_path / "flat.tif", np.full((3, SIZE, SIZE), 120, np.uint16))  # its own mosaic: another data type
    missing = tmp_path / "missing.tif"
    osm = write_geojson(tmp_path / "map.geojson")

    summary = run(tmp_path, [good, nocrs, truncated, empty, far, flat, missing], osm, workers=2)  # units in worker processes
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    got = {(Path(i.split("#")[0]).name, s, r) for i, s, r in zip(rejects.input, rejects.stage, rejects.reason)}
    assert ("nocrs.tif", "raster", "raster has no CRS") in got
    assert ("allnodata.tif", "raster", "raster has no valid pixels") in got
    assert ("far.tif", "raster", "no OSM features intersect the raster footprint") in got
    assert ("missing.tif", "raster", "raster file not found") in got
    assert ("flat.tif", "tile", "blank tile") in got
    assert any(name == "truncated.tif" and stage == "raster" for name, stage, _ in got), got
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest.source) == {str(good)}
    assert len(manifest) == summary["pairs"]["kept"] > 5


def test_osm_without_visible_tags_is_a_reject(tmp_path):
    good = good_raster(tmp_path / "good.tif")
    osm = tmp_path / "names.geojson"
    osm.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "x"}, "geometry": ll(Point(50, -50))}]}))
    summary = run(tmp_path, [good], osm)
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert (str(osm), "osm", "no features with visible tags") in set(zip(rejects.input, rejects.stage, rejects.reason))
    assert summary["pairs"]["kept"] == 0


def test_cli_errors_for_missing_or_unknown_osm(tmp_path):
    good = good_raster(tmp_path / "good.tif")
    with pytest.raises(typer.BadParameter, match="not found"):
        curate_command(raster=[good], osm=tmp_path / "nope.osm.pbf", out=tmp_path / "out", params=None, workers=0)
    odd = tmp_path / "map.shp"
    odd.write_text("x")
    with pytest.raises(typer.BadParameter, match="unknown OSM file type"):
        curate_command(raster=[good], osm=odd, out=tmp_path / "out", params=None, workers=0)


def test_params_section_and_extra_tags(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "remote_sensing:\n  curate:\n    tile_size: 32\n    target_gsd_m: 2.0\n"
        "    extra_visible_tags:\n      - {key: sport, value: tennis, max_gsd_m: 2, phrase: tennis court}\n"
    )
    cfg = load_config(params, workers=0)
    assert cfg.tile_size == 32 and cfg.workers == 0 and cfg.curation().shard_size == 1000
    table = load_tag_table(cfg.extra_visible_tags)
    assert table.visible({"sport": "tennis"}, 2.0)[0].phrase == "tennis court"
    assert table.visible({"sport": "tennis"}, 2.5) == []
    good = good_raster(tmp_path / "good.tif")
    osm = write_geojson(tmp_path / "map.geojson")
    curate_command(raster=[good], osm=osm, out=tmp_path / "out", params=params, workers=0)
    manifest = read_manifest(tmp_path / "out")
    assert "tennis court" in set(manifest.caption)
    bad = tmp_path / "bad.yaml"
    bad.write_text("remote_sensing:\n  curate:\n    tile_sise: 32\n")
    with pytest.raises(ValueError, match="tile_sise"):
        load_config(bad)


def test_tag_table_phrases():
    table = load_tag_table()
    phrase = lambda tags, gsd=1.0: [m.phrase for m in table.visible(tags, gsd)]  # noqa: E731
    assert phrase({"landuse": "farmland"}) == ["farmland"]
    assert phrase({"building": "yes"}) == ["building"]
    assert phrase({"building": "church"}) == ["building"]  # "*" rows match any value
    assert phrase({"leisure": "park"}) == ["park"]
    assert phrase({"amenity": "parking"}) == ["parking lot"]
    assert phrase({"sport": "beach_volleyball"}) == []  # not in the table
    assert phrase({"leisure": "park", "landuse": "grass"}) == ["park", "grass"]  # table order is priority
    assert phrase({"building": "yes"}, 2.5) == [] and phrase({"landuse": "farmland"}, 25) == ["farmland"]
    assert captions("park", ["building", "park", "road", "building", "water", "forest"], 3) == {
        "title": "park",
        "title_multi_objects": "park, surrounded by building, road and water",
    }
    assert captions("park", [], 3)["title_multi_objects"] == "park"


# ---------------------------------------------------------------- OSM XML through pyosmium


def ll_xy(x: float, y: float) -> tuple[float, float]:
    g = transform_geom(CRS, "EPSG:4326", mapping(Point(X0 + x, Y0 + y)))
    return g["coordinates"]


def write_osm_xml(path: Path) -> Path:
    pts = {
        1: (40, -60), 2: (120, -60), 3: (120, -140), 4: (40, -140),  # water outer ring (relation)
        5: (70, -90), 6: (90, -90), 7: (90, -110), 8: (70, -110),  # its inner ring (an island)
        11: (200, -100), 12: (240, -100), 13: (240, -60), 14: (200, -60),  # building (closed way)
        21: (20, -180), 22: (340, -180),  # road (open way)
        31: (40, -340), 32: (200, -200), 33: (200, -340), 34: (40, -200),  # self-intersecting farmland
    }
    nodes = "".join(f'<node id="{i}" lat="{ll_xy(*xy)[1]:.8f}" lon="{ll_xy(*xy)[0]:.8f}"/>\n' for i, xy in pts.items())
    nodes += f'<node id="40" lat="{ll_xy(250, -340)[1]:.8f}" lon="{ll_xy(250, -340)[0]:.8f}"><tag k="leisure" v="playground"/></node>\n'
    ways = """
<way id="100"><nd ref="1"/><nd ref="2"/><nd ref="3"/><nd ref="4"/><nd ref="1"/></way>
<way id="101"><nd ref="5"/><nd ref="6"/><nd ref="7"/><nd ref="8"/><nd ref="5"/></way>
<way id="102"><nd ref="11"/><nd ref="12"/><nd ref="13"/><nd ref="14"/><nd ref="11"/><tag k="building" v="yes"/></way>
<way id="103"><nd ref="21"/><nd ref="22"/><tag k="highway" v="residential"/></way>
<way id="104"><nd ref="31"/><nd ref="32"/><nd ref="33"/><nd ref="34"/><nd ref="31"/><tag k="landuse" v="farmland"/></way>
<way id="105"><nd ref="11"/><nd ref="12"/><nd ref="13"/><tag k="building" v="yes"/></way>
<way id="106"><nd ref="21"/><nd ref="999"/><tag k="highway" v="service"/></way>
<relation id="200"><member type="way" ref="100" role="outer"/><member type="way" ref="101" role="inner"/>
  <tag k="type" v="multipolygon"/><tag k="natural" v="water"/></relation>
<relation id="201"><member type="way" ref="998" role="outer"/><tag k="type" v="multipolygon"/><tag k="landuse" v="forest"/></relation>
"""
    path.write_text(f"<?xml version='1.0' encoding='UTF-8'?>\n<osm version=\"0.6\">\n{nodes}{ways}</osm>\n")
    return path


def test_osm_xml_reader_and_bz2(tmp_path):
    xml = write_osm_xml(tmp_path / "map.osm")
    read = read_features(xml)
    kinds = {f.osm_id: (f.osm_type, f.kind) for f in read.features}
    assert kinds["relation/200"] == ("relation", "polygon")
    assert kinds["way/102"] == ("way", "polygon")
    assert kinds["way/103"] == ("way", "line")
    assert kinds["node/40"] == ("node", "point")
    water = next(f for f in read.features if f.osm_id == "relation/200")
    assert len(water.geometry.interiors) == 1  # the island is a hole
    farm = next(f for f in read.features if f.osm_id == "way/104")
    assert farm.geometry.is_valid and farm.geometry.geom_type == "MultiPolygon"  # bow tie, repaired
    reasons = {r.input.split("#")[1]: r.reason for r in read.rejects}
    assert reasons == {
        "way/105": "unclosed way with area tags",
        "way/106": "missing node locations",
        "relation/201": "multipolygon could not be assembled",
    }
    compressed = tmp_path / "map.osm.bz2"
    compressed.write_bytes(bz2.compress(xml.read_bytes()))
    again = read_features(compressed)
    assert [(f.osm_id, f.geometry.wkb) for f in again.features] == [(f.osm_id, f.geometry.wkb) for f in read.features]


def test_osm_xml_curation(tmp_path):
    good = good_raster(tmp_path / "good.tif")
    osm = write_osm_xml(tmp_path / "map.osm")
    run(tmp_path, [good], osm)
    manifest = read_manifest(tmp_path / "out")
    by_id = {r.provenance["osm_id"]: r for r in manifest.itertuples()}
    assert by_id["relation/200"].caption == "water"
    assert by_id["relation/200"].provenance["osm_type"] == "relation"
    assert by_id["way/102"].caption == "building"
    assert by_id["way/104"].caption == "farmland"
    assert by_id["node/40"].caption == "playground"


# ---------------------------------------------------------------- Web Mercator input


def test_web_mercator_raster_is_cut_at_true_ground_scale(tmp_path):
    """A bright 40 m square in a dark EPSG:3857 scene: the tile (no shift) must show it centred,
    covering (40 m / 64 m)^2 of the tile. Cutting in 3857 metres (scale 1/cos(43.3 deg) = 1.37)
    would shrink it to about half that area."""
    data = np.full((1, SIZE, SIZE), 40, np.uint8) + texture(1, 0, 10, 5).astype(np.uint8)
    data[:, 80:100, 80:100] = 230  # 160..200 m east, 160..200 m south of the corner
    utm = write_raster(tmp_path / "utm.tif", data)
    merc = tmp_path / "merc.tif"
    with rasterio.open(utm) as src:
        transform, w, h = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        with rasterio.open(merc, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs="EPSG:3857",
                           transform=transform, nodata=0) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), dst_nodata=0, resampling=Resampling.nearest)
    osm = tmp_path / "square.geojson"
    osm.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"osm_id": "way/1", "building": "yes"}, "geometry": ll(box(160, -200, 200, -160))}]}))
    run(tmp_path, [merc], osm, max_shift_fraction=0.0, polygon_margin=0.0)
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 1
    prov = manifest.provenance[0]
    assert prov["raster_crs"] == "EPSG:3857" and prov["tile_crs"] == "EPSG:32631"
    image = png(shard_samples(tmp_path / "out")[0])
    assert (image[16, 16] > 180).all()  # grey replicated to RGB, square at the centre
    bright = (image[..., 0] > 135).mean()
    assert abs(bright - (40 / 64) ** 2) < 0.06, bright


def test_crs_choice():
    assert keeps_own_crs(rasterio.crs.CRS.from_epsg(32618))
    assert not keeps_own_crs(rasterio.crs.CRS.from_epsg(3857))
    assert not keeps_own_crs(rasterio.crs.CRS.from_epsg(4326))
    assert utm_crs(3.0, 43.3).to_epsg() == 32631 and utm_crs(-70.0, -33.0).to_epsg() == 32719


# ---------------------------------------------------------------- bad OSM files and odd rasters (issue 10)


def test_corrupt_osm_files_stop_the_run_naming_the_file(tmp_path):
    good = good_raster(tmp_path / "good.tif")
    text = write_osm_xml(tmp_path / "whole.osm").read_text()
    broken = {
        "cut.osm": text[: len(text) // 2].encode(),
        "cut.osm.bz2": bz2.compress(text.encode())[:-30],
        "noise.osm.pbf": bytes(range(256)) * 3,
        "cut.geojson": json.dumps({"type": "FeatureCollection", "features": []})[:-3].encode(),
        "list.geojson": b'[1, 2, 3]',
        "nofeatures.geojson": b'{"type": "FeatureCollection"}',
    }
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OSMFileError, match=rf"^{name.replace('.', '[.]')}: "):
            run(tmp_path, [good], tmp_path / name)
        assert not (tmp_path / "out").exists(), name  # nothing curated from half a map


def test_geojson_features_named_in_rejects(tmp_path):
    def park(osm_id, geometry):
        return {"type": "Feature", "properties": {"osm_id": osm_id, "leisure": "park"}, "geometry": geometry}

    lonlat = write_geojson(tmp_path / "map.geojson", [
        "not a feature",
        park("way/30", {"type": "Circle", "coordinates": [3, 43]}),
        park("way/31", {"type": "Polygon", "coordinates": [[3, 43]]}),
        park("way/32", mapping(box(500_000, 4_790_000, 500_100, 4_790_100))),  # UTM metres in a lon/lat file
    ])
    read = read_features(lonlat)
    reasons = {r.input.split("#")[1]: r.reason for r in read.rejects}
    assert reasons == {
        f"feature/{len(utm_features())}": "not a GeoJSON Feature",
        "way/30": "unsupported geometry type",
        "way/31": "unparseable geometry",
        "way/32": "coordinates outside the lon/lat range",
    }
    assert {f.osm_id for f in read.features} == {fid for fid, _, _ in utm_features()}


def test_geojson_legacy_crs_member_is_honoured(tmp_path):
    doc = json.loads(write_geojson(tmp_path / "lonlat.geojson").read_text())
    lonlat = {f.osm_id: f.geometry for f in read_features(tmp_path / "lonlat.geojson").features}
    merc = {**doc, "features": [{**f, "geometry": transform_geom("EPSG:4326", "EPSG:3857", f["geometry"])} for f in doc["features"]]}
    (tmp_path / "merc.geojson").write_text(json.dumps({**merc, "crs": {"type": "name", "properties": {"name": "EPSG:900913"}}}))
    read = read_features(tmp_path / "merc.geojson")
    assert {f.osm_id for f in read.features} == set(lonlat)
    for f in read.features:
        assert f.geometry.hausdorff_distance(lonlat[f.osm_id]) < 1e-7, f.osm_id  # lon/lat again, to a centimetre
    assert read.warnings == [f"{tmp_path / 'merc.geojson'}: legacy 'crs' member 'EPSG:900913' read as EPSG:3857; "
                             "coordinates reprojected to EPSG:4326 lon/lat"]
    (tmp_path / "bare.geojson").write_text(json.dumps(merc))  # the same metres without saying so
    with pytest.raises(OSMFileError, match="outside the lon/lat range"):
        read_features(tmp_path / "bare.geojson")
    (tmp_path / "list.geojson").write_text(json.dumps(doc["features"]))
    assert len(read_features(tmp_path / "list.geojson").features) == len(lonlat)


def test_nan_and_inf_are_nodata_without_a_declared_nodata(tmp_path):
    data = texture(1, 0.1, 0.5, 3).astype(np.float32)
    data[:, :, 96:] = np.nan
    data[:, 150:, :96] = np.inf
    path = write_raster(tmp_path / "float.tif", data, nodata=None)
    with rasterio.open(path) as src:
        tile = read_tile(src, src.crs, (X0, Y0 - 2 * SIZE, X0 + 2 * SIZE, Y0), SIZE, [1], Resampling.nearest)
        assert abs(tile.valid.mean() - (96 / SIZE) * (150 / SIZE)) < 0.01
        mask, values = overview_sample(src, [1], with_values=True)
        assert np.isfinite(values).all() and 0.1 <= values.min() and values.max() <= 0.5  # the stretch sees only numbers
        rgb = to_rgb8(tile, [(0.1, 0.5)])
        assert (rgb[~tile.valid] == 0).all() and rgb[tile.valid].std() > 30
        assert mask.mean() == pytest.approx(tile.valid.mean(), abs=0.01)
    empty = write_raster(tmp_path / "nan.tif", np.full((1, 8, 8), np.nan, np.float32), nodata=None)
    with rasterio.open(empty) as src:
        assert not overview_sample(src, [1], with_values=False)[0].any()


def test_stretch_is_the_same_for_every_tile():
    rng = np.random.default_rng(0)
    flat = Tile(300 + rng.integers(0, 4, (1, 16, 16)).astype(np.uint16), np.ones((16, 16), bool))
    kept = to_rgb8(flat, [(200.0, 2600.0)])
    assert kept.std() < 1 and 5 < kept.mean() < 15  # dark and flat, as the water is: no per-tile contrast
    ramp = Tile(np.linspace(200, 2600, 256).reshape(1, 16, 16).astype(np.uint16), np.ones((16, 16), bool))
    image = to_rgb8(ramp, [(200.0, 2600.0)])
    assert image.min() == 0 and image.max() == 255 and (image[..., 0] == image[..., 1]).all()
    with pytest.raises(ValueError, match="needs stretch limits"):
        to_rgb8(ramp)


def test_raster_problems_have_their_own_reasons(tmp_path):
    good = good_raster(tmp_path / "good.tif")
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "text.tif").write_text("not a raster\n")
    Image.fromarray(texture(3, 30, 220, 5).astype(np.uint8).transpose(1, 2, 0)).save(tmp_path / "photo.tif", format="JPEG")
    pan = write_raster(tmp_path / "pan.tif", texture(1, 30, 220, 6).astype(np.uint8))
    osm = write_geojson(tmp_path / "map.geojson")
    summary = run(tmp_path, [good, tmp_path / "folder", tmp_path / "empty.tif", tmp_path / "text.tif", tmp_path / "photo.tif", pan], osm)
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    got = {Path(i).name: r for i, s, r in zip(rejects.input, rejects.stage, rejects.reason) if s == "raster"}
    assert got == {
        "folder": "raster path is a folder, not a file (give each raster with --raster)",
        "empty.tif": "empty file",
        "text.tif": "not a raster file (format not recognised)",
        "photo.tif": "not a GeoTIFF (JPEG image without a CRS)",
    }
    assert summary["warnings"] == [f"{pan}: 1 band; tiles are grey from band 1"]


def test_a_raster_across_the_antimeridian_gives_tiles_on_both_sides_and_refuses_those_on_it(tmp_path):
    """A UTM zone 60 raster across 180 E: its lon/lat bounds run from west > east, and objects on both sides get tiles; tiles
    that would cross 180 degrees (GDAL cuts their footprint in two) are rejects, not a failed run."""
    seam = 729_004.84  # x of 180 E at 46.78 N in UTM 60
    x0, y0 = seam - 3 * SIZE * GSD / 2, 5_185_087.7 + SIZE * GSD / 2  # a 1152 x 384 m raster, 180 E down its middle
    data = np.concatenate([texture(3, 30, 220, seed=s) for s in (3, 4, 5)], axis=2).round().astype(np.uint8)
    raster = write_raster(tmp_path / "fiji.tif", data, crs="EPSG:32660", x0=x0, y0=y0)
    points = {"node/1": (300, -80), "node/2": (350, -300), "node/3": (820, -90), "node/4": (870, -290),  # >= 200 m from 180 E
              "node/5": (575, -190), "node/6": (578, -250)}  # within 5 m of it
    features = []
    for fid, (x, y) in points.items():
        lon, lat = transform_geom("EPSG:32660", "EPSG:4326", mapping(Point(x0 + x, y0 + y)))["coordinates"]
        features.append({"type": "Feature", "id": fid, "properties": {"building": "yes"},
                         "geometry": {"type": "Point", "coordinates": [(lon + 180) % 360 - 180, lat]}})
    osm = tmp_path / "map.geojson"
    osm.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with rasterio.open(raster) as src:
        west, _, east, _ = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    assert west > east  # rasterio's way of saying the bounds cross 180 degrees

    cfg = build(RSCurateConfig, CFG)
    table = load_tag_table()
    plan = plan_units([raster], read_features(osm, keep=table.has_visible).features, cfg, table)
    assert plan.units and all(unit.inputs == [str(raster)] for unit in plan.units)  # each chunk reads the raster
    summary = run(tmp_path, [raster], osm)
    manifest = read_manifest(tmp_path / "out")
    lons = {p["osm_id"]: p["centre_lonlat"][0] for p in manifest.provenance}
    assert sorted(lons) == ["node/1", "node/2", "node/3", "node/4"] and summary["pairs"]["kept"] == 4
    assert lons["node/1"] > 179.99 and lons["node/3"] < -179.99
    assert all(shape(f).geom_type == "Polygon" and shape(f).bounds[2] - shape(f).bounds[0] < 0.01 for f in manifest.footprint)
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert sorted(zip(rejects.input, rejects.reason)) == [
        (f"{raster}#node/{i}", "tile crosses the antimeridian (180 degrees) or a pole") for i in (5, 6)]
