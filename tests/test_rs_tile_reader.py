"""The tile reader's one-warp tiles (TileSource) against the reader before: one warp for the bands, a second for the mask.

The reference is the reader as it was (one WarpedVRT for the bands, `dataset_mask` of it for the
mask) and `to_rgb8` as it was: curated pixels must not change by a single value, except a tile read
directly on the raster's own grid (`on_own_grid`), whose values may differ by DIRECT_READ_TOLERANCE;
masks must not change, except that an integer nodata raster's warped tile takes its mask from its own
bands (`nodata_mask_of_bands`), where the second warp can disagree with the first at the raster's edge.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_bounds, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from domains.remote_sensing.curation.tiles import (
    DIRECT_READ_TOLERANCE,
    Tile,
    TileSource,
    covers_only_data,
    finite_pixels,
    footprint_holds_data,
    has_validity_info,
    mosaic_limits,
    nodata_mask_of_bands,
    on_own_grid,
    overview_sample,
    read_mosaic_tile,
    read_tile,
    to_rgb8,
)

X0, Y0, RES, SIDE = 500_000.0, 4_000_000.0, 1.0, 300


def two_warp_read(src, crs, bounds, size, bands, resampling) -> Tile:
    """The reader before TileSource: pixels from one warp, the mask from a second (dataset_mask)."""
    transform = from_bounds(*bounds, width=size, height=size)
    with WarpedVRT(src, crs=crs, transform=transform, width=size, height=size, resampling=resampling,
                   add_alpha=not has_validity_info(src)) as vrt:
        data = vrt.read(indexes=list(bands))
        valid = (vrt.dataset_mask() > 0) & finite_pixels(data)
    return Tile(data, valid)


def old_to_rgb8(tile: Tile, limits=None) -> np.ndarray:
    """to_rgb8 before it built H x W x C directly."""
    data = tile.data
    out = np.zeros(data.shape, dtype=np.uint8)
    for i, band in enumerate(data):
        if band.dtype == np.uint8:
            out[i] = band
            continue
        lo, hi = (float(v) for v in limits[i])
        hi = lo + 1.0 if hi <= lo else hi
        scaled = (band.astype(np.float64) - lo) / (hi - lo) * 255.0
        out[i] = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0), 0, 255).round().astype(np.uint8)
    out[:, ~tile.valid] = 0
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out[:3].transpose(1, 2, 0))


def write(path: Path, data: np.ndarray, nodata=None, mask: np.ndarray | None = None) -> Path:
    """A tiled GeoTIFF (EPSG:32631, 1 m) of (bands, H, W) `data`, with a nodata value or an internal mask."""
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                           dtype=data.dtype, crs="EPSG:32631", transform=from_origin(X0, Y0, RES, RES), nodata=nodata,
                           tiled=True, blockxsize=128, blockysize=128) as dst:
            dst.write(data)
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)
    return path


def scene(rng: np.random.Generator, count: int, dtype: str, hole_value) -> np.ndarray:
    """Random smooth-ish pixels with a hole of `hole_value` in every band, and one in the first band only."""
    base = rng.integers(1, 250, size=(count, SIDE // 10, SIDE // 10)).repeat(10, 1).repeat(10, 2)
    data = (base + rng.integers(0, 5, size=(count, SIDE, SIDE))).astype(dtype)
    if dtype == "uint16":
        data = data * 40
    data[:, 100:140, 60:200] = hole_value
    data[0, 200:230, 30:90] = hole_value  # empty in one band only: the pixel still holds data
    return data


# inside, away from the holes (rows 0-100 and columns 200-300 hold data in every band), and a window whose
# margin reaches the hole at row 100
CLEAN = [(X0 + 10, Y0 - 90, X0 + 90, Y0 - 10), (X0 + 210, Y0 - 190, X0 + 290, Y0 - 110), (X0 + 205, Y0 - 80, X0 + 245, Y0 - 40)]
NEAR_HOLE = (X0 + 70, Y0 - 98, X0 + 150, Y0 - 18)


# flush with the scene's left and top edges, and with its right edge (the first pixels the scene
# lacks are the next output pixel's): read directly, not warped, though a kernel's margin is outside
FLUSH = [(X0, Y0 - 60, X0 + 60, Y0), (X0 + SIDE * RES - 80, Y0 - 90, X0 + SIDE * RES, Y0 - 10)]


def windows(rng: np.random.Generator) -> list[tuple[float, float, float, float]]:
    """Square bounds inside, flush with, across the edge of and around the holes of the scene, at 1x to 3x the pixel size."""
    out = [*CLEAN, *FLUSH, NEAR_HOLE]
    for ground in (60.0, 150.0, 290.0):
        for _ in range(4):
            cx = X0 + rng.uniform(-0.2, 1.2) * SIDE * RES
            cy = Y0 - rng.uniform(-0.2, 1.2) * SIDE * RES
            out.append((cx - ground / 2, cy - ground / 2, cx + ground / 2, cy + ground / 2))
    return out


CASES = {
    # name: (bands, dtype, nodata or None, internal mask, validity rule expected)
    "uint8 nodata": (3, "uint8", 0, False, "mask"),
    "uint8 nodata bands reversed": (3, "uint8", 0, False, "mask"),
    "uint16 nodata": (3, "uint16", 0, False, "mask"),
    "uint8 no validity info": (3, "uint8", None, False, "alpha"),
    "uint16 four bands nodata, three shown": (4, "uint16", 0, False, "mask"),
    "uint8 internal mask": (3, "uint8", None, True, "mask"),
    "float32 NaN nodata": (3, "float32", float("nan"), False, "mask"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_warp_tile_equals_two_warp_tile(tmp_path: Path, case: str) -> None:
    count, dtype, nodata, internal_mask, rule = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    hole = np.nan if dtype == "float32" else 0
    data = scene(rng, count, dtype, hole)
    mask = (data != hole).any(0) if internal_mask else None
    bands = [3, 2, 1] if count == 4 or "reversed" in case else [1, 2, 3]
    with rasterio.open(write(tmp_path / "scene.tif", data, nodata, mask)) as src:
        source = TileSource.of(src, bands)
        assert source.validity == rule
        targets = [src.crs, CRS.from_epsg(32632)]  # the raster's own CRS, and a warp to the next UTM zone
        own_mask = nodata is not None and dtype != "float32" and count == 3  # nodata_mask_of_bands applies
        compared, direct, disagreed = 0, [], 0
        for crs in targets:
            for bounds in windows(rng):
                if crs != src.crs:
                    from rasterio.warp import transform_bounds

                    bounds = transform_bounds(src.crs, crs, *bounds)
                    side = max(bounds[2] - bounds[0], bounds[3] - bounds[1])
                    bounds = (bounds[0], bounds[1], bounds[0] + side, bounds[1] + side)
                for resampling in (Resampling.average, Resampling.bilinear, Resampling.nearest):
                    want = two_warp_read(src, crs, bounds, 64, bands, resampling)
                    got = read_tile(source, crs, bounds, 64, resampling=resampling)
                    window = rasterio.windows.from_bounds(*bounds, transform=src.transform)
                    on_grid = on_own_grid(source, crs, bounds, (64, 64), resampling) and footprint_holds_data(source, window)
                    if own_mask and not on_grid and not covers_only_data(source, crs, bounds, 64):
                        np.testing.assert_array_equal(got.valid, (want.data != 0).any(axis=0))  # what the bands hold
                        disagreed += bool((got.valid != want.valid).any())
                    else:
                        np.testing.assert_array_equal(got.valid, want.valid)
                    assert got.data.dtype == want.data.dtype
                    if on_grid:
                        direct.append(resampling)  # one resampled read, no warp: within the tolerance
                        gap = np.abs(got.data.astype(np.float64) - want.data.astype(np.float64))
                        assert gap.max() <= DIRECT_READ_TOLERANCE
                    else:
                        np.testing.assert_array_equal(got.data, want.data)
                    compared += 1
                    if got.valid.any() and not got.valid.all():
                        limits = [(0.0, 200.0 * (40 if dtype == "uint16" else 1))] * len(bands) if dtype != "uint8" else None
                        np.testing.assert_array_equal(to_rgb8(got, limits), old_to_rgb8(Tile(want.data, got.valid), limits))
        assert compared == len(targets) * (12 + len(CLEAN) + len(FLUSH) + 1) * 3
        # integer data averaged over clean windows in the raster's own CRS is read directly, and nothing else
        assert set(direct) == (set() if dtype == "float32" else {Resampling.average})
        assert dtype == "float32" or len(direct) >= len(CLEAN) + len(FLUSH)
        # the second warp's mask disagreed with the data somewhere at the edge, and the bands' own mask was kept
        assert (disagreed > 0) == own_mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_mask_is_taken_from_the_bands_wherever_they_say_it_exactly(tmp_path: Path, case: str) -> None:
    """Integer nodata rasters, every band read: the mask is where one band is not nodata, in the raster's CRS or warped to
    another, inside or across the raster's edge (a pixel empty in one band only holds data); any other is left to
    dataset_mask (None)."""
    count, dtype, nodata, internal_mask, _ = CASES[case]
    rng = np.random.default_rng(7)
    hole = np.nan if dtype == "float32" else 0
    data = scene(rng, count, dtype, hole)
    mask = (data != hole).any(0) if internal_mask else None
    with rasterio.open(write(tmp_path / "scene.tif", data, nodata, mask)) as src:
        # over the hole in every band and the hole in band 1 only; then across the scene's edge
        inside, across = (X0 + 10, Y0 - 250, X0 + 250, Y0 - 10), (X0 - 20, Y0 - 250, X0 + 220, Y0 - 10)
        used = []
        for crs, bounds in ((src.crs, inside), (CRS.from_epsg(32632), inside), (src.crs, across)):
            b = bounds if crs == src.crs else transform_bounds(src.crs, crs, *bounds)
            for resampling in (Resampling.nearest, Resampling.average):
                with WarpedVRT(src, crs=crs, transform=from_bounds(*b, width=97, height=97), width=97, height=97,
                               resampling=resampling) as vrt:
                    shown = list(range(1, vrt.count + 1))[::-1]
                    read = vrt.read(indexes=shown)
                    got = nodata_mask_of_bands(vrt, shown, read)
                    if got is not None:
                        np.testing.assert_array_equal(got, (read != 0).any(axis=0))
                        band_1_only = (read[-1] == 0) & (read[:-1] != 0).all(axis=0)  # shown reversed: band 1 is last
                        assert got.any() and not got.all() and got[band_1_only].all()
                        used.append((bounds == across, resampling, int(band_1_only.sum())))
    expected = nodata is not None and dtype != "float32" and count == 3
    assert [across for across, _, _ in used] == ([False, False, False, False, True, True] if expected else [])
    # nearest keeps pixels empty in band 1 only (averaging writes band 1's hole as data: 1 where its average is the nodata 0)
    assert all(n > 0 for _, resampling, n in used if resampling == Resampling.nearest)


def test_a_tile_across_the_edge_keeps_the_data_its_second_warp_calls_empty(tmp_path: Path) -> None:
    """A 224 px tile at 3.3 source pixels a pixel across the scene's top-left corner: dataset_mask's warp calls part of the
    last row of data empty (the reader before dropped it); the tile's mask is what its bands hold, its pixels unchanged."""
    data = scene(np.random.default_rng(0), 3, "uint8", 0)
    bounds = (X0 - 415.1447550707, Y0 - 599.2791542276, X0 + 324.0552449293, Y0 + 139.9208457726)
    with rasterio.open(write(tmp_path / "scene.tif", data, 0)) as src:
        want = two_warp_read(src, src.crs, bounds, 224, [1, 2, 3], Resampling.average)
        got = read_tile(TileSource.of(src, [1, 2, 3]), src.crs, bounds, 224, resampling=Resampling.average)
    np.testing.assert_array_equal(got.data, want.data)
    holds_data = (got.data != 0).any(axis=0)
    np.testing.assert_array_equal(got.valid, holds_data)
    assert (holds_data & ~want.valid).sum() > 20  # data the second warp's mask called empty, kept now


