"""Bands as the file names them, and one stretch per mosaic: the same ground is the same 8-bit value in every tile."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from bad_inputs.files import CRS, GSD, SIZE, X0, Y0, texture, write_raster
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.warp import transform_geom
from shapely.geometry import Point, box, mapping

from domains.remote_sensing.curation.curate import RSCurateConfig, curate
from domains.remote_sensing.curation.tiles import acquisition_time, select_bands
from pipelines.errors import InputError
from pipelines.io.manifest import read_manifest
from pipelines.params import build

CFG = dict(tile_size=32, target_gsd_m=2.0, max_shift_fraction=0.0, point_tile_m=64.0, val_fraction=0.0, test_fraction=0.0)


def lonlat(geom) -> dict:
    from shapely.affinity import translate

    return transform_geom(CRS, "EPSG:4326", mapping(translate(geom, X0, Y0)))


def write_map(path: Path, features: list[tuple[str, dict, object]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"osm_id": fid, **tags}, "geometry": lonlat(g)} for fid, tags, g in features]}))
    return path


def run(tmp_path: Path, rasters: list[Path], osm: Path, out: str = "out", **overrides) -> dict:
    return curate(rasters, osm, tmp_path / out, build(RSCurateConfig, {**CFG, **overrides}))


def images(out: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """osm_id -> (provenance, image)."""
    manifest = read_manifest(out)
    prov = {r.key: r.provenance for r in manifest.itertuples()}
    found = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                if ext == "png":
                    found[prov[key]["osm_id"]] = (prov[key], np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))))
    return found


def described(path: Path, descriptions: tuple[str | None, ...], dtype=np.uint16, **tags) -> Path:
    data = texture(len(descriptions), 100, 3000, 4).round().astype(dtype)
    write_raster(path, data)
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = descriptions
        if tags:
            dst.update_tags(**tags)
    return path


# ---------------------------------------------------------------- which bands are red, green, blue


@pytest.mark.parametrize(
    "descriptions, tags, name, expected",
    [
        (("B08", "B02", "B03", "B04"), {}, "s2.tif", ([4, 3, 2], "description")),  # Sentinel-2, bands stored in another order
        (("B8", "B4", "B3", "B2"), {}, "s2.tif", ([2, 3, 4], "description")),
        (("nir", "Red", "green", "BLUE"), {}, "named.tif", ([2, 3, 4], "description")),
        (("Red", "Green", "Blue", "Red Edge 1"), {}, "named.tif", ([1, 2, 3], "description")),  # red edge is not red
        ((None,) * 7, {"SPACECRAFT_ID": "LANDSAT_8"}, "stack.tif", ([4, 3, 2], "landsat")),
        ((None,) * 7, {}, "LC08_L2SP_042034_20200101_stack.tif", ([4, 3, 2], "landsat")),
        ((None,) * 6, {}, "LE07_L1TP_042034_20030101_stack.tif", ([3, 2, 1], "landsat")),  # Landsat 7: blue is band 1
        (("B1", "B2", "B3", "B4"), {"SPACECRAFT_ID": "LANDSAT_5"}, "tm.tif", ([3, 2, 1], "description")),
        (("Band 1", "Band 2", "Band 3", "Band 4"), {}, "generic.tif", ([1, 2, 3], "default")),  # positions, not wavelengths
        ((None,) * 4, {}, "plain.tif", ([1, 2, 3], "default")),
        ((None,) * 2, {}, "sar.tif", ([1], "default")),
    ],
)
def test_bands_chosen_by_what_the_file_says(tmp_path, descriptions, tags, name, expected):
    path = described(tmp_path / name, descriptions, **tags)
    with rasterio.open(path) as src:
        assert select_bands(src) == expected
        assert select_bands(src, [3, 2, 1]) == ([3, 2, 1], "params")  # params win


def test_colour_interpretation_is_used_when_bands_are_not_described(tmp_path):
    path = write_raster(tmp_path / "bgr.tif", texture(3, 30, 220, 1).round().astype(np.uint8))
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    with rasterio.open(path) as src:
        assert select_bands(src) == ([3, 2, 1], "colorinterp")


def test_curated_tiles_show_the_described_red_band_as_red(tmp_path):
    """B04 holds a bright square the other bands do not have: it must be red in the tile, without a 'bands' caveat."""
    data = np.full((4, SIZE, SIZE), 800, np.uint16) + texture(4, 0, 200, 5).round().astype(np.uint16)
    data[3, 50:60, 50:60] = 3000  # B04, stored last: a 20 m square 100-120 m from the corner
    data[0, 70:80, 70:80] = 3000  # B08 (near infrared), stored first: a square 140-160 m from the corner
    path = write_raster(tmp_path / "s2.tif", data)
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = ("B08", "B02", "B03", "B04")
    osm = write_map(tmp_path / "map.geojson", [("node/1", {"leisure": "playground"}, Point(120, -120))])
    summary = run(tmp_path, [path], osm)
    prov, image = images(tmp_path / "out")["node/1"]
    assert prov["bands"] == [4, 3, 2]
    red = image[..., 0].astype(float)
    # the tile starts 88 m from the corner: B04's square is its pixels 6-16, B08's 26-32 (bands 1-3 would show that one as red)
    assert red[7:15, 7:15].min() == 255 and red[27:32, 27:32].mean() < 200, (red[7:15, 7:15].min(), red[27:32, 27:32].mean())
    assert not [w for w in summary["warnings"] if "red, green, blue" in w]


# ---------------------------------------------------------------- one stretch per mosaic


def test_the_same_ground_has_the_same_value_in_two_tiles(tmp_path):
    path = write_raster(tmp_path / "deep.tif", texture(3, 400, 3600, 6).round().astype(np.uint16))
    # tiles 64 m across centred on pixel corners, at the raster's own 2 m: their pixels are the raster's
    osm = write_map(tmp_path / "map.geojson", [("node/1", {"leisure": "playground"}, Point(100, -100)),
                                               ("node/2", {"leisure": "playground"}, Point(120, -110))])
    run(tmp_path, [path], osm)
    got = images(tmp_path / "out")
    (prov_a, a), (prov_b, b) = got["node/1"], got["node/2"]
    assert prov_a["stretch_limits"] == prov_b["stretch_limits"]
    # overlap: x 88..132 m, y -132..-78 m; in tile 1 rows 5.., cols 10..; in tile 2 rows ..27, cols ..22
    assert np.array_equal(a[5:32, 10:32], b[0:27, 0:22])
    assert a[5:32, 10:32].std() > 10  # real texture, not a flat patch


def test_water_stays_dark_and_snow_bright_across_a_mosaic(tmp_path):
    """Two adjacent 16-bit rasters, one of calm water, one of snow: a per-tile (or per-raster) stretch would make both grey."""
    rng = np.random.default_rng(0)
    water = (300 + rng.integers(0, 30, (3, SIZE, SIZE))).astype(np.uint16)
    snow = (3500 + rng.integers(0, 30, (3, SIZE, SIZE))).astype(np.uint16)
    west = write_raster(tmp_path / "water.tif", water)
    east = write_raster(tmp_path / "snow.tif", snow, x0=X0 + SIZE * GSD)
    osm = write_map(tmp_path / "map.geojson", [("node/1", {"leisure": "playground"}, Point(190, -190)),
                                               ("node/2", {"leisure": "playground"}, Point(SIZE * GSD + 190, -190))])
    summary = run(tmp_path, [west, east], osm, min_std=0.0)
    got = images(tmp_path / "out")
    assert got["node/1"][1].mean() < 40 and got["node/2"][1].mean() > 215
    assert got["node/1"][1].std() < 10 and got["node/2"][1].std() < 10  # sensor noise stays noise
    assert any("for the mosaic of 2 rasters" in w for w in summary["warnings"])


def test_explicit_stretch_limits_override_the_percentiles(tmp_path):
    data = np.full((3, SIZE, SIZE), 1000, np.uint16)
    data[:, :, SIZE // 2 :] = 3000
    path = write_raster(tmp_path / "deep.tif", data)
    osm = write_map(tmp_path / "map.geojson", [("way/1", {"landuse": "farmland"}, box(150, -250, 250, -150))])
    summary = run(tmp_path, [path], osm, stretch_limits=[0, 4000])
    prov, image = images(tmp_path / "out")["way/1"]
    assert prov["stretch_limits"] == [[0.0, 4000.0]] * 3
    values, counts = np.unique(image, return_counts=True)
    common = dict(zip(values.tolist(), counts.tolist()))
    dark, bright = round(1000 / 4000 * 255), round(3000 / 4000 * 255)  # 64 and 191: no per-tile stretch to 0..255
    assert common[dark] + common[bright] > 0.9 * image.size and image.max() == bright and image.min() == dark
    assert not [w for w in summary["warnings"] if "stretched" in w]  # the user chose the range
    run(tmp_path, [path], osm, out="per_band", stretch_limits=[[0, 4000], [0, 2000], [1000, 3000]])
    prov, image = images(tmp_path / "per_band")["way/1"]
    assert image[..., 1].max() == 255 and image[..., 2].min() == 0


@pytest.mark.parametrize("limits", [[4000, 0], [1, 2, 3], [[0, 1], [0, 1]]])
def test_stretch_limits_that_cannot_work_stop_the_run(tmp_path, limits):
    path = write_raster(tmp_path / "deep.tif", texture(3, 400, 3600, 6).round().astype(np.uint16))
    osm = write_map(tmp_path / "map.geojson", [("node/1", {"leisure": "playground"}, Point(100, -100))])
    with pytest.raises(InputError, match="stretch_limits"):
        run(tmp_path, [path], osm, stretch_limits=limits)


def test_acquisition_time_from_metadata(tmp_path):
    path = write_raster(tmp_path / "a.tif", texture(3, 30, 220, 1).round().astype(np.uint8))
    with rasterio.open(path) as src:
        assert acquisition_time(src) is None
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(TIFFTAG_DATETIME="2020:09:17 10:30:00")
    with rasterio.open(path) as src:
        assert acquisition_time(src) == "2020-09-17T10:30:00"
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(ACQUISITIONDATETIME="2023-02-01T10:30:00.250Z")  # preferred to the file's own time
    with rasterio.open(path) as src:
        assert acquisition_time(src) == "2023-02-01T10:30:00"
