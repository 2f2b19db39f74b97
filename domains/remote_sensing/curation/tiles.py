"""Cut object-centred tiles out of a raster: reprojection, band choice, 8-bit scaling, checks.

Tiles are read through a `WarpedVRT` onto a square grid in a projected metric CRS, so the
output has exactly the requested ground sampling distance (GSD, metres/pixel). The raster's
own CRS is kept when it is projected in metres and conformal without large scale error
(UTM and the like); geographic and Web-Mercator rasters are warped to the UTM zone of the
tile centre, since EPSG:3857 metres are ground metres only at the equator (scale 1/cos(lat)).

NaN and +-inf in float rasters are empty pixels wherever validity is decided (tile masks, the
all-empty check, the stretch), whether or not the raster declares a nodata value: float products
commonly mark "no data" with NaN alone.

Several rasters form a mosaic (domains/remote_sensing/curation/mosaic.py): a tile is read from every
raster it touches, each warped onto the tile's grid, and each pixel comes from the first raster in
the mosaic's priority order that has data there (`read_mosaic_tile`).

Bands: `bands` in params, else red/green/blue as the file names them (band descriptions such as
"red" or Sentinel-2's "B4"/"B04", Landsat numbering when the file says it is Landsat, GDAL colour
interpretation), else bands 1-3 (or band 1 alone). Data that is not 8-bit is stretched to 0..255
with one (low, high) pair per band for the whole mosaic (`to_rgb8`), never per tile: a per-tile
stretch would make calm water and snow the same grey.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import rasterio
import rasterio.errors
import rasterio.windows
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

WGS84 = CRS.from_epsg(4326)
# How a raster's empty pixels are told apart in its tiles (TileSource)
Validity = Literal["alpha", "mask"]
# Mercator-family projections: metres on the map are not metres on the ground away from the equator.
_MERCATOR_EPSG = {3857, 3395, 3785, 900913, 54004}


def utm_epsg(lon: float, lat: float) -> int:
    """The EPSG code of the WGS 84 / UTM zone holding (lon, lat), north or south by the latitude's sign."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return (32600 if lat >= 0 else 32700) + zone


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 / UTM zone CRS holding (lon, lat)."""
    return CRS.from_epsg(utm_epsg(lon, lat))


def keeps_own_crs(crs: CRS) -> bool:
    """Whether tiles can be cut in the raster's CRS: projected, metre units, not Mercator."""
    if not crs.is_projected:
        return False
    if crs.to_epsg() in _MERCATOR_EPSG:
        return False
    wkt = crs.to_wkt().lower()
    if "mercator" in wkt and "transverse" not in wkt:
        return False
    try:
        units = crs.linear_units_factor[1]
    except Exception:  # CRS without a clear linear unit
        return False
    return abs(units - 1.0) < 1e-9


def tile_crs(raster_crs: CRS, lon: float, lat: float) -> CRS:
    """The CRS to cut a tile centred at (lon, lat) in: the raster's own when it keeps it, else UTM."""
    return raster_crs if keeps_own_crs(raster_crs) else utm_crs(lon, lat)


def native_gsd_m(src: rasterio.io.DatasetReader) -> float:
    """Ground metres per pixel at the raster centre (measured in UTM when the CRS is not metric)."""
    if keeps_own_crs(src.crs):
        return float(min(abs(src.res[0]), abs(src.res[1])))
    cx, cy = src.width / 2.0, src.height / 2.0
    xs, ys = [], []
    for col, row in ((cx, cy), (cx + 1, cy), (cx, cy + 1)):
        x, y = src.transform @ (col, row)
        xs.append(x)
        ys.append(y)
    lons, lats = warp_transform(src.crs, WGS84, xs, ys)
    utm = utm_crs(lons[0], lats[0])
    ux, uy = warp_transform(WGS84, utm, lons, lats)
    dx = math.hypot(ux[1] - ux[0], uy[1] - uy[0])
    dy = math.hypot(ux[2] - ux[0], uy[2] - uy[0])
    return float(min(dx, dy))


def default_bands(count: int) -> list[int]:
    """Bands 1-3 (1-based) when the raster has three or more, else band 1 alone."""
    return [1, 2, 3] if count >= 3 else [1]


