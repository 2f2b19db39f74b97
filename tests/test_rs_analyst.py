"""`domainfm map|search remote_sensing`: scenes classified window by window (class and probability GeoTIFFs, class
regions as RFC 7946 GeoJSON, a quick-look) and searched by text with cached embeddings; adjacent rasters read as one
mosaic; bad inputs named, nothing partial written."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from http_server import serve
from PIL import Image
from rasterio.transform import from_bounds, from_origin
from rasterio.warp import transform_bounds
from shapely.geometry import LinearRing, shape
from typer.testing import CliRunner

from domains.remote_sensing import analyst
from domains.remote_sensing.analyst import map_raster, read_classnames, search_rasters
from domains.remote_sensing.analyst_windows import WindowOverview, WindowReader, open_scene, plan_grid, read_overview
from domains.remote_sensing.curation.geometry import transform_polygons
from domains.remote_sensing.curation.tiles import DIRECT_READ_TOLERANCE
from domains.remote_sensing.prompts import TEMPLATES
from pipelines.cli import app
from pipelines.errors import InputError
from pipelines.infer.clip import ClipEncoder
from pipelines.models.clip import ModelSpec, load_model, model_config_of, save_open_clip_dir

RS = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "rs"
CLASSES = ["water", "forest", "farmland"]
CRS = "EPSG:32633"  # UTM 33N: (500000, 5000000) is at 15 E, 45.15 N
ORIGIN = (500_000.0, 5_000_000.0)
FAST = {"tile_m": 32.0, "workers": 0, "device": "cpu"}  # 16 px windows of the 2 m scenes, read at the model's 64 px


def write_raster(path: Path, data: np.ndarray, crs: str | None = CRS, origin: tuple[float, float] = ORIGIN, res: float = 2.0,
                 nodata: float | None = None) -> Path:
    bands, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands, dtype=data.dtype, crs=crs,
                       transform=from_origin(*origin, res, res), nodata=nodata) as dst:
        dst.write(data)
    return path


def landscape() -> np.ndarray:
    """3 x 128 x 128 uint8: water above, forest and fields below, with texture (256 m at 2 m)."""
    rng = np.random.default_rng(0)
    image = np.zeros((3, 128, 128), np.float32)
    image[:, :64] = np.array([30, 60, 140])[:, None, None]
    image[:, 64:, :64] = np.array([40, 110, 40])[:, None, None]
    image[:, 64:, 64:] = np.array([200, 185, 100])[:, None, None]
    image[:, 64:, 64:] += 30 * (np.arange(64) % 8 < 4)[None, None, :]  # furrows
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 1, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export") / "model"
    torch.manual_seed(0)
    save_open_clip_dir(load_model(ModelSpec("domainfm-tiny")).model, model_config_of(ModelSpec("domainfm-tiny")), folder)
    return folder


@pytest.fixture(scope="module")
def encoder(export: Path) -> ClipEncoder:
    return ClipEncoder.load(export, "cpu")


def carded_export(export: Path, folder: Path, card: str) -> Path:
    """The test export with a model card (as `domainfm export` writes it)."""
    folder.mkdir()
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        (folder / name).symlink_to(export / name)
    (folder / "README.md").write_text(card)
    return folder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scenes")
    image = landscape()
    found = {"scene": write_raster(folder / "scene.tif", image, nodata=0)}
    # float32 with NaN (no declared nodata) over the top-left 64 x 64 px = 4 x 4 windows of 32 m
    floats = image.astype(np.float32) / 255
    floats[:, :64, :64] = np.nan
    found["nan"] = write_raster(folder / "nan.tif", floats)
    # 16-bit, declared nodata 0 over the bottom-right 32 x 64 px = 2 x 4 windows
    sixteen = image.astype(np.uint16) * 40 + 500
    sixteen[:, 96:, 64:] = 0
    found["uint16"] = write_raster(folder / "uint16.tif", sixteen, nodata=0)
    # the scene in two adjacent pieces, west and east of x = 500128
    found["west"] = write_raster(folder / "west.tif", np.ascontiguousarray(image[:, :, :64]), nodata=0)
    found["east"] = write_raster(folder / "east.tif", np.ascontiguousarray(image[:, :, 64:]), origin=(ORIGIN[0] + 128, ORIGIN[1]), nodata=0)
    return found


def lonlat_bounds(path: Path) -> tuple[float, float, float, float]:
    with rasterio.open(path) as src:
        return transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)


def assert_lonlat_polygons(collection: dict, bounds: tuple[float, float, float, float]) -> None:
    """RFC 7946: a FeatureCollection without "crs", polygons in lon/lat inside `bounds`, exterior rings counter-clockwise."""
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    west, south, east, north = bounds
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        rings = feature["geometry"]["coordinates"]
        for i, ring in enumerate(rings):
            assert ring[0] == ring[-1] and len(ring) >= 4
            assert LinearRing(ring).is_ccw == (i == 0)  # exterior counter-clockwise, holes clockwise
            for lon, lat in ring:
                assert west - 1e-6 <= lon <= east + 1e-6 and south - 1e-6 <= lat <= north + 1e-6


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left beside it


# ---------------------------------------------------------------- map


def test_map_writes_class_and_probability_rasters_regions_and_quicklook(encoder: ClipEncoder, scenes: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "maps"
    (out / "other.tif").parent.mkdir(parents=True)
    (out / "other.tif").write_bytes(b"another scene's map")  # stays
    result = map_raster(encoder, scenes["scene"], out, classes=CLASSES, batch_size=5, **FAST)
    assert sorted(p.name for p in out.iterdir()) == ["other.tif", "scene.classes.tif", "scene.geojson", "scene.json", "scene.png",
                                                     "scene.probs.tif"]
    assert (out / "other.tif").read_bytes() == b"another scene's map"
    assert result.cells == (8, 8) and result.n_windows == result.n_scored == 64 and result.crs == CRS

    with rasterio.open(scenes["scene"]) as src:
        scene_bounds = src.bounds
    with rasterio.open(result.classes_tif) as src:
        assert src.crs.to_string() == CRS and src.dtypes == ("uint8",) and src.nodata == 255 and src.res == (32, 32)
        assert tuple(src.bounds) == tuple(scene_bounds)  # 256 m = 8 windows of 32 m
        assert all(name in src.descriptions[0] for name in CLASSES)
        assert json.loads(src.tags()["CLASSES"]) == CLASSES and src.colormap(1)[0][:3] == (31, 119, 180)  # water blue
        classes = src.read(1)
    with rasterio.open(result.probs_tif) as src:
        assert src.crs.to_string() == CRS and src.count == 3 and src.dtypes == ("float32",) * 3 and math.isnan(src.nodata)
        assert list(src.descriptions) == CLASSES and src.transform == rasterio.open(result.classes_tif).transform
        probs = src.read()
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-5)
    assert (classes == probs.argmax(axis=0)).all()

    collection = json.loads(result.geojson.read_text())
    assert_lonlat_polygons(collection, lonlat_bounds(scenes["scene"]))
    assert len(collection["features"]) == result.n_regions >= 1
    cells = {name: 0 for name in CLASSES}
    for feature in collection["features"]:
        props = feature["properties"]
        assert set(props) == {"class", "class_index", "mean_score", "area_m2", "cells"}
        assert props["class"] == CLASSES[props["class_index"]] and 0 < props["mean_score"] <= 1
        # a region's area is its cells' (32 m x 32 m on the ground; UTM shrinks ground by 0.9996 at its central meridian)
        assert props["area_m2"] == pytest.approx(props["cells"] * 32 * 32 / 0.9996**2, rel=1e-3)
        cells[props["class"]] += props["cells"]
    assert sum(f["properties"]["area_m2"] for f in collection["features"]) == pytest.approx(256 * 256, rel=2e-3)
    for k, name in enumerate(CLASSES):
        assert cells[name] == (classes == k).sum()
        if cells[name]:  # mean_score: the class's probability averaged over the region's cells
            weighted = sum(f["properties"]["mean_score"] * f["properties"]["cells"] for f in collection["features"]
                           if f["properties"]["class"] == name)
            assert weighted / cells[name] == pytest.approx(probs[k][classes == k].mean(), abs=1e-3)

    summary = json.loads(result.summary.read_text())
    assert summary["classes"] == CLASSES and sum(summary["shares"].values()) == pytest.approx(1, abs=1e-3)
    assert summary["grid"]["rows"] == 8 and summary["windows"] == {"read": 64, "scored": 64, "without_data": 0, "cells": 64}
    assert result.windows_per_second > 0
    assert result.pixels_per_second == pytest.approx(result.windows_per_second * 256, abs=0.005 * 256 + 0.05)  # both rounded
    with Image.open(result.quicklook) as png:
        assert png.format == "PNG" and png.width >= 500
        pixels = np.asarray(png.convert("RGB"))
    for colour in summary["class_colours"].values():  # every class's legend swatch, in its exact colour
        assert (pixels == colour).all(axis=2).sum() >= 100
    assert result.quicklook.stat().st_size < 300_000


@pytest.mark.parametrize("name, empty", [("nan", (slice(0, 4), slice(0, 4))), ("uint16", (slice(6, 8), slice(4, 8)))])
def test_nodata_and_nan_cells_are_255_and_valid_area_is_mapped(encoder: ClipEncoder, scenes: dict[str, Path], tmp_path: Path,
                                                               name: str, empty: tuple[slice, slice]) -> None:
    result = map_raster(encoder, scenes[name], tmp_path, classes=CLASSES, **FAST)
    expected = np.zeros((8, 8), bool)
    expected[empty] = True
    with rasterio.open(result.classes_tif) as src:
        classes = src.read(1)
    with rasterio.open(result.probs_tif) as src:
        probs = src.read()
    assert ((classes == 255) == expected).all()
    assert np.isnan(probs[:, expected]).all() and not np.isnan(probs[:, ~expected]).any()
    np.testing.assert_allclose(probs[:, ~expected].sum(axis=0), 1, atol=1e-5)
    assert result.n_windows == 64 and result.n_scored == 64 - expected.sum()
    valid_m2 = (~expected).sum() * 16 * 16 * 4  # valid pixels x 4 m2
    regions = json.loads(result.geojson.read_text())["features"]
    assert sum(f["properties"]["area_m2"] for f in regions) == pytest.approx(valid_m2, rel=2e-3)
    summary = json.loads(result.summary.read_text())
    assert summary["stretch_limits"] is not None and len(summary["stretch_limits"]) == 3  # one range per band for the scene
    assert any("stretched to 8 bits" in w and name in w for w in result.warnings)


def test_adjacent_pieces_map_as_one_mosaic_like_the_whole(encoder: ClipEncoder, scenes: dict[str, Path], tmp_path: Path) -> None:
    whole = map_raster(encoder, scenes["scene"], tmp_path / "whole", classes=CLASSES, **FAST)
    pieces = map_raster(encoder, [scenes["west"], scenes["east"]], tmp_path / "pieces", classes=CLASSES, **FAST)
    assert pieces.classes_tif.name == "west.classes.tif" and pieces.cells == whole.cells and pieces.n_scored == 64
    with rasterio.open(whole.probs_tif) as a, rasterio.open(pieces.probs_tif) as b:
        assert a.transform == b.transform and a.crs == b.crs
        one, two = a.read(), b.read()
    away = np.r_[0:3, 5:8]  # windows beside the seam (x = 500128 m, between columns 3 and 4) resample their edge pixels
    np.testing.assert_allclose(one[:, :, away], two[:, :, away], atol=1e-5)  # from one piece only: close, not equal
    np.testing.assert_allclose(one, two, atol=0.02)
    assert json.loads(pieces.summary.read_text())["rasters"] == [str(scenes["west"]), str(scenes["east"])]


def test_model_threads_read_through_rasters_the_calling_thread_opened_and_map_as_it_does(encoder: ClipEncoder,
                                                                                        scenes: dict[str, Path], tmp_path: Path,
                                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU each model thread reads the windows through a copy of the reader whose rasters the calling thread opened
    (WindowReader.open): no model thread opens a raster, and the outputs are those of windows read in the calling thread."""
    import threading

    opened: list[str] = []
    open_raster = rasterio.open

    def counting_open(path, *args, **kwargs):
        if threading.current_thread().name.startswith("window-model"):
            opened.append(Path(str(path)).name)
        return open_raster(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting_open)
    pieces = [scenes["west"], scenes["east"]]
    for workers in (0, 2):
        map_raster(encoder, pieces, tmp_path / str(workers), classes=CLASSES, **{**FAST, "workers": workers}, batch_size=8,
                   cache=tmp_path / f"cache-{workers}")
    assert opened == []  # 64 windows in 8 batches, read by two model threads
    for suffix in (".classes.tif", ".probs.tif", ".geojson", ".png"):
        assert (tmp_path / "0" / f"west{suffix}").read_bytes() == (tmp_path / "2" / f"west{suffix}").read_bytes(), suffix


