"""PNG for curated images: written with one row filter and ISA-L's deflate (10-25x Pillow), read back the same way.

Pillow takes 5-11 ms to write a 224 px RGB tile of real imagery: it tries all five
PNG row filters on every row and deflates at zlib's level 6, which costs more than reading the tile
did. PNG leaves both choices to the writer. This one filters every row with "Up" (each byte minus
the byte above: one numpy subtraction, and cheaper than Pillow's mix to undo when training decodes
the tile) and deflates with ISA-L at level 1 (`isal`, the project's gzip inflater already), for
files 4-9% larger than Pillow's on real tiles (benchmarks/tile_encode.py). Any PNG reader reads
them, and the pixels are the same bytes.

Reading them back is the mirror image: `decode_png` inflates with ISA-L and undoes Up with one
cumulative sum down the columns, where Pillow unfilters row by row in C and inflates with zlib. It
reads only PNGs whose rows are all filtered None or Up (every file `encode_png` writes) and hands
anything else back to Pillow, so training and evaluation decode every image they did before, to the
same pixels.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# channels -> PNG colour type: grey, grey and alpha, RGB, RGBA
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
FILTER_NONE, FILTER_UP = 0, 2
CHANNELS = {colour_type: channels for channels, colour_type in COLOUR_TYPES.items()}
DEFLATE_LEVEL = 1  # ISA-L's levels run 0-3; on real tiles 2 and 3 save 3% at most (some grow) for 7-15% more time


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode_png(image: np.ndarray) -> bytes:
    """`image`, uint8 (H, W) or (H, W, C) with C 1 to 4 (grey, grey and alpha, RGB, RGBA), as a PNG file's bytes."""
    if image.dtype != np.uint8:
        raise ValueError(f"PNG images must be uint8, got {image.dtype}")
    pixels = image[..., None] if image.ndim == 2 else image
    if pixels.ndim != 3 or pixels.shape[2] not in COLOUR_TYPES:
        raise ValueError(f"PNG images are (H, W) or (H, W, C) with C in 1-4, got shape {image.shape}")
    height, width, channels = pixels.shape
    if height == 0 or width == 0:
        raise ValueError(f"PNG images need at least one pixel, got shape {image.shape}")
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 wraps modulo 256, as PNG's filters do
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[channels], 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", isal_zlib.compress(filtered, DEFLATE_LEVEL))
            + _chunk(b"IEND", b""))


def decode_png(data: bytes) -> np.ndarray | None:
    """The pixels (H, W, C) uint8 of a PNG as `encode_png` writes them; None for any other file, for Pillow to read.

    Read here: 8-bit grey, grey and alpha, RGB or RGBA, not interlaced, every row filtered None or
    Up, every chunk's CRC right. Anything else (other row filters, palettes, 16 bits, interlacing, an
    unknown critical chunk, a damaged or truncated file) returns None, so the caller's Pillow decodes
    it or names what is wrong exactly as before.
    """
    view = memoryview(data)
    if view[:8] != SIGNATURE:
        return None
    pos, header, idat = 8, None, []
    while True:
        if pos + 12 > len(view):
            return None  # truncated before IEND
        length, tag = struct.unpack_from(">I4s", view, pos)
        if pos + 12 + length > len(view):
            return None  # the chunk runs past the end
        body = view[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack_from(">I", view, pos + 8 + length)
        if isal_zlib.crc32(body, isal_zlib.crc32(tag)) != crc:
            return None
        pos += 12 + length
        if tag == b"IHDR":
            if header is not None or length != 13:
                return None  # a second or malformed header
            header = struct.unpack(">IIBBBBB", body)
        elif header is None:
            return None  # IHDR must come first
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
        elif not tag[0] & 0x20:
            return None  # a critical chunk this reader does not know (a palette, say)
    width, height, depth, colour_type, compression, filter_method, interlace = header
    if depth != 8 or colour_type not in CHANNELS or (compression, filter_method, interlace) != (0, 0, 0) or not width or not height:
        return None
    channels = CHANNELS[colour_type]
    try:
        raw = isal_zlib.decompress(b"".join(idat))
    except isal_zlib.error:
        return None
    if len(raw) != height * (1 + width * channels):
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * channels)
    filters = rows[:, 0]
    if (filters == FILTER_NONE).all():
        pixels = rows[:, 1:]
    elif filters[0] in (FILTER_NONE, FILTER_UP) and (filters[1:] == FILTER_UP).all():  # Up over the first row adds zeros
        pixels = np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8)  # uint8 wraps modulo 256, undoing the subtraction
    else:
        return None
    return pixels.reshape(height, width, channels)


def open_image(data: bytes) -> Image.Image:
    """An image file's bytes as the PIL image `Image.open` gives, in its own mode: `decode_png` where it applies, else Pillow.

    A PNG `decode_png` reads comes back as Pillow's mode for it (L, LA, RGB or RGBA) with the same
    pixels (tests/test_png.py compares them), so transforms that resize before converting to RGB, as
    open_clip's evaluation preprocess does, see the image they saw before. Errors are Pillow's.
    """
    pixels = decode_png(data)
    if pixels is None:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def open_rgb(data: bytes) -> Image.Image:
    """An image file's bytes as an RGB PIL image, as webdataset's "pilrgb" decodes it: `open_image`, then `convert("RGB")`."""
    image = open_image(data)
    return image if image.mode == "RGB" else image.convert("RGB")