_COLOURS = ("red", "green", "blue")
# Sentinel-2 and Landsat 8/9 OLI number red, green and blue 4, 3, 2; Landsat 4-7 TM/ETM+ 3, 2, 1.
_OLI_NUMBERS = {4: "red", 3: "green", 2: "blue"}
_TM_NUMBERS = {3: "red", 2: "green", 1: "blue"}
_LANDSAT_OLI = re.compile(r"landsat[_ ]?[89]\b|\bl[co]0?[89]\b|\bl[co]0?[89]_", re.I)
_LANDSAT_TM = re.compile(r"landsat[_ ]?[457]\b|\bl[te]0?[457]\b|\bl[te]0?[457]_", re.I)


def landsat_generation(src: rasterio.io.DatasetReader) -> str | None:
    """"oli" (Landsat 8/9) or "tm" (Landsat 4-7) when the file's metadata or name says so, else None."""
    text = " ".join([Path(src.name).name, *(f"{k}={v}" for k, v in src.tags().items())])
    if _LANDSAT_OLI.search(text):
        return "oli"
    if _LANDSAT_TM.search(text):
        return "tm"
    return None


def _described_colour(description: str | None, numbers: dict[int, str]) -> str | None:
    """The colour a band description names ("Red", "B04", "blue (B2)"), or None."""
    if not description:
        return None
    words = re.findall(r"[a-z]+|\d+", description.lower())
    if any(w in ("edge", "nir", "infrared", "swir") for w in words) or "rededge" in words:
        return None
    named = [w for w in words if w in _COLOURS]
    if named:
        return named[0]
    # Sentinel-2 style "B4"/"B04" only: a generic "Band 4" is a position, not a wavelength
    match = re.fullmatch(r"\s*b0?(\d{1,2})\s*", description.lower())
    return numbers.get(int(match.group(1))) if match else None


def select_bands(src: rasterio.io.DatasetReader, override: Sequence[int] | None = None) -> tuple[list[int], str]:
    """The 1-based bands to show as red, green, blue (or one grey band), and the rule that chose them.

    Rules, first that applies: "params" (`override`), "description" (every colour named by exactly
    one band's description), "landsat" (the file says it is Landsat and has the bands: 4/3/2 for
    Landsat 8/9, 3/2/1 for Landsat 4-7), "colorinterp" (GDAL colour interpretation red, green, blue),
    "default" (bands 1-3, or band 1 when there are fewer than three).
    """
    from rasterio.enums import ColorInterp

    if override:
        return list(override), "params"
    generation = landsat_generation(src)
    numbers = _TM_NUMBERS if generation == "tm" else _OLI_NUMBERS
    found: dict[str, list[int]] = {c: [] for c in _COLOURS}
    for index, description in enumerate(src.descriptions, start=1):
        colour = _described_colour(description, numbers)
        if colour:
            found[colour].append(index)
    if all(len(found[c]) == 1 for c in _COLOURS):
        return [found[c][0] for c in _COLOURS], "description"
    if generation and src.count >= 4:
        by_colour = {c: n for n, c in numbers.items()}
        return [by_colour[c] for c in _COLOURS], "landsat"
    interp = list(src.colorinterp)
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(interp.count(c) == 1 for c in wanted):
        return [interp.index(c) + 1 for c in wanted], "colorinterp"
    return default_bands(src.count), "default"


# Metadata naming when a raster was acquired, most specific first. TIFFTAG_DATETIME is the file's
# creation time by the TIFF standard, but many exporters write the acquisition time there.
_ACQUISITION_TAGS = (("IMAGERY", "ACQUISITIONDATETIME"), (None, "ACQUISITIONDATETIME"), (None, "DATE_ACQUIRED"),
                     (None, "SENSING_TIME"), (None, "PRODUCT_START_TIME"), (None, "DATATAKE_1_DATATAKE_SENSING_START"),
                     (None, "TIFFTAG_DATETIME"))