def test_rasters_by_url_map_as_the_local_files_do(encoder: ClipEncoder, scenes: dict[str, Path], tmp_path: Path) -> None:
    local = map_raster(encoder, [scenes["west"], scenes["east"]], tmp_path / "local", classes=CLASSES, **FAST)
    with serve(scenes["west"].parent) as (base, requests):
        urls = [f"{base}/west.tif", f"{base}/east.tif"]
        remote = map_raster(encoder, urls, tmp_path / "remote", classes=CLASSES, **FAST)
    assert remote.classes_tif.name == "west.classes.tif"
    with rasterio.open(local.probs_tif) as a, rasterio.open(remote.probs_tif) as b:
        assert a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())
    assert json.loads(remote.summary.read_text())["rasters"] == urls  # the URLs as given, not collapsed into paths
    assert not [r for m, p, r in requests if m == "GET" and r is None]  # read in place: byte ranges only


@pytest.mark.parametrize("tile_m, stride_m, window_px", [(32, 32, 64), (32, 16, 64), (128, 128, 16), (30, 20, 24), (32, 21, 64)])
@pytest.mark.parametrize("names", [["scene"], ["nan"], ["uint16"], ["west", "east"], ["east", "west"]])
def test_windows_read_in_strips_equal_one_window_at_a_time(scenes: dict[str, Path], names: list[str], tile_m: float, stride_m: float,
                                                          window_px: int) -> None:
    """read_batch cuts runs of windows out of one read: the pixels (within DIRECT_READ_TOLERANCE) and the windows with too little data stay.

    Upsampled (bilinear) and downsampled (average) windows, windows past the scene's edges, NaN and
    nodata holes, a mosaic in both orders; (32, 21, 64) does not fall on one pixel grid (read one by one).
    """
    grid = plan_grid(open_scene([scenes[n] for n in names]), tile_m, stride_m, window_px)
    read = WindowReader.of(grid)
    alone = [read(window) for window in grid.windows]
    batches = [read.read_batch(grid.windows[i:i + 37]) for i in range(0, len(grid.windows), 37)]  # runs cut mid-row too
    together = [pixels for batch in batches for pixels in batch]
    read.close()
    assert len(together) == len(alone) and 0 < sum(p is not None for p in alone)
    for window, a, b in zip(grid.windows, alone, together):
        assert (a is None) == (b is None), window
        if a is not None:  # a strip and its window may be read one directly, one warped: then within the tolerance
            assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() <= DIRECT_READ_TOLERANCE, window