def test_mosaic_tile_from_tile_sources_equals_pairs(tmp_path: Path) -> None:
    """read_mosaic_tile takes TileSources or (raster, bands) pairs alike; the second raster fills the first's holes."""
    rng = np.random.default_rng(5)
    first = scene(rng, 3, "uint8", 0)
    second = scene(rng, 3, "uint8", 0)
    second[:, 100:140, 60:200] = 77  # data where the first has its hole
    with rasterio.open(write(tmp_path / "a.tif", first, 0)) as a, rasterio.open(write(tmp_path / "b.tif", second, 0)) as b:
        bounds = (X0 + 40, Y0 - 180, X0 + 220, Y0)
        by_pairs, given_pairs = read_mosaic_tile([(a, [1, 2, 3]), (b, [1, 2, 3])], a.crs, bounds, 90, Resampling.average)
        by_sources, given = read_mosaic_tile([TileSource.of(a, [1, 2, 3]), TileSource.of(b, [1, 2, 3])], a.crs, bounds, 90,
                                             Resampling.average)
        first_only = two_warp_read(a, a.crs, bounds, 90, [1, 2, 3], Resampling.average)
    np.testing.assert_array_equal(by_sources.data, by_pairs.data)
    np.testing.assert_array_equal(by_sources.valid, by_pairs.valid)
    assert given == given_pairs and given[1] > 0  # the second raster gave the first one's hole
    assert given[0] == int(first_only.valid.sum())
    assert by_sources.valid.sum() > first_only.valid.sum()