def acquisition_time(src: rasterio.io.DatasetReader) -> str | None:
    """When the raster was acquired, as ISO text ("2020-09-17T10:30:00"), from the first metadata item that parses."""
    from datetime import datetime

    for namespace, key in _ACQUISITION_TAGS:
        try:
            value = src.tags(ns=namespace).get(key) if namespace else src.tags().get(key)
        except Exception:  # a metadata domain the driver does not have
            value = None
        if not value:
            continue
        text = value.strip().replace("Z", "+00:00")
        text = re.sub(r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", text)  # TIFF's "YYYY:MM:DD HH:MM:SS"
        try:
            when = datetime.fromisoformat(text[:26] if "+" not in text else text)
        except ValueError:
            continue
        return when.replace(tzinfo=None, microsecond=0).isoformat()
    return None


def has_validity_info(src: rasterio.io.DatasetReader) -> bool:
    """True when the raster says which pixels are empty (nodata, alpha or a mask band)."""
    flags = src.mask_flag_enums[0]
    return src.nodata is not None or MaskFlags.all_valid not in flags


@dataclass
class Tile:
    """Pixels read for one tile and which of them hold data."""

    data: np.ndarray  # (bands, H, W) in the raster's dtype
    valid: np.ndarray  # (H, W) bool: pixels with data


@dataclass(frozen=True)
class TileSource:
    """An open raster, the bands shown, and how its empty pixels are told apart: found once per raster, not per tile.

    `validity` is "alpha" when nothing in an integer raster marks empty pixels (an alpha band is
    added to the warp and read with the bands: mask = alpha > 0, the mask `dataset_mask` reads), else
    "mask" (nodata, alpha or mask bands, float data): the mask is what the warped bands say where they
    say it exactly (`nodata_mask_of_bands`), else warped apart with `dataset_mask`, unless every source
    pixel the tile can draw on holds data (`covers_only_data`).
    """

    src: Any  # rasterio DatasetReader
    bands: tuple[int, ...]  # 1-based
    validity: Validity
    crs: CRS

    @classmethod
    def of(cls, src: rasterio.io.DatasetReader, bands: Sequence[int]) -> TileSource:
        """The source of `bands` of `src`, its validity rule decided from its metadata."""
        integer = all(np.issubdtype(np.dtype(d), np.integer) for d in src.dtypes)
        validity: Validity = "alpha" if integer and not has_validity_info(src) else "mask"
        return cls(src, tuple(int(b) for b in bands), validity, src.crs)


# Source pixels around a tile's footprint that a resampling kernel may reach, in multiples of the
# output-to-source pixel ratio (GDAL's widest kernel, Lanczos, has radius 3), plus 2 for rounding.
_KERNEL_REACH = 3
_REACH_EXTRA = 2


def covers_only_data(source: TileSource, crs: CRS, bounds: tuple[float, float, float, float], size: int | tuple[int, int]) -> bool:
    """Whether every source pixel the warp of `bounds` can draw on lies inside the raster and holds data in every band.

    Then the warped tile has data everywhere, and its mask needs no second warp. A generous margin
    (more than any kernel reaches) keeps the answer safe; False only means "warp the mask".
    """
    src = source.src
    t = src.transform
    if t.b != 0 or t.d != 0:  # a rotated grid: no simple window
        return False
    left, bottom, right, top = bounds if crs == source.crs else transform_bounds(crs, source.crs, *bounds, densify_pts=21)
    window = rasterio.windows.from_bounds(left, bottom, right, top, transform=t)
    height, width = (size, size) if isinstance(size, int) else size
    ratio = max(1.0, window.width / width, window.height / height)
    margin = int(math.ceil(_KERNEL_REACH * ratio)) + _REACH_EXTRA
    c0, r0 = int(math.floor(window.col_off)) - margin, int(math.floor(window.row_off)) - margin
    c1 = int(math.ceil(window.col_off + window.width)) + margin
    r1 = int(math.ceil(window.row_off + window.height)) + margin
    if c0 < 0 or r0 < 0 or c1 > src.width or r1 > src.height:
        return False
    return bool(src.read_masks(window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)).all())


# Largest difference between a direct read and the warp of the same tile, in grey levels of the
# curated 8-bit tile: GDAL's RasterIO and its warper average the same source pixels and round apart
# (within 1 raster unit inside the raster; along its edge, 16-bit data by up to 5 units, on the
# rasters in realdata/rs, which is under 1 grey level once stretched).
DIRECT_READ_TOLERANCE = 1