def test_overlapping_windows_batched_equal_one_window_at_a_time(encoder: ClipEncoder, scenes: dict[str, Path], tmp_path: Path) -> None:
    """Stride < tile: cells of 16 m scored from 32 m windows; read-ahead batches give what one window at a time gives."""
    result = map_raster(encoder, scenes["nan"], tmp_path, classes=CLASSES, stride_m=16, batch_size=7,
                        **{**FAST, "workers": 2})
    assert result.cells == (16, 16) and result.stride_m == 16
    grid = plan_grid(open_scene([scenes["nan"]]), 32, 16, 64)
    read = WindowReader.of(grid)
    classifier = encoder.zero_shot(CLASSES, list(TEMPLATES))
    with rasterio.open(result.probs_tif) as src:
        probs = src.read()
    alone = {window: read(window) for window in grid.windows}  # each window read by itself, in this process
    for (row, col), pixels in alone.items():
        if pixels is None:  # under half of the window holds data
            assert np.isnan(probs[:, row, col]).all()
    scored = [w for w, pixels in alone.items() if pixels is not None]
    assert len(scored) == result.n_scored and 0 < len(scored) < 256
    expected = classifier.probabilities(encoder.embed_images([alone[w] for w in scored]))
    np.testing.assert_allclose(np.stack([probs[:, r, c] for r, c in scored]), expected, atol=1e-4)


def assert_same_view(drawn: np.ndarray, read: np.ndarray) -> None:
    """Two pictures of one scene: close on average, and black (no data) in the same places but for cells' edges."""
    assert drawn.shape == read.shape and drawn.dtype == np.uint8
    assert np.abs(drawn.astype(np.int16) - read.astype(np.int16)).mean() < 4
    black_drawn, black_read = (drawn == 0).all(axis=2), (read == 0).all(axis=2)
    assert 0.1 < black_read.mean() < 0.5  # the NaN quarter, and the scene's data
    assert (black_drawn != black_read).mean() < 0.01


@pytest.mark.parametrize("stride_m", [32.0, 16.0, 12.3])  # cells = windows; windows twice as wide as cells; off the pixel grid
def test_overview_drawn_from_the_windows_shows_what_a_read_of_the_scene_shows(scenes: dict[str, Path], stride_m: float) -> None:
    """Each window's cell, at its place; windows with too little data to be scored still show theirs.

    min_valid 0.9 leaves the windows along the NaN quarter unscored (None), yet their data is drawn.
    Stride 12.3 m is no whole number of window pixels: windows are read one by one, not in strips.
    """
    grid = plan_grid(open_scene([scenes["nan"]]), 32, stride_m, 64, min_valid=0.9)
    assert WindowOverview.holds(grid, 400)
    overview = WindowOverview(grid, 400)
    read = WindowReader.of(grid, overview=overview)
    found = read.read_batch(grid.windows)
    read.close()
    assert any(pixels is None for pixels in found) and any(pixels is not None for pixels in found)
    assert_same_view(overview.pixels, read_overview(grid, 400))


