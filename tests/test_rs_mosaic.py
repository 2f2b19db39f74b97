"""Rasters given to one remote-sensing curation form mosaics: an object on raster edges is curated once, from all its pixels."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from bad_inputs.files import CRS, GSD, X0, Y0, texture, truncate, write_raster
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from shapely.geometry import Point, box, mapping

from domains.remote_sensing.curation.curate import RSCurateConfig, curate, plan_units, process
from domains.remote_sensing.curation.mosaic import RasterInfo, connected, group_mosaics, priority
from domains.remote_sensing.curation.osm import read_features
from domains.remote_sensing.curation.visibility import load_tag_table
from pipelines.io.manifest import read_manifest
from pipelines.params import build

CFG = dict(tile_size=32, target_gsd_m=2.0, max_shift_fraction=0.0, polygon_margin=0.0, val_fraction=0.0, test_fraction=0.0)


def scene(seed: int = 1, lo: float = 30, hi: float = 220) -> np.ndarray:
    return texture(3, lo, hi, seed).round().astype(np.uint8)


def strips(folder: Path, data: np.ndarray, n: int = 3, **profile) -> list[Path]:
    """The scene cut into n adjacent rasters, west to east."""
    width = data.shape[2] // n
    return [write_raster(folder / f"strip{i}.tif", data[:, :, i * width : (i + 1) * width], x0=X0 + i * width * GSD, **profile)
            for i in range(n)]


def lonlat(geom) -> dict:
    """Scene metres (x east of X0, y north of Y0) to a lon/lat GeoJSON geometry."""
    from shapely.affinity import translate

    return transform_geom(CRS, "EPSG:4326", mapping(translate(geom, X0, Y0)))


def write_map(path: Path, features: list[tuple[str, dict, object]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"osm_id": fid, **tags}, "geometry": lonlat(g)} for fid, tags, g in features]}))
    return path


def run(tmp_path: Path, rasters: list[Path], osm: Path, out: str = "out", **overrides) -> dict:
    return curate(rasters, osm, tmp_path / out, build(RSCurateConfig, {**CFG, **overrides}))


def images(out: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """osm_id -> (manifest row as a dict, image)."""
    manifest = read_manifest(out)
    rows = {r.key: r._asdict() for r in manifest.itertuples()}
    found = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                if ext == "png":
                    row = rows[key]
                    found[row["provenance"]["osm_id"]] = (row, np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))))
    return found


# The farmland spans the three strips (their edges are 128 m and 256 m east of the scene's west edge).
FARM = ("way/1", {"landuse": "farmland"}, box(60, -222, 330, -162))


def test_object_across_three_rasters_is_curated_once_with_all_its_pixels(tmp_path):
    data = scene()
    parts = strips(tmp_path, data)
    osm = write_map(tmp_path / "map.geojson", [FARM])
    summary = run(tmp_path, parts, osm)
    got = images(tmp_path / "out")
    assert summary["pairs"]["kept"] == 1 and list(got) == ["way/1"]  # once, not once per raster
    row, image = got["way/1"]
    assert row["provenance"]["nodata_fraction"] == 0.0
    assert row["provenance"]["rasters"] == [str(p) for p in parts]
    assert row["source"] == " + ".join(str(p) for p in parts)
    assert (image.max(axis=2) > 0).all()
    # the same tile from the scene as one raster: the same pixels, up to resampling at the two seams
    whole = write_raster(tmp_path / "whole.tif", data)
    run(tmp_path, [whole], osm, out="whole")
    _, reference = images(tmp_path / "whole")["way/1"]
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < 1.0


def test_each_raster_alone_would_leave_the_object_half_empty(tmp_path):
    """The layout above fails without mosaics: every strip on its own gives a tile mostly outside it."""
    parts = strips(tmp_path, scene())
    osm = write_map(tmp_path / "map.geojson", [FARM])
    for i, part in enumerate(parts):
        summary = run(tmp_path, [part], osm, out=f"alone{i}")
        assert summary["pairs"]["kept"] == 0 and summary["rejected"] == {"tile: too much nodata": 1}


def test_overlaps_go_to_the_newest_then_to_input_order(tmp_path):
    dark = write_raster(tmp_path / "dark.tif", scene(1, 20, 90))
    bright = write_raster(tmp_path / "bright.tif", scene(2, 160, 230))
    osm = write_map(tmp_path / "map.geojson", [("way/1", {"landuse": "farmland"}, box(100, -250, 250, -100))])

    def mean_of(rasters: list[Path], out: str) -> tuple[float, list[str]]:
        run(tmp_path, rasters, osm, out=out)
        row, image = images(tmp_path / out)["way/1"]
        return float(image.mean()), [Path(r).name for r in row["provenance"]["rasters"]]

    mean, used = mean_of([dark, bright], "a")
    assert mean < 100 and used == ["dark.tif"]  # no dates: the first given wins everywhere it has data
    mean, used = mean_of([bright, dark], "b")
    assert mean > 150 and used == ["bright.tif"]
    with rasterio.open(dark, "r+") as dst:  # dated: the newest wins, whatever the order given
        dst.update_tags(TIFFTAG_DATETIME="2021:06:01 10:00:00")
    mean, used = mean_of([bright, dark], "c")
    assert mean < 100 and used == ["dark.tif"]
    with rasterio.open(bright, "r+") as dst:
        dst.update_tags(ACQUISITIONDATETIME="2023-02-01T10:30:00Z")
    mean, used = mean_of([dark, bright], "d")
    assert mean > 150 and used == ["bright.tif"]


def test_later_rasters_fill_only_what_earlier_ones_leave_empty(tmp_path):
    holed = scene(1, 20, 90)
    holed[:, 60:130, 60:130] = 0  # nodata under part of the object
    first = write_raster(tmp_path / "first.tif", holed)
    second = write_raster(tmp_path / "second.tif", scene(2, 160, 230))
    osm = write_map(tmp_path / "map.geojson", [("way/1", {"landuse": "farmland"}, box(100, -250, 250, -100))])
    run(tmp_path, [first, second], osm)
    row, image = images(tmp_path / "out")["way/1"]
    assert row["provenance"]["nodata_fraction"] == 0.0
    assert row["provenance"]["rasters"] == [str(first), str(second)]
    grey = image.mean(axis=2)
    assert 0.5 < (grey > 150).mean() < 0.9 and (grey < 100).mean() > 0.1  # both rasters show, nothing empty
    # the hole is 120-260 m east and 120-260 m south of the corner: all but the tile's top and left 20 m
    assert grey[6:, 6:].min() > 150 and grey[:3].max() < 100 and grey[:, :3].max() < 100


def info(name: str, order: int, bounds=(0.0, 0.0, 1.0, 1.0), count: int = 3, dtype: str = "uint8", gsd: float = 2.0,
         acquired: str | None = None) -> RasterInfo:
    return RasterInfo(name, bounds, "", "EPSG:32631", count, (dtype,) * count, gsd, [1, 2, 3][:count], "default", acquired, order)


def test_group_mosaics_keeps_apart_what_cannot_join_and_says_why():
    rasters = [
        info("a.tif", 0, (0, 0, 1, 1)),
        info("b.tif", 1, (1, 0, 2, 1)),  # touches a
        info("ms.tif", 2, (0.5, 0, 1.5, 1), count=4, dtype="uint16"),
        info("ms2.tif", 3, (1.5, 0, 2.5, 1), count=4, dtype="uint16"),  # like ms, touching it
        info("coarse.tif", 4, (0, 0, 2, 1), gsd=10.0),
        info("pan.tif", 5, (0, 0, 1, 1), count=1),
        info("far.tif", 6, (10, 10, 11, 11)),
    ]
    mosaics, rejects = group_mosaics(rasters)
    assert [[m.path for m in mosaic.members] for mosaic in mosaics] == [["a.tif", "b.tif"], ["ms.tif", "ms2.tif"], ["coarse.tif"],
                                                                        ["pan.tif"], ["far.tif"]]
    reasons = {r.input.split(" ")[0]: (r.stage, r.reason) for r in rejects}
    assert reasons == {
        "ms.tif": ("mosaic", "cannot join the mosaic (different band count); curated apart from it"),
        "ms2.tif": ("mosaic", "cannot join the mosaic (different band count); curated apart from it"),
        "coarse.tif": ("mosaic", "cannot join the mosaic (different resolution); curated apart from it"),
        "pan.tif": ("mosaic", "cannot join the mosaic (different band count); curated apart from it"),
    }
    assert "mosaic of a.tif: 3 bands uint8, 2 m pixels" in next(r.input for r in rejects if r.input.startswith("ms.tif"))
    # the set that agrees with most members is the mosaic, whoever comes first
    mosaics, rejects = group_mosaics([info("ms.tif", 0, count=4, dtype="uint16"), info("a.tif", 1), info("b.tif", 2)])
    assert sorted([m.path for m in mosaic.members] for mosaic in mosaics) == [["a.tif", "b.tif"], ["ms.tif"]]
    assert [r.input.split(" ")[0] for r in rejects] == ["ms.tif"]
    # close resolutions join (0.25 and 0.3 m)
    mosaics, rejects = group_mosaics([info("a.tif", 0, gsd=0.25), info("b.tif", 1, gsd=0.3)])
    assert len(mosaics) == 1 and not rejects


def test_priority_puts_dated_rasters_first_newest_first():
    rasters = [info("old.tif", 0, acquired="2019-01-01T00:00:00"), info("undated1.tif", 1),
               info("new.tif", 2, acquired="2022-05-01T00:00:00"), info("undated0.tif", 3),
               info("new_too.tif", 4, acquired="2022-05-01T00:00:00")]
    assert [r.path for r in priority(rasters)] == ["new.tif", "new_too.tif", "old.tif", "undated1.tif", "undated0.tif"]


def grid_of_rasters(folder: Path, n: int = 3, side: int = 64, seed: int = 1) -> list[Path]:
    data = texture(3, 30, 220, seed, size=n * side).round().astype(np.uint8)
    paths = []
    for i in range(n):
        for j in range(n):
            paths.append(write_raster(folder / f"r{i}{j}.tif", data[:, i * side : (i + 1) * side, j * side : (j + 1) * side],
                                      x0=X0 + j * side * GSD, y0=Y0 - i * side * GSD))
    return paths


def points(n: int, extent_m: float, seed: int = 0) -> list[tuple[str, dict, object]]:
    rng = np.random.default_rng(seed)
    return [(f"node/{i}", {"leisure": "playground"}, Point(*rng.uniform([30, -extent_m + 30], [extent_m - 30, -30])))
            for i in range(n)]


def test_units_are_chunks_each_object_in_one_and_inputs_name_every_raster_read(tmp_path):
    rasters = grid_of_rasters(tmp_path)
    osm = write_map(tmp_path / "map.geojson", points(80, 3 * 64 * GSD))
    cfg = build(RSCurateConfig, {**CFG, "point_tile_m": 40.0, "min_tile_m": 40.0, "max_tile_m": 40.0, "max_shift_fraction": 0.2})
    table = load_tag_table()
    features = read_features(osm, keep=table.has_visible).features
    plan = plan_units(rasters, features, cfg, table)
    assert len(plan.units) > 1  # 384 m of rasters, chunks of 4 x 40 m tiles
    owned = [f.osm_id for u in plan.units for f in u.payload.features]
    assert sorted(owned) == sorted(f.osm_id for f in features)  # every object in exactly one unit
    pairs = 0
    for unit in plan.units:
        result = process(unit)
        for pair in result.pairs:
            assert set(pair.provenance["rasters"]) <= set(unit.inputs), (pair.id, unit.inputs)
            assert pair.provenance["nodata_fraction"] == 0.0
        pairs += len(result.pairs)
    assert pairs == len(features)  # no object lost at a raster or chunk edge
    # several objects' tiles straddle raster edges and are read from two or four rasters
    assert len(plan.units) < len(rasters) * 4


def test_changing_one_raster_recurates_only_the_units_that_read_it(tmp_path):
    rasters = grid_of_rasters(tmp_path)
    osm = write_map(tmp_path / "map.geojson", points(80, 3 * 64 * GSD))
    overrides = {"point_tile_m": 40.0, "min_tile_m": 40.0, "max_tile_m": 40.0}
    first = run(tmp_path, rasters, osm, **overrides)
    assert first["units"]["total"] > 2
    write_raster(rasters[0], texture(3, 30, 220, 9, size=64).round().astype(np.uint8))  # r00 changes: the north-west corner
    again = run(tmp_path, rasters, osm, **overrides)
    assert 0 < again["run"]["units_processed"] < again["units"]["total"] == first["units"]["total"]


def test_member_unreadable_at_full_resolution_is_named_and_the_others_fill_in(tmp_path):
    """A COG cut short (an interrupted download) keeps its overviews, so only reading its pixels finds the break."""
    data = texture(3, 30, 220, 1, size=1024).round().astype(np.uint8)
    cog = tmp_path / "cut.tif"
    with rasterio.open(cog, "w", driver="COG", width=1024, height=1024, count=3, dtype="uint8", crs=CRS,
                       transform=from_origin(X0, Y0, GSD, GSD), nodata=0, BLOCKSIZE=256) as dst:
        dst.write(data)
    truncate(cog, 0.6)  # full-resolution blocks are stored north to south: the south is gone
    south = (1024 - 192) * GSD
    good = write_raster(tmp_path / "good.tif", scene(3), y0=Y0 - south)  # the COG's south-west 384 m
    osm = write_map(tmp_path / "map.geojson", [("way/1", {"landuse": "farmland"}, box(60, -south - 222, 330, -south - 162))])
    summary = run(tmp_path, [cog, good], osm)
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    assert (str(cog), "raster", "unreadable raster data (corrupt or truncated)") in set(zip(rejects.input, rejects.stage, rejects.reason))
    row, image = images(tmp_path / "out")["way/1"]
    assert row["provenance"]["rasters"] == [str(good)] and row["provenance"]["nodata_fraction"] == 0.0
    assert summary["pairs"]["kept"] == 1


@pytest.mark.parametrize("crs", ["EPSG:3857", "EPSG:4326"])
def test_members_in_other_crs_join_and_tiles_are_cut_in_utm(tmp_path, crs):
    """The east strip in another CRS: the mosaic has no common metric CRS, so tiles are cut in the UTM zone."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    parts = strips(tmp_path, scene())
    east = parts[-1]
    other = tmp_path / "east_other.tif"
    with rasterio.open(east) as src:
        transform, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds, resolution=None)
        with rasterio.open(other, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=crs, transform=transform,
                           nodata=0) as dst:
            for b in (1, 2, 3):
                reproject(rasterio.band(src, b), rasterio.band(dst, b), dst_nodata=0, resampling=Resampling.bilinear)
    osm = write_map(tmp_path / "map.geojson", [FARM])
    run(tmp_path, [*parts[:-1], other], osm)
    row, _ = images(tmp_path / "out")["way/1"]
    assert row["provenance"]["tile_crs"] == "EPSG:32631"
    assert row["provenance"]["rasters"] == [str(parts[0]), str(parts[1]), str(other)]
    assert row["provenance"]["nodata_fraction"] < 0.01  # the reprojected strip's edge may lose a pixel column to resampling


def test_rasters_across_the_antimeridian_join_what_they_touch_there_and_nothing_else():
    """Footprints across 180 degrees come as west > east: such a raster touches its neighbour across 180 E, not the rest of
    the globe that a box from east to west would cover."""
    across = info("across.tif", 0, (179.9, 10.0, -179.9, 11.0))
    east = info("east.tif", 1, (-179.9, 10.0, -179.8, 11.0))  # touches it east of 180
    far = info("far.tif", 2, (5.0, 10.0, 6.0, 11.0))  # same latitudes, the other side of the globe
    assert [[r.path for r in group] for group in connected([across, east, far])] == [["across.tif", "east.tif"], ["far.tif"]]