def on_own_grid(source: TileSource, crs: CRS, bounds: tuple[float, float, float, float], shape: tuple[int, int],
                resampling: Resampling) -> bool:
    """Whether a plain resampled read of the raster gives the warp's tile, given that the tile draws only on pixels with data.

    A tile on the raster's own north-up grid needs no warp: GDAL's RasterIO with `out_shape` (the read
    torchgeo's RasterDataset makes through rasterio.merge) averages the same source pixels within
    `DIRECT_READ_TOLERANCE`, for integer data and average resampling only: bilinear interpolation
    differs by up to 35 grey levels between the two (measured on the rasters in realdata/rs). A tile
    that draws on a pixel outside the raster or without data (`footprint_holds_data` says) is warped
    too: there the two weigh the missing pixels apart, by up to 25 grey levels at the raster's edge.
    """
    if resampling != Resampling.average:
        return False
    if not all(np.issubdtype(np.dtype(source.src.dtypes[b - 1]), np.integer) for b in source.bands):
        return False  # float data: NaN, which the two treat apart, may be in any pixel
    t = source.src.transform
    if t.b != 0 or t.d != 0 or t.e >= 0 or crs != source.crs:
        return False
    height, width = shape
    window = rasterio.windows.from_bounds(*bounds, transform=t)
    # Where the window is as many pixels as the tile, RasterIO copies the window rounded to whole pixels
    # and does not resample: right only for a window that lies on whole pixels.
    on_pixels = all(abs(v - round(v)) < 1e-6 for v in (window.col_off, window.row_off, window.width, window.height))
    return on_pixels or (round(window.width) != width and round(window.height) != height)


def whole_pixels(window: rasterio.windows.Window) -> tuple[int, int, int, int]:
    """(first column, first row, end column, end row) of the source pixels under `window`, float error at its edges ignored."""
    eps = 1e-6
    c0, r0 = int(math.floor(window.col_off + eps)), int(math.floor(window.row_off + eps))
    return c0, r0, int(math.ceil(window.col_off + window.width - eps)), int(math.ceil(window.row_off + window.height - eps))


def footprint_holds_data(source: TileSource, window: rasterio.windows.Window) -> bool:
    """Whether the pixels under `window` lie inside the raster and all hold data in every band (as `covers_only_data` asks).

    What a direct read averages is the pixels under each output pixel and no others, so unlike
    `covers_only_data` (any kernel's reach) a tile flush with the raster's edge qualifies. One more
    pixel around, inside the raster, is checked too, against rounding at the window's edges.
    """
    src = source.src
    c0, r0, c1, r1 = whole_pixels(window)
    if c0 < 0 or r0 < 0 or c1 > src.width or r1 > src.height:
        return False
    if source.validity == "alpha":  # nothing marks empty pixels: every pixel inside the raster holds data
        return True
    c0, r0, c1, r1 = max(0, c0 - 1), max(0, r0 - 1), min(src.width, c1 + 1), min(src.height, r1 + 1)
    return bool(src.read_masks(window=rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)).all())


def read_tile(
    src: rasterio.io.DatasetReader | TileSource,
    crs: CRS,
    bounds: tuple[float, float, float, float],
    size: int | tuple[int, int],
    bands: Sequence[int] | None = None,
    resampling: Resampling = Resampling.bilinear,
) -> Tile:
    """The square `bounds` (left, bottom, right, top in `crs`) as a size x size tile (a rectangle: size = (height, width)).

    `src` is an open raster (then `bands` says which to read) or a TileSource (its bands; built once
    per raster, it spares every tile the metadata checks). A tile on the raster's own grid over pixels
    that all hold data is one resampled read (`on_own_grid`, `footprint_holds_data`); any other is one warp of the bands,
    its mask all valid where it cannot have an empty pixel (`covers_only_data`), else from the warped
    bands themselves (an added alpha band read with them, or `nodata_mask_of_bands`), else a second
    warp's (`dataset_mask`: internal masks, alpha bands, float data, some bands of many).
    """
    source = src if isinstance(src, TileSource) else TileSource.of(src, bands or default_bands(src.count))
    height, width = (size, size) if isinstance(size, int) else size
    if on_own_grid(source, crs, bounds, (height, width), resampling):
        window = rasterio.windows.from_bounds(*bounds, transform=source.src.transform)
        if footprint_holds_data(source, window):
            data = source.src.read(indexes=list(source.bands), window=window, out_shape=(len(source.bands), height, width),
                                   resampling=resampling)
            return Tile(data, finite_pixels(data))
    transform = from_bounds(*bounds, width=width, height=height)
    # Without nodata or a mask, an alpha band is the only way to tell "outside the raster" from 0.
    add_alpha = not has_validity_info(source.src)
    shown = list(source.bands)
    with WarpedVRT(source.src, crs=crs, transform=transform, width=width, height=height, resampling=resampling,
                   add_alpha=add_alpha) as vrt:
        if source.validity == "alpha":
            read = vrt.read(indexes=[*shown, vrt.count])  # the added alpha band is the VRT's last
            return Tile(read[:-1], read[-1] > 0)
        data = vrt.read(indexes=shown)
        if covers_only_data(source, crs, bounds, size):
            return Tile(data, finite_pixels(data))
        from_bands = nodata_mask_of_bands(vrt, shown, data)
        valid = (from_bands if from_bands is not None else vrt.dataset_mask() > 0) & finite_pixels(data)
    return Tile(data, valid)


