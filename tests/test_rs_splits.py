"""Remote-sensing splits by ground, on curated runs: no val/test tile shares ground with a train tile."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from bad_inputs.files import CRS, X0, Y0, texture, write_raster
from rasterio.warp import transform_geom
from shapely.geometry import Point, box, mapping, shape
from shapely.strtree import STRtree

from domains.remote_sensing.curation.curate import RSCurateConfig, curate
from pipelines.curation.splits import GroupSplitter
from pipelines.errors import InputError
from pipelines.io.manifest import read_manifest
from pipelines.params import build

SIDE_PX, GSD_M = 600, 5.0  # a 3 km scene
SPOT = {"key": "test", "value": "spot", "max_gsd_m": 50, "phrase": "spot"}
CFG = dict(tile_size=32, target_gsd_m=5.0, point_tile_m=300.0, max_tile_m=300.0, max_shift_fraction=0.2, extra_visible_tags=[SPOT],
           val_fraction=0.2, test_fraction=0.3, split_cell_m=1000.0, split_seed=5, shard_size=1000)


def lonlat(geom) -> dict:
    from shapely.affinity import translate

    return transform_geom(CRS, "EPSG:4326", mapping(translate(geom, X0, Y0)))


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> dict:
    """300 m tiles around 250 objects scattered over a 3 km scene: tiles overlap everywhere, many across any grid line."""
    tmp = tmp_path_factory.mktemp("splits")
    raster = write_raster(tmp / "scene.tif", texture(3, 30, 220, 1, size=SIDE_PX).round().astype(np.uint8), gsd=GSD_M)
    rng = np.random.default_rng(0)
    extent = SIDE_PX * GSD_M
    spots = [Point(x, -y) for x, y in rng.uniform(250, extent - 250, (250, 2))]
    osm = tmp / "map.geojson"
    osm.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"osm_id": f"node/{i}", "test": "spot"}, "geometry": lonlat(p)} for i, p in enumerate(spots)]}))
    summary = curate([raster], osm, tmp / "out", build(RSCurateConfig, CFG))
    return dict(tmp=tmp, raster=raster, osm=osm, out=tmp / "out", summary=summary)


def utm_footprints(manifest: pd.DataFrame) -> list:
    return [shape(transform_geom("EPSG:4326", CRS, f)) for f in manifest["footprint"]]


def shared_ground_m2(manifest: pd.DataFrame, splits: pd.Series) -> float:
    """Area where a train footprint and a val/test footprint overlap."""
    shapes = utm_footprints(manifest)
    train = [s for s, split in zip(shapes, splits) if split == "train"]
    held_out = [s for s, split in zip(shapes, splits) if split != "train"]
    tree = STRtree(train)
    return sum(train[j].intersection(h).area for h in held_out for j in tree.query(h, predicate="intersects"))


def test_curated_splits_share_no_ground(dense):
    manifest = read_manifest(dense["out"])
    per_split = dense["summary"]["pairs"]["per_split"]
    assert min(per_split.values()) > 10, per_split  # (the seed gives this 3 km scene all three splits)
    shapes = utm_footprints(manifest)
    train = [s for s, split in zip(shapes, manifest["split"]) if split == "train"]
    tree = STRtree(train)
    for s, split, pid in zip(shapes, manifest["split"], manifest["id"]):
        if split != "train":
            assert not len(tree.query(s, predicate="intersects")), f"{pid} ({split}) touches a train tile"


def test_grouping_by_tile_centre_would_leak_on_this_layout(dense):
    """The old rule (256 m blocks of the tile centre in the tile's CRS) on the same pairs: evaluation ground seen in training."""
    manifest = read_manifest(dense["out"])
    rows = []
    for pid, prov in zip(manifest["id"], manifest["provenance"]):
        left, bottom, right, top = prov["tile_bounds"]
        cx, cy = (left + right) / 2, (bottom + top) / 2
        rows.append({"id": pid, "group": f"{prov['tile_crs']}:{math.floor(cx / 256)}:{math.floor(cy / 256)}"})
    rows, _, _ = GroupSplitter(CFG["val_fraction"], CFG["test_fraction"], CFG["split_seed"]).assign(rows)
    assert shared_ground_m2(manifest, pd.Series([r["split"] for r in rows])) > 1e6  # over a square kilometre
    assert shared_ground_m2(manifest, manifest["split"]) == 0.0


def test_buffer_drops_are_counted_and_named(dense):
    steps = dense["summary"]["steps"]
    dropped = steps.get("buffer_dropped_val", 0) + steps.get("buffer_dropped_test", 0)
    rejects = pd.read_csv(dense["out"] / "rejects.csv")
    split_rows = rejects[rejects.stage == "split"]
    assert dropped == len(split_rows) > 0
    assert split_rows.reason.str.match(r"within \d+ m of another split's tiles").all()
    manifest = read_manifest(dense["out"])
    assert not set(split_rows.input) & set(manifest["id"])
    assert dense["summary"]["pairs"]["kept"] + dropped == steps["tiles_written"]


def test_cells_are_groups_and_footprints_are_the_tiles(dense):
    manifest = read_manifest(dense["out"])
    assert manifest.groupby("group")["split"].nunique().max() == 1
    assert manifest["group"].str.match(r"cell:-?\d+:-?\d+$").all()
    for footprint, prov in itertools.islice(zip(utm_footprints(manifest), manifest["provenance"]), 20):
        tile = box(*prov["tile_bounds"])
        assert footprint.symmetric_difference(tile).area < 1e-3 * tile.area


def test_cell_not_larger_than_the_largest_tile_is_refused(dense, tmp_path):
    with pytest.raises(InputError, match=r"split_cell_m: 350 m is not larger than the largest tile"):
        curate([dense["raster"]], dense["osm"], tmp_path / "out", build(RSCurateConfig, {**CFG, "split_cell_m": 350.0}))
    assert not (tmp_path / "out").exists()


def test_automatic_cell_is_several_tiles(dense, tmp_path):
    summary = curate([dense["raster"]], dense["osm"], tmp_path / "out", build(RSCurateConfig, {**CFG, "split_cell_m": None}))
    # 300 m tiles near 43 N measure up to 1.19 times that east-west on the equal-area grid, 10% more for turn
    assert 4 * 300 * 1.19 < summary["steps"]["split_cell_m"] < 4 * 300 * 1.4