def test_to_rgb8_grey_and_stretch_match_the_band_first_version() -> None:
    rng = np.random.default_rng(1)
    valid = rng.random((40, 50)) > 0.2
    grey = Tile(rng.integers(0, 3000, size=(1, 40, 50)).astype("uint16"), valid)
    np.testing.assert_array_equal(to_rgb8(grey, [(100.0, 2500.0)]), old_to_rgb8(grey, [(100.0, 2500.0)]))
    rgb = Tile(rng.integers(0, 256, size=(3, 40, 50)).astype("uint8"), valid)
    image = to_rgb8(rgb)
    np.testing.assert_array_equal(image, old_to_rgb8(rgb))
    assert image.flags["C_CONTIGUOUS"] and image.shape == (40, 50, 3) and not image[~valid].any()
    with pytest.raises(ValueError, match="uint16 band 1 needs stretch limits"):
        to_rgb8(grey)


@pytest.mark.parametrize("case", ["uint8 nodata", "uint8 internal mask", "float32 NaN nodata"])
def test_covers_only_data_skips_the_mask_warp_only_far_from_empty_pixels(tmp_path: Path, case: str) -> None:
    count, dtype, nodata, internal_mask, _ = CASES[case]
    data = scene(np.random.default_rng(0), count, dtype, np.nan if dtype == "float32" else 0)
    mask = (data == data).all(0) & (data != 0).all(0) if internal_mask else None
    with rasterio.open(write(tmp_path / "scene.tif", data, nodata, mask)) as src:
        source = TileSource.of(src, [1, 2, 3])
        for bounds in CLEAN:
            assert covers_only_data(source, src.crs, bounds, 40)
            assert read_tile(source, src.crs, bounds, 40, resampling=Resampling.average).valid.all()
        assert not covers_only_data(source, src.crs, NEAR_HOLE, 40)  # the tile misses the hole, the kernel's margin does not
        assert not covers_only_data(source, src.crs, (X0 - 20, Y0 - 80, X0 + 60, Y0), 40)  # past the raster's edge
        assert not covers_only_data(source, src.crs, (X0 + 20, Y0 - 250, X0 + 100, Y0 - 170), 40)  # band 1's own hole
        # the margin grows with the output pixel: 8 px clear of the hole at row 100 is enough at 1.5 source pixels per
        # output pixel, not at 6
        assert covers_only_data(source, src.crs, (X0 + 120, Y0 - 90, X0 + 180, Y0 - 30), 40)
        assert not covers_only_data(source, src.crs, (X0 + 120, Y0 - 90, X0 + 180, Y0 - 30), 10)