def nodata_mask_of_bands(vrt: WarpedVRT, shown: Sequence[int], data: np.ndarray) -> np.ndarray | None:
    """The warped tile's mask from its bands read already: a pixel holds data where one band is not nodata; None where that is not exact.

    That is what rasterio's `dataset_mask` means when every band's mask is its nodata value (the OR of
    the band masks; GDAL compares integers exactly), but `dataset_mask` warps the bands a second time,
    through the VRT's block reads rather than the dataset read `read` makes: half the tile's time, and
    at the raster's edge the two warps can disagree, that mask calling the last row or column of data
    empty, or a pixel holding the nodata value valid (random tiles of 64 to 224 px at 0.7x to 3.3x the
    pixel size whose mask was warped: on rgb1.tif 517 pixels with data called empty in 5 of 203; on the
    Sentinel-2 true-colour scene 375, and 4 holding nodata called valid, in 15 of 263). Taken from
    the bands, the mask says what the tile's data holds.
    None (leave it to `dataset_mask`) unless: integer data with an integer nodata in its range (float
    nodata and NaN are compared with tolerances), every band read (the mask ORs them all), each band's
    mask its nodata value (no alpha or mask band), and not 4 bands (rasterio takes a 4th band of RGB as
    alpha).
    """
    nodata = vrt.nodata
    if nodata is None or sorted(shown) != list(range(1, vrt.count + 1)) or not np.issubdtype(data.dtype, np.integer):
        return None
    if any(flags != [MaskFlags.nodata] for flags in vrt.mask_flag_enums) or vrt.count == 4:
        return None
    limits = np.iinfo(data.dtype)
    if not (float(nodata).is_integer() and limits.min <= nodata <= limits.max):
        return None
    return (data != data.dtype.type(nodata)).any(axis=0)


