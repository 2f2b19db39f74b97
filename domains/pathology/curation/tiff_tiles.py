"""Rows of a pyramid level decoded straight from the slide's TIFF tiles, where that gives OpenSlide's pixels exactly.

OpenSlide's `read_region` spends most of its time painting decoded tiles into its ARGB buffer:
about 0.9 ms for a cached 240 px tile of CMU-1-Small-Region, against 0.4 ms for Pillow to decode
the tile's JPEG. For the levels it can read (tiled, 8-bit RGB, JPEG, Deflate or no compression, as
Aperio SVS and generic pyramidal TIFFs store them) `tiff_level` gives a reader that decodes the tiles
itself (tifffile for the layout, Pillow's libjpeg or libdeflate for the data) and is checked against
OpenSlide before use: the first, middle and last tiles' areas, read both ways, must be equal, pixel
for pixel, or OpenSlide keeps reading the level. Anything else (JPEG 2000, other vendors' formats,
missing tiles) is None: OpenSlide reads it.

Aperio writes RGB JPEG tiles without a colour transform (TIFF photometric RGB): they are decoded
without one (Pillow's "YCbCr" draft mode hands over the components as stored), as OpenSlide does.
"""
from __future__ import annotations

import io
import os
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import deflate
import numpy as np
import tifffile
from PIL import Image

_JPEG, _ADOBE_DEFLATE, _DEFLATE, _NONE = 7, 8, 32946, 1
_RGB, _YCBCR = 2, 6