REAL_RASTERS = ["rs/rasterio/RGB.byte.tif", "rs/rasterio/rgb1.tif", "rs/gent/2020-09-17_Sentinel_2_L1C_True_color.tiff",
                "rs/gent/2020-09-17_Sentinel_2_L1C_B04.tiff"]


@pytest.mark.parametrize("name", REAL_RASTERS)
def test_direct_reads_of_real_rasters_stay_within_the_tolerance_of_the_warp(realdata: Path, name: str) -> None:
    """Random windows at 0.6x to 4.3x the pixel size, some on whole pixels at 1x: direct where allowed, within 1 of the warp."""
    rng = np.random.default_rng(7)
    with rasterio.open(realdata / name) as src:
        bands = [1, 2, 3] if src.count >= 3 else [1]
        source = TileSource.of(src, bands)
        res = abs(src.res[0])
        left, bottom, right, top = src.bounds
        direct, between_pixels = 0, 0
        limits = None
        if src.dtypes[0] != "uint8":  # the whole raster's 2nd and 98th percentiles, curation's default stretch
            _, values = overview_sample(src, bands, with_values=True)
            limits = mosaic_limits([(values, 1.0)], 2.0, 98.0)
        for k in range(120):
            size = int(rng.choice([37, 64]))
            ratio = float(rng.choice([0.6, 1.0, 1.05, 1.6, 2.0, 2.7, 4.3]))
            ground = size * ratio * res
            x0, y0 = rng.uniform(left, right - ground), rng.uniform(bottom, top - ground)
            if k % 4 == 0:  # on whole source pixels
                x0, y0 = left + round((x0 - left) / res) * res, bottom + round((y0 - bottom) / res) * res
            if k % 5 == 0:  # flush with the raster's left or bottom edge
                x0, y0 = (left, y0) if k % 10 else (x0, bottom)
            bounds = (x0, y0, x0 + ground, y0 + ground)
            for resampling in (Resampling.average, Resampling.bilinear):
                want = two_warp_read(src, src.crs, bounds, size, bands, resampling)
                got = read_tile(source, src.crs, bounds, size, resampling=resampling)
                np.testing.assert_array_equal(got.valid, want.valid)
                if on_own_grid(source, src.crs, bounds, (size, size), resampling):
                    direct += footprint_holds_data(source, rasterio.windows.from_bounds(*bounds, transform=src.transform))
                    # the tolerance holds for the curated 8-bit tile (non-8-bit data stretched as curation stretches it)
                    gap = np.abs(to_rgb8(got, limits).astype(np.int16) - to_rgb8(want, limits).astype(np.int16))
                    assert gap.max() <= DIRECT_READ_TOLERANCE, (bounds, ratio, resampling)
                else:
                    np.testing.assert_array_equal(got.data, want.data)
                    between_pixels += resampling == Resampling.average and ratio == 1.0
        assert direct > 10  # the direct path was exercised
        assert between_pixels > 0  # and a window between pixels at 1x went to the warper