def finite_pixels(data: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose every band is a finite number (always true for integer data)."""
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.complexfloating):
        return np.ones(data.shape[1:], dtype=bool)
    return np.isfinite(data).all(axis=0)


def to_rgb8(tile: Tile, limits: Sequence[tuple[float, float]] | None = None) -> np.ndarray:
    """An HxWx3 uint8 image of a tile.

    uint8 bands pass through; any other band is stretched linearly from its `limits` pair (low ->
    0, high -> 255, clipped), the same pair for every tile of a mosaic; one band becomes grey RGB;
    empty pixels are black. Raises ValueError when a band that is not uint8 has no limits.
    """
    data = tile.data
    if data.dtype != np.uint8 and limits is None:
        raise ValueError(f"{data.dtype} band 1 needs stretch limits")
    shown = data[:3]
    # built as H x W x C at once: no band-first copy to transpose afterwards
    out = np.empty((*data.shape[1:], 3 if len(shown) == 1 else len(shown)), dtype=np.uint8)
    for i, band in enumerate(shown):
        if band.dtype == np.uint8:
            out[..., i] = band
            continue
        lo, hi = (float(v) for v in limits[i])
        if hi <= lo:  # flat band: anything above the floor is full scale
            hi = lo + 1.0
        scaled = (band.astype(np.float64) - lo) / (hi - lo) * 255.0
        out[..., i] = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0), 0, 255).round().astype(np.uint8)
    if len(shown) == 1:
        out[..., 1] = out[..., 0]
        out[..., 2] = out[..., 0]
    if not tile.valid.all():
        out[~tile.valid] = 0
    return out


def overview_sample(
    src: rasterio.io.DatasetReader, bands: Sequence[int], with_values: bool, max_side: int = 512, max_values: int = 50_000
) -> tuple[np.ndarray, np.ndarray | None]:
    """A decimated read of the whole raster: its valid-pixel mask, and (when asked) a sample of its valid values.

    Returns (mask at most `max_side` a side, NaN and inf counted empty; values as (bands, n) float64,
    n <= `max_values`, drawn evenly from the valid pixels, or None).
    """
    scale = max(1.0, max(src.width, src.height) / max_side)
    shape = (max(1, int(src.height / scale)), max(1, int(src.width / scale)))
    mask = src.dataset_mask(out_shape=shape) > 0
    floating = any(np.issubdtype(np.dtype(src.dtypes[b - 1]), np.floating) for b in bands)
    if not with_values and not floating:
        return mask, None
    data = src.read(indexes=list(bands), out_shape=(len(bands), *shape))
    mask &= finite_pixels(data)
    if not with_values:
        return mask, None
    values = data[:, mask].astype(np.float64)
    step = max(1, values.shape[1] // max_values)
    return mask, values[:, ::step]


def mosaic_limits(samples: Sequence[tuple[np.ndarray, float]], low_pct: float, high_pct: float) -> list[tuple[float, float]]:
    """Per-band (low, high) percentiles over several rasters' samples, each weighted by the ground area it stands for.

    `samples` holds (values (bands, n), area): every raster counts by its area, not by how many
    values were drawn from it.
    """
    used = [(v, a) for v, a in samples if v is not None and v.shape[1]]
    if not used:
        return []
    limits = []
    for band in range(used[0][0].shape[0]):
        values = np.concatenate([v[band] for v, _ in used])
        weights = np.concatenate([np.full(v.shape[1], a / v.shape[1]) for v, a in used])
        order = np.argsort(values, kind="stable")
        cumulative = np.cumsum(weights[order])
        cumulative /= cumulative[-1]
        lo, hi = (float(values[order][min(len(values) - 1, np.searchsorted(cumulative, q / 100.0))]) for q in (low_pct, high_pct))
        limits.append((lo, hi))
    return limits


class MemberReadError(Exception):
    """A mosaic member's pixels could not be read; `index` is its place in the sources given."""

    def __init__(self, index: int):
        super().__init__(f"mosaic member {index} unreadable")
        self.index = index


def read_mosaic_tile(
    sources: Sequence[TileSource | tuple[rasterio.io.DatasetReader, Sequence[int]]],
    crs: CRS,
    bounds: tuple[float, float, float, float],
    size: int | tuple[int, int],
    resampling: Resampling = Resampling.bilinear,
) -> tuple[Tile, list[int]]:
    """One tile from several rasters (priority order), and how many of its pixels each one gave.

    Each raster is warped onto the tile's grid; a pixel comes from the first raster with data there,
    so later rasters fill only what earlier ones leave empty (rasterio.merge's "first" rule).
    A source is a TileSource (built once per raster) or an (open raster, bands) pair.
    Raises MemberReadError naming the source whose pixels cannot be read.
    """
    tile: Tile | None = None
    given = []
    for index, source in enumerate(sources):
        if tile is not None and tile.valid.all():
            given.append(0)
            continue
        try:
            if not isinstance(source, TileSource):
                source = TileSource.of(*source)
            part = read_tile(source, crs, bounds, size, resampling=resampling)
        except rasterio.errors.RasterioError as exc:  # truncated or corrupt data often shows only when pixels are read
            raise MemberReadError(index) from exc
        if tile is None:
            tile = part  # read_tile's arrays are this call's own: later members fill them in place
            given.append(int(part.valid.sum()))
            continue
        fill = part.valid & ~tile.valid
        tile.data[:, fill] = part.data[:, fill]
        tile.valid |= fill
        given.append(int(fill.sum()))
    if tile is None:
        raise ValueError("a mosaic tile needs at least one raster")
    return tile, given


def tile_problem(tile: Tile, rgb: np.ndarray, max_nodata_fraction: float, min_std: float) -> str | None:
    """A rejects reason, or None for a usable tile."""
    nodata = 1.0 - float(tile.valid.mean())
    if nodata > max_nodata_fraction:
        return "too much nodata"
    pixels = rgb[tile.valid]
    if pixels.size == 0 or float(pixels.astype(np.float32).std()) < min_std:
        return "blank tile"
    return None