@dataclass(frozen=True)
class TiffLevel:
    """Where one pyramid level's tiles lie in the file and how they are stored (plain data: threads and processes share it)."""

    path: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    compression: int
    photometric: int
    offsets: tuple[int, ...]  # per tile, row-major
    byte_counts: tuple[int, ...]
    jpeg_tables: bytes | None

    def _tile(self, fd: int, index: int) -> np.ndarray:
        """Tile `index` as (tile_height, tile_width, 3) uint8."""
        data = os.pread(fd, self.byte_counts[index], self.offsets[index])
        shape = (self.tile_height, self.tile_width, 3)
        size = self.tile_height * self.tile_width * 3
        if self.compression == _NONE:
            return np.frombuffer(data, np.uint8, count=size).reshape(shape)
        if self.compression in (_DEFLATE, _ADOBE_DEFLATE):
            return np.frombuffer(_inflate(data, size), np.uint8, count=size).reshape(shape)
        if self.jpeg_tables:  # abbreviated tile streams: the tables' SOI..(EOI) around the tile's own segments
            data = self.jpeg_tables[:-2] + data[2:]
        image = Image.open(io.BytesIO(data))
        if self.photometric == _RGB:
            image.draft("YCbCr", image.size)  # the components as stored: no colour transform
        return np.asarray(image).reshape(shape)

    def region(self, x: int, y: int, width: int, height: int, cache: TileCache | None = None) -> np.ndarray:
        """Level pixels [y, y + height) x [x, x + width) (x, y >= 0) as (height, width, 3) uint8, white beyond the level.

        White is what compositing OpenSlide's read (transparent there) over white gives. Tiles come from
        `cache` when it holds them (and go into it). A tile that fails to decode (a damaged file) raises
        openslide.OpenSlideError, as OpenSlide's read would.
        """
        import openslide

        inside_w, inside_h = min(width, self.width - x), min(height, self.height - y)
        if (inside_w, inside_h) == (width, height):
            out = np.empty((height, width, 3), np.uint8)
        else:
            out = np.full((height, width, 3), 255, np.uint8)
            if inside_w <= 0 or inside_h <= 0:
                return out
        columns = -(-self.width // self.tile_width)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for tile_row in range(y // self.tile_height, (y + inside_h - 1) // self.tile_height + 1):
                ty = tile_row * self.tile_height
                r0, r1 = max(y, ty), min(y + inside_h, ty + self.tile_height)
                for column in range(x // self.tile_width, (x + inside_w - 1) // self.tile_width + 1):
                    tx = column * self.tile_width
                    c0, c1 = max(x, tx), min(x + inside_w, tx + self.tile_width)
                    index = tile_row * columns + column
                    try:
                        tile = cache.get(index, lambda i=index: self._tile(fd, i)) if cache is not None else self._tile(fd, index)
                    except (OSError, ValueError, zlib.error) as exc:
                        raise openslide.OpenSlideError(f"{self.path}: tile ({column}, {tile_row}): {exc}") from None
                    out[r0 - y : r1 - y, c0 - x : c1 - x] = tile[r0 - ty : r1 - ty, c0 - tx : c1 - tx]
        finally:
            os.close(fd)
        return out

    def rows(self, top: int, rows: int) -> np.ndarray:
        """Rows `top` to `top + rows` of the level, the whole width, as (rows, width, 3) uint8."""
        return self.region(0, top, self.width, rows)


def _inflate(data: bytes, size: int) -> bytes:
    """A Deflate tile's bytes (at most `size` expected), by libdeflate; zlib's for what libdeflate refuses.

    libdeflate inflates a whole buffer at once, 1.8x as fast as zlib on the benchmark slide's 256 px
    tiles (0.28 against 0.51 ms). It refuses a stream longer than `size` or damaged; zlib then gives
    the longer bytes (the caller keeps a tile's worth) or its own error, as before it was used.
    """
    try:
        return deflate.zlib_decompress(data, size)
    except deflate.DeflateError:
        return zlib.decompress(data)


class TileCache:
    """Decoded tiles of one level, the most recently used kept up to `max_bytes`; threads may share one.

    Neighbouring reads (a grid of tiles that do not fall on the file's tiles) need the same file tiles:
    OpenSlide keeps them in its cache (32 MB by default), and so does a reader with one of these.
    """

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Drop every tile kept."""
        with self._lock:
            self._tiles.clear()
            self._bytes = 0

    def get(self, index: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """Tile `index`, decoded by `decode()` when not kept (two threads may both decode it: the same pixels)."""
        with self._lock:
            tile = self._tiles.get(index)
            if tile is not None:
                self._tiles.move_to_end(index)
                return tile
        tile = decode()
        with self._lock:
            if index not in self._tiles:
                self._tiles[index] = tile
                self._bytes += tile.nbytes
                while self._bytes > self.max_bytes and len(self._tiles) > 1:
                    self._bytes -= self._tiles.popitem(last=False)[1].nbytes
        return tile


_checked: dict[tuple[str, int, int, int], TiffLevel | None] = {}  # (path, mtime, size, level): checked once per file version


def tiff_level(slide: Any, level: int) -> TiffLevel | None:
    """The direct reader of `slide`'s pyramid `level` (an OpenSlide handle), or None when OpenSlide must read it."""
    path = getattr(slide, "_filename", None)
    if path is None or slide.properties.get("openslide.vendor") not in ("aperio", "generic-tiff"):
        return None
    stat = os.stat(path)
    key = (os.fspath(path), stat.st_mtime_ns, stat.st_size, level)
    if key not in _checked:  # threads may both check a new file: the same answer
        if len(_checked) >= 64:
            _checked.clear()
        _checked[key] = _check(_find_level(key[0], tuple(slide.level_dimensions[level])), slide, level)
    return _checked[key]


def _check(found: TiffLevel | None, slide: Any, level: int) -> TiffLevel | None:
    """`found` when its first, middle and last tiles equal OpenSlide's read of the same pixels (opaque), else None."""
    import openslide

    if found is None:
        return None
    downsample = float(slide.level_downsamples[level])
    last_x = (found.width - 1) // found.tile_width * found.tile_width
    last_y = (found.height - 1) // found.tile_height * found.tile_height
    middle = (last_x // found.tile_width // 2 * found.tile_width, last_y // found.tile_height // 2 * found.tile_height)
    areas = [(0, 0)] + ([middle, (last_x, last_y)] if downsample == int(downsample) else [])  # else OpenSlide would interpolate
    for x, y in areas:
        width, height = min(found.tile_width, found.width - x), min(found.tile_height, found.height - y)
        try:
            mine = found.region(x, y, width, height)
            theirs = slide.read_region((int(x * downsample), int(y * downsample)), level, (width, height))
        except openslide.OpenSlideError:
            return None
        if theirs.getchannel("A").getextrema() != (255, 255) or not np.array_equal(np.asarray(theirs.convert("RGB")), mine):
            return None
    return found


def _find_level(path: str, dimensions: tuple[int, int]) -> TiffLevel | None:
    """The one tiled page of the file with the level's dimensions, when it is stored in a way this module decodes."""
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if p.is_tiled and (p.imagewidth, p.imagelength) == dimensions]
            if len(pages) != 1:
                return None
            page = pages[0]
            if (page.compression not in (_JPEG, _DEFLATE, _ADOBE_DEFLATE, _NONE) or page.samplesperpixel != 3
                    or page.bitspersample != 8 or page.planarconfig != 1 or page.imagedepth != 1
                    or page.tags.valueof("Predictor", 1) != 1
                    or (page.compression == _JPEG and page.photometric not in (_RGB, _YCBCR))
                    or (page.compression != _JPEG and page.photometric != _RGB)
                    or 0 in page.databytecounts):
                return None
            return TiffLevel(path, page.imagewidth, page.imagelength, page.tilewidth, page.tilelength, int(page.compression),
                             int(page.photometric), tuple(int(o) for o in page.dataoffsets),
                             tuple(int(c) for c in page.databytecounts), page.jpegtables or None)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