@pytest.mark.parametrize("stride_m", [32.0, 16.0])  # cells = windows: resized in batches by torch; cells = window centres: by Pillow
def test_overview_cells_drawn_in_one_call_are_pillow_s_resize_of_each_window(scenes: dict[str, Path], stride_m: float) -> None:
    """A batch of windows drawn at once: each cell is Pillow's bilinear resize of its window (of its centre), within 1 grey level.

    300 px over 8 or 16 cells gives cells of two sizes (37 and 38 px, 18 and 19 px): one torch call per size.
    """
    grid = plan_grid(open_scene([scenes["scene"]]), 32, stride_m, 64)
    overview = WindowOverview(grid, 300)
    rng = np.random.default_rng(5)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).resize((64, 64), Image.BICUBIC))
    cells = [(row, col, np.roll(smooth, 7 * row + 3 * col, axis=(0, 1)) if (row + col) % 2 else
              rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for row in range(grid.rows) for col in range(grid.cols)]
    overview.draw(cells)
    margin = (1 - stride_m / 32) / 2 * 64
    box = (margin, margin, 64 - margin, 64 - margin)
    sizes = set()
    for row, col, rgb in cells:
        top, bottom, left, right = overview.ys[row], overview.ys[row + 1], overview.xs[col], overview.xs[col + 1]
        sizes.add((bottom - top, right - left))
        want = np.asarray(Image.fromarray(rgb).resize((right - left, bottom - top), Image.Resampling.BILINEAR, box=box)).astype(int)
        got = overview.pixels[top:bottom, left:right].astype(int)
        assert np.abs(got - want).max() <= 1, (row, col)
        assert (got != want).mean() < 0.05
    assert len(sizes) > 1 and overview.pixels[:, -1].any() and overview.pixels[-1].any()


def test_map_draws_the_quicklook_from_its_windows_when_they_are_fine_enough(encoder: ClipEncoder, scenes: dict[str, Path],
                                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 cells of 64 px hold a 400 px quick-look: no second read of the scene; 800 px they do not: the scene is read for it."""
    shown: list[np.ndarray] = []
    monkeypatch.setattr(analyst, "quicklook_png", lambda rgb, *args: shown.append(rgb.copy()) or b"png")
    reads: list[int] = []
    monkeypatch.setattr(analyst, "read_overview", lambda grid, max_px: reads.append(max_px) or read_overview(grid, max_px))
    grid = plan_grid(open_scene([scenes["nan"]]), 32, 32, 64)
    monkeypatch.setattr(analyst, "DISPLAY_PX", 400)
    map_raster(encoder, scenes["nan"], tmp_path / "drawn", classes=CLASSES, **{**FAST, "workers": 2})
    assert reads == [] and len(shown) == 1
    assert_same_view(shown[0], read_overview(grid, 400))
    monkeypatch.setattr(analyst, "DISPLAY_PX", 800)
    map_raster(encoder, scenes["nan"], tmp_path / "read", classes=CLASSES, **FAST)
    assert reads == [800] and len(shown) == 2
    np.testing.assert_array_equal(shown[1], read_overview(grid, 800))


def test_a_second_map_with_other_classes_reads_no_window_and_equals_a_fresh_one(encoder: ClipEncoder, scenes: dict[str, Path],
                                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The map shares the search's embedding cache: re-mapping with new class names embeds no window, and writes what a map
    without the cache writes; its quick-look shows the view the first map drew, kept in the cache (a read of the scene when
    that is gone); a search of the mapped scene is cached too."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(analyst, "DISPLAY_PX", 400)  # 8 cells of 64 px: the quick-look is drawn from the windows read
    shown: list[np.ndarray] = []
    quicklook = analyst.quicklook_png
    monkeypatch.setattr(analyst, "quicklook_png", lambda rgb, *args: shown.append(rgb.copy()) or quicklook(rgb, *args))
    reads: list[int] = []
    monkeypatch.setattr(analyst, "read_overview", lambda grid, max_px: reads.append(max_px) or read_overview(grid, max_px))
    first = map_raster(encoder, scenes["scene"], tmp_path / "first", classes=CLASSES, cache=cache, **FAST)
    assert not first.cached and len(list(cache.glob("*.npz"))) == 1 and len(list(cache.glob("*.npy"))) == 1
    calls = []
    embed = ClipEncoder.embed_tensors
    monkeypatch.setattr(ClipEncoder, "embed_tensors", lambda self, batch: calls.append(len(batch)) or embed(self, batch))
    other = ["lake", "woodland"]
    again = map_raster(encoder, scenes["scene"], tmp_path / "again", classes=other, cache=cache, **FAST)
    assert again.cached and calls == [] and reads == []  # neither a window nor the scene read
    np.testing.assert_array_equal(shown[1], shown[0])
    (picture,) = cache.glob("*.npy")
    picture.write_bytes(picture.read_bytes()[:100])  # a damaged view is read again from the scene
    map_raster(encoder, scenes["scene"], tmp_path / "damaged", classes=other, cache=cache, **FAST)
    picture.unlink()  # as is a missing one
    map_raster(encoder, scenes["scene"], tmp_path / "missing", classes=other, cache=cache, **FAST)
    map_raster(encoder, scenes["scene"], tmp_path / "kept", classes=other, cache=cache, **FAST)  # the view read is kept
    assert reads == [400, 400] and calls == []
    seen = read_overview(plan_grid(open_scene([scenes["scene"]]), 32, 32, 64), 400)
    for view in shown[2:]:
        np.testing.assert_array_equal(view, seen)
    fresh = map_raster(encoder, scenes["scene"], tmp_path / "fresh", classes=other, cache=tmp_path / "empty", **FAST)
    assert not fresh.cached and sum(calls) == fresh.n_scored == again.n_scored
    for name in ("scene.classes.tif", "scene.probs.tif"):
        with rasterio.open(tmp_path / "again" / name) as a, rasterio.open(tmp_path / "fresh" / name) as b:
            profiles = [a.profile, b.profile]
            assert len({str(p.pop("nodata")) for p in profiles}) == 1  # NaN (never equal to itself) for the probabilities
            assert profiles[0] == profiles[1] and a.descriptions == b.descriptions and a.tags() == b.tags()
            np.testing.assert_array_equal(a.read(), b.read())
    assert (tmp_path / "again" / "scene.geojson").read_bytes() == (tmp_path / "fresh" / "scene.geojson").read_bytes()
    summaries = [json.loads((tmp_path / f / "scene.json").read_text()) for f in ("again", "fresh")]
    assert [s.pop("run")["cached"] for s in summaries] == [True, False] and summaries[0] == summaries[1]
    with Image.open(again.quicklook) as png:
        assert png.format == "PNG"
    found = search_rasters(encoder, scenes["scene"], "a lake", tmp_path / "search", top_k=3, cache=cache, **FAST)
    assert found.cached and sum(calls) == fresh.n_scored


def test_a_map_in_another_precision_is_not_served_from_the_cache(export: Path, scenes: dict[str, Path], tmp_path: Path) -> None:
    """bf16 and fp32 embeddings are kept apart in the cache (a map gives the precision asked for), and the summary names it."""
    cache = tmp_path / "cache"
    maps = {}
    for run, precision in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16-again", "bf16"), ("fp32-again", "fp32")):
        encoder = ClipEncoder.load(export, "cpu", precision)
        maps[run] = map_raster(encoder, scenes["scene"], tmp_path / run, classes=CLASSES, cache=cache, **FAST)
        assert json.loads(maps[run].summary.read_text())["run"]["precision"] == precision
    assert [maps[run].cached for run in maps] == [False, False, True, True]
    with rasterio.open(maps["fp32"].probs_tif) as a, rasterio.open(maps["bf16"].probs_tif) as b:
        fp32, bf16 = a.read(), b.read()
    scored = ~np.isnan(fp32)
    assert np.array_equal(scored, ~np.isnan(bf16)) and not np.array_equal(fp32[scored], bf16[scored])
    assert np.abs(fp32[scored] - bf16[scored]).max() < 0.02  # the same map, to bf16's rounding


def test_map_command_takes_a_precision_and_refuses_others(export: Path, scenes: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    refused = runner.invoke(app, ["map", "remote_sensing", "--model", str(export), "--raster", str(scenes["scene"]),
                                  "--out", str(tmp_path / "fp16"), "--precision", "fp16"])
    assert refused.exit_code == 2 and "fp16" in refused.output and not (tmp_path / "fp16").exists()
    done = runner.invoke(app, ["map", "remote_sensing", "--model", str(export), "--raster", str(scenes["scene"]), "--out",
                               str(tmp_path / "map"), "--tile-m", "32", "--device", "cpu", "--precision", "fp32",
                               "--cache", str(tmp_path / "cache")])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "map" / "scene.json").read_text())["run"]["precision"] == "fp32"


def test_default_window_is_the_models_training_tile(export: Path, scenes: dict[str, Path], tmp_path: Path) -> None:
    card = "# domainfm: remote_sensing\n\n| Key | Value |\n|---|---|\n| curate.target_gsd_m | 2.0000 |\n| curate.tile_size | 64 |\n"
    model = carded_export(export, tmp_path / "rs_model", card)
    result = map_raster(model, scenes["scene"], tmp_path / "out", classes=CLASSES, workers=0, device="cpu")
    assert result.tile_m == result.stride_m == 128 and result.cells == (2, 2)  # 64 px at 2 m
    loaded = map_raster(ClipEncoder.load(model, "cpu"), scenes["scene"], tmp_path / "loaded", classes=CLASSES, workers=0)
    assert loaded.tile_m == 128 and loaded.cells == (2, 2)  # the loaded export's card, as the folder's


def test_map_command_prints_and_writes(export: Path, scenes: dict[str, Path], tmp_path: Path) -> None:
    for verb in ("map", "search"):
        shown = CliRunner().invoke(app, [verb, "remote_sensing", "--help"], terminal_width=200)
        assert shown.exit_code == 0 and "--raster" in shown.output and "--tile-m" in shown.output
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("lake\n\nwoodland\n")
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["map", "remote_sensing", "--model", str(export), "--raster", str(scenes["west"]),
                                      "--raster", str(scenes["east"]), "--classes-file", str(classes_file), "--tile-m", "64",
                                      "--stride-m", "32", "--workers", "0", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "windows/s" in result.output and "Mpx/s" in result.output and (out / "west.geojson").is_file()
    summary = json.loads((out / "west.json").read_text())
    assert summary["classes"] == ["lake", "woodland"] and summary["grid"]["tile_m"] == 64 and summary["grid"]["cols"] == 8


def _counting_loads(monkeypatch: pytest.MonkeyPatch) -> list:
    """The export loads from now on (ClipEncoder.load's arguments), recorded as they happen."""
    loads: list = []
    load = ClipEncoder.load.__func__
    monkeypatch.setattr(ClipEncoder, "load", classmethod(lambda cls, *a, **k: loads.append(a) or load(cls, *a, **k)))
    return loads


def test_each_input_once_however_it_is_written(tmp_path: Path) -> None:
    """A file named twice (another spelling, a symbolic link) is kept once, first spelling first; URLs compare as written."""
    from pipelines.infer.outputs import each_once

    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    (tmp_path / "link.tif").symlink_to(a)
    url = "https://example.org/scenes/a.tif"
    given = [tmp_path / "sub" / ".." / "a.tif", url, tmp_path / "link.tif", b, a, url, "https://example.org/scenes/../scenes/a.tif"]
    assert each_once(given) == [tmp_path / "sub" / ".." / "a.tif", url, b, "https://example.org/scenes/../scenes/a.tif"]


def test_map_command_maps_each_scene_loading_the_model_once(export: Path, scenes: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`--each` with files and folders: every raster mapped (each once) as `map_raster` maps it alone, one model load;
    without `--each`, a folder's GeoTIFFs are one mosaic."""
    folder = tmp_path / "pieces"
    folder.mkdir()
    for name in ("west", "east"):
        (folder / f"{name}.tif").symlink_to(scenes[name])
    (folder / "notes.txt").write_text("not a raster: left out\n")
    loads = _counting_loads(monkeypatch)
    out = tmp_path / "each"
    common = ["map", "remote_sensing", "--model", str(export), "--classes", ",".join(CLASSES), "--tile-m", "32", "--workers", "0",
              "--device", "cpu"]
    west = folder / ".." / folder.name / "west.tif"  # the folder's west.tif, spelt otherwise
    result = CliRunner().invoke(app, [*common, "--raster", str(west), "--raster", str(folder), "--each",
                                      "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1 and result.output.count("windows/s") == 2  # west once, though named twice
    assert result.output.index("west.tif:") < result.output.index("east.tif:")  # in the order given, a folder's by name
    for name in ("west", "east"):
        alone = map_raster(export, scenes[name], tmp_path / f"alone_{name}", classes=CLASSES, cache=tmp_path / "empty", **FAST)
        summaries = [json.loads(path.read_text()) for path in (out / f"{name}.json", alone.summary)]
        for summary in summaries:
            summary["rasters"] = [Path(r).name for r in summary["rasters"]]  # the folder's link, or the scene itself
            summary["mosaic_order"] = [Path(r).name for r in summary.pop("mosaic_order")]
            summary["bands"] = sorted(Path(r).name for r in summary["bands"])
        assert [s.pop("run")["cached"] for s in summaries] == [False, False] and summaries[0] == summaries[1]
        assert summaries[0]["model"] == str(export) and summaries[0]["grid"]["cols"] == 4
        assert (out / f"{name}.png").read_bytes() == alone.quicklook.read_bytes()
    mosaic = CliRunner().invoke(app, [*common, "--raster", str(folder), "--out", str(tmp_path / "mosaic")])
    assert mosaic.exit_code == 0, mosaic.output
    summary = json.loads((tmp_path / "mosaic" / "east.json").read_text())  # named after the first by name: east
    assert [Path(r).name for r in summary["rasters"]] == ["east.tif", "west.tif"] and summary["grid"]["cols"] == 8


def test_map_command_checks_every_raster_first_and_stops_at_a_bad_one(export: Path, scenes: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad settings, missing paths, folders without GeoTIFFs and (--each) rasters whose maps would share file names are named
    before the model loads; a scene that fails stops the run, naming it, and the scenes mapped before it keep their maps."""
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(scenes["west"], other / "west.tif")  # another file of the same name (a link to it would be the same raster)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no rasters here\n")
    loads = _counting_loads(monkeypatch)
    common = ["map", "remote_sensing", "--model", str(export), "--tile-m", "32", "--workers", "0", "--device", "cpu"]
    out = tmp_path / "out"
    clash = CliRunner().invoke(app, [*common, "--raster", str(scenes["west"]), "--raster", str(other), "--each", "--out", str(out)])
    assert clash.exit_code == 1 and "same file names (west.*)" in clash.output and not out.exists()
    missing = CliRunner().invoke(app, [*common, "--raster", str(scenes["west"]), "--raster", str(tmp_path / "gone.tif"), "--each",
                                       "--out", str(out)])
    assert missing.exit_code == 1 and "gone.tif: no such raster file or folder" in missing.output and not out.exists()
    nothing = CliRunner().invoke(app, [*common, "--raster", str(empty), "--out", str(out)])
    assert nothing.exit_code == 1 and f"{empty}: no GeoTIFF in this folder" in nothing.output and not out.exists()
    classes = CliRunner().invoke(app, [*common, "--raster", str(scenes["west"]), "--classes", "water,water", "--out", str(out)])
    assert classes.exit_code == 1 and "repeat: water" in classes.output and not out.exists()
    assert loads == []  # all refused before the model loads
    lonlat = _geographic(tmp_path, scenes)
    stopped = CliRunner().invoke(app, [*common, "--raster", str(scenes["west"]), "--raster", str(lonlat), "--raster",
                                       str(scenes["east"]), "--each", "--out", str(out)])
    assert stopped.exit_code == 1 and f"{lonlat}: CRS" in stopped.output and "Traceback" not in stopped.output
    assert (out / "west.json").is_file() and not list(out.glob("lonlat.*")) and not list(out.glob("east.*"))
    skipping = tmp_path / "skipping"
    went_on = CliRunner().invoke(app, [*common, "--raster", str(scenes["west"]), "--raster", str(lonlat), "--raster",
                                       str(scenes["east"]), "--each", "--out", str(skipping), "--skip-unreadable"])
    assert went_on.exit_code == 0, went_on.output
    assert f"skipped {lonlat}: CRS" in went_on.output
    assert (skipping / "west.json").is_file() and (skipping / "east.json").is_file() and not list(skipping.glob("lonlat.*"))
    rows = (skipping / "skipped.tsv").read_text().splitlines()
    assert rows[0] == "input\treason" and len(rows) == 2 and rows[1].startswith(f"{lonlat}\tCRS")


# ---------------------------------------------------------------- search


def test_search_ranks_windows_and_second_query_reads_the_cache(encoder: ClipEncoder, scenes: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    rasters = [scenes["west"], scenes["east"]]
    first = search_rasters(encoder, rasters, "a lake", tmp_path / "q1", top_k=5, cache=cache, **FAST)
    collection = json.loads(first.geojson.read_text())
    assert_lonlat_polygons(collection, lonlat_bounds(scenes["scene"]))
    props = [f["properties"] for f in collection["features"]]
    assert [p["rank"] for p in props] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(props, props[1:]))
    assert {p["raster"] for p in props} <= {"west.tif", "east.tif"} and props == first.best
    for feature in collection["features"]:  # each footprint is its 32 m window
        assert shape(feature["geometry"]).area == pytest.approx(32 * 32 / (111_320**2 * math.cos(math.radians(45.15))), rel=0.02)
    assert not first.cached and first.n_windows == 64 and len(list(cache.glob("*.npz"))) == 1
    with Image.open(first.contact_sheet) as sheet:
        assert sheet.format == "PNG" and sheet.height > 160
    assert json.loads(first.summary.read_text())["best"] == first.best

    calls = []
    embed = ClipEncoder.embed_tensors
    monkeypatch.setattr(ClipEncoder, "embed_tensors", lambda self, batch: calls.append(len(batch)) or embed(self, batch))
    again = search_rasters(encoder, rasters, "a lake", tmp_path / "q2", top_k=5, cache=cache, **FAST)
    assert calls == [] and again.cached and again.best == first.best  # no window read nor embedded
    other = search_rasters(encoder, rasters, "fields with furrows", tmp_path / "q3", top_k=3, cache=cache, **FAST)
    assert calls == [] and other.cached and len(other.best) == 3
    search_rasters(encoder, rasters, "a lake", tmp_path / "q4", top_k=3, cache=cache, **{**FAST, "tile_m": 64.0})
    assert sum(calls) == 16 and len(list(cache.glob("*.npz"))) == 2  # other windows are embedded anew


# ---------------------------------------------------------------- bad inputs


def _geographic(folder: Path, scenes: dict[str, Path]) -> Path:
    return write_raster(folder / "lonlat.tif", landscape(), crs="EPSG:4326", origin=(15.0, 45.2), res=0.00003)


def _no_crs(folder: Path, scenes: dict[str, Path]) -> Path:
    return write_raster(folder / "nocrs.tif", landscape(), crs=None)


def _not_a_raster(folder: Path, scenes: dict[str, Path]) -> Path:
    (folder / "notes.tif").write_text("not a GeoTIFF\n")
    return folder / "notes.tif"


def _truncated(folder: Path, scenes: dict[str, Path]) -> Path:
    data = scenes["uint16"].read_bytes()
    (folder / "cut.tif").write_bytes(data[: len(data) // 3])
    return folder / "cut.tif"


def _truncated_8bit(folder: Path, scenes: dict[str, Path]) -> Path:
    """An 8-bit raster is not read before its windows are: they find the damage."""
    data = scenes["scene"].read_bytes()
    (folder / "cut8.tif").write_bytes(data[: len(data) // 2])
    return folder / "cut8.tif"


def _empty_8bit(folder: Path, scenes: dict[str, Path]) -> Path:
    return write_raster(folder / "empty.tif", np.zeros((3, 128, 128), np.uint8), nodata=0)


def _missing(folder: Path, scenes: dict[str, Path]) -> Path:
    return folder / "nowhere.tif"


def _other_crs(folder: Path, scenes: dict[str, Path]) -> list[Path]:
    with rasterio.open(scenes["east"]) as src:
        data = src.read()
    return [scenes["west"], write_raster(folder / "east_34n.tif", data, crs="EPSG:32634", origin=(ORIGIN[0] + 128, ORIGIN[1]))]


@pytest.mark.parametrize("make, message", [
    (_geographic, r"geographic \(degrees\).*gdalwarp -t_srs EPSG:32633"),
    (_no_crs, "no CRS.*gdal"),
    (_not_a_raster, "not a raster file"),
    (_truncated, "unreadable raster|corrupt or truncated"),
    (_truncated_8bit, "corrupt or truncated"),
    (_empty_8bit, "no window holds data"),
    (_missing, "not found"),
    (_other_crs, "differs from .*west.tif.*gdalwarp -t_srs EPSG:32633"),
])
def test_bad_raster_is_named_and_nothing_is_written(encoder: ClipEncoder, scenes: dict[str, Path], tmp_path: Path, make,
                                                    message: str) -> None:
    made = make(tmp_path, scenes)
    bad = made[-1] if isinstance(made, list) else made
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message) as caught:
        map_raster(encoder, made, out, classes=CLASSES, **FAST)
    assert str(bad) in str(caught.value)
    _assert_nothing_written(out)
    kept = tmp_path / "kept"  # an earlier map in the folder stays as it was
    kept.mkdir()
    (kept / "scene.png").write_bytes(b"earlier")
    with pytest.raises(InputError, match=message):
        search_rasters(encoder, made, "water", kept, cache=tmp_path / "cache", **FAST)
    assert [p.name for p in kept.iterdir()] == ["scene.png"] and (kept / "scene.png").read_bytes() == b"earlier"


def test_bad_model_or_classes_are_named_and_nothing_is_written(export: Path, scenes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    scene = scenes["scene"]
    pathology = carded_export(export, tmp_path / "pathology_model", "# domainfm: pathology\n\nH&E tiles.\n")
    with pytest.raises(InputError, match="export of the pathology domain") as caught:
        map_raster(pathology, scene, out, **FAST)
    assert str(pathology) in str(caught.value)
    volume = tmp_path / "ct_model"
    volume.mkdir()
    (volume / "config.json").write_text(json.dumps({"model": {}, "phenotypes": ["emphysema"]}))
    with pytest.raises(InputError, match="volume model") as caught:
        search_rasters(volume, scene, "water", out, **FAST)
    assert str(volume) in str(caught.value)
    with pytest.raises(InputError, match="not an exported model"):
        map_raster(tmp_path, scene, out, **FAST)
    with pytest.raises(InputError, match="no class names"):
        map_raster(export, scene, out, classes=[], **FAST)
    with pytest.raises(InputError, match="repeat: water"):
        map_raster(export, scene, out, classes=["water", "road", "water"], **FAST)
    with pytest.raises(InputError, match="stride 64 m"):
        map_raster(export, scene, out, classes=CLASSES, stride_m=64, **FAST)
    with pytest.raises(InputError, match="smaller than one 512 m cell"):
        map_raster(export, scene, out, classes=CLASSES, **{**FAST, "tile_m": 512.0})
    with pytest.raises(InputError, match="empty --query"):
        search_rasters(export, scene, " ", out, **FAST)
    _assert_nothing_written(out)

    empty = tmp_path / "classes.txt"
    empty.write_text("\n \n")
    with pytest.raises(InputError, match="classes.txt: no class names"):
        read_classnames(classes_file=empty)

    result = CliRunner().invoke(app, ["map", "remote_sensing", "--model", str(export), "--raster", str(scene), "--classes", "",
                                      "--out", str(out)])
    assert result.exit_code == 1 and "no class names" in result.output and "Traceback" not in result.output
    lonlat = _geographic(tmp_path, scenes)
    result = CliRunner().invoke(app, ["map", "remote_sensing", "--model", str(export), "--raster", str(lonlat), "--out", str(out)])
    assert result.exit_code == 1 and "Error:" in result.output and str(lonlat) in result.output
    _assert_nothing_written(out)


def test_unreadable_window_in_a_reader_process_is_named(encoder: ClipEncoder, scenes: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from domains.remote_sensing import analyst_windows

    real_mosaic, real_tile = analyst_windows.read_mosaic_tile, analyst_windows.read_tile
    calls = {"n": 0}

    def damaged_after_two(sources, *args, **kwargs):  # a window read by itself
        calls["n"] += 1
        if calls["n"] > 2:
            raise analyst_windows.MemberReadError(0)  # as a truncated strip fails when read
        return real_mosaic(sources, *args, **kwargs)

    def strip_damaged_after_two(source, *args, **kwargs):  # a run of windows read together (read_batch)
        calls["n"] += 1
        if calls["n"] > 2:
            raise rasterio.errors.RasterioError("TIFFReadEncodedStrip failed")
        return real_tile(source, *args, **kwargs)

    monkeypatch.setattr(analyst_windows, "read_mosaic_tile", damaged_after_two)  # the reader threads share it
    monkeypatch.setattr(analyst_windows, "read_tile", strip_damaged_after_two)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="scene.tif: unreadable raster data"):
        map_raster(encoder, scenes["scene"], out, classes=CLASSES, batch_size=4, **{**FAST, "workers": 2})
    _assert_nothing_written(out)


# ---------------------------------------------------------------- real rasters


def _need(*parts: str) -> Path:
    path = RS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found: {path}")
    return path


def _web_tile(path: Path, x: int, y: int, z: int, out: Path) -> Path:
    """A z/x/y web-map tile written as the EPSG:3857 GeoTIFF it stands for."""
    half = math.pi * 6378137.0
    size = 2 * half / 2**z
    rgb = np.asarray(Image.open(path).convert("RGB"))
    with rasterio.open(out, "w", driver="GTiff", width=rgb.shape[1], height=rgb.shape[0], count=3, dtype="uint8", crs="EPSG:3857",
                       transform=from_bounds(-half + x * size, half - (y + 1) * size, -half + (x + 1) * size, half - y * size,
                                             rgb.shape[1], rgb.shape[0])) as dst:
        dst.write(rgb.transpose(2, 0, 1))
    return out


@pytest.mark.realdata
def test_real_landsat_scene_map(encoder: ClipEncoder, tmp_path: Path) -> None:
    """RGB.byte.tif: Landsat 7, EPSG:32618, 300 m pixels, a nodata border around a tilted swath."""
    path = _need("rasterio", "RGB.byte.tif")
    result = map_raster(encoder, path, tmp_path, classes=["water", "land", "clouds"], tile_m=20000, workers=0, device="cpu")
    with rasterio.open(result.classes_tif) as src, rasterio.open(path) as scene:
        assert src.crs == scene.crs and src.res == (20000, 20000)
        classes = src.read(1)
        left, bottom, right, top = src.bounds
        assert scene.bounds.left <= left and right <= scene.bounds.right and scene.bounds.bottom <= bottom and top <= scene.bounds.top
        corner = scene.dataset_mask(window=((0, 30), (0, 30)))
    assert not corner.any() and classes[0, 0] == 255  # the border's corner is nodata, so is its cell
    assert 0 < result.n_scored < result.n_windows == classes.size and (classes != 255).sum() == result.n_scored
    assert_lonlat_polygons(json.loads(result.geojson.read_text()), lonlat_bounds(path))  # around 77-79 W, 23.5-25.5 N


@pytest.mark.realdata
def test_real_scene_remapped_from_the_cache_equals_a_fresh_map(encoder: ClipEncoder, tmp_path: Path) -> None:
    """RGB.byte.tif: its nodata collar leaves windows unscored; a map from the cache keeps them so, cell for cell."""
    path = _need("rasterio", "RGB.byte.tif")
    settings = {"tile_m": 8000.0, "workers": 2, "device": "cpu"}
    map_raster(encoder, path, tmp_path / "first", classes=["water", "land", "clouds"], cache=tmp_path / "cache", **settings)
    again = map_raster(encoder, path, tmp_path / "again", classes=["sea", "island"], cache=tmp_path / "cache", **settings)
    fresh = map_raster(encoder, path, tmp_path / "fresh", classes=["sea", "island"], cache=tmp_path / "empty", **settings)
    assert again.cached and not fresh.cached and 0 < again.n_scored == fresh.n_scored < again.n_windows
    for suffix in (".classes.tif", ".probs.tif", ".geojson"):
        assert (tmp_path / "again" / f"RGB.byte{suffix}").read_bytes() == (tmp_path / "fresh" / f"RGB.byte{suffix}").read_bytes()


@pytest.mark.realdata
def test_real_scene_maps_the_same_whoever_reads_the_windows(encoder: ClipEncoder, tmp_path: Path) -> None:
    """RGB.byte.tif: read in the calling thread (workers=0) or by the model threads (workers=2), the outputs are byte for byte one map."""
    path = _need("rasterio", "RGB.byte.tif")
    for workers in (0, 2):
        map_raster(encoder, path, tmp_path / str(workers), classes=["water", "land", "clouds"], tile_m=8000.0, workers=workers,
                   device="cpu", cache=tmp_path / f"cache-{workers}")
    for suffix in (".classes.tif", ".probs.tif", ".geojson"):
        assert (tmp_path / "0" / f"RGB.byte{suffix}").read_bytes() == (tmp_path / "2" / f"RGB.byte{suffix}").read_bytes()


@pytest.mark.realdata
@pytest.mark.parametrize("parts, tile_m", [(("rasterio", "RGB.byte.tif"), 8000.0),
                                           (("gent", "2020-09-17_Sentinel_2_L1C_True_color.tiff"), 1000.0)])
def test_real_overview_drawn_from_the_windows_lies_where_a_read_of_the_scene_does(parts: tuple[str, ...], tile_m: float) -> None:
    """Landsat's tilted swath in its nodata collar (EPSG:32618) and a Sentinel-2 scene in EPSG:3857 (windows of ground metres).

    Real texture at a cell's scale differs with the resampling (the windows average, the read samples), so
    the pictures are compared blurred: a cell drawn a cell off, or the wrong part of its window, moves edges.
    """
    from PIL import ImageFilter

    grid = plan_grid(open_scene([_need(*parts)]), tile_m, tile_m, 64)
    assert WindowOverview.holds(grid, 400)
    overview = WindowOverview(grid, 400)
    read = WindowReader.of(grid, overview=overview)
    read.read_batch(grid.windows)
    read.close()
    seen = read_overview(grid, 400)
    blurred = [np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(3))).astype(np.int16) for a in (overview.pixels, seen)]
    assert np.abs(blurred[0] - blurred[1]).mean() < 2
    assert ((overview.pixels == 0).all(axis=2) != (seen == 0).all(axis=2)).mean() < 0.01


@pytest.mark.realdata
def test_real_web_mercator_tiles_as_one_mosaic(encoder: ClipEncoder, tmp_path: Path) -> None:
    """Three adjacent aerial z18 tiles (EPSG:3857, ~0.5 m on the ground): windows of ground metres, areas on the ground."""
    root = _need("robosat_tiles_osm", "parking", "images", "18")
    tiles = [_web_tile(p, int(p.parent.name), int(p.stem), 18, tmp_path / f"{p.parent.name}-{p.stem}.tif")
             for p in sorted(root.glob("*/*.webp")) if int(p.parent.name) >= 70000]
    assert len(tiles) == 3
    result = map_raster(encoder, tiles, tmp_path / "out", classes=["parking lot", "road", "trees"], tile_m=40, workers=0, device="cpu")
    summary = json.loads(result.summary.read_text())
    scale = summary["grid"]["crs_units_per_m"]
    assert result.crs == "EPSG:3857" and 1.15 < scale < 1.30  # 1 / cos(latitude) at about 34 N
    with rasterio.open(result.classes_tif) as src:
        assert src.res[0] == pytest.approx(40 * scale)
        classes = src.read(1)
    assert (classes == 255).any() and (classes != 255).sum() == result.n_scored > 0  # the 3 x 2 tile box lacks three tiles
    regions = json.loads(result.geojson.read_text())["features"]
    assert sum(f["properties"]["area_m2"] for f in regions) == pytest.approx(result.n_scored * 40 * 40, rel=0.02)


def _regions(crs: str, origin: tuple[float, float], cell_m: float) -> list[dict]:
    """Region polygons of a random 24 x 24 class grid as `class_regions` makes them (4-connected), in `crs`, with holes of two sizes."""
    from rasterio.features import shapes

    rng = np.random.default_rng(7)
    classes = np.kron(rng.integers(0, 4, (6, 6)), np.ones((4, 4), int)).astype(np.int32)
    classes[rng.random(classes.shape) < 0.15] = 4
    classes[8:16, 8:16], classes[9:10, 9:10], classes[11:14, 11:14] = 5, 6, 7  # a region with two holes of different sizes
    transform = from_origin(*origin, cell_m, cell_m)
    return [geometry for geometry, _ in shapes(classes, connectivity=4, transform=transform)]


@pytest.mark.parametrize("crs, origin, cell_m", [("EPSG:32631", (372_000, 4_834_000), 128), ("EPSG:32618", (101_985, 2_826_915), 300),
                                                  ("EPSG:3857", (410_000, 6_630_000), 40), ("EPSG:3031", (100_000, 1_500_000), 500),
                                                  ("EPSG:32660", (680_000, 5_000_000), 2_000)])
def test_regions_reach_lonlat_and_area_crs_with_transform_geoms_coordinates(crs: str, origin: tuple[float, float], cell_m: float,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Polygons reach lon/lat (rounded) and an equal-area CRS (not) with rasterio's transform_geom's coordinates to the last
    digit, without calling it: UTM, Web Mercator, Antarctic polar stereographic, and up to 180 E; then oriented as shapely
    orients each polygon alone."""
    import rasterio.warp
    from rasterio.warp import transform_geom
    from shapely.geometry import MultiPolygon, mapping
    from shapely.geometry.polygon import orient

    geometries = _regions(crs, origin, cell_m)
    geometries.append({"type": "MultiPolygon", "coordinates": [geometries[0]["coordinates"], geometries[1]["coordinates"]]})
    assert any(len(g["coordinates"]) > 2 for g in geometries[:-1])  # the two holes are there
    laea = "+proj=laea +lat_0=40 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
    expected = {dst: json.loads(json.dumps(transform_geom(crs, dst, geometries, precision=precision)))
                for dst, precision in (("EPSG:4326", 7), (laea, -1))}
    oriented = [shape(g) for g in expected["EPSG:4326"]]
    oriented = [orient(g, 1.0) if g.geom_type == "Polygon" else MultiPolygon([orient(p, 1.0) for p in g.geoms]) for g in oriented]
    monkeypatch.setattr(rasterio.warp, "transform_geom", None)  # one transform of all vertices, not GDAL's geometry by geometry
    for dst, precision in (("EPSG:4326", 7), (laea, -1)):
        assert transform_polygons(crs, dst, geometries, precision) == expected[dst]
    assert analyst.lonlat_geometries(crs, geometries) == json.loads(json.dumps([mapping(g) for g in oriented]))


@pytest.mark.parametrize("crs, corners", [("EPSG:32660", (720_000, 4_990_000, 750_000, 5_010_000)),  # across 180 E: cut in two
                                          ("EPSG:3413", (-300_000, -300_000, 300_000, 300_000))])  # round the North Pole
def test_polygons_across_the_antimeridian_or_round_a_pole_are_left_to_gdal(crs: str, corners: tuple[float, ...]) -> None:
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping

    square = json.loads(json.dumps(mapping(box(*corners).segmentize(5_000))))  # vertices all along its edges
    expected = json.loads(json.dumps(transform_geom(crs, "EPSG:4326", [square], precision=7)))
    assert transform_polygons(crs, "EPSG:4326", [square], 7) == expected
    assert crs == "EPSG:3413" or expected[0]["type"] == "MultiPolygon"  # GDAL cut it at the antimeridian



def test_a_scene_across_the_antimeridian_maps_with_its_regions_cut_there(encoder: ClipEncoder, tmp_path: Path) -> None:
    """A UTM zone 60 scene with 180 E down its middle: regions that cross it come out as RFC 7946 has them, a multipolygon with
    a part on each side, and no ring spans the globe; the best windows' footprints are polygons on one side or the other."""
    seam = 729_004.84  # x of 180 E at 46.78 N in UTM 60
    data = np.concatenate([landscape(), landscape()], axis=2)  # 512 x 256 m: water above, forest and fields below, twice
    path = write_raster(tmp_path / "fiji.tif", data, crs="EPSG:32660", origin=(seam - 256, 5_185_087.7 + 128))
    result = map_raster(encoder, path, tmp_path / "maps", classes=CLASSES, **FAST)
    regions = json.loads(result.geojson.read_text())["features"]
    polygons = [(g["type"], [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]) for g in (r["geometry"] for r in regions)]
    spans = [max(x for x, _ in ring) - min(x for x, _ in ring) for _, parts in polygons for part in parts for ring in part]
    assert max(spans) < 0.01  # 512 m is 0.0067 degrees of longitude here
    cut = [parts for kind, parts in polygons if kind == "MultiPolygon"]
    assert cut and all({part[0][0][0] > 0 for part in parts} == {True, False} for parts in cut)
    found = search_rasters(encoder, [path], "water", tmp_path / "search", top_k=4, **FAST)
    footprints = json.loads(found.geojson.read_text())["features"]
    assert len(footprints) == 4 and all(f["geometry"]["type"] == "Polygon" for f in footprints)


@pytest.mark.realdata
@pytest.mark.parametrize("parts", [("rasterio", "rgb1.tif"), ("gent", "2020-09-17_Sentinel_2_L1C_True_color.tiff")])
def test_real_scenes_regions_reach_lonlat_with_transform_geoms_coordinates(parts: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A real scene's regions: rgb1.tif's UTM given as WKT with no EPSG code (where transform_geom took 11 ms a polygon) and
    Sentinel-2 in Web Mercator reach lon/lat with transform_geom's coordinates, without calling it."""
    import rasterio.warp
    from rasterio.warp import transform_geom

    scene = open_scene([_need(*parts)])
    width = scene.bounds[2] - scene.bounds[0]
    geometries = _regions(scene.crs, (scene.bounds[0] + width / 4, scene.bounds[3] - width / 4), width / 48)
    expected = json.loads(json.dumps(transform_geom(scene.crs, "EPSG:4326", geometries, precision=7)))
    monkeypatch.setattr(rasterio.warp, "transform_geom", None)
    assert transform_polygons(scene.crs, "EPSG:4326", geometries, 7) == expected