@pytest.mark.parametrize("name", ["rs/rasterio/rgb1.tif", "rs/gent/2020-09-17_Sentinel_2_L1C_True_color.tiff"])
def test_real_tiles_across_the_edge_take_their_mask_from_their_bands(realdata: Path, name: str) -> None:
    """224 px tiles at 1.6x to 3.3x the pixel size straddling each edge of a real nodata raster: the mask is what the bands
    hold, the pixels are the warp's, and somewhere dataset_mask's second warp disagreed (so the test sees the difference)."""
    rng = np.random.default_rng(3)
    with rasterio.open(realdata / name) as src:
        source = TileSource.of(src, [1, 2, 3])
        nodata = int(src.nodata)
        left, bottom, right, top = src.bounds
        res = abs(src.res[0])
        disagreed = 0
        for k in range(32):
            ground = 224 * float(rng.choice([1.6, 2.0, 3.3])) * res
            x = [left, right, rng.uniform(left, right), rng.uniform(left, right)][k % 4] - ground * rng.uniform(0.2, 0.8)
            y = [rng.uniform(bottom, top), rng.uniform(bottom, top), bottom, top][k % 4] - ground * rng.uniform(0.2, 0.8)
            bounds = (x, y, x + ground, y + ground)
            want = two_warp_read(src, src.crs, bounds, 224, [1, 2, 3], Resampling.average)
            got = read_tile(source, src.crs, bounds, 224, resampling=Resampling.average)
            np.testing.assert_array_equal(got.data, want.data)
            np.testing.assert_array_equal(got.valid, (got.data != nodata).any(axis=0))
            assert got.valid.any() and not got.valid.all()  # across the edge
            disagreed += bool((got.valid != want.valid).any())
    assert disagreed > 0
